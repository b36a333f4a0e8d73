"""Atomic writes: complete or untouched, with clear messages for full disks and read-only folders."""

from __future__ import annotations

import errno
import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.core import atomic
from medsam_gui.core.atomic import atomic_write, atomic_write_bytes, atomic_write_json
from medsam_gui.errors import ExportError


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(atomic.TEMP_PREFIX))


def test_bytes_new_and_replace_keep_mode(tmp_path):
    target = tmp_path / "a.bin"
    assert atomic_write_bytes(target, b"first") == target
    assert target.read_bytes() == b"first"
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _leftovers(tmp_path) == []


def test_temp_keeps_extension_for_extension_driven_writers(tmp_path, data_dir):
    src = sitk.ReadImage(str(data_dir / "msd_hippocampus" / "hippocampus_003_label.nii.gz"))
    seen = []

    def write(tmp):
        seen.append(tmp)
        sitk.WriteImage(src, str(tmp), True)

    def verify(tmp):
        back = sitk.ReadImage(str(tmp))
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src))

    target = tmp_path / "mask.nii.gz"
    atomic_write(target, write, verify=verify)
    assert seen[0].name.endswith(".mask.nii.gz") and seen[0].parent == tmp_path
    # a gzip stream, i.e. SimpleITK chose the format from the temp name's extension
    assert target.read_bytes()[:2] == b"\x1f\x8b"
    back = sitk.ReadImage(str(target))
    assert back.GetSize() == src.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src))
    assert _leftovers(tmp_path) == []


def test_disk_full_during_write_keeps_original(tmp_path, monkeypatch):
    target = tmp_path / "labels.bin"
    target.write_bytes(b"precious original")

    def full(fh, data):
        fh.write(data[:3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_write_all", full)
    with pytest.raises(ExportError) as info:
        atomic_write_bytes(target, b"new content that does not fit")
    msg = str(info.value)
    assert "disk is full" in msg and str(target) in msg
    assert target.read_bytes() == b"precious original"
    assert _leftovers(tmp_path) == []


def test_disk_full_raised_by_writer_callback(tmp_path):
    target = tmp_path / "x.nrrd"

    def writer(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ExportError, match="disk is full"):
        atomic_write(target, writer)
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def _chmod_is_effective(folder) -> bool:
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return True
    probe.unlink()
    return False  # root (or a capability) ignores the permission bits


def test_read_only_folder_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old.json").write_text('{"a": 1}')
    os.chmod(folder, 0o555)
    try:
        if not _chmod_is_effective(folder):
            pytest.skip("running with privileges that ignore folder permissions (root)")
        with pytest.raises(ExportError, match="read-only") as info:
            atomic_write_json(folder / "old.json", {"a": 2})
        assert str(folder / "old.json") in str(info.value)
        assert json.loads((folder / "old.json").read_text()) == {"a": 1}
        assert sorted(p.name for p in folder.iterdir()) == ["old.json"]
    finally:
        os.chmod(folder, 0o755)


@pytest.mark.parametrize("code, phrase", [(errno.EROFS, "read-only"), (errno.EACCES, "read-only for you"),
                                          (errno.ENOENT, "does not exist")])
def test_read_only_simulated_at_temp_creation(tmp_path, monkeypatch, code, phrase):
    target = tmp_path / "s.json"
    target.write_text("[1]")

    def refuse(path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(atomic, "_reserve_temp", refuse)
    with pytest.raises(ExportError, match=phrase):
        atomic_write_json(target, [2])
    assert target.read_text() == "[1]"


def test_replace_refused_removes_temp_and_keeps_original(tmp_path, monkeypatch):
    target = tmp_path / "t.bin"
    target.write_bytes(b"orig")
    real_replace = os.replace

    def refuse(src, dst, *a, **k):
        if os.fspath(dst) == os.fspath(target):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ExportError, match="read-only for you"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"orig"
    assert _leftovers(tmp_path) == []


def test_failed_verification_and_writer_errors(tmp_path):
    target = tmp_path / "v.bin"
    target.write_bytes(b"keep")

    def bad_verify(tmp):
        raise ValueError("mismatch")

    with pytest.raises(ExportError, match="did not read back"):
        atomic_write(target, lambda t: t.write_bytes(b"zzz"), verify=bad_verify)
    with pytest.raises(ExportError, match="ITK ERROR: cannot write"):
        atomic_write(target, lambda t: (_ for _ in ()).throw(RuntimeError("details\nITK ERROR: cannot write")))
    with pytest.raises(ExportError, match="no file"):
        atomic_write(target, lambda t: t.unlink())
    assert target.read_bytes() == b"keep"
    assert _leftovers(tmp_path) == []
    with pytest.raises(ExportError, match="folder with that name"):
        atomic_write_bytes(tmp_path, b"x")


def test_json_strict_and_numpy_values(tmp_path):
    target = tmp_path / "d.json"
    atomic_write_json(target, {"n": np.int64(3), "f": np.float32(0.5), "a": np.arange(3), "t": (1, 2)})
    assert json.loads(target.read_text()) == {"n": 3, "f": 0.5, "a": [0, 1, 2], "t": [1, 2]}
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": float("nan")})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text())["n"] == 3
    assert _leftovers(tmp_path) == []
