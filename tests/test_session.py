"""Sessions: round trip on real labels, atomic replacement, corrupt folders, moved scans."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.core import session as session_mod
from medsam_gui.core.session import (
    SESSION_JSON,
    ScanChangedError,
    ScanMissingError,
    ScanRef,
    Session,
    load_session,
    open_session_scan,
    relocate_scan,
    save_session,
)
from medsam_gui.core.support_set import SupportSet
from medsam_gui.core.volume import Volume
from medsam_gui.errors import ExportError, SessionError
from medsam_gui.io import load_volume


def sitk_load_volume(path, *, series_uid=None, component=None):
    """A minimal stand-in for medsam_gui.io.load_volume (files only)."""
    img = sitk.ReadImage(str(path))
    return Volume(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection(),
                  path=str(path), name=os.path.basename(str(path)))


LOADERS = [pytest.param(sitk_load_volume, id="sitk"),
           pytest.param(load_volume, id="medsam_gui.io")]


@pytest.fixture(scope="module")
def totalseg(data_dir):
    d = data_dir / "totalsegmentator_example_ct"
    ct = sitk_load_volume(d / "example_ct_sm.nii.gz")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(d / "example_seg.nii.gz")))
    assert seg.shape == ct.shape
    return ct, seg


def _table():
    from medsam_gui.core.labels import LabelTable, default_table

    table = default_table(3)
    table.rename(1, "spleen")
    table.rename(2, "kidney right")
    table.recolour(3, (0.1, 0.2, 0.3, 0.5))
    assert isinstance(table, LabelTable)
    return table


def _full_session(ct, seg):
    rng = np.random.default_rng(0)
    liver = SupportSet.from_partial_labels(ct.array, seg, 5, bounds=(-160.0, 240.0), slices=[10, 13, 16],
                                           source=ct.name, modality=ct.modality, label_name="liver")
    support = {5: liver.to_arrays(),
               1: {"images": rng.random((2, 16, 16), dtype=np.float32),
                   "labels": np.zeros((2, 16, 16), np.uint8)}}
    prompts = {"boxes": [{"label": 5, "axis": 0, "slice": 12, "box": [30, 40, 80, 90]}],
               "recist": [{"label": 1, "axis": 0, "slice": 15, "p0": [10.5, 20.0], "p1": [30.0, 44.25]}]}
    return Session.from_volume(ct, seg, label_table=_table(), prompts=prompts, window=(-160.0, 240.0),
                               support_sets=support, view={"axis": 0, "slice": 12}, extra={"tool": "box"})


def test_round_trip_real_labels(tmp_path, totalseg):
    ct, seg = totalseg
    s = _full_session(ct, seg)
    assert s.labels is not seg and np.array_equal(s.labels, seg)
    path = save_session(s, tmp_path)
    assert path == tmp_path / "example_ct_sm.medsamsession"
    assert sorted(p.name for p in path.iterdir()) == ["labels.npz", "session.json", "support_1.npz", "support_5.npz"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folders left

    back = load_session(path)
    assert back.labels.dtype == seg.dtype and np.array_equal(back.labels, seg)
    assert back.label_voxel_counts() == {int(v): int(c) for v, c in zip(*np.unique(seg, return_counts=True)) if v}
    assert back.label_voxel_counts()[5] > 1000  # liver
    from medsam_gui.core.labels import LabelTable

    assert LabelTable.from_dict(back.label_table) == _table()
    assert back.prompts == s.prompts and back.view == s.view and back.extra == s.extra
    assert back.window == (-160.0, 240.0)
    assert set(back.support_sets) == {1, 5}
    for v in (1, 5):
        assert set(back.support_sets[v]) == set(s.support_sets[v])
        for n, a in s.support_sets[v].items():
            assert back.support_sets[v][n].dtype == a.dtype and np.array_equal(back.support_sets[v][n], a)
    liver = SupportSet.from_arrays(back.support_sets[5], {"label_value": 5})
    assert liver.indices == (10, 13, 16) and liver.bounds == (-160.0, 240.0) and liver.label_value == 5
    assert all(item.mask.sum() > 100 for item in liver)  # the liver on each example
    assert back.scan == s.scan
    assert back.scan.fingerprint == ct.fingerprint() and back.scan.shape_zyx == ct.shape
    assert back.scan.path == str(ct.path)
    assert back.created == pytest.approx(s.created) and back.name == "example_ct_sm.nii.gz"


def test_snapshot_is_independent(totalseg):
    ct, seg = totalseg
    s = _full_session(ct, seg)
    snap = s.snapshot()
    s.labels[0, 0, 0] = 99
    s.prompts["boxes"].append({"label": 2})
    s.support_sets[5]["labels"][:] = 7
    assert snap.labels[0, 0, 0] == seg[0, 0, 0]
    assert len(snap.prompts["boxes"]) == 1
    assert snap.support_sets[5]["labels"].max() <= 1


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_overwrite_replaces_whole_folder(tmp_path, totalseg, monkeypatch, exchange):
    ct, seg = totalseg
    if not exchange:
        monkeypatch.setattr(session_mod, "_rename_exchange", lambda a, b: False)
    s = _full_session(ct, seg)
    target = tmp_path / "work.medsamsession"
    save_session(s, target)
    s2 = s.snapshot()
    s2.labels[:] = 0
    s2.labels[3, 4, 5] = 2
    s2.support_sets = {}
    save_session(s2, target)
    back = load_session(target)
    assert back.label_voxel_counts() == {2: 1}
    assert back.support_sets == {} and not (target / "support_5.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work.medsamsession"]
    with pytest.raises(ExportError, match="already exists"):
        save_session(s, target, overwrite=False)


def test_failed_save_keeps_previous_session(tmp_path, totalseg, monkeypatch):
    ct, seg = totalseg
    s = _full_session(ct, seg)
    target = save_session(s, tmp_path / "keep.medsamsession")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real = session_mod._write_file

    def full_on_support(path, data):
        if path.name.startswith("support_"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(session_mod, "_write_file", full_on_support)
    s2 = s.snapshot()
    s2.labels[:] = 0
    with pytest.raises(ExportError, match="disk is full") as info:
        save_session(s2, target)
    assert "not saved" in str(info.value)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.medsamsession"]


def test_refuses_foreign_folder_and_scan_target(tmp_path, totalseg):
    ct, seg = totalseg
    s = _full_session(ct, seg)
    foreign = tmp_path / "photos.medsamsession"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ExportError, match="not a medsam-gui session"):
        save_session(s, foreign)
    assert (foreign / "holiday.jpg").read_bytes() == b"x"
    dicom_like = tmp_path / "dicomdir"
    dicom_like.mkdir()
    s.scan = ScanRef(**{**s.scan.__dict__, "paths": (str(dicom_like),)})
    with pytest.raises(ExportError, match="scan itself"):
        save_session(s, dicom_like / "x.medsamsession")


def test_interrupted_swap_is_recovered(tmp_path, totalseg):
    ct, seg = totalseg
    target = save_session(_full_session(ct, seg), tmp_path / "a.medsamsession")
    os.rename(target, tmp_path / ".a.medsamsession.old-1234abcd")  # killed between the renames
    back = load_session(target)
    assert np.array_equal(back.labels, seg)


def _rewrite_json(folder, edit):
    doc = json.loads((folder / SESSION_JSON).read_text())
    edit(doc)
    (folder / SESSION_JSON).write_text(json.dumps(doc))


def _replace_npz(folder, name, arrays, allow_pickle=False):
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=allow_pickle, **arrays) if allow_pickle else np.savez(buf, **arrays)
    data = buf.getvalue()
    (folder / name).write_bytes(data)
    _rewrite_json(folder, lambda d: d["files"].__setitem__(name, {"size": len(data),
                                                                   "sha256": hashlib.sha256(data).hexdigest()}))


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def _corruptions(tmp_path):
    def truncate_labels(f):
        p = f / "labels.npz"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def flip_byte(f):
        p = f / "labels.npz"
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0xFF
        p.write_bytes(bytes(b))

    def pickled_labels(f):
        _Marker.path = str(tmp_path / "PWNED")
        arr = np.empty((1,), dtype=object)
        arr[0] = _Marker()
        _replace_npz(f, "labels.npz", {"labels": arr}, allow_pickle=True)

    def wrong_shape(f):
        _replace_npz(f, "labels.npz", {"labels": np.zeros((2, 3, 4), np.uint8)})

    def float_labels(f):
        seg = np.load(f / "labels.npz")["labels"]
        _replace_npz(f, "labels.npz", {"labels": seg.astype(np.float32)})

    def zip_not_npz(f):
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("labels.npy", b"not an npy")
        _replace_npz_bytes(f, "labels.npz", buf.getvalue())

    def _replace_npz_bytes(f, name, data):
        (f / name).write_bytes(data)
        _rewrite_json(f, lambda d: d["files"].__setitem__(name, {"size": len(data),
                                                                   "sha256": hashlib.sha256(data).hexdigest()}))

    return {
        "missing session.json": (lambda f: (f / SESSION_JSON).unlink(), "session.json is missing"),
        "invalid json": (lambda f: (f / SESSION_JSON).write_text('{"format": "medsam-gui-session", '), "not valid JSON"),
        "binary json": (lambda f: (f / SESSION_JSON).write_bytes(b"\xff\xfe\x00garbage"), "damaged"),
        "json is a list": (lambda f: (f / SESSION_JSON).write_text("[1, 2]"), "not a medsam-gui session"),
        "newer format": (lambda f: _rewrite_json(f, lambda d: d.update(format_version=99)), "newer medsam-gui"),
        "bad version": (lambda f: _rewrite_json(f, lambda d: d.update(format_version="1")), "invalid format version"),
        "missing labels.npz": (lambda f: (f / "labels.npz").unlink(), "labels.npz is missing"),
        "truncated labels.npz": (truncate_labels, "damaged or incomplete"),
        "flipped byte": (flip_byte, "damaged or incomplete"),
        "missing support": (lambda f: (f / "support_5.npz").unlink(), "support_5.npz is missing"),
        "pickled object labels": (pickled_labels, "damaged"),
        "label shape vs geometry": (wrong_shape, "inconsistent"),
        "scan shape edited": (lambda f: _rewrite_json(f, lambda d: d["scan"].update(shape_zyx=[1, 2, 3])), "inconsistent"),
        "float labels": (float_labels, "expected integers"),
        "zip but not npz": (zip_not_npz, "damaged"),
        "no fingerprint": (lambda f: _rewrite_json(f, lambda d: d["scan"].pop("fingerprint")), "fingerprint"),
        "nan spacing": (lambda f: (f / SESSION_JSON).write_text(
            (f / SESSION_JSON).read_text().replace('"spacing": [', '"spacing": [NaN, ', 1)), "malformed"),
        "support path traversal": (lambda f: _rewrite_json(
            f, lambda d: d["support_sets"]["5"].update(file="../../etc/passwd")), "no valid file"),
        "scan not a dict": (lambda f: _rewrite_json(f, lambda d: d.update(scan=[1])), "scan reference"),
        "prompts not a dict": (lambda f: _rewrite_json(f, lambda d: d.update(prompts="x")), "prompts is malformed"),
        "window wrong": (lambda f: _rewrite_json(f, lambda d: d.update(window=[1])), "window bounds"),
        "created wrong": (lambda f: _rewrite_json(f, lambda d: d.update(created={"a": 1})), "damaged"),
    }


def test_corrupt_sessions_raise_session_error(tmp_path, totalseg):
    ct, seg = totalseg
    good = save_session(_full_session(ct, seg), tmp_path / "good.medsamsession")
    cases = _corruptions(tmp_path)
    assert len(cases) >= 20
    failures = []
    for i, (name, (corrupt, phrase)) in enumerate(cases.items()):
        folder = tmp_path / f"case{i}.medsamsession"
        shutil.copytree(good, folder)
        corrupt(folder)
        try:
            load_session(folder)
        except SessionError as exc:
            if phrase not in str(exc) or str(folder.name) not in str(exc):
                failures.append(f"{name}: message {exc!s:.200}")
        except Exception as exc:  # noqa: BLE001 - this is what the test is about
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            failures.append(f"{name}: loaded without error")
    assert failures == []
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(SessionError, match="not a session folder"):
        load_session(tmp_path / "nothing.medsamsession")
    with pytest.raises(SessionError, match="not a session folder"):
        load_session(good / "labels.npz")
    assert np.array_equal(load_session(good).labels, seg)


@pytest.mark.parametrize("loader", LOADERS)
def test_relocate_same_scan_succeeds_other_scan_fails(tmp_path, totalseg, loader, data_dir):
    DATA_DIR = data_dir
    load = loader
    src = DATA_DIR / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"
    original = tmp_path / "orig" / "ct.nii.gz"
    original.parent.mkdir()
    shutil.copy(src, original)
    vol = load(original)
    seg = totalseg[1]
    s = Session.from_volume(vol, seg, window=(-160.0, 240.0))
    saved = save_session(s, tmp_path / "s.medsamsession")
    assert open_session_scan(load_session(saved), load).fingerprint() == vol.fingerprint()

    moved = tmp_path / "moved" / "renamed.nii.gz"
    moved.parent.mkdir()
    shutil.move(original, moved)
    restored = load_session(saved)
    with pytest.raises(ScanMissingError, match="Locate"):
        open_session_scan(restored, load)
    new_session, new_vol = relocate_scan(restored, moved, load)
    assert new_session.scan.path == str(moved.absolute())
    assert new_session.scan.fingerprint == restored.scan.fingerprint
    assert np.array_equal(new_session.labels, seg) and new_vol.shape == seg.shape
    assert restored.scan.path == str(original.absolute())  # the input is not mutated
    save_session(new_session, saved)
    assert load_session(saved).scan.path == str(moved.absolute())

    other = DATA_DIR / "itksnap_brain_mr" / "MRIcrop-orig.nii.gz"
    with pytest.raises(ScanChangedError, match="not the scan") as info:
        relocate_scan(restored, other, load)
    assert isinstance(info.value, SessionError) and "size" in str(info.value)
    # same grid, one voxel changed: still another scan
    img = sitk.ReadImage(str(moved))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] += 1
    edited = sitk.GetImageFromArray(arr)
    edited.CopyInformation(img)
    edited_path = tmp_path / "edited.nii.gz"
    sitk.WriteImage(edited, str(edited_path))
    with pytest.raises(ScanChangedError, match="voxel values differ"):
        relocate_scan(restored, edited_path, load)
    with pytest.raises(ScanMissingError):
        relocate_scan(restored, tmp_path / "nope.nii.gz", load)


def test_invalid_sessions_are_refused_before_writing(tmp_path, totalseg):
    ct, seg = totalseg
    s = _full_session(ct, seg)
    bad_shape = Session(scan=s.scan, labels=np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        save_session(bad_shape, tmp_path)
    bad_json = Session(scan=s.scan, prompts={"x": object()})
    with pytest.raises(TypeError):
        save_session(bad_json, tmp_path)
    bad_support = Session(scan=s.scan, support_sets={1: {"../evil": np.zeros(3)}})
    with pytest.raises(ValueError, match="identifier"):
        save_session(bad_support, tmp_path)
    assert list(tmp_path.iterdir()) == []
    # bool labels are stored as uint8, NaN window bounds are dropped
    b = Session(scan=s.scan, labels=seg > 0, window=(float("nan"), 1.0))
    back = load_session(save_session(b, tmp_path / "b.medsamsession"))
    assert back.labels.dtype == np.uint8 and back.labels.sum() == (seg > 0).sum() and back.window is None


def test_bytes_that_do_not_read_back_are_never_moved_into_place(tmp_path, totalseg, monkeypatch):
    ct, seg = totalseg
    target = save_session(_full_session(ct, seg), tmp_path / "v.medsamsession")
    before = (target / "labels.npz").read_bytes()
    real = session_mod._write_file

    def silently_corrupting(path, data):  # a failing disk that reports success
        if path.name == "labels.npz":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        real(path, data)

    monkeypatch.setattr(session_mod, "_write_file", silently_corrupting)
    s2 = _full_session(ct, seg)
    s2.labels[:] = 1
    with pytest.raises(ExportError, match="did not read back"):
        save_session(s2, target)
    assert (target / "labels.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.medsamsession"]
