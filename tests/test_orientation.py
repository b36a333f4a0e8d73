"""Display orientation: every axis-aligned storage order shows the patient the same way."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.core.orientation import DisplayOrientation, is_oblique, orientation_code

DATA = Path(__file__).resolve().parent / "data"


def _signed_perms():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for j in range(3):  # index axis j points along physical axis perm[j]
                m[perm[j], j] = signs[j]
            yield m


SIGNED_PERMS = list(_signed_perms())


def test_48_signed_permutations():
    assert len(SIGNED_PERMS) == 48


@pytest.mark.parametrize("m", SIGNED_PERMS, ids=lambda m: orientation_code(m.ravel()))
def test_marker_at_right_anterior_superior_corner(m):
    size_xyz = (4, 5, 6)  # distinct sizes so a wrong permutation changes the shape
    # marker index: the voxel nearest patient Right (min x), Anterior (min y), Superior (max z)
    marker = [0, 0, 0]
    for j in range(3):
        p = int(np.argmax(np.abs(m[:, j])))
        s = m[p, j]
        want_max = p == 2  # superior is +z; right and anterior are -x, -y
        marker[j] = size_xyz[j] - 1 if (s > 0) == want_max else 0
    arr = np.zeros(size_xyz[::-1], np.int16)
    arr[marker[2], marker[1], marker[0]] = 7
    orient = DisplayOrientation.from_direction(m.ravel(), arr.shape)
    assert not orient.oblique
    disp = orient.to_display(arr)
    assert np.shares_memory(disp, arr)
    assert disp[-1, 0, 0] == 7 and disp.sum() == 7
    # display shape = extents along S, P, L
    phys_size = [0, 0, 0]
    for j in range(3):
        phys_size[int(np.argmax(np.abs(m[:, j])))] = size_xyz[j]
    assert disp.shape == (phys_size[2], phys_size[1], phys_size[0])
    # the same as SimpleITK's reorientation to LPS
    img = sitk.GetImageFromArray(arr)
    img.SetDirection(tuple(m.ravel()))
    assert np.array_equal(disp, sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS")))
    # inverse, views
    back = orient.from_display(disp)
    assert back.shape == arr.shape and np.array_equal(back, arr) and np.shares_memory(back, arr)
    # orientation code agrees with SimpleITK
    assert orient.code == sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(tuple(m.ravel()))
    assert orient.display_axis_labels() == ("I", "A", "R")
    # points
    assert np.array_equal(orient.index_to_display(marker[::-1]), [disp.shape[0] - 1, 0, 0])
    assert np.array_equal(orient.display_to_index([disp.shape[0] - 1, 0, 0]), marker[::-1])
    # spacing follows the axes
    spacing_xyz = (0.5, 0.7, 2.0)
    sp = orient.display_spacing(spacing_xyz)
    phys_sp = [0.0, 0.0, 0.0]
    for j in range(3):
        phys_sp[int(np.argmax(np.abs(m[:, j])))] = spacing_xyz[j]
    assert sp == (phys_sp[2], phys_sp[1], phys_sp[0])


def test_points_round_trip_and_match_arrays():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 1000, (5, 6, 7))
    for m in SIGNED_PERMS[::5]:
        orient = DisplayOrientation.from_direction(m.ravel(), arr.shape)
        disp = orient.to_display(arr)
        pts = np.stack([rng.integers(0, n, 20) for n in arr.shape], axis=1)
        dpts = orient.index_to_display(pts)
        assert np.array_equal(orient.display_to_index(dpts), pts)
        for p, d in zip(pts, dpts.astype(int)):
            assert arr[tuple(p)] == disp[tuple(d)]
        # float points too
        fp = np.array([1.25, 2.5, 3.75])
        np.testing.assert_allclose(orient.display_to_index(orient.index_to_display(fp)), fp)


def test_trailing_axes_kept():
    arr = np.zeros((2, 3, 4, 3))
    m = SIGNED_PERMS[17]
    orient = DisplayOrientation.from_direction(m.ravel(), arr.shape[:3])
    disp = orient.to_display(arr)
    assert disp.shape[-1] == 3
    assert orient.from_display(disp).shape == arr.shape


def _rot_z(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


@pytest.mark.parametrize("m", [
    _rot_z(30),
    _rot_z(45) @ np.diag([1, -1, 1]),
    np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]], float),  # singular
    np.array([[1, 0.3, 0], [0, 1, 0], [0, 0, 1]], float),  # non-orthogonal
    np.full((3, 3), np.nan),
])
def test_oblique_is_identity(m):
    orient = DisplayOrientation.from_direction(m.ravel(), (2, 3, 4))
    assert orient.oblique and is_oblique(m.ravel())
    assert orient.perm == (0, 1, 2) and orient.flips == (False, False, False)
    arr = np.arange(24).reshape(2, 3, 4)
    assert orient.to_display(arr) is not None and np.array_equal(orient.to_display(arr), arr)
    assert orient.display_spacing((1, 2, 3)) == (3.0, 2.0, 1.0)


def test_slightly_rotated_is_not_oblique():
    m = _rot_z(10) @ np.diag([-1, -1, 1])
    orient = DisplayOrientation.from_direction(m.ravel(), (2, 3, 4))
    assert not orient.oblique and orient.code == "RAS"
    assert orient.flips == (False, True, True)


def test_oblique_axis_labels_nearest():
    orient = DisplayOrientation.from_direction(_rot_z(30).ravel())
    assert orient.display_axis_labels() == ("I", "A", "R")  # nearest directions of the stored axes
    assert orient.display_axis_label_pairs()[2] == ("R", "L")


def test_flips_need_shape_for_points():
    orient = DisplayOrientation.from_direction(np.diag([-1.0, 1.0, 1.0]).ravel())
    with pytest.raises(ValueError, match="shape"):
        orient.index_to_display((0, 0, 0))
    assert np.array_equal(orient.index_to_display((0, 0, 0), shape_zyx=(2, 3, 4)), (0, 0, 3))


@pytest.mark.parametrize("name", ["msd_hippocampus/hippocampus_001_image.nii.gz", "brain_mr/brain1_image.nrrd",
                                  "totalsegmentator_example_ct/example_ct_sm.nii.gz"])
def test_real_scans_match_dicomorient(name):
    img = sitk.ReadImage(str(DATA / name))
    arr = sitk.GetArrayFromImage(img)
    orient = DisplayOrientation.from_direction(img.GetDirection(), arr.shape)
    assert np.array_equal(orient.to_display(arr), sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS")))
    assert orient.code == sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(img.GetDirection())
