"""Sessions: everything the user did on one scan, saved to and restored from one folder.

A session folder ``NAME.medsamsession/`` holds

- ``session.json``: format version, app version, timestamps, the scan reference (path(s),
  DICOM series uid, vector component, ``Volume.fingerprint()`` and geometry), the label
  table (``LabelTable.to_dict()`` form), prompts, window bounds, view state, and a manifest
  (size + SHA-256) of every other file in the folder;
- ``labels.npz``: the label map, (z, y, x) in the scan's array order, integer dtype (uint8 /
  uint16), a standard compressed ``.npz`` (deflate level 1); key ``labels`` holds only the
  bounding box of the labelled voxels, recorded in session.json with the full shape
  (:mod:`medsam_gui.core.session_labels`; format 1 held the full map and is still read);
- ``support_<label>.npz``: the support set of one label value, named numeric arrays; the
  UniverSeg panel stores :meth:`medsam_gui.core.support_set.SupportSet.to_arrays` (``images``
  float32 (S, 128, 128) in 0..1, ``labels`` uint8 0/1, ``indices``, ``axes``, ``label_values``,
  ``bounds``), read back with ``SupportSet.from_arrays``.

Nothing is pickled: every ``.npz`` is read with ``allow_pickle=False``.

Saving is atomic for the whole folder: everything is written into a hidden temporary sibling
folder, fsynced, verified by reading every file back (JSON equal, sizes and SHA-256 of the array
files equal to the bytes produced in memory), and only then renamed into place
(on Linux an existing session is swapped in one step with ``renameat2(RENAME_EXCHANGE)``;
elsewhere the old folder is renamed aside first and put back if the second rename fails).
An interrupted save therefore leaves the previous session intact.

Loading validates everything (format, manifest sizes and hashes, shapes against the scan's
geometry) and raises :class:`medsam_gui.errors.SessionError` with a clear message for any
missing, damaged or inconsistent part.

Public API::

    ScanRef.from_volume(volume, *, series_uid=None, component=None) -> ScanRef
    Session(scan, labels=None, label_table={}, prompts={}, window=None, support_sets={},
            view={}, name="", app_version=..., created=..., modified=..., extra={})
    Session.from_volume(volume, labels=None, *, copy=True, **fields) -> Session
    Session.snapshot() -> Session  (deep copy of arrays and plain data)
    save_session(session, folder, *, overwrite=True) -> Path
    load_session(folder) -> Session
    read_session_summary(folder) -> dict  (session.json only; cheap)
    open_session_scan(session, load_volume_fn) -> Volume
    relocate_scan(session, new_path, load_volume_fn) -> (Session, Volume)
"""

from __future__ import annotations

import copy as _copy
import ctypes
import ctypes.util
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .. import __version__
from ..errors import ExportError, MedsamGuiError, SessionError
from .atomic import describe_os_error, fsync_dir, to_json_text
from .session_labels import LABELS_FILE, decode_labels, encode_labels, label_counts

FORMAT_NAME = "medsam-gui-session"
FORMAT_VERSION = 2  # 2: labels.npz holds the labelled box only (session_labels)
SESSION_SUFFIX = ".medsamsession"
SESSION_JSON = "session.json"
_SUPPORT_RE = re.compile(r"^support_(\d+)\.npz$")
_ARRAY_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_JSON_BYTES = 64 * 1024 * 1024


class ScanMissingError(SessionError):
    """The session's scan is not at its recorded path (moved, renamed, drive not mounted)."""


class ScanChangedError(SessionError):
    """The file at the session's scan path (or the one chosen to relocate) is another scan."""


# ------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------
@dataclass
class ScanRef:
    """Which scan a session belongs to.

    ``paths``: the file (or DICOM folder) as opened, plus any further files, as absolute
    strings. ``shape_zyx`` is the array shape (z, y, x); ``spacing``/``origin`` are (x, y, z)
    mm, ``direction`` 9 floats row-major (SimpleITK convention). ``fingerprint`` is
    ``Volume.fingerprint()`` (voxels + geometry), used to recognise a moved scan.
    """

    paths: tuple[str, ...]
    fingerprint: str
    shape_zyx: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    series_uid: str | None = None
    component: int | None = None
    name: str = ""
    modality: str = "unknown"
    dtype: str = ""

    @property
    def path(self) -> str | None:
        """The main path (file or DICOM folder), or None."""
        return self.paths[0] if self.paths else None

    @classmethod
    def from_volume(cls, volume, *, series_uid: str | None = None, component: int | None = None,
                    paths: tuple[str, ...] | list[str] | None = None) -> "ScanRef":
        """Reference ``volume`` (a :class:`medsam_gui.core.volume.Volume`); computes its
        fingerprint (a hash over the voxels, cached in ``volume.meta``)."""
        meta = getattr(volume, "meta", {}) or {}
        if paths is None:
            paths = (str(Path(volume.path).absolute()),) if volume.path else ()
        if series_uid is None:
            series_uid = meta.get("series_uid") or None
        if component is None and meta.get("component") is not None:
            component = int(meta["component"])
        return cls(
            paths=tuple(str(p) for p in paths),
            fingerprint=volume.fingerprint(),
            shape_zyx=tuple(int(s) for s in volume.shape),
            spacing=tuple(float(s) for s in volume.spacing),
            origin=tuple(float(s) for s in volume.origin),
            direction=tuple(float(s) for s in volume.direction),
            series_uid=series_uid,
            component=component,
            name=volume.name or (Path(volume.path).name if volume.path else ""),
            modality=volume.modality,
            dtype=str(volume.array.dtype),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "paths": list(self.paths), "fingerprint": self.fingerprint,
            "shape_zyx": list(self.shape_zyx), "spacing": list(self.spacing),
            "origin": list(self.origin), "direction": list(self.direction),
            "series_uid": self.series_uid, "component": self.component,
            "name": self.name, "modality": self.modality, "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScanRef":
        """Validating constructor; SessionError on anything malformed."""
        if not isinstance(d, Mapping):
            raise SessionError("The session's scan reference is missing or malformed.")
        paths = d.get("paths", [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise SessionError("The session's scan paths are malformed.")
        fp = d.get("fingerprint")
        if not isinstance(fp, str) or not fp:
            raise SessionError("The session has no scan fingerprint, so its scan cannot be checked.")
        shape = _int_tuple(d.get("shape_zyx"), 3, "scan shape")
        if min(shape) < 1:
            raise SessionError(f"The session's scan shape {shape} is invalid.")
        spacing = _float_tuple(d.get("spacing"), 3, "scan spacing")
        if min(spacing) <= 0:
            raise SessionError(f"The session's scan spacing {spacing} is invalid.")
        comp = d.get("component")
        if comp is not None and (not isinstance(comp, int) or isinstance(comp, bool) or comp < 0):
            raise SessionError(f"The session's vector component {comp!r} is invalid.")
        uid = d.get("series_uid")
        if uid is not None and not isinstance(uid, str):
            raise SessionError("The session's DICOM series uid is malformed.")
        return cls(
            paths=tuple(paths), fingerprint=fp, shape_zyx=shape, spacing=spacing,
            origin=_float_tuple(d.get("origin"), 3, "scan origin"),
            direction=_float_tuple(d.get("direction"), 9, "scan direction"),
            series_uid=uid, component=comp, name=str(d.get("name", "")),
            modality=str(d.get("modality", "unknown")), dtype=str(d.get("dtype", "")),
        )

    def matches(self, volume) -> bool:
        """True when ``volume`` is this scan (same fingerprint: voxels and geometry)."""
        return volume.fingerprint() == self.fingerprint

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``load_volume`` (only those that are set)."""
        kw: dict[str, Any] = {}
        if self.series_uid is not None:
            kw["series_uid"] = self.series_uid
        if self.component is not None:
            kw["component"] = self.component
        return kw


def _int_tuple(v: Any, n: int, what: str) -> tuple[int, ...]:
    if (not isinstance(v, (list, tuple)) or len(v) != n
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
        raise SessionError(f"The session's {what} is malformed (expected {n} integers, got {v!r}).")
    return tuple(int(x) for x in v)


def _float_tuple(v: Any, n: int, what: str) -> tuple[float, ...]:
    if (not isinstance(v, (list, tuple)) or len(v) != n
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
        raise SessionError(f"The session's {what} is malformed (expected {n} numbers, got {v!r}).")
    return tuple(float(x) for x in v)


@dataclass(eq=False)
class Session:
    """Everything the user did on one scan.

    - ``labels``: label map, numpy integer array (z, y, x) on the scan's grid (uint8/uint16;
      bool is stored as uint8), or None when nothing was drawn yet.
    - ``label_table``: ``LabelTable.to_dict()`` form (a LabelTable is converted).
    - ``prompts``: JSON-ready dict, by convention ``{"boxes": [{"label", "axis", "slice",
      "box": [x0, y0, x1, y1]}...], "recist": [{"label", "axis", "slice", "p0": [x, y],
      "p1": [x, y]}...]}`` in slice pixel coordinates (x = column, y = row).
    - ``window``: display bounds (lo, hi) in scan units, or None.
    - ``support_sets``: {label value: {array name: numeric numpy array}}, e.g.
      ``SupportSet.to_arrays()`` (:mod:`medsam_gui.core.support_set`).
    - ``view``: JSON-ready dict, by convention ``{"axis": 0|1|2, "slice": int}``.
    - ``created`` / ``modified``: POSIX timestamps (s). ``extra``: JSON-ready, for the GUI.
    """

    scan: ScanRef
    labels: np.ndarray | None = None
    label_table: dict[str, Any] = field(default_factory=dict)
    prompts: dict[str, Any] = field(default_factory=dict)
    window: tuple[float, float] | None = None
    support_sets: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    view: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    app_version: str = __version__
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if hasattr(self.label_table, "to_dict"):
            self.label_table = self.label_table.to_dict()
        if self.window is not None:
            self.window = (float(self.window[0]), float(self.window[1]))
        if not self.name:
            self.name = self.scan.name or "session"

    @classmethod
    def from_volume(cls, volume, labels: np.ndarray | None = None, *, copy: bool = True,
                    series_uid: str | None = None, component: int | None = None, **fields) -> "Session":
        """A session for ``volume`` with ``labels`` (z, y, x), copied when ``copy``."""
        scan = ScanRef.from_volume(volume, series_uid=series_uid, component=component)
        if labels is not None and copy:
            labels = np.array(labels, copy=True)
        return cls(scan=scan, labels=labels, **fields)

    def snapshot(self) -> "Session":
        """An independent copy (arrays copied, plain data deep-copied), ``modified`` = now.
        Cheap enough for the GUI thread: a memcpy of the label map."""
        return replace(
            self,
            labels=None if self.labels is None else np.array(self.labels, copy=True),
            label_table=_copy.deepcopy(self.label_table),
            prompts=_copy.deepcopy(self.prompts),
            support_sets={int(k): {n: np.array(a, copy=True) for n, a in v.items()}
                          for k, v in self.support_sets.items()},
            view=_copy.deepcopy(self.view),
            extra=_copy.deepcopy(self.extra),
            modified=time.time(),
        )

    def label_voxel_counts(self) -> dict[int, int]:
        """{label value: voxel count} for values > 0 present in ``labels``."""
        return label_counts(self.labels)


# ------------------------------------------------------------------------------------------
# saving
# ------------------------------------------------------------------------------------------
def _safe_name(name: str) -> str:
    name = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", name).strip(" .")
    return (name or "session")[:120]


def session_folder_for(session: Session, folder: str | os.PathLike) -> Path:
    """Where ``save_session(session, folder)`` writes: ``folder`` itself when it ends with
    ``.medsamsession``, else ``folder/<session name>.medsamsession``."""
    folder = Path(folder)
    if folder.name.endswith(SESSION_SUFFIX):
        return folder
    stem = _safe_name(session.name)
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".dcm"):
        if stem.lower().endswith(ext) and len(stem) > len(ext):
            stem = stem[: -len(ext)]
            break
    return folder / f"{stem}{SESSION_SUFFIX}"


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of an ``.npz`` holding ``arrays`` (what ``np.savez_compressed`` writes, but
    deflate level 1: several times faster on label maps, which are mostly zeros)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _check_plain_array(arr: Any, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be a numeric array, got dtype {arr.dtype}")
    return arr


def _session_document(session: Session, labels_entry: dict[str, Any] | None,
                      files: dict[str, dict[str, Any]], support_meta: dict[str, Any]) -> dict[str, Any]:
    window = None
    if session.window is not None:
        lo, hi = (float(x) for x in session.window)
        if math.isfinite(lo) and math.isfinite(hi):
            window = [lo, hi]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "app_version": session.app_version,
        "name": session.name,
        "created": float(session.created),
        "modified": float(session.modified),
        "saved_at": time.time(),
        "scan": session.scan.to_dict(),
        "labels": labels_entry,
        "label_table": session.label_table,
        "prompts": session.prompts,
        "window": window,
        "view": session.view,
        "support_sets": support_meta,
        "extra": session.extra,
        "files": files,
    }


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


_RENAME_EXCHANGE = 2
_libc = None


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False when unsupported."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    AT_FDCWD = -100
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _swap_into_place(tmp_dir: Path, target: Path) -> None:
    if not target.exists():
        os.rename(tmp_dir, target)
        return
    if _rename_exchange(tmp_dir, target):
        shutil.rmtree(tmp_dir, ignore_errors=True)  # now holds the previous session
        return
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    os.rename(target, old)
    try:
        os.rename(tmp_dir, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _refuse_scan_target(session: Session, target: Path) -> None:
    t = target.absolute()
    for p in session.scan.paths:
        sp = Path(p).absolute()
        if t == sp or sp in t.parents and sp.is_dir():
            raise ExportError(f"Refusing to save the session at {target}: that is the scan itself "
                              f"({sp}) or inside its DICOM folder. Choose another folder.")


def save_session(session: Session, folder: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Save ``session`` atomically as one folder and return its path.

    ``folder``: the session folder itself when its name ends with ``.medsamsession``,
    otherwise the parent folder (the session becomes ``folder/<name>.medsamsession``).
    An existing session folder is replaced only when ``overwrite``; a non-session folder of
    that name is never replaced. The written folder is read back and checked (JSON equal,
    array files' bytes by size and SHA-256) before it is moved into place.

    Raises ExportError (disk full, read-only, refused target; the previous session, if any,
    is untouched) and ValueError for a malformed Session (a programming error).
    """
    target = session_folder_for(session, folder)
    _refuse_scan_target(session, target)
    crop = labels_entry = None
    if session.labels is not None:
        crop, labels_entry = encode_labels(session.labels, session.scan.shape_zyx)
    support: dict[int, dict[str, np.ndarray]] = {}
    for value, arrays in session.support_sets.items():
        v = int(value)
        if v < 1:
            raise ValueError(f"support set label value must be >= 1, got {value}")
        if not isinstance(arrays, Mapping) or not arrays:
            raise ValueError(f"support set of label {v} must be a non-empty dict of arrays")
        for name in arrays:
            if not isinstance(name, str) or not _ARRAY_NAME_RE.match(name):
                raise ValueError(f"support array name {name!r} is not a plain identifier")
        support[v] = {n: _check_plain_array(a, f"support set {v}/{n}") for n, a in arrays.items()}
    # Plain-data parts must be strict JSON (fails before anything is written).
    for what in ("label_table", "prompts", "view", "extra"):
        part = getattr(session, what)
        if not isinstance(part, dict):
            raise ValueError(f"Session.{what} must be a dict, got {type(part).__name__}")
        to_json_text(part, indent=None)

    if target.exists():
        if not target.is_dir():
            raise ExportError(f"Cannot save the session at {target}: a file with that name exists.")
        if not overwrite:
            raise ExportError(f"A session already exists at {target}. Choose another name or allow overwriting.")
        if any(target.iterdir()) and not (target / SESSION_JSON).exists():
            raise ExportError(f"Refusing to replace {target}: it is not a medsam-gui session folder.")

    parent = target.parent
    tmp_dir = parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    try:
        if not parent.is_dir():
            raise ExportError(f"Cannot save the session: the folder {parent} does not exist.")
        os.mkdir(tmp_dir)
        files: dict[str, dict[str, Any]] = {}

        def put(name: str, data: bytes) -> None:
            _write_file(tmp_dir / name, data)
            files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

        if crop is not None:
            put(LABELS_FILE, _npz_bytes({"labels": crop}))
        support_meta: dict[str, Any] = {}
        for v, arrays in sorted(support.items()):
            fname = f"support_{v}.npz"
            put(fname, _npz_bytes(arrays))
            support_meta[str(v)] = {"file": fname, "arrays": {
                n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()}}
        doc = _session_document(session, labels_entry, files, support_meta)
        _write_file(tmp_dir / SESSION_JSON, to_json_text(doc).encode("utf-8"))
        fsync_dir(tmp_dir)
        _verify_written(tmp_dir, doc)
        _swap_into_place(tmp_dir, target)
        fsync_dir(parent)
        return target
    except MedsamGuiError:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        failed = Path(exc.filename) if getattr(exc, "filename", None) else target
        msg = describe_os_error(exc, failed)
        raise ExportError(f"The session was not saved. {msg} Your work is still open in the app.") from exc
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _verify_written(tmp_dir: Path, doc: dict[str, Any]) -> None:
    """Read everything back from disk: session.json must parse to ``doc`` and every other
    file must have the size and SHA-256 of the bytes produced from the arrays."""
    try:
        back = _read_json_doc(tmp_dir)
        same = json.loads(to_json_text(doc)) == back
        for name, entry in doc["files"].items():
            data = (tmp_dir / name).read_bytes()
            if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                same = False
    except (SessionError, OSError) as exc:
        raise ExportError(f"The session did not read back correctly after writing ({exc}); nothing "
                          "was replaced. The disk may be full or failing.") from exc
    if not same:
        raise ExportError("The session did not read back identically after writing; nothing was "
                          "replaced. The disk may be failing.")


# ------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------
def _find_interrupted_swap(target: Path) -> Path | None:
    """A previous session left aside by a save that was killed between its two renames."""
    try:
        candidates = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    candidates = [c for c in candidates if (c / SESSION_JSON).is_file()]
    return candidates[-1] if candidates else None


def _read_json_doc(folder: Path) -> dict[str, Any]:
    path = folder / SESSION_JSON
    try:
        size = path.stat().st_size
        if size > _MAX_JSON_BYTES:
            raise SessionError(f"{path} is {size} bytes, far too large for a session description; "
                               "the session is damaged.")
        with open(path, "rb") as fh:
            doc = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise SessionError(f"{folder} is not a complete medsam-gui session: {SESSION_JSON} is missing.") from None
    except OSError as exc:
        raise SessionError(f"Could not read {path}: {exc.strerror or exc}.") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise SessionError(f"The session file {path} is damaged (not valid JSON: {exc}).") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise SessionError(f"{path} is not a medsam-gui session description.")
    ver = doc.get("format_version")
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise SessionError(f"{path} has an invalid format version {ver!r}; the session is damaged.")
    if ver > FORMAT_VERSION:
        raise SessionError(f"The session {folder} was saved by a newer medsam-gui "
                           f"({doc.get('app_version', '?')}, session format {ver}); this version reads "
                           f"format {FORMAT_VERSION}. Update medsam-gui to open it.")
    return doc


def read_session_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed, format-checked ``session.json`` of a session folder (no arrays read, no
    hashes checked): cheap, for listings. SessionError if missing or damaged."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SessionError(f"{folder} is not a session folder (it does not exist or is a file).")
    return _read_json_doc(folder)


def _read_npz(path: Path, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SessionError(f"The session is incomplete: {path.name} is missing from {path.parent}.") from None
    except OSError as exc:
        raise SessionError(f"Could not read {path}: {exc.strerror or exc}.") from exc
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise SessionError(f"The session file {path} is damaged or incomplete (its size or checksum "
                           "does not match what was saved).")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise SessionError(f"The session file {path} is damaged ({exc}).") from exc


def _expect_dict(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = doc.get(key, {})
    if v is None:
        v = {}
    if not isinstance(v, dict):
        raise SessionError(f"The session's {key} is malformed (expected an object).")
    return v


def load_session(folder: str | os.PathLike) -> Session:
    """Read and validate a session folder; SessionError with a clear message (naming the
    folder) when it is missing, from a newer version, incomplete, damaged, or inconsistent
    with its scan."""
    folder = Path(folder)
    try:
        return _load_session(folder)
    except SessionError as exc:
        if folder.name in str(exc):
            raise
        raise type(exc)(f"Cannot open the session {folder}: {exc}") from exc


def _load_session(folder: Path) -> Session:
    if not folder.exists() and folder.name.endswith(SESSION_SUFFIX):
        aside = _find_interrupted_swap(folder)
        if aside is not None:
            folder = aside
    if not folder.is_dir():
        raise SessionError(f"{folder} is not a session folder (it does not exist or is a file).")
    doc = _read_json_doc(folder)
    try:
        scan = ScanRef.from_dict(doc.get("scan"))
        files = doc.get("files", {})
        if not isinstance(files, dict):
            raise SessionError("The session's file list is malformed.")
        labels = None
        lab = doc.get("labels")
        if lab is not None:
            if not isinstance(lab, dict) or lab.get("file") != LABELS_FILE or LABELS_FILE not in files:
                raise SessionError("The session's label entry is malformed.")
            arrays = _read_npz(folder / LABELS_FILE, files[LABELS_FILE])
            labels = decode_labels(lab, arrays, scan.shape_zyx, doc["format_version"])
        support_sets: dict[int, dict[str, np.ndarray]] = {}
        sup = _expect_dict(doc, "support_sets")
        for key, entry in sup.items():
            if not str(key).isdigit() or int(key) < 1 or not isinstance(entry, dict):
                raise SessionError(f"The session's support set {key!r} is malformed.")
            fname = entry.get("file")
            if not isinstance(fname, str) or not _SUPPORT_RE.match(fname) or fname not in files:
                raise SessionError(f"The session's support set {key!r} names no valid file.")
            arrays = _read_npz(folder / fname, files[fname])
            declared = entry.get("arrays", {})
            if not isinstance(declared, dict) or set(declared) != set(arrays):
                raise SessionError(f"{folder / fname} does not hold the arrays the session lists.")
            for n, a in arrays.items():
                if a.dtype.kind not in "biuf" or list(a.shape) != declared[n].get("shape"):
                    raise SessionError(f"Support array {n} of label {key} has an unexpected shape or dtype.")
            support_sets[int(key)] = arrays
        window = doc.get("window")
        if window is not None:
            window = _float_tuple(window, 2, "window bounds")
        view = _expect_dict(doc, "view")
        return Session(
            scan=scan, labels=labels,
            label_table=_expect_dict(doc, "label_table"),
            prompts=_expect_dict(doc, "prompts"),
            window=window, support_sets=support_sets, view=view,
            name=str(doc.get("name") or scan.name or "session"),
            app_version=str(doc.get("app_version", "")),
            created=float(doc.get("created", 0.0)), modified=float(doc.get("modified", 0.0)),
            extra=_expect_dict(doc, "extra"),
        )
    except SessionError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise SessionError(f"The session {folder} is damaged ({type(exc).__name__}: {exc}).") from exc


# ------------------------------------------------------------------------------------------
# the scan
# ------------------------------------------------------------------------------------------
def _call_loader(load_volume_fn: Callable[..., Any], path: str, ref: ScanRef):
    return load_volume_fn(path, **ref.load_kwargs())


def _difference(ref: ScanRef, volume) -> str:
    if tuple(volume.shape) != ref.shape_zyx:
        return f"its size is {tuple(volume.shape)} (z, y, x) instead of {ref.shape_zyx}"
    if not np.allclose(volume.spacing, ref.spacing, atol=1e-4) or not np.allclose(volume.origin, ref.origin, atol=1e-3) \
            or not np.allclose(volume.direction, ref.direction, atol=1e-4):
        return "its voxel spacing, origin or orientation differ"
    return "its voxel values differ"


def open_session_scan(session: Session, load_volume_fn: Callable[..., Any]):
    """Load the session's scan from its recorded path and check it is the same scan.

    ``load_volume_fn(path, **kw)`` is ``medsam_gui.io.load_volume`` (kw: series_uid,
    component, passed only when recorded). Raises ScanMissingError (a SessionError) when the
    path no longer exists (offer "Locate scan..." and then :func:`relocate_scan`),
    ScanChangedError when a different scan is there now; read errors pass through.
    """
    path = session.scan.path
    if not path or not Path(path).exists():
        raise ScanMissingError(f"The scan of this session is not at {path or '(no path recorded)'} any "
                               "more. Locate the scan file (or DICOM folder) to continue.")
    volume = _call_loader(load_volume_fn, path, session.scan)
    if not session.scan.matches(volume):
        raise ScanChangedError(f"The scan at {path} is not the one this session was made on "
                               f"({_difference(session.scan, volume)}). Locate the original scan.")
    return volume


def relocate_scan(session: Session, new_path: str | os.PathLike, load_volume_fn: Callable[..., Any]):
    """Point ``session`` at its scan's new location after checking it is the same scan.

    Loads ``new_path`` with ``load_volume_fn`` (series uid / component as recorded), compares
    ``Volume.fingerprint()`` with the recorded one and returns ``(new_session, volume)``;
    ``new_session`` shares the arrays of ``session`` and has the new path. Raises
    ScanChangedError (a SessionError) naming what differs when it is another scan; errors
    from ``load_volume_fn`` (ScanReadError ...) pass through.
    """
    new_path = Path(new_path)
    if not new_path.exists():
        raise ScanMissingError(f"{new_path} does not exist.")
    volume = _call_loader(load_volume_fn, str(new_path), session.scan)
    if not session.scan.matches(volume):
        raise ScanChangedError(f"{new_path} is not the scan this session was made on "
                               f"({_difference(session.scan, volume)}). Choose the original scan.")
    new_paths = (str(new_path.absolute()),)
    new_scan = replace(session.scan, paths=new_paths)
    return replace(session, scan=new_scan), volume
