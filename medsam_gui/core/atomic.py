"""Atomic file writing: a file is either fully written or not touched at all.

Every writer here writes to a temporary file in the *same folder* as the target (so the
final ``os.replace`` is a rename on one file system, atomic on POSIX and Windows), flushes
and fsyncs it, optionally verifies it by reading it back, and only then replaces the target.
If anything fails (disk full, read-only folder, no permission, a writer error), the
temporary file is removed, the original file (if any) is left exactly as it was, and
:class:`medsam_gui.errors.ExportError` is raised with a message for the user that names the
path and the cause ("the disk is full", "the folder is read-only", ...).

The temporary file keeps the target's full name after a hidden prefix
(``.~<token>.<name>``), so writers that choose their format by extension (SimpleITK:
``.nii.gz``, ``.nrrd``) write the right format into it.

Public API::

    atomic_write(path, write_fn, *, verify=None) -> Path
    atomic_write_bytes(path, data, *, verify=True) -> Path
    atomic_write_json(path, obj, *, indent=2) -> Path
    describe_os_error(exc, path) -> str
    fsync_dir(folder) -> None
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from ..errors import ExportError, MedsamGuiError

TEMP_PREFIX = ".~"

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_READ_ONLY = {errno.EROFS}
_NO_PERMISSION = {errno.EACCES, errno.EPERM}


def describe_os_error(exc: BaseException, path: str | os.PathLike) -> str:
    """A user-facing sentence for an OSError that happened while writing ``path``."""
    path = Path(path)
    code = getattr(exc, "errno", None)
    if code in _DISK_FULL:
        return (f"Could not write {path}: the disk is full (or your disk quota is used up). "
                "Free some space or choose another folder, then save again.")
    if code in _READ_ONLY:
        return (f"Could not write {path}: the folder {path.parent} is read-only "
                "(read-only file system or medium). Choose another folder.")
    if code in _NO_PERMISSION:
        return (f"Could not write {path}: the folder {path.parent} is read-only for you "
                "(permission denied). Choose a folder you can write to.")
    if code == errno.ENOENT:
        return f"Could not write {path}: the folder {path.parent} does not exist."
    if code == errno.ENAMETOOLONG:
        return f"Could not write {path}: the file name or path is too long."
    if code == errno.EISDIR:
        return f"Could not write {path}: a folder with that name already exists."
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"Could not write {path}: {reason}."


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename) to disk where the OS supports it (POSIX)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    # Open for reading is enough for fsync on POSIX; Windows needs a writable handle.
    mode = os.O_RDONLY if os.name == "posix" else os.O_RDWR
    fd = os.open(os.fspath(path), mode | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path_for(path: Path) -> Path:
    return path.parent / f"{TEMP_PREFIX}{secrets.token_hex(4)}.{path.name}"


def _reserve_temp(path: Path) -> Path:
    """Create (exclusively) an empty temp file beside ``path``; mode 0666 minus umask."""
    for _ in range(20):
        tmp = _temp_path_for(path)
        try:
            fd = os.open(os.fspath(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise OSError(errno.EEXIST, "could not create a unique temporary file")


def _remove_quietly(path: Path | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def _copy_mode(src: Path, dst: Path) -> None:
    """Keep an existing target's permission bits on its replacement."""
    try:
        os.chmod(dst, os.stat(src).st_mode & 0o7777)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], Any], *,
                 verify: Callable[[Path], Any] | None = None) -> Path:
    """Write ``path`` atomically through ``write_fn(tmp_path)``.

    ``write_fn`` receives the temporary path (same folder, same extension as ``path``) and
    must write the complete file there (it may replace the empty placeholder file). After it
    returns, the file is fsynced; ``verify(tmp_path)``, if given, reads it back and raises (any
    exception) when it is wrong; then the temp file replaces ``path`` and the final size is
    checked. Returns ``path`` as a Path.

    Raises ExportError (clear message naming ``path``) on any OSError or writer RuntimeError
    (SimpleITK reports I/O failures as RuntimeError) and on a failed verification; a
    MedsamGuiError raised by ``write_fn`` passes through unchanged. In every failure case the
    temp file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(describe_os_error(OSError(errno.EISDIR, "is a directory"), path))
    tmp: Path | None = None
    try:
        tmp = _reserve_temp(path)
        write_fn(tmp)
        if not tmp.exists():
            raise ExportError(f"Could not write {path}: the writer produced no file.")
        _fsync_file(tmp)
        size = os.path.getsize(tmp)
        if verify is not None:
            try:
                verify(tmp)
            except MedsamGuiError:
                raise
            except Exception as exc:  # a read-back that fails means the data is not what we wrote
                raise ExportError(f"Could not write {path}: the written file did not read back "
                                  f"correctly ({exc}). Nothing was replaced; try again or choose "
                                  "another folder.") from exc
        if path.exists():
            _copy_mode(path, tmp)
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
        final_size = os.path.getsize(path)
        if final_size != size:
            raise ExportError(f"Could not write {path}: the file on disk has {final_size} bytes, "
                              f"expected {size}. The disk may be failing or full.")
        return path
    except MedsamGuiError:
        _remove_quietly(tmp)
        raise
    except OSError as exc:
        _remove_quietly(tmp)
        raise ExportError(describe_os_error(exc, path)) from exc
    except RuntimeError as exc:  # SimpleITK / ITK writer failures
        _remove_quietly(tmp)
        raise ExportError(f"Could not write {path}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _write_all(fh, data: bytes) -> None:
    """Write all of ``data`` to an open binary file (a seam that tests replace to simulate
    a full disk)."""
    view = memoryview(data)
    while view:
        n = fh.write(view)
        if n is None:  # pragma: no cover - raw streams only
            n = len(view)
        view = view[n:]
    fh.flush()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, verify: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; with ``verify`` the file is read back and
    compared (SHA-256) before it replaces ``path``. ExportError on failure (see atomic_write)."""
    data = bytes(data)
    digest = hashlib.sha256(data).digest()

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            _write_all(fh, data)
            os.fsync(fh.fileno())

    def _verify(tmp: Path) -> None:
        with open(tmp, "rb") as fh:
            back = fh.read()
        if len(back) != len(data) or hashlib.sha256(back).digest() != digest:
            raise ValueError(f"read back {len(back)} bytes that differ from the {len(data)} written")

    return atomic_write(path, _write, verify=_verify if verify else None)


def _json_default(obj: Any) -> Any:
    """JSON for numpy scalars/arrays, tuples of them and paths (the GUI's plain data)."""
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def to_json_text(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (no NaN/Infinity) of ``obj``; numpy scalars/arrays and paths allowed.
    ValueError/TypeError if ``obj`` cannot be represented."""
    return json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False, default=_json_default,
                      ensure_ascii=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as UTF-8 strict JSON atomically, verified by parsing it back.
    TypeError/ValueError (a programming error) if ``obj`` is not JSON-serialisable;
    ExportError for write failures."""
    text = to_json_text(obj, indent=indent)
    data = text.encode("utf-8")
    expected = json.loads(text)

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            _write_all(fh, data)
            os.fsync(fh.fileno())

    def _verify(tmp: Path) -> None:
        with open(tmp, "rb") as fh:
            back = json.loads(fh.read().decode("utf-8"))
        if back != expected:
            raise ValueError("the JSON read back differs from what was written")

    return atomic_write(path, _write, verify=_verify)
