"""Reading scans into :class:`~medsam_gui.core.volume.Volume` objects.

Formats: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and other files
SimpleITK reads; a DICOM series from a folder; FreeSurfer .mgz/.mgh through nibabel (its RAS
affine converted to ITK's LPS spacing/origin/direction). Geometry is exactly SimpleITK's.

Shapes: the array is (z, y, x); a 2D image becomes one slice (z = 1); a 4D image or a
vector-pixel image needs ``component=`` (else :class:`MultiComponentError`).
Float voxels that are NaN/Inf are replaced with the smallest finite value
(count in ``volume.meta["nonfinite_replaced"]``).

Non-fatal findings are told, never hidden: ``volume.meta["notices"]`` is a list of
human-readable strings (NaN/Inf replaced, 2D image opened as one slice, oblique or sheared
direction, component chosen, DICOM duplicates dropped, ...) that the GUI shows. Truncated files
and DICOM series that fit no regular grid are refused (ScanReadError), never opened wrong.

Modality guess (:func:`guess_modality`): the DICOM Modality tag when it says CT or MR;
otherwise CT when the data are integers with a minimum between -3100 and -900 (air/padding
in Hounsfield units), else MR. The user can change it.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..core.orientation import DisplayOrientation
from ..core.volume import Volume
from ..errors import MedsamGuiError, ScanReadError
from .dicom import _short_reason, choose_series, read_dicom_series

MAX_VOXELS = 2**31  # refuse bigger volumes (voxels x components) before reading pixel data

# extension -> (ImageIO forced for it, format name). Forcing the ImageIO makes a renamed file of
# another format fail instead of silently opening as something else.
_SITK_FORMATS = {
    ".nii.gz": ("NiftiImageIO", "NIfTI"),
    ".nii": ("NiftiImageIO", "NIfTI"),
    ".nrrd": ("NrrdImageIO", "NRRD"),
    ".nhdr": ("NrrdImageIO", "NRRD"),
    ".mha": ("MetaImageIO", "MetaImage"),
    ".mhd": ("MetaImageIO", "MetaImage"),
}
_MGH_SUFFIXES = (".mgz", ".mgh")
SUPPORTED_TEXT = ("NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd), FreeSurfer (.mgz), "
                  "or a folder holding a DICOM series")


class MultiComponentError(MedsamGuiError):
    """The scan has several components (4D time points/channels or vector pixels) and none was
    chosen. ``.n_components``: how many; pass ``component=0..n-1``."""

    def __init__(self, path: str | os.PathLike, n_components: int, kind: str = "components"):
        self.path = str(path)
        self.n_components = int(n_components)
        self.kind = kind
        super().__init__(
            f"{self.path} holds {self.n_components} {kind} (a 4D or multi-channel image); choose which "
            f"one to open (component 0 to {self.n_components - 1})."
        )


def file_suffix(path: str | os.PathLike) -> str:
    """Lower-case extension, with the compound ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def scan_stem(path: str | os.PathLike) -> str:
    """File name without its extension (``ct.nii.gz`` -> ``ct``)."""
    name = Path(path).name
    suf = file_suffix(path)
    return name[: len(name) - len(suf)] if suf else name


def _check_size(path, size, n_comp: int = 1) -> None:
    total = int(np.prod([int(s) for s in size], dtype=np.float64)) * int(max(n_comp, 1))
    if total > MAX_VOXELS:
        dims = " x ".join(str(int(s)) for s in size)
        raise ScanReadError(
            f"{path} declares a {dims} image ({total:,} voxels{' x components' if n_comp > 1 else ''}), "
            f"more than this app can open ({MAX_VOXELS:,}). Crop or downsample it first, or check that "
            "the file's header is not damaged."
        )


# --- NIfTI completeness (ITK reads a truncated NIfTI without complaint, padding with garbage) ---

_NIFTI1_HDR, _NIFTI2_HDR = 348, 540


def _nifti_layout(head: bytes) -> tuple[int, int] | None:
    """(voxel data offset, voxel data bytes) from the first bytes of a single-file NIfTI-1/-2
    (``n+1`` / ``n+2``); None when ``head`` is not such a header (ITK then judges the file).

    Parsed here rather than with nibabel: nibabel's loaded header reports a data offset of 0
    for ``.nii`` files, which under-counts the expected size by the 352-byte header.
    """
    import struct

    if len(head) < _NIFTI1_HDR:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack_from(endian + "i", head, 0)[0]
        if sizeof_hdr == _NIFTI1_HDR:
            dims = struct.unpack_from(endian + "8h", head, 40)
            bitpix = struct.unpack_from(endian + "h", head, 72)[0]
            offset = int(struct.unpack_from(endian + "f", head, 108)[0])
            hdr_size = _NIFTI1_HDR
            break
        if sizeof_hdr == _NIFTI2_HDR and len(head) >= _NIFTI2_HDR:
            bitpix = struct.unpack_from(endian + "h", head, 14)[0]
            dims = struct.unpack_from(endian + "8q", head, 16)
            offset = int(struct.unpack_from(endian + "q", head, 168)[0])
            hdr_size = _NIFTI2_HDR
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8:
        return None
    n = 1
    for d in dims[1:ndim + 1]:
        n *= max(int(d), 1)
    # niftilib reads a single file's data from max(vox_offset, header size)
    return max(offset, hdr_size), n * (int(bitpix) // 8)


def _check_nifti_complete(path: Path) -> None:
    """ScanReadError when a .nii / .nii.gz holds fewer voxel bytes than its header declares.

    A .nii is judged by its file size; a .nii.gz by its gzip trailer (ISIZE) when that agrees,
    else by decompressing (streamed) until the declared size is reached.
    """
    import gzip

    gz = file_suffix(path) == ".nii.gz"
    try:
        if gz:
            with gzip.open(path, "rb") as fh:
                head = fh.read(_NIFTI2_HDR)
        else:
            with open(path, "rb") as fh:
                head = fh.read(_NIFTI2_HDR)
    except (OSError, EOFError, zlib.error):
        return  # not a readable gzip/NIfTI start: ITK's own error says so
    layout = _nifti_layout(head)
    if layout is None:
        return
    offset, n_data = layout
    expected = offset + n_data
    if not gz:
        got = path.stat().st_size
    else:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() >= 4:
                fh.seek(-4, os.SEEK_END)
                isize = int.from_bytes(fh.read(4), "little")
                if isize == expected % 2**32:
                    return  # the gzip trailer says it holds exactly header + data
            fh.seek(0)
            got = _gzip_payload_length(fh, expected)
    if got < expected:
        raise ScanReadError(
            f"Cannot open {path}: the file is truncated: expected {n_data:,} bytes of voxel data, "
            f"found {max(got - offset, 0):,} (an interrupted copy or download?). "
            "Copy or export the file again."
        )


def _gzip_payload_length(fh, expected: int) -> int:
    """Decompressed length of a (possibly multi-member) gzip stream, counted up to ``expected``
    (stops there); a stream that ends early or is corrupt returns what came out before that."""
    got = 0
    dec = zlib.decompressobj(wbits=31)
    while got < expected:
        chunk = fh.read(1 << 20)
        if not chunk:
            return got
        try:
            got += len(dec.decompress(chunk))
            while dec.eof and got < expected:
                rest = dec.unused_data
                dec = zlib.decompressobj(wbits=31)
                if not rest:
                    break
                got += len(dec.decompress(rest))
        except zlib.error:
            return got
    return got


# --- SimpleITK images -> arrays + geometry -----------------------------------------------------

def _read_sitk_file(path: Path, component: int | None):
    import SimpleITK as sitk

    suffix = file_suffix(path)
    forced = _SITK_FORMATS.get(suffix)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if forced:
        reader.SetImageIO(forced[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        if forced:
            raise ScanReadError(
                f"{path} is named like a {forced[1]} file but is not a valid one (damaged, truncated, "
                f"or a file of another format renamed): {_short_reason(exc)}."
            ) from None
        raise ScanReadError(
            f"{path} is not a scan this app can read, or it is damaged. Supported: {SUPPORTED_TEXT}. "
            f"({_short_reason(exc)})"
        ) from None
    size = reader.GetSize()
    n_comp = reader.GetNumberOfComponents()
    _check_size(path, size, n_comp)
    if len(size) > 4 or len(size) < 2:
        raise ScanReadError(f"{path} is a {len(size)}D image; only 2D, 3D and 4D images can be opened.")
    _check_components(path, size, n_comp, component)
    d = np.asarray(reader.GetDirection(), dtype=float)
    k = int(round(np.sqrt(d.size)))
    if k * k == d.size and abs(np.linalg.det(d.reshape(k, k))) < 1e-12:
        raise ScanReadError(
            f"{path} has a degenerate (singular) direction matrix {tuple(d.round(4))}: two image axes point "
            "the same way, so its voxels have no valid position. The header is damaged; fix it and try again."
        )
    if forced and forced[1] == "NIfTI":
        _check_nifti_complete(path)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ScanReadError(
            f"Could not read the image data of {path}: the file is truncated or damaged "
            f"({_short_reason(exc)})."
        ) from None
    fmt = forced[1] if forced else (reader.GetImageIO() or "image")
    return img, fmt


def _check_components(path, size, n_comp: int, component: int | None) -> int:
    """How many volumes/channels there are (1 for a plain scan); raises when several and
    ``component`` is None (MultiComponentError) or out of range (ScanReadError)."""
    n4 = int(size[3]) if len(size) == 4 else 1
    if n4 > 1 and n_comp > 1:
        raise ScanReadError(f"{path} is a 4D image with {n_comp}-component pixels; this is not supported.")
    n = max(n4, n_comp)
    if n > 1:
        kind = "volumes (4th dimension)" if n4 > 1 else "channels per voxel"
        if component is None:
            raise MultiComponentError(path, n, kind)
        if not 0 <= int(component) < n:
            raise ScanReadError(f"{path} has {n} {kind}; component must be 0 to {n - 1}, got {component}.")
    return n


def _sitk_to_parts(img, component: int | None):
    """SimpleITK image (2D/3D/4D, scalar or vector) -> (array zyx, spacing, origin, direction9)."""
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() > 1:
        img = sitk.VectorIndexSelectionCast(img, int(component or 0))
    dim = img.GetDimension()
    if dim == 4:
        size = list(img.GetSize())
        t = int(component or 0) if size[3] > 1 else 0
        img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, t])
        dim = 3
    arr = sitk.GetArrayFromImage(img)
    if dim == 2:
        arr = arr[np.newaxis]
        sx, sy = img.GetSpacing()
        ox, oy = img.GetOrigin()
        d = img.GetDirection()
        return arr, (sx, sy, 1.0), (ox, oy, 0.0), (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
    return arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def _read_mgh(path: Path, component: int | None, facts: dict[str, Any]):
    """FreeSurfer .mgz/.mgh with nibabel -> (array zyx, spacing, origin, direction9) in ITK LPS terms.
    Records ``n_components`` / ``component_kind`` / ``two_d`` in ``facts`` (for notices)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad files
        raise ScanReadError(f"{path} is not a valid FreeSurfer MGH/MGZ file, or it is damaged ({exc}).") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 4:
        raise ScanReadError(f"{path} is a {len(shape)}D image; only 3D and 4D images can be opened.")
    _check_size(path, shape)
    if len(shape) == 4:
        facts["n_components"] = _check_components(path, shape, 1, component)
        facts["component_kind"] = "volumes (4th dimension)"
    facts["two_d"] = len(shape) < 3
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ScanReadError(f"Could not read the image data of {path}: the file is truncated or damaged ({exc}).") from None
    if data.ndim == 4:
        data = data[..., int(component or 0)]
    while data.ndim < 3:
        data = data[..., np.newaxis]
    arr = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))  # (i, j, k) -> (z, y, x)
    spacing, origin, direction = ras_affine_to_lps_geometry(img.affine)
    return arr, spacing, origin, direction


def ras_affine_to_lps_geometry(affine) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """A 4x4 voxel->RAS affine (nibabel) -> ITK (spacing xyz, origin xyz LPS, direction9 row-major)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    safe = np.where(spacing > 0, spacing, 1.0)
    direction = m / safe
    spacing = np.where(spacing > 0, spacing, 1.0)
    return tuple(spacing.tolist()), tuple(lps[:3, 3].tolist()), tuple(direction.ravel().tolist())


def lps_geometry_to_ras_affine(spacing, origin, direction) -> np.ndarray:
    """ITK geometry (spacing xyz, origin xyz LPS, direction9) -> 4x4 voxel (i,j,k) -> RAS affine."""
    m = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing, dtype=float)[np.newaxis, :]
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


# --- modality, non-finite values ------------------------------------------------------------

def guess_modality(array: np.ndarray, dicom_modality: str | None = None) -> str:
    """"CT" or "MR": DICOM tag first, else CT when integer data has min in [-3100, -900] (HU air)."""
    tag = (dicom_modality or "").strip().upper()
    if tag == "CT":
        return "CT"
    if tag in ("MR", "MRI"):
        return "MR"
    a = np.asarray(array)
    if a.size and np.issubdtype(a.dtype, np.integer):
        mn = int(a.min())
        if -3100 <= mn <= -900:
            return "CT"
    return "MR"


def _replace_nonfinite(arr: np.ndarray) -> tuple[int, float]:
    """In place: NaN/Inf -> the finite minimum (0 if there is none).
    Returns (how many were replaced, the value they got)."""
    if not np.issubdtype(arr.dtype, np.floating):
        return 0, 0.0
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    value = 0.0
    if n:
        finite = arr[~bad]
        value = float(finite.min()) if finite.size else 0.0
        arr[bad] = value
    return n, value


def _component_facts(img) -> tuple[int, str]:
    """(number of volumes/channels, their kind) of a SimpleITK image before selection."""
    if img.GetDimension() == 4 and img.GetSize()[3] > 1:
        return int(img.GetSize()[3]), "volumes (4th dimension)"
    return int(img.GetNumberOfComponentsPerPixel()), "channels per voxel"


def _geometry_notices(direction) -> list[str]:
    """Notices for a sheared (non-orthogonal) or oblique direction matrix; [] when axis aligned."""
    from ..core.orientation import ORTHO_TOL, is_oblique

    m = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.allclose(m.T @ m, np.eye(3), atol=ORTHO_TOL):
        return ["The scan's axes are not perpendicular to each other (a sheared, non-orthogonal direction "
                "matrix). It is shown on its own voxel grid without re-slicing, so the views are distorted "
                "and the orientation labels are approximate; measurements use the stored geometry."]
    if is_oblique(direction):
        return ["The scan is oblique: its axes are tilted against the patient's axes. It is shown on its own "
                "voxel grid (not re-sliced), so the orientation labels (R/L, A/P, S/I) give only the nearest "
                "directions."]
    return []


def _source_files(path: Path) -> list[str]:
    """The files a scan consists of (a .mhd/.nhdr header also names its data file)."""
    files = [str(path.resolve())]
    if file_suffix(path) in (".mhd", ".nhdr"):
        key = "elementdatafile" if file_suffix(path) == ".mhd" else "data file"
        try:
            with open(path, encoding="latin-1") as fh:
                for line in fh:
                    k, sep, v = line.partition("=" if key == "elementdatafile" else ":")
                    if sep and k.strip().lower() == key:
                        v = v.strip()
                        if v and v.upper() != "LOCAL" and " " not in v:
                            files.append(str((path.parent / v).resolve()))
                        break
        except OSError:
            pass
    return files


# --- public -----------------------------------------------------------------------------------

_DICOM_SUFFIXES = (".dcm", ".ima")


def _series_of_file(path: Path):
    """The DICOM series (in the file's folder) that contains ``path``; None if it is in none."""
    from .dicom import list_dicom_series

    target = path.resolve()
    for info in list_dicom_series(path.parent):
        if any(Path(f).resolve() == target for f in info.files):
            return info
    return None


def load_volume(path: str | os.PathLike, *, series_uid: str | None = None,
                component: int | None = None) -> Volume:
    """Read a scan file or DICOM folder.

    Returns a Volume: ``array`` (z, y, x, dtype as stored), geometry as SimpleITK reads it
    (spacing/origin x,y,z mm LPS, direction 9 floats row-major). ``series_uid`` picks a DICOM
    series (needed when the folder has several: else MultipleSeriesError); ``component`` picks
    a 4D volume / pixel channel (needed when there are several: else MultiComponentError).
    Raises ScanReadError for missing, unreadable, truncated, damaged or too large inputs, and
    for DICOM series that are incomplete or fit no regular grid (see :mod:`.dicom`).

    ``volume.meta["notices"]`` (list of str, possibly empty) tells the user about everything
    non-fatal that was done or found: NaN/Inf replaced, a 2D image opened as one slice, an
    oblique or sheared direction, the component chosen from several, duplicate DICOM slices
    dropped, unreadable files beside a DICOM series. The GUI shows them. Other meta keys:
    ``format``, ``source_files``, ``nonfinite_replaced`` (int), ``component`` (when given),
    ``series_uid`` / ``series_description`` / ``dicom_modality`` / ``source_folder`` (DICOM).
    """
    if path is None or str(path).strip() == "":
        raise ScanReadError("No scan path given.")
    p = Path(path).expanduser()
    if not p.exists():
        raise ScanReadError(f"The scan {p} does not exist. Check the path.")
    if not os.access(p, os.R_OK):
        raise ScanReadError(f"You do not have permission to read {p}.")
    meta: dict[str, Any] = {}
    notices: list[str] = []
    facts: dict[str, Any] = {}
    dicom_modality = None
    dicom_info = None
    if p.is_dir():
        dicom_info = choose_series(p, series_uid)
    elif file_suffix(p) in _DICOM_SUFFIXES:
        dicom_info = _series_of_file(p)  # one file of a series: open the whole series
    if dicom_info is not None:
        info = dicom_info
        p = Path(info.files[0]).parent if not p.is_dir() else p
        _check_size(p, info.size_xyz)
        img = read_dicom_series(info, notices)
        _check_size(p, img.GetSize(), img.GetNumberOfComponentsPerPixel())
        _check_components(p, img.GetSize(), img.GetNumberOfComponentsPerPixel(), component)
        facts["n_components"], facts["component_kind"] = _component_facts(img)
        facts["two_d"] = img.GetDimension() == 2
        arr, spacing, origin, direction = _sitk_to_parts(img, component)
        dicom_modality = info.modality
        meta.update(format="DICOM", series_uid=info.uid, series_description=info.description,
                    dicom_modality=info.modality, source_files=[str(Path(f).resolve()) for f in info.files],
                    source_folder=str(p.resolve()))
        name = info.description or p.resolve().name
    elif file_suffix(p) in _MGH_SUFFIXES:
        arr, spacing, origin, direction = _read_mgh(p, component, facts)
        meta.update(format="MGH", source_files=_source_files(p))
        name = scan_stem(p)
    else:
        if p.stat().st_size == 0:
            raise ScanReadError(f"The file {p} is empty (0 bytes).")
        img, fmt = _read_sitk_file(p, component)
        facts["n_components"], facts["component_kind"] = _component_facts(img)
        facts["two_d"] = img.GetDimension() == 2
        arr, spacing, origin, direction = _sitk_to_parts(img, component)
        meta.update(format=fmt, source_files=_source_files(p))
        name = scan_stem(p)
    if component is not None:
        meta["component"] = int(component)
    n_comp = int(facts.get("n_components", 1))
    if n_comp > 1:
        kind = facts.get("component_kind", "components")
        word = "volume" if kind.startswith("volume") else "channel"
        notices.append(f"This image holds {n_comp} {kind}; {word} {int(component or 0)} (counting from 0) "
                       "was opened.")
    if facts.get("two_d"):
        notices.append("This is a 2D image: it was opened as a single slice (slice thickness taken as 1 mm "
                       "for volumes and measurements).")
    n_bad, value = _replace_nonfinite(arr)
    meta["nonfinite_replaced"] = n_bad
    if n_bad:
        notices.append(f"{n_bad:,} voxel{'s were' if n_bad > 1 else ' was'} not a number (NaN) or infinite; "
                       f"{'they were' if n_bad > 1 else 'it was'} set to the smallest finite value ({value:g}).")
    notices.extend(_geometry_notices(direction))
    meta["notices"] = notices
    modality = guess_modality(arr, dicom_modality)
    return Volume(array=arr, spacing=tuple(spacing), origin=tuple(origin), direction=tuple(direction),
                  path=str(p), modality=modality, name=name, meta=meta)


def volume_info(volume: Volume) -> dict[str, Any]:
    """JSON-ready summary (what ``medsam-gui info --json`` prints).

    Keys: path, name, format, size_xyz, shape_zyx, spacing (x,y,z mm), origin (x,y,z mm, LPS),
    direction (9 floats row-major), dtype, min, max, modality, orientation (e.g. "LPS"),
    oblique, nonfinite_replaced, notices (list of str, see :func:`load_volume`), and for DICOM
    series_uid / series_description.
    """
    arr = volume.array
    orient = DisplayOrientation.from_direction(volume.direction, volume.shape)
    if arr.size:
        mn, mx = arr.min(), arr.max()
        mn = int(mn) if np.issubdtype(arr.dtype, np.integer) else float(mn)
        mx = int(mx) if np.issubdtype(arr.dtype, np.integer) else float(mx)
    else:
        mn = mx = None
    info: dict[str, Any] = {
        "path": volume.path,
        "name": volume.name,
        "format": volume.meta.get("format"),
        "size_xyz": list(volume.size_xyz),
        "shape_zyx": list(volume.shape),
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": list(volume.direction),
        "dtype": str(arr.dtype),
        "min": mn,
        "max": mx,
        "modality": volume.modality,
        "orientation": orient.code,
        "oblique": bool(orient.oblique),
        "nonfinite_replaced": int(volume.meta.get("nonfinite_replaced", 0)),
        "notices": [str(n) for n in volume.meta.get("notices", [])],
    }
    for key in ("series_uid", "series_description", "component"):
        if key in volume.meta:
            info[key] = volume.meta[key]
    return info
