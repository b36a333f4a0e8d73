"""Hermes-R preprocessing against the official converter + nii2npy outputs in the golden file,
on the real demo CT (tests/data/totalsegmentator_example_ct, direction diag(-1, -1, 1))."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import SimpleITK as sitk

import hermes_helpers as H
from medsam_gui.core.volume import Volume
from medsam_gui.io.readers import load_volume
from medsam_gui.models.hermes import preprocess as P


@pytest.fixture(scope="module")
def ct():
    return H.prepared()[0]


@pytest.fixture(scope="module")
def prepared():
    return H.prepared()[1]


def test_source_is_the_golden_scan(ct):
    g = H.gold()
    assert ct.size_xyz == tuple(g["prep_source_size_xyz"].tolist())
    assert np.allclose(ct.direction, g["prep_source_direction"].numpy().ravel())


def test_redirect_keeps_the_array_and_moves_the_origin(ct):
    g = H.gold()
    img = P.to_sitk(ct)
    out = P.redirect(img, P.redirect_transform(img))
    assert np.allclose(out.GetOrigin(), g["prep_redirect_origin_xyz"].numpy(), atol=1e-6)
    assert out.GetDirection() == P.IDENTITY
    change = sitk.GetArrayFromImage(out).astype(np.int32) - ct.array
    assert np.count_nonzero(change) == g["prep_redirect_n_changed"]
    assert np.abs(change).max() == g["prep_redirect_max_abs_change"]


def test_resampled_hu_is_identical_to_the_converter(prepared):
    g = H.gold()
    hu = sitk.GetArrayFromImage(prepared.grid)
    assert hu.dtype == np.int16
    z0, z1 = g["prep_resampled_hu_slab_z"].tolist()
    np.testing.assert_array_equal(hu[z0:z1], g["prep_resampled_hu_slab"].numpy())
    assert hashlib.sha256(np.ascontiguousarray(hu).tobytes()).hexdigest() == g["prep_resampled_hu_sha256"]
    assert prepared.grid.GetSize() == tuple(g["prep_resampled_size_xyz"].tolist())
    assert np.allclose(prepared.grid.GetOrigin(), g["prep_resampled_origin_xyz"].numpy())
    assert prepared.grid.GetSpacing() == (1.5, 1.5, 1.5)


def test_network_volume_matches_nii2npy(prepared):
    g = H.gold()
    assert prepared.clip == tuple(g["prep_clip"].tolist())
    assert abs(prepared.mean - g["prep_mean"].item()) < 1e-3
    assert abs(prepared.std - g["prep_std"].item()) < 1e-3
    assert prepared.pad == tuple(map(tuple, g["prep_pad"].tolist()))
    assert prepared.volume.shape == tuple(g["prep_final_shape"].tolist())
    z, y, x = g["net64_crop_start"].tolist()
    crop = prepared.volume[z:z + 64, y:y + 64, x:x + 64]
    assert np.abs(crop - g["net64_input"].numpy()[0, 0]).max() <= 1e-5


def test_masks_map_back_onto_the_source_grid(ct, prepared):
    """Thresholding on the 1.5 mm grid and mapping back reproduces thresholding the source
    (the 3 mm voxels fall on 1.5 mm nodes): the redirect's flips are undone."""
    hu = sitk.GetArrayFromImage(prepared.grid)
    back = P.to_source_grid((hu > 100).astype(np.uint8), prepared, ct)
    assert back.shape == ct.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, hu[::2, ::2, ::2] > 100)  # source voxel i <-> node 2i
    expected = ct.array > 100
    near = np.abs(ct.array.astype(np.int32) - 100) <= 2  # the two B-spline truncations
    assert np.array_equal(back.astype(bool)[~near], expected[~near])
    assert expected.sum() > 1000


def test_identity_direction_mr_uses_percentile_clip():
    """An MR crop with identity direction: no redirect, 2..98 percentile clip, z-score, pad."""
    mr = load_volume(H.CT.parent.parent / "msd_hippocampus" / "hippocampus_001_image.nii.gz")
    vol = Volume(mr.array, spacing=mr.spacing, origin=mr.origin)
    prep = P.prepare(vol, "MR", window=64)
    values = sitk.GetArrayFromImage(prep.grid).astype(np.float32)
    assert prep.redirect is None
    assert prep.clip == pytest.approx((np.percentile(values, 2), np.percentile(values, 98)))
    # nii2npy pads ceil((window - n) / 2) on both sides: odd sizes come out one longer
    assert prep.volume.shape == tuple(n + 2 * math.ceil((64 - n) / 2) for n in values.shape)
    assert prep.volume.shape != (64, 64, 64)
    inner = prep.volume[tuple(slice(b, n - a) for (b, a), n in zip(prep.pad, prep.volume.shape))]
    assert inner.shape == values.shape
    assert abs(float(inner.mean())) < 1e-4 and abs(float(inner.std()) - 1) < 1e-4
    assert float(inner.max()) == pytest.approx((prep.clip[1] - prep.mean) / prep.std, rel=1e-5)
