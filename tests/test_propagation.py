"""3D propagation (core/propagation.py) with a simulated box segmenter on real and synthetic labels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from medsam_gui.core.propagation import (
    PropagationError,
    expand_box,
    mask_bbox,
    propagate,
    propagate_to_volume,
    slices_to_encode,
)
from medsam_gui.errors import MedsamGuiError
from simulated_segmenter import SimulatedSegmenter, dice, largest_slice, reference_box


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def structures(data_dir):
    ts = _read(data_dir / "totalsegmentator_example_ct" / "example_seg.nii.gz")
    hip = _read(data_dir / "msd_hippocampus" / "hippocampus_001_label.nii.gz")
    return {
        "lung tumour": _read(data_dir / "lung_ct" / "lung1_label.nrrd") == 1,
        "hippocampus 1+2": hip > 0,
        "hippocampus anterior (1)": hip == 1,
        "hippocampus posterior (2)": hip == 2,
        "liver": ts == 5,
        "kidney (2)": ts == 2,
        "kidney (3)": ts == 3,
        "brain lesion": _read(data_dir / "brain_mr" / "brain1_label.nrrd") == 1,
    }


def run_single_box(ref, segmenter, axis=0, **kw):
    k = largest_slice(ref, axis)
    out = np.zeros_like(ref)
    results = list(propagate(ref.shape, {k: reference_box(ref, k, axis)}, segmenter, axis=axis, **kw))
    for r in results:
        out[tuple(r.index if j == axis else slice(None) for j in range(3))] = r.mask
    return out, results


def component_through(ref, index, axis=0):
    """The reference's 3D connected parts that meet slice ``index``."""
    lab, _ = ndi.label(ref)
    ids = np.unique(np.take(lab, index, axis))
    return np.isin(lab, ids[ids > 0])


@pytest.mark.parametrize("name", [
    "lung tumour", "hippocampus 1+2", "hippocampus anterior (1)", "hippocampus posterior (2)",
    "liver", "kidney (2)", "kidney (3)",
])
def test_one_box_on_largest_slice_reaches_dice_095(structures, name):
    ref = structures[name]
    out, results = run_single_box(ref, SimulatedSegmenter(ref))
    assert dice(out, ref) >= 0.95
    kinds = [r.kind for r in results]
    assert kinds[0] == "key" and kinds.count("key") == 1
    assert set(kinds[1:]) <= {"propagated"}


def test_brain_lesion_one_box_follows_its_connected_part(structures):
    """The brain lesion's reference has a second 3D part (613 of 4137 voxels, slices 11-12)
    16 mm away from the part through the largest slice: no box derived from the main part can
    reach it. Propagation recovers the connected part; two key boxes recover the whole."""
    ref = structures["brain lesion"]
    k = largest_slice(ref)
    out, _ = run_single_box(ref, SimulatedSegmenter(ref))
    assert dice(out, component_through(ref, k)) >= 0.98
    assert dice(out, ref) >= 0.90
    # a second box on slice 12 (where both parts show) brings the whole lesion in
    keys = {k: reference_box(ref, k), 12: reference_box(ref, 12)}
    out2 = np.zeros_like(ref)
    for r in propagate(ref.shape, keys, SimulatedSegmenter(ref)):
        out2[r.index] = r.mask
    assert dice(out2, ref) >= 0.95


def test_noisy_segmenter_still_tracks_the_liver(structures):
    ref = structures["liver"]
    seg = SimulatedSegmenter(ref, noise_px=1.0, seed=3)
    out, results = run_single_box(ref, seg)
    assert dice(out, ref) >= 0.9
    assert len(results) == int(ref.any(axis=(1, 2)).sum())


TIPS = dict(min_area_px=1, min_area_ratio=0.0)  # keep the sphere's 1-pixel tips


def sphere(shape=(40, 50, 60), centre=(20, 25, 30), radius=(8, 12, 15)):
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return ((zz - centre[0]) / radius[0]) ** 2 + ((yy - centre[1]) / radius[1]) ** 2 + ((xx - centre[2]) / radius[2]) ** 2 <= 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_all_three_axes(axis):
    ref = sphere()
    seg = SimulatedSegmenter(ref, axis=axis)
    out, results = run_single_box(ref, seg, axis=axis, **TIPS)
    assert dice(out, ref) == 1.0
    extent = np.flatnonzero(ref.any(axis=tuple(j for j in range(3) if j != axis)))
    assert sorted(r.index for r in results) == list(range(extent[0], extent[-1] + 1))
    # every box handed to the segmenter lies on that axis' slice
    rows, cols = [s for j, s in enumerate(ref.shape) if j != axis]
    for r in results:
        x0, y0, x1, y1 = r.box
        assert 0 <= x0 <= x1 < cols and 0 <= y0 <= y1 < rows
        assert r.mask.shape == (rows, cols)


def test_propagated_box_is_previous_bbox_plus_margin():
    ref = sphere()
    results = list(propagate(ref.shape, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref), **TIPS, margin=3))
    by_index = {r.index: r for r in results}
    for r in results:
        if r.kind == "propagated":
            prev = by_index[r.index - 1] if r.index > 20 else by_index[r.index + 1]
            assert r.box == expand_box(mask_bbox(prev.mask), 3, ref.shape[1:])


def test_box_grows_when_the_structure_outgrows_the_margin():
    """A slanted cylinder drifting 4 px per slice: with margin 2 the box would lag behind
    and cut the mask; growing the touched sides re-segments the slice with a wider box."""
    ref = np.zeros((20, 40, 120), bool)
    yy, xx = np.mgrid[:40, :120]
    for z in range(2, 18):
        ref[z] = (yy - 20) ** 2 + (xx - (20 + 4 * z)) ** 2 <= 36
    key = {10: reference_box(ref, 10)}
    out0 = np.zeros_like(ref)
    for r in propagate(ref.shape, key, SimulatedSegmenter(ref), margin=2, grow=0):
        out0[r.index] = r.mask
    out = np.zeros_like(ref)
    for r in propagate(ref.shape, key, SimulatedSegmenter(ref), margin=2):
        out[r.index] = r.mask
    assert dice(out, ref) == 1.0
    assert dice(out0, ref) < 0.9


def test_stops_at_limits():
    ref = sphere()
    results = list(propagate(ref.shape, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref), **TIPS, limits=(17, 22)))
    assert sorted(r.index for r in results) == list(range(17, 23))


def test_stops_when_mask_vanishes_or_shrinks():
    ref = sphere()  # z extent 12..28
    seg = SimulatedSegmenter(ref)
    results = list(propagate(ref.shape, {20: reference_box(ref, 20)}, seg, **TIPS))
    assert sorted(r.index for r in results) == list(range(12, 29))
    called = sorted(i for i, _ in seg.calls)
    assert called == list(range(11, 30))  # one empty slice tried in each direction, not yielded
    # the tips (1 pixel each, after ~15) are below the default min_area_px and ratio
    default = list(propagate(ref.shape, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref)))
    assert sorted(r.index for r in default) == list(range(13, 28))
    # a stricter ratio stops earlier: the tail slices shrink faster than 60% per slice
    strict = list(propagate(ref.shape, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref), min_area_px=1, min_area_ratio=0.6))
    assert {r.index for r in strict} < {r.index for r in results}
    areas = {r.index: r.area for r in strict}
    for i, a in areas.items():
        if i != 20:
            assert a >= 0.6 * areas[i - 1 if i > 20 else i + 1]


def test_cancel_midway_keeps_earlier_results():
    ref = sphere()
    seen = []

    def cancel():
        return len(seen) >= 5

    for r in propagate(ref.shape, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref), **TIPS, cancel=cancel):
        seen.append(r)
    assert len(seen) == 5
    labels = np.zeros(ref.shape, np.uint8)
    calls = {"n": 0}

    def cancel2():
        calls["n"] += 1
        return calls["n"] > 4

    changed = propagate_to_volume(labels, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref), 2, cancel=cancel2)
    assert len(changed) == 4
    assert set(np.flatnonzero(labels.any(axis=(1, 2)))) == set(changed)


def test_interpolation_between_key_slices_and_user_boxes_win():
    ref = sphere()
    b14, b26 = reference_box(ref, 14), reference_box(ref, 26)
    user20 = (5, 5, 40, 40)
    keys = {14: b14, 26: b26, 20: user20}
    seg = SimulatedSegmenter(ref)
    results = list(propagate(ref.shape, keys, seg, **TIPS))
    by_index = {r.index: r for r in results}
    assert by_index[20].kind == "key" and by_index[20].box == user20
    assert by_index[14].box == b14 and by_index[26].box == b26
    # slices 15..19 interpolate between the boxes of 14 and 20
    for i in range(15, 20):
        t = (i - 14) / 6
        expected = tuple(int(round((1 - t) * a + t * b)) for a, b in zip(b14, user20))
        assert by_index[i].kind == "interpolated" and by_index[i].box == expected
    for i in range(21, 26):
        assert by_index[i].kind == "interpolated"
    assert {r.index for r in results if r.kind == "propagated"} == set(range(12, 14)) | set(range(27, 29))
    # spread order: keys first, then results ring by ring away from the key slices
    kinds = [r.kind for r in results]
    assert kinds[:3] == ["key"] * 3
    dist = [min(abs(r.index - k) for k in keys) for r in results]
    assert dist == sorted(dist)
    assert [r.index for r in results][3:9] == [15, 19, 21, 25, 27, 13]


def test_sequential_order_and_slices_to_encode():
    ref = sphere()
    keys = {18: reference_box(ref, 18), 22: reference_box(ref, 22)}
    seq = [r.index for r in propagate(ref.shape, keys, SimulatedSegmenter(ref), **TIPS, order="sequential")]
    assert seq == [18, 22, 19, 20, 21] + list(range(23, 29)) + list(range(17, 11, -1))
    plan = slices_to_encode(ref.shape, keys, limits=(10, 30))
    assert plan[:8] == [18, 22, 19, 21, 23, 17, 20, 24]
    assert sorted(plan) == list(range(10, 31))
    spread = [r.index for r in propagate(ref.shape, keys, SimulatedSegmenter(ref), **TIPS)]
    assert spread == [i for i in plan if 12 <= i <= 28]


def test_prefetch_hints_the_next_slices():
    ref = sphere()
    hints = []
    order = []
    for r in propagate(ref.shape, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref),
                       prefetch=lambda idx: hints.append(list(idx)), lookahead=2):
        order.append(r.index)
    assert hints[0] == [21, 19]
    # every yielded slice after the first was announced before it was segmented
    announced = {i for h in hints for i in h}
    assert set(order[1:]) <= announced


def test_propagate_to_volume_respects_other_labels():
    ref = sphere()
    labels = np.zeros(ref.shape, np.uint8)
    labels[:, :, :30] = 7  # another structure covers half the sphere
    changed = propagate_to_volume(labels, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref), 3, **TIPS)
    assert changed == list(range(12, 29))
    assert np.all(labels[:, :, :30] == 7)
    assert np.array_equal(labels[:, :, 30:] == 3, ref[:, :, 30:])
    labels2 = np.zeros(ref.shape, np.uint8)
    labels2[:, :, :30] = 7
    propagate_to_volume(labels2, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref), 3, overwrite=True, **TIPS)
    assert np.array_equal(labels2 == 3, ref)
    # running again changes nothing
    assert propagate_to_volume(labels2, {20: reference_box(ref, 20)}, SimulatedSegmenter(ref), 3, overwrite=True, **TIPS) == []
    # replace: a smaller result on the same slices clears the old voxels there
    eroded = SimulatedSegmenter(ref, erode=2)
    propagate_to_volume(labels2, {20: reference_box(ref, 20)}, eroded, 3, replace=True, overwrite=True)
    assert np.array_equal(labels2[20] == 3, ndi.binary_erosion(ref[20], iterations=2))


def test_bad_input_raises_user_errors():
    shape = (10, 20, 30)
    seg = lambda i, b: np.zeros((20, 30), bool)  # noqa: E731
    with pytest.raises(MedsamGuiError, match="outside the scan"):
        propagate(shape, {12: (0, 0, 5, 5)}, seg)
    with pytest.raises(PropagationError, match="outside the slice"):
        propagate(shape, {2: (40, 0, 50, 5)}, seg)
    with pytest.raises(PropagationError, match="at least one"):
        propagate(shape, {}, seg)
    with pytest.raises(PropagationError, match="axis"):
        propagate(shape, {2: (0, 0, 5, 5)}, seg, axis=3)
    # an empty key mask: the key is reported, nothing propagates
    res = list(propagate(shape, {2: (0, 0, 5, 5)}, seg))
    assert [r.kind for r in res] == ["key"] and res[0].area == 0
    with pytest.raises(ValueError, match="shape"):
        list(propagate(shape, {2: (0, 0, 5, 5)}, lambda i, b: np.zeros((3, 3), bool)))
