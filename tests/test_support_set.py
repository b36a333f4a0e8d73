"""The one support set type (core/support_set.py), the live selection (core/support_selection.py)
and the proposal bookkeeping of the UniverSeg panel (models/incontext_proposal.py), on real scans."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from medsam_gui.core.example_sets import load_example_set
from medsam_gui.core.support_selection import LiveSupport
from medsam_gui.core.support_set import (
    SupportSet,
    SupportSetError,
    SupportSlice,
    resize_images,
    resize_masks,
    thumbnail,
    window_unit,
)
from medsam_gui.models import incontext as ic
from medsam_gui.models import incontext_proposal as icp

torch.set_num_threads(2)


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def lung(data_dir):
    d = data_dir / "lung_ct"
    return _read(d / "lung1_image.nrrd")[32:35].astype(np.float32), _read(d / "lung1_label.nrrd")[32:35] > 0


def _torch_image(x, size=(128, 128)):
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0].numpy()


def _torch_mask(m, size=(128, 128)):
    x = torch.from_numpy((m > 0).astype(np.float32))[:, None]
    h, w = x.shape[-2:]
    if size[0] != h:
        x = F.interpolate(x, size=(size[0], w), mode="area" if size[0] < h else "nearest-exact")
    if size[1] != w:
        x = F.interpolate(x, size=size, mode="area" if size[1] < w else "nearest-exact")
    return (x[:, 0] > 0.5).numpy().astype(np.uint8)


def test_numpy_resizing_equals_torch(hippo, lung):
    """Support preprocessing is numpy (core); it must equal torch's interpolate bit for bit on
    masks and to float32 rounding on images: growing (52x34), shrinking (512x512), mixed."""
    img, lab = hippo
    ct, ct_lab = lung
    cases = [(window_unit(img[8:12], (0.0, 2000.0)), lab[8:12] == 1),
             (window_unit(ct, (-1000.0, 400.0)), ct_lab),
             (window_unit(ct[:, 250:400, 150:260], (-1000.0, 400.0)), ct_lab[:, 250:400, 150:260])]
    for x, m in cases:
        assert np.abs(resize_images(x) - _torch_image(x)).max() < 1e-6
        assert np.array_equal(resize_masks(m), _torch_mask(m))
        assert resize_masks(m).any()
    same = window_unit(ct[:, :128, :128], (-1000.0, 400.0))
    assert np.array_equal(resize_images(same), same)


def test_from_partial_labels(hippo):
    img, lab = hippo
    partial = np.zeros_like(lab)
    partial[[4, 10, 14]] = lab[[4, 10, 14]]  # label 2 on 10 and 14 only
    sup = SupportSet.from_partial_labels(img, partial, 2, bounds=(0.0, 2000.0), source="h003", modality="MR")
    assert sup.indices == (10, 14) and sup.label_value == 2 and len(sup) == 2
    assert sup.images.shape == (2, 128, 128) and sup.images.dtype == np.float32
    assert sup.masks.dtype == np.uint8 and sup.bounds == (0.0, 2000.0) and sup.modality == "MR"
    assert {s.origin for s in sup} == {"labels"} and sup.source == "h003"
    assert np.array_equal(sup.masks[1], resize_masks(lab[14] == 2))
    assert np.allclose(sup.images[0], resize_images(window_unit(img[10], (0.0, 2000.0))), atol=1e-6)
    # a listed slice without the label is a negative example; uint8 scans are windowed 0..255
    u8 = np.clip(img / 8, 0, 255).astype(np.uint8)
    neg = SupportSet.from_partial_labels(u8, partial, 2, slices=[4, 14])
    assert not neg[0].mask.any() and neg[1].mask.any()
    assert np.allclose(neg[1].image, resize_images(u8[14] / 255.0), atol=1e-6)
    with pytest.raises(SupportSetError, match="not drawn"):
        SupportSet.from_partial_labels(img, partial, 7)
    with pytest.raises(SupportSetError):
        SupportSet.from_partial_labels(img, partial[:3], 2)


def test_arrays_round_trip_and_subset(hippo):
    img, lab = hippo
    sup = SupportSet.from_partial_labels(img, lab, 1, axis=2, bounds=(10.0, 900.0), slices=[10, 15, 20],
                                         source="h003", modality="MR", label_name="anterior")
    sup.slices[1] = sup[1].with_origin("added")
    arrays, meta = sup.to_arrays(), sup.to_meta()
    assert {a.dtype.kind for a in arrays.values()} <= {"f", "u", "i"}  # plain numbers (sessions)
    back = SupportSet.from_arrays(arrays, meta)
    assert back.indices == (10, 15, 20) and back.axis == 2 and back.label_name == "anterior"
    assert [s.origin for s in back] == ["labels", "added", "labels"] and back.source == "h003"
    assert np.array_equal(back.images, sup.images) and np.array_equal(back.masks, sup.masks)
    # only images + labels: positions, pinned, unknown modality
    bare = SupportSet.from_arrays({"images": arrays["images"], "labels": arrays["labels"]})
    assert bare.indices == (0, 1, 2) and {s.origin for s in bare} == {"pinned"} and bare.modality == "unknown"
    sub = sup.subset([2, 0])
    assert sub.indices == (20, 10) and sub.label_value == sup.label_value
    with pytest.raises(SupportSetError, match="empty"):
        SupportSet().require_examples()
    with pytest.raises(SupportSetError):
        SupportSlice(np.zeros((64, 64)), np.zeros((64, 64)), 0)


def test_reads_example_set_files_of_the_documented_format(tmp_path, hippo):
    """An example-set file as earlier versions wrote it (keys of core/example_sets.py) loads as a
    SupportSet with every field."""
    img, lab = hippo
    ref = SupportSet.from_partial_labels(img, lab, 1, bounds=(0.0, 2000.0), slices=[8, 11])
    path = tmp_path / "old.npz"
    np.savez_compressed(path, format_version=np.int64(1), kind=np.str_("medsam-gui example set"),
                        images=ref.images.astype(np.float16), masks=ref.masks, label_name=np.str_("hippo"),
                        label_value=np.int64(3), modality=np.str_("MR"),
                        window_bounds=np.array([0.0, 2000.0]), source_scan=np.str_("hippocampus_003"),
                        slice_indices=np.array([8, 11]), axis=np.int64(0))
    es = load_example_set(path)
    assert es.label_name == "hippo" and es.label_value == 3 and es.indices == (8, 11)
    assert es.bounds == (0.0, 2000.0) and es.modality == "MR" and es.source == "hippocampus_003"
    assert {s.origin for s in es} == {"example set"} and {s.label for s in es} == {3}
    assert np.array_equal(es.masks, ref.masks) and np.abs(es.images - ref.images).max() < 1e-3


def test_thumbnail_colours_exactly_the_mask(hippo):
    img, lab = hippo
    item = SupportSet.from_partial_labels(img, lab, 1, bounds=(0.0, 2000.0), slices=[12])[0]
    th = thumbnail(item.image, item.mask, (1.0, 0.0, 0.0), 48)
    assert th.shape == (48, 48, 3) and th.dtype == np.uint8
    grey = (th[..., 0] == th[..., 1]) & (th[..., 1] == th[..., 2])
    pick = np.arange(48) * 128 // 48
    assert np.array_equal(~grey, item.mask[np.ix_(pick, pick)])


def test_live_selection():
    live = LiveSupport()
    assert live.wanted([5, 3]) == [(3, "labels"), (5, "labels")]
    live.add(9)  # a slice without the label: added by hand
    live.remove(3)  # a labeled slice: excluded
    assert live.wanted([3, 5]) == [(5, "labels"), (9, "added")]
    live.add(3)
    live.remove(9)
    assert live.wanted([3, 5]) == [(3, "labels"), (5, "labels")]
    live.remove(5)
    live.reset()
    assert live.wanted([5]) == [(5, "labels")]
    built = []
    item = SupportSlice(np.zeros((128, 128)), np.zeros((128, 128)), 4)
    assert live.cached("k", lambda: built.append(1) or item) is item
    assert live.cached("k", lambda: built.append(1) or item) is item and built == [1]
    for k in range(70):
        live.cached(k, lambda: item)
    live.prune(["k"])
    assert len(live) == 1


def test_proposal_bookkeeping(hippo):
    img, lab = hippo
    partial = np.zeros_like(lab)
    partial[[10, 14]] = lab[[10, 14]]
    assert icp.labels_present(partial) == [1, 2]
    plans = icp.plan_labels(partial, [1, 2, 3], 0, (12, 16))
    # label 3 is drawn nowhere: its targets are the range (an example set on a new scan)
    assert [(p.value, p.targets, p.protected) for p in plans] == [
        (1, [11, 12, 13, 15, 16], [10, 14]), (2, [11, 12, 13, 15, 16], [10, 14]), (3, [12, 13, 14, 15, 16], [])]
    assert icp.plan_labels(partial[:11], [1], 0, None) == []  # nothing between the labeled slices
    plans = plans[:2]
    prop = icp.Proposal.from_plans("volume", 0, plans, lab.shape[1:])
    assert prop.planned == [11, 12, 13, 15, 16] and prop.indices == []
    hw = lab.shape[1:]
    p1 = np.where(lab[11] == 1, 0.9, 0.1).astype(np.float16)
    p2 = np.where(lab[11] == 2, 0.8, 0.2).astype(np.float16)
    prop.add_batch(1, ic.BatchDone([11], p1[None], 1, 5))
    assert prop.counts(11) == [(1, int((lab[11] == 1).sum())), (2, 0)]
    prop.add_batch(2, ic.BatchDone([11], p2[None], 1, 5))
    assert prop.counts(11) == [(1, int((lab[11] == 1).sum())), (2, int((lab[11] == 2).sum()))]  # refreshed
    assert np.array_equal(prop.combined(11), lab[11])
    current = np.zeros(hw, np.int16)
    current[lab[11] == 2] = 2  # the user drew label 2 there already
    writes, skipped = prop.writes(11, current)
    assert skipped and [v for v, _ in writes] == [1] and np.array_equal(writes[0][1], lab[11] == 1)
    prop.unchecked.add(11)
    assert prop.checked() == []
    prop.finish("cancelled")
    assert prop.cancelled and not prop.complete and all(r.cancelled for r in prop.results.values())


def test_used_positions_and_iter_plans(hippo):
    assert icp.used_positions(0, 4, 1) == set()
    assert icp.used_positions(10, 4, 1) == {0, 3, 6, 9}
    assert icp.used_positions(3, 8, 2) == {0, 1, 2}

    class SupportMean(torch.nn.Module):
        def forward(self, target, support_images, support_labels):
            return 20.0 * (support_labels.mean(dim=1) - 0.5)

    img, lab = hippo
    partial = np.zeros_like(lab)
    partial[12] = lab[12]
    plans = icp.plan_labels(partial, [1, 2], 0, (11, 13))
    stop = {"now": False}
    gen = icp.iter_plans(img, partial, plans, support=None, cancel=lambda: stop["now"], model=SupportMean(),
                         bounds=(0.0, 2000.0), support_size=4, device="cpu", batch_size=1)
    events = []
    with pytest.raises(StopIteration) as end:
        while True:
            events.append(next(gen))
    assert end.value.value == "done"
    assert [(v, ev.indices, done, total) for v, ev, done, total in events] == [
        (1, [11], 1, 4), (1, [13], 2, 4), (2, [11], 3, 4), (2, [13], 4, 4)]
    expected = resize_masks(resize_masks(lab[12] == 1), lab.shape[1:]).astype(bool)
    assert ((events[0][1].probabilities[0] > 0.5) == expected).mean() > 0.98
