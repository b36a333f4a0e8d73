"""In-context workflow (support choice, resizing, targets, batching, cancel, several labels) and
example set files, on real scans from tests/data."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsam_gui.core.example_sets import FORMAT_VERSION, ExampleSetError, load_example_set, save_example_set
from medsam_gui.core.support_set import SupportSet, resize_masks, window_unit
from medsam_gui.models import incontext as ic
from medsam_gui.models import universeg_v1

torch.set_num_threads(2)


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def liver_ct(data_dir):
    d = data_dir / "totalsegmentator_example_ct"
    return _read(d / "example_ct_sm.nii.gz"), _read(d / "example_seg.nii.gz")  # (30, 101, 122)


@pytest.fixture(scope="module")
def golden_model(universeg_state_dict):
    return universeg_v1(universeg_state_dict)


class SupportMeanModel(torch.nn.Module):
    """Fake model: logits = 20 * (mean support label - 0.5): the target's mask is where more than
    half of the support masks are foreground (the target image is ignored)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, target, support_images, support_labels):
        assert target.shape[-2:] == (128, 128) and support_labels.shape[-2:] == (128, 128)
        self.calls.append((target.shape[0], support_labels.shape[1]))
        return 20.0 * (support_labels.mean(dim=1) - 0.5)


class TargetThresholdModel(torch.nn.Module):
    """Fake model: logits = 20 * (target - 0.5): the mask is the windowed target image > 0.5."""

    def forward(self, target, support_images, support_labels):
        return 20.0 * (target - 0.5)


def _partial(lab, keep_slices, axis=0):
    out = np.zeros_like(lab)
    for i in keep_slices:
        idx = [slice(None)] * 3
        idx[axis] = i
        out[tuple(idx)] = lab[tuple(idx)]
    return out


# --------------------------------------------------------------------------- support / targets


def test_choose_support_spread_and_subsets():
    labeled = list(range(10, 50))  # 40 labeled slices
    chosen = ic.choose_support(labeled, 8)
    assert len(chosen) == 8 and chosen[0] == 10 and chosen[-1] == 49
    gaps = np.diff(chosen)
    assert gaps.min() >= 5 and gaps.max() <= 6  # evenly spaced
    assert ic.choose_support([3, 1, 2], 8) == [1, 2, 3]
    subsets = ic.choose_support_subsets(labeled, 8, 3)
    assert len(subsets) == 3 and subsets[0] == chosen
    assert all(len(s) == 8 and set(s) <= set(labeled) for s in subsets)
    assert subsets[1] != subsets[0] and subsets[2] != subsets[1]
    assert ic.choose_support(labeled, 1) == [30]


def test_plan_targets():
    assert ic.plan_targets(30, [5, 9]) == [6, 7, 8]
    assert ic.plan_targets(30, [5, 9], z_range=(2, 12)) == [2, 3, 4, 6, 7, 8, 10, 11, 12]
    assert ic.plan_targets(30, [5, 9], z_range=(7, 7)) == [6, 7, 8]
    assert ic.plan_targets(30, [5, 9], targets=[9, 20, 5, 0]) == [0, 20]
    assert ic.plan_targets(4, []) == [0, 1, 2, 3]
    assert ic.plan_targets(10, [], z_range=(8, 40)) == [8, 9]
    with pytest.raises(ic.InContextError):
        ic.plan_targets(10, [2], targets=[10])
    with pytest.raises(ic.InContextError):
        ic.plan_targets(10, [2], z_range=(12, 14))


def test_prepare_support_resizing(hippo):
    img, lab = hippo
    sup = SupportSet.from_slices(img[[8, 10]], lab[[8, 10]] == 1, (0.0, 2000.0), indices=[8, 10])
    assert sup.images.shape == sup.masks.shape == (2, 128, 128)
    assert sup.images.dtype == np.float32 and sup.masks.dtype == np.uint8
    assert 0.0 <= sup.images.min() and sup.images.max() <= 1.0
    assert set(np.unique(sup.masks)) == {0, 1}
    # upsampling 52x34 -> 128x128 with nearest: the foreground fraction is kept
    frac_in = (lab[8] == 1).mean()
    assert abs(sup.masks[0].mean() - frac_in) < 0.01
    # area > 0.5 when shrinking: a 256x256 checkerboard of 2x2 blocks covering 3/4 of each 4x4 cell
    big = np.zeros((1, 256, 256), np.uint8)
    big[0, :, :] = 1
    big[0, ::2, ::2] = 0  # 75 % covered everywhere -> all 1
    assert resize_masks(big).min() == 1
    big[0, 1::2, :] = 0  # 25 % covered -> all 0
    assert resize_masks(big).max() == 0


# --------------------------------------------------------------------------- geometry with fake models


def test_fake_model_reproduces_support_mask_non_square(hippo):
    img, lab = hippo
    partial = _partial(lab, [8])
    model = SupportMeanModel()
    res = ic.segment_rest(img, partial, 1, model=model, bounds=(0.0, 2000.0), targets=[9, 20],
                          support_size=4, device="cpu")
    assert res.indices == [9, 20] and res.support_indices == [8]
    for i in (9, 20):
        p = res.probabilities[i]
        assert p.dtype == np.float16 and p.shape == (52, 34)
        # the round trip 52x34 -> 128x128 -> 52x34 reproduces the support mask exactly
        assert np.array_equal(res.mask(i), lab[8] == 1)


def test_fake_model_axis1_and_target_path(liver_ct):
    ct, seg = liver_ct
    liver = (seg == 5).astype(np.uint8)
    k = int(np.argmax(liver.sum(axis=(0, 2))))  # coronal slice (axis 1) with most liver
    partial = _partial(liver, [k], axis=1)
    res = ic.segment_rest(ct, partial, 1, model=SupportMeanModel(), bounds=(-160.0, 240.0),
                          targets=[k + 3], support_size=4, device="cpu", axis=1)
    assert res.slice_shape == (30, 122) and res.probabilities[k + 3].shape == (30, 122)
    ref = liver[:, k, :] == 1
    got = res.mask(k + 3)
    dice = 2 * (got & ref).sum() / (got.sum() + ref.sum())
    assert dice > 0.97, dice
    # the target path: the windowed target image > 0.5 comes back on the right pixels
    first = np.zeros_like(liver)
    first[:, 0, :] = 1  # any support: this fake model ignores it
    res2 = ic.segment_rest(ct, first, 1, model=TargetThresholdModel(), bounds=(-300.0, 300.0),
                           targets=[40, 60], support_size=4, device="cpu", axis=1)
    for t in (40, 60):
        ref_t = window_unit(ct[:, t, :], (-300.0, 300.0)) > 0.5
        agree = (res2.mask(t) == ref_t).mean()
        flipped = max((res2.mask(t) == ref_t[::-1]).mean(), (res2.mask(t) == ref_t[:, ::-1]).mean())
        assert agree > 0.93 and agree > flipped + 0.1, (agree, flipped)


def test_support_from_another_scan(hippo, data_dir):
    img, lab = hippo
    sup = SupportSet.from_slices(img[[12]], lab[[12]] == 2, (0.0, 2000.0), indices=[12])
    other = _read(data_dir / "msd_hippocampus" / "hippocampus_001_image.nii.gz")
    res = ic.segment_rest(other, None, 2, model=SupportMeanModel(), bounds=(0.0, 2000.0), support=sup,
                          targets=[3], device="cpu")
    hw = other.shape[1:]
    expected = resize_masks(resize_masks((lab[12] == 2)[None]), hw)[0].astype(bool)
    assert res.probabilities[3].shape == hw
    assert (res.mask(3) == expected).mean() > 0.98


# --------------------------------------------------------------------------- with the real network


def test_golden_weights_plumbing_liver(liver_ct, golden_model):
    ct, seg = liver_ct
    labels = np.where(seg == 1, 1, 0).astype(np.uint8)  # spleen everywhere (another label)
    labels[[10, 14]] = np.where(seg[[10, 14]] == 5, 5, labels[[10, 14]])
    before = labels.copy()
    calls = []
    res = ic.segment_rest(ct, labels, 5, model=golden_model, bounds=(-160.0, 240.0), support_size=8,
                          batch_size=2, device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert np.array_equal(labels, before)  # segment_rest itself does not modify labels
    assert res.targets == res.indices == [11, 12, 13]
    assert res.support_indices == [10, 14] and not res.cancelled
    assert calls == [(2, 3), (3, 3)]
    for i in res.indices:
        p = res.probabilities[i]
        assert p.shape == (101, 122) and p.dtype == np.float16
        assert np.isfinite(p.astype(np.float32)).all() and 0 <= p.min() and p.max() <= 1
    out = labels.copy()
    assert set(res.apply(out)) <= {11, 12, 13}
    diff_slices = np.flatnonzero((out != before).any(axis=(1, 2))).tolist()
    assert set(diff_slices) <= {11, 12, 13}
    untouched = [z for z in range(30) if z not in (11, 12, 13)]
    assert np.array_equal(out[untouched], before[untouched])  # user slices bit for bit
    assert np.array_equal(out[before == 1], before[before == 1])  # other label kept
    for i in (11, 12, 13):
        expected = np.where((before[i] == 0) & res.mask(i), 5, before[i])
        assert np.array_equal(out[i], expected)


def test_cancel_and_generator(hippo):
    img, lab = hippo
    partial = _partial(lab, [4, 17])
    state = {"n": 0}

    def cancel():
        state["n"] += 1
        return state["n"] > 2  # allow two batches

    model = SupportMeanModel()
    res = ic.segment_rest(img, partial, 1, model=model, bounds=(0.0, 2000.0), batch_size=3,
                          device="cpu", cancel=cancel)
    assert res.cancelled and res.indices == [5, 6, 7, 8, 9, 10]
    assert res.targets == list(range(5, 17))
    events = list(ic.iter_segment_rest(img, partial, 1, model=model, bounds=(0.0, 2000.0), batch_size=5,
                                       device="cpu"))
    assert [e.indices for e in events] == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16]]
    assert events[-1].done == events[-1].total == 12
    assert events[0].probabilities.shape == (5, 52, 34)


def test_ensemble_uses_several_subsets(hippo):
    img, lab = hippo
    model = SupportMeanModel()
    res = ic.segment_rest(img, lab, 1, model=model, bounds=(0.0, 2000.0), targets=[0], support_size=4,
                          ensemble=3, device="cpu")
    assert len(model.calls) == 3 and all(c == (1, 4) for c in model.calls)
    assert res.indices == [0]


def test_multi_label_combined_without_overlap(hippo):
    img, lab = hippo
    k = 12  # both labels present
    assert set(np.unique(lab[k])) == {0, 1, 2}
    partial = _partial(lab, [k])
    seen = []
    multi = ic.segment_rest_multi(img, partial, [1, 2], model=SupportMeanModel(), bounds=(0.0, 2000.0),
                                  targets=[k + 1, k], support_size=4, device="cpu",
                                  progress=lambda d, t: seen.append((d, t)))
    assert multi.indices == [k + 1] and seen[-1] == (2, 2)
    out = partial.copy()
    assert multi.apply(out) == [k + 1]
    assert np.array_equal(out[k + 1], lab[k])  # both labels, no overlap, exact
    assert np.array_equal(out[k], partial[k])
    # overlapping probabilities: the higher one wins
    r1, r2 = multi.results[1], multi.results[2]
    r1.probabilities[k + 1] = np.full((52, 34), 0.6, np.float16)
    r2.probabilities[k + 1] = np.full((52, 34), 0.7, np.float16)
    assert (multi.combined(k + 1) == 2).all()


def test_errors(hippo):
    img, lab = hippo
    with pytest.raises(ic.InContextError, match="not drawn"):
        ic.segment_rest(img, np.zeros_like(lab), 1, model=SupportMeanModel(), device="cpu")
    with pytest.raises(ic.InContextError):
        ic.segment_rest(img, lab[:5], 1, model=SupportMeanModel(), device="cpu")


# --------------------------------------------------------------------------- example sets


def _example(hippo):
    img, lab = hippo
    return SupportSet.from_slices(img[[6, 9, 12]], lab[[6, 9, 12]] == 1, (10.0, 900.0), indices=[6, 9, 12],
                                 modality="MR", source="hippocampus_003", label_name="anterior hippocampus")


def test_example_set_round_trip(tmp_path, hippo):
    es = _example(hippo)
    path = save_example_set(tmp_path / "hippo.npz", es)
    assert [p.name for p in tmp_path.iterdir()] == ["hippo.npz"]  # no temp file left
    back = load_example_set(path)
    assert back.label_name == "anterior hippocampus" and back.modality == "MR"
    assert back.bounds == (10.0, 900.0) and back.indices == (6, 9, 12)
    assert back.source == "hippocampus_003" and back.label_value == 1 and back.axis == 0
    assert np.array_equal(back.masks, es.masks) and back.masks.dtype == np.uint8
    assert np.abs(back.images - es.images).max() < 1e-3  # float16 storage
    with np.load(path, allow_pickle=False) as raw:
        assert raw["images"].dtype == np.float16 and int(raw["format_version"]) == FORMAT_VERSION
    assert len(back) == 3 and {s.origin for s in back} == {"example set"}


def test_example_set_refusals(tmp_path, hippo):
    es = _example(hippo)
    good = save_example_set(tmp_path / "good.npz", es)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.npz").write_text("hello")
    arrays = dict(np.load(good, allow_pickle=False))
    np.savez(tmp_path / "newer.npz", **{**arrays, "format_version": np.int64(FORMAT_VERSION + 1)})
    np.savez(tmp_path / "shape.npz", **{**arrays, "masks": arrays["masks"][:, :64]})
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    np.savez(tmp_path / "pickled.npz", **{**arrays, "label_name": np.array([{"a": 1}], dtype=object)})
    cases = {"trunc.npz": "corrupt", "text.npz": "corrupt", "newer.npz": "newer",
             "shape.npz": "masks", "other.npz": "not a medsam-gui example set",
             "pickled.npz": "corrupt", "missing.npz": "not found"}
    for name, frag in cases.items():
        with pytest.raises(ExampleSetError, match=frag):
            load_example_set(tmp_path / name)
    with pytest.raises(ExampleSetError, match="empty"):
        save_example_set(tmp_path / "empty.npz", SupportSet())
    with pytest.raises(ExampleSetError, match="exists"):
        save_example_set(good, es, overwrite=False)
