"""Sessions store only the labelled box of the label map (medsam_gui.core.session_labels): round
trips, file size, format-1 sessions (full map, no box) and damaged label entries."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from medsam_gui.core import session as session_mod
from medsam_gui.core.session import (
    SESSION_JSON,
    ScanRef,
    Session,
    load_session,
    read_session_summary,
    save_session,
)
from medsam_gui.errors import SessionError


def _session(labels, shape=None):
    shape = tuple(labels.shape) if shape is None else shape
    scan = ScanRef(paths=(), fingerprint="f" * 16, shape_zyx=shape, name="scan.nii.gz")
    return Session(scan=scan, labels=labels)


def _doc(folder):
    return json.loads((folder / SESSION_JSON).read_text())


def _full_counts(labels):
    vals, counts = np.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, counts) if v}


def _lesion_map(dtype, order="C"):
    lab = np.zeros((40, 96, 128), dtype, order=order)
    lab[12:20, 30:50, 60:90] = 3
    lab[15, 40:44, 70:72] = 7
    lab[25, 33, 61] = 1  # extends the box along z only
    return lab


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_round_trip_stores_the_labelled_box_only(tmp_path, dtype, order):
    lab = _lesion_map(dtype, order)
    path = save_session(_session(lab), tmp_path / "s.medsamsession")
    with np.load(path / "labels.npz", allow_pickle=False) as npz:
        assert npz.files == ["labels"]
        crop = npz["labels"]
    assert crop.shape == (14, 20, 30) and crop.dtype == dtype
    assert np.array_equal(crop, lab[12:26, 30:50, 60:90])
    entry = _doc(path)["labels"]
    assert _doc(path)["format_version"] == 2
    assert entry["box"] == [[12, 26], [30, 50], [60, 90]]
    assert entry["shape"] == [40, 96, 128] and entry["dtype"] == np.dtype(dtype).name
    assert entry["voxels"] == _full_counts(lab) == {"1": 1, "3": 8 * 20 * 30 - 8, "7": 8}
    assert read_session_summary(path)["labels"]["voxels"] == entry["voxels"]
    back = load_session(path)
    assert back.labels.dtype == dtype and back.labels.shape == lab.shape
    assert np.array_equal(back.labels, lab)
    assert back.label_voxel_counts() == {1: 1, 3: 8 * 20 * 30 - 8, 7: 8}


def test_labels_file_size_follows_the_box_not_the_map(tmp_path):
    lab = np.zeros((64, 256, 256), np.uint16)  # 8 MiB
    lab[20:30, 100:120, 50:70] = 2  # 10 x 20 x 20 cube: 8000 bytes uncompressed
    path = save_session(_session(lab), tmp_path / "s.medsamsession")
    size = (path / "labels.npz").stat().st_size
    # deflate shrinks at most ~1030:1, so the full map needs > 8 KiB (~37 KiB at level 1); the
    # crop, one value over 8000 bytes, deflates to well under 1 KiB with the npy/zip headers
    old_size = len(session_mod._npz_bytes({"labels": lab}))
    assert old_size > 8 * 1024
    assert size < 1024 and size * 20 < old_size, (size, old_size)
    assert np.array_equal(load_session(path).labels, lab)


def test_all_zero_map_and_no_labels_round_trip(tmp_path):
    zero = np.zeros((5, 6, 7), np.uint16)
    path = save_session(_session(zero), tmp_path / "zero.medsamsession")
    entry = _doc(path)["labels"]
    assert entry["box"] == [[0, 0], [0, 0], [0, 0]] and entry["voxels"] == {} and entry["shape"] == [5, 6, 7]
    with np.load(path / "labels.npz", allow_pickle=False) as npz:
        assert npz["labels"].shape == (0, 0, 0) and npz["labels"].dtype == np.uint16
    back = load_session(path)
    assert back.labels.dtype == np.uint16 and back.labels.shape == (5, 6, 7) and not back.labels.any()

    none = save_session(_session(None, shape=(5, 6, 7)), tmp_path / "none.medsamsession")
    assert not (none / "labels.npz").exists() and _doc(none)["labels"] is None
    assert load_session(none).labels is None


def _put_npz(folder, arrays, compressed=False):
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    data = buf.getvalue()
    (folder / "labels.npz").write_bytes(data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _edit_json(folder, edit):
    doc = _doc(folder)
    edit(doc)
    (folder / SESSION_JSON).write_text(json.dumps(doc))


def _write_format_1(folder, lab):
    """A session folder as format 1 wrote it: the full map in labels.npz, no box."""
    save_session(_session(None, shape=lab.shape), folder)
    manifest = _put_npz(folder, {"labels": lab}, compressed=True)

    def edit(doc):
        doc["format_version"] = 1
        doc["files"]["labels.npz"] = manifest
        doc["labels"] = {"file": "labels.npz", "shape": list(lab.shape), "dtype": str(lab.dtype),
                         "voxels": _full_counts(lab)}
    _edit_json(folder, edit)


def test_format_1_session_with_the_full_map_still_loads(tmp_path):
    lab = _lesion_map(np.uint16)
    old = tmp_path / "old.medsamsession"
    _write_format_1(old, lab)
    assert read_session_summary(old)["labels"]["voxels"] == _full_counts(lab)
    back = load_session(old)
    assert back.labels.dtype == np.uint16 and np.array_equal(back.labels, lab)
    # saving it again writes format 2 with the box
    save_session(back, old)
    assert _doc(old)["format_version"] == 2 and _doc(old)["labels"]["box"] == [[12, 26], [30, 50], [60, 90]]
    assert np.array_equal(load_session(old).labels, lab)


def _set_entry(**changes):
    return lambda f: _edit_json(f, lambda d: d["labels"].update(changes))


def _replace_crop(arr):
    def corrupt(folder):
        manifest = _put_npz(folder, {"labels": arr})
        _edit_json(folder, lambda d: d["files"].__setitem__("labels.npz", manifest))
    return corrupt


DAMAGED = {
    "box past the end": (_set_entry(box=[[12, 26], [30, 50], [60, 129]]), "outside"),
    "box negative": (_set_entry(box=[[-1, 13], [30, 50], [60, 90]]), "outside"),
    "box reversed": (_set_entry(box=[[26, 12], [30, 50], [60, 90]]), "outside"),
    "box of floats": (_set_entry(box=[[12.0, 26.0], [30, 50], [60, 90]]), "malformed"),
    "box of bools": (_set_entry(box=[[False, True], [30, 50], [60, 90]]), "malformed"),
    "box of two axes": (_set_entry(box=[[12, 26], [30, 50]]), "malformed"),
    "box missing": (lambda f: _edit_json(f, lambda d: d["labels"].pop("box")), "malformed"),
    "crop shape vs box": (_replace_crop(np.ones((14, 20, 29), np.uint16)), "inconsistent"),
    "full map with a box": (_replace_crop(np.zeros((40, 96, 128), np.uint16)), "inconsistent"),
    "crop dtype vs declared": (_replace_crop(np.ones((14, 20, 30), np.uint8)), "declared as 'uint16'"),
    "declared dtype edited": (_set_entry(dtype="int32"), "declared as 'int32'"),
    "float crop": (_replace_crop(np.ones((14, 20, 30), np.float32)), "expected integers"),
    "declared shape vs scan": (_set_entry(shape=[40, 96, 127]), "inconsistent"),
    "declared shape missing": (_set_entry(shape=None), "inconsistent"),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_label_entries_are_refused(tmp_path, name):
    corrupt, phrase = DAMAGED[name]
    folder = save_session(_session(_lesion_map(np.uint16)), tmp_path / "bad.medsamsession")
    corrupt(folder)
    with pytest.raises(SessionError, match=phrase) as info:
        load_session(folder)
    assert "bad.medsamsession" in str(info.value)


def test_missing_labels_array_and_format_1_shape_mismatch_are_refused(tmp_path):
    folder = save_session(_session(_lesion_map(np.uint16)), tmp_path / "a.medsamsession")
    manifest = _put_npz(folder, {"other": np.ones((14, 20, 30), np.uint16)})
    _edit_json(folder, lambda d: d["files"].__setitem__("labels.npz", manifest))
    with pytest.raises(SessionError, match="holds no label map"):
        load_session(folder)
    # a format-1 session must hold the full map (what an older app makes of a cropped file)
    old = tmp_path / "old.medsamsession"
    _write_format_1(old, _lesion_map(np.uint16))
    manifest = _put_npz(old, {"labels": _lesion_map(np.uint16)[12:26, 30:50, 60:90]})
    _edit_json(old, lambda d: d["files"].__setitem__("labels.npz", manifest))
    with pytest.raises(SessionError, match="its scan spans .* inconsistent"):
        load_session(old)


def test_a_box_moved_within_the_map_loads_there(tmp_path):
    lab = _lesion_map(np.uint8)
    folder = save_session(_session(lab), tmp_path / "m.medsamsession")
    _set_entry(box=[[0, 14], [0, 20], [0, 30]])(folder)
    back = load_session(folder).labels
    assert np.array_equal(back[:14, :20, :30], lab[12:26, 30:50, 60:90]) and back[14:].sum() == 0
