"""Universal Model preprocessing = the official MONAI 0.9 chain (golden pre_image, tests/golden)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam_gui.core.volume import Volume
from medsam_gui.io.readers import load_volume
from medsam_gui.models.universal.preprocess import preprocess
from universal_helpers import golden

CT = Path(__file__).parent / "data" / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def g():
    return golden()


@pytest.fixture(scope="module")
def volume():
    return load_volume(CT)


@pytest.fixture(scope="module")
def prepared(volume):
    return preprocess(volume)


def test_grid_and_foreground_box_match_official(g, prepared):
    assert prepared.spacing_shape == tuple(g["spacing_shape"])
    assert np.allclose(prepared.spacing_affine, g["spacing_affine"], atol=1e-4)
    assert prepared.crop_start == tuple(g["pre_crop_start"])
    assert prepared.crop_end == tuple(g["pre_crop_end"])
    assert prepared.image.shape == tuple(int(e - s) for s, e in zip(g["pre_crop_start"], g["pre_crop_end"]))
    assert prepared.oriented_shape == tuple(g["orig_shape"])
    assert np.allclose(prepared.oriented_affine, g["orig_affine"], atol=1e-4)


def test_image_matches_official_within_1e4(g, prepared):
    image = prepared.image
    assert image.dtype == np.float32
    assert np.abs(image[::3, ::3, ::3] - g["pre_image_s3"]).max() <= 1e-4
    x0, y0, _ = (int(v) for v in g["net_window_start"])
    assert np.abs(image[x0:x0 + 96, y0:y0 + 96, :] - g["net_input_real"]).max() <= 1e-4
    assert image.astype(np.float64).sum() == pytest.approx(float(g["pre_image_sum"]), rel=1e-6)


def test_same_scan_stored_mirrored_and_transposed_gives_the_same_input(volume, prepared):
    """Orientationd: x stored right-to-left and the axes (y, x) swapped is the same anatomy."""
    d = volume.direction_matrix
    new_dir = np.stack([-d[:, 0], d[:, 1], d[:, 2]], axis=1)[:, [1, 0, 2]]
    origin = np.asarray(volume.origin) + d[:, 0] * volume.spacing[0] * (volume.shape[2] - 1)
    array = volume.array[:, :, ::-1].transpose(0, 2, 1)
    other = Volume(np.ascontiguousarray(array), spacing=(volume.spacing[1], volume.spacing[0], volume.spacing[2]),
                   origin=tuple(origin), direction=tuple(new_dir.ravel()), modality="CT")
    again = preprocess(other)
    assert again.axes == (1, 0, 2) and again.flips == (True, False, False)
    assert np.allclose(again.spacing_affine, prepared.spacing_affine, atol=1e-4)
    assert np.abs(again.image - prepared.image).max() <= 1e-5
