"""Reading and writing label maps on a scan's exact grid.

``save_labels`` writes a (z, y, x) integer array with the scan's size, spacing, origin and
direction, voxel for voxel, as uint8 (max label <= 255) or uint16 (<= 65535). The write is
atomic through the project's one mechanism, :func:`medsam_gui.core.atomic.atomic_write`: a
temporary file with the same extension in the target folder, fsynced, its header read back and
checked, then ``os.replace``. Nothing partial is left behind on failure; OS errors become
ExportError messages from :func:`medsam_gui.core.atomic.describe_os_error`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_write
from ..core.labels import LabelTable
from ..core.volume import Volume
from ..errors import ExportError, GeometryMismatchError, ScanReadError
from .dicom import _short_reason
from .label_files import write_label_description
from .readers import file_suffix, load_volume, scan_stem

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_MAX_UINT16 = 65535


def _grid_text(shape_zyx, spacing, origin, direction) -> str:
    z, y, x = shape_zyx
    fmt = lambda v: "(" + ", ".join(f"{float(c):.6g}" for c in v) + ")"  # noqa: E731
    return f"size (x,y,z) ({x}, {y}, {z}), spacing {fmt(spacing)}, origin {fmt(origin)}, direction {fmt(direction)}"


def load_labels(path: str | os.PathLike, like: Volume) -> np.ndarray:
    """Read a label map that lies on ``like``'s grid; returns a (z, y, x) uint8/uint16/int32 array.

    Size must match exactly and spacing/origin/direction within 1e-4 (origin 1e-3 mm), else
    GeometryMismatchError naming both grids. Float data is accepted when every value is a whole
    number; negative or fractional values raise ScanReadError.
    """
    lab = load_volume(path)
    if not like.same_grid(lab, tol=1e-4):
        raise GeometryMismatchError(
            f"The label map {path} is not on the scan's grid, so it cannot be overlaid voxel for voxel.\n"
            f"  label map: {_grid_text(lab.shape, lab.spacing, lab.origin, lab.direction)}\n"
            f"  scan:      {_grid_text(like.shape, like.spacing, like.origin, like.direction)}\n"
            "Resample the label map onto this scan (e.g. in 3D Slicer or ITK-SNAP) or open the scan it was made on."
        )
    arr = lab.array
    if arr.size == 0:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if lab.meta.get("nonfinite_replaced") or not np.array_equal(arr, np.round(arr)):
            raise ScanReadError(f"{path} holds non-integer values, so it is not a label map.")
    mn, mx = float(arr.min()), float(arr.max())
    if mn < 0:
        raise ScanReadError(f"{path} holds negative values (min {mn:g}); label values must be 0 or more.")
    dtype = np.uint8 if mx <= 255 else np.uint16 if mx <= _MAX_UINT16 else np.int32
    return arr.astype(dtype, copy=False)


def label_description_path(path: str | os.PathLike) -> Path:
    """``/x/seg.nii.gz`` -> ``/x/seg.label``."""
    p = Path(path)
    return p.with_name(scan_stem(p) + ".label")


def _is_source(target: Path, like: Volume) -> str | None:
    """A reason string if writing ``target`` would overwrite (part of) the source scan."""
    resolved = target.resolve()
    sources = [Path(f) for f in like.meta.get("source_files", [])]
    if like.path:
        sources.append(Path(like.path).resolve())
    for src in sources:
        if resolved == src:
            return f"{target} is the scan itself"
        try:
            if target.exists() and src.exists() and os.path.samefile(target, src):
                return f"{target} is the scan itself (linked)"
        except OSError:
            pass
    folder = like.meta.get("source_folder")
    if folder is None and like.path and Path(like.path).is_dir():
        folder = str(Path(like.path).resolve())
    if folder is not None:
        f = Path(folder)
        if resolved == f or f in resolved.parents:
            return f"{target} is inside the scan's DICOM folder {f}"
    return None


def _label_array(array_zyx, like: Volume) -> np.ndarray:
    arr = np.asarray(array_zyx)
    if arr.shape != like.shape:
        raise ExportError(
            f"The label map has shape {arr.shape} (z,y,x) but the scan has {like.shape}; they must match."
        )
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ExportError("The label map holds non-integer values; labels must be whole numbers.")
    if arr.size == 0:
        return arr.astype(np.uint8)
    mn, mx = arr.min(), arr.max()
    if mn < 0:
        raise ExportError(f"The label map holds negative values (min {mn}); labels must be 0 to {_MAX_UINT16}.")
    if mx > _MAX_UINT16:
        raise ExportError(f"The label map holds label {mx}; the largest label that can be saved is {_MAX_UINT16}.")
    return arr.astype(np.uint8 if mx <= 255 else np.uint16)


def save_labels(array_zyx, like: Volume, path: str | os.PathLike, *, label_table: LabelTable | None = None,
                overwrite: bool = False) -> Path:
    """Save a (z, y, x) label array on ``like``'s grid; returns the written path.

    Formats by extension: .nii.gz, .nii, .nrrd, .mha. Stored as uint8 when the largest label is
    <= 255, else uint16. With ``label_table`` the ITK-SNAP description ``<stem>.label`` is written
    beside it. Raises ExportError: wrong shape / values, unsupported extension, the target is the
    source scan (or inside its DICOM folder), the target exists and ``overwrite`` is False, or the
    file system refuses (read-only, disk full); no partial or temporary file is left.
    """
    import SimpleITK as sitk

    target = Path(path).expanduser()
    suffix = file_suffix(target)
    if suffix not in LABEL_SUFFIXES:
        raise ExportError(
            f"Cannot save a label map as {target.name!r}: use a name ending in " + ", ".join(LABEL_SUFFIXES) + "."
        )
    target = target.parent.resolve() / target.name if target.parent.exists() else target
    reason = _is_source(target, like)
    if reason:
        raise ExportError(f"Refusing to overwrite the source scan: {reason}. Choose another file name.")
    if target.is_dir():
        raise ExportError(f"{target} is a folder; give a file name such as labels.nii.gz.")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists. Choose another name or allow overwriting.")
    if not target.parent.is_dir():
        raise ExportError(f"The folder {target.parent} does not exist.")
    arr = _label_array(array_zyx, like)

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in like.spacing))
    img.SetOrigin(tuple(float(o) for o in like.origin))
    try:
        img.SetDirection(tuple(float(d) for d in like.direction))
    except RuntimeError as exc:
        raise ExportError(f"The scan's direction matrix cannot be stored ({_short_reason(exc)}).") from None

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(img, str(tmp), useCompression=(suffix != ".nii"))
        except RuntimeError as exc:
            raise ExportError(
                f"Could not write {target}: {_short_reason(exc)}. The disk may be full or the folder read-only."
            ) from None

    atomic_write(target, write, verify=lambda tmp: _verify_written(str(tmp), arr, like, target))
    if label_table is not None:
        write_label_description(label_description_path(target), label_table)
    return target


def _verify_written(tmp: str, arr: np.ndarray, like: Volume, target: Path) -> None:
    """Read the written file's header back; its grid and pixel type must be the intended ones."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(tmp)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ExportError(f"The written file {target} could not be read back ({_short_reason(exc)}); "
                          "the disk may be full.") from None
    size = tuple(reader.GetSize())
    want_type = sitk.sitkUInt8 if arr.dtype == np.uint8 else sitk.sitkUInt16
    ok = (
        size == like.size_xyz
        and reader.GetPixelID() == want_type
        and like.same_grid(shape_zyx=size[::-1], spacing=reader.GetSpacing(), origin=reader.GetOrigin(),
                           direction=reader.GetDirection(), tol=1e-4)
    )
    if not ok:
        raise ExportError(
            f"The file written for {target} does not hold the scan's exact grid "
            f"({_grid_text(size[::-1], reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())}); "
            "this format cannot store this scan's geometry. Try .nrrd."
        )
    try:
        if os.path.getsize(tmp) == 0:
            raise ExportError(f"The file written for {target} is empty; the disk may be full.")
    except OSError as exc:
        raise ExportError(f"Could not check the written file {target}: {exc.strerror or exc}.") from None

