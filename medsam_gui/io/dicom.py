"""DICOM series in a folder: list them, read one as a volume (SimpleITK / GDCM).

Only the folder itself is scanned (not sub-folders). Series are told apart by their
SeriesInstanceUID; GDCM sorts each series' files by slice position.

Completeness and geometry checks (GDCM itself reads any of these without complaint, giving a
uniform grid whose spacing is the average, so slices land in the wrong place):

- a file that looks like DICOM (``DICM`` preamble, or a .dcm/.ima name) but that GDCM cannot
  parse is *damaged*; when its SeriesInstanceUID can still be found in its bytes and it is the
  series being opened, the series is refused (ScanReadError naming the file); when its series
  cannot be told, the volume opens with a notice;
- slice positions (ImagePositionPatient projected on the slice normal) must be evenly spaced:
  a step that differs from the median step by more than ``SPACING_TOLERANCE`` (1 %, i.e. more
  than rounding of the position values) is refused, naming the gap ("slices missing between
  z=... and z=...");
- two slices at one position (within ``DUPLICATE_TOLERANCE_MM``) are refused, unless their
  pixels are identical: then one copy is kept and a notice says so;
- slices with different orientations (ImageOrientationPatient) in one series are refused.

Multi-frame files (several slices in one file) are not position-checked.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MedsamGuiError, ScanReadError


@dataclass
class DicomSeriesInfo:
    """One DICOM series: ``uid`` (SeriesInstanceUID), ``description`` (SeriesDescription, may be
    empty), ``size_xyz`` (columns, rows, slices), ``n_slices`` (number of files; multi-frame files
    count their frames in size_xyz[2]), ``files`` (sorted paths), ``modality`` (DICOM Modality tag),
    ``damaged_files`` (files of this series GDCM could not read: truncated/damaged),
    ``unidentified_files`` (unreadable DICOM-like files in the folder whose series is unknown)."""

    uid: str
    description: str
    size_xyz: tuple[int, int, int]
    n_slices: int
    files: list[str] = field(default_factory=list)
    modality: str = ""
    # DICOM-like files of this series (by SeriesInstanceUID) that GDCM could not read
    damaged_files: list[str] = field(default_factory=list)
    # DICOM-like files in the same folder that could not be read and whose series is unknown
    unidentified_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        desc = self.description or "(no description)"
        x, y, z = self.size_xyz
        mod = f"{self.modality} " if self.modality else ""
        return f"{self.uid}  {mod}{desc}  {x}x{y}x{z}"


class MultipleSeriesError(MedsamGuiError):
    """The folder holds several DICOM series and none was chosen. ``.series``: list[DicomSeriesInfo]."""

    def __init__(self, folder: str | os.PathLike, series: list[DicomSeriesInfo]):
        self.folder = str(folder)
        self.series = list(series)
        lines = "\n".join(f"  - {s.summary()}" for s in self.series)
        super().__init__(
            f"The folder {self.folder} holds {len(self.series)} DICOM series; choose one "
            f"(e.g. --series UID):\n{lines}"
        )


def _short_reason(exc: BaseException) -> str:
    """A one-line reason from a SimpleITK/ITK exception, without the C++ file/line dump."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "sitk::ERROR:" in ln:
            return ln.split("sitk::ERROR:", 1)[1].strip()[:200]
    for ln in lines:
        if "ITK ERROR:" in ln:
            text = ln.split("ITK ERROR:", 1)[1].strip()
            if "): " in text[:60]:  # drop "ClassName(0x...): "
                text = text.split("): ", 1)[1]
            return text[:200]
    for ln in lines:
        if ln.startswith("[nrrd]") and ("expected" in ln or "got only" in ln):
            return ln.split(":", 1)[-1].strip()[:200]
    keep = [ln for ln in lines if not (ln.startswith("Exception thrown") or ".cxx" in ln or ln.startswith("/"))]
    return (keep[-1] if keep else (lines[-1] if lines else type(exc).__name__))[:200]


def _tag(reader, key: str) -> str:
    try:
        if reader.HasMetaDataKey(key):
            return reader.GetMetaData(key).strip()
    except RuntimeError:
        pass
    return ""


_DICOM_NAME_SUFFIXES = (".dcm", ".ima", ".dicom")
_DICOMDIR_SOP_CLASS = b"1.2.840.10008.1.3.10"
_UID_CHARS = set(b"0123456789.")
SPACING_TOLERANCE = 0.01  # relative deviation of a slice step from the median step (rounding)
DUPLICATE_TOLERANCE_MM = 0.01  # two slices closer than this along the slice axis share a position
ORIENTATION_TOLERANCE = 1e-3  # max difference of ImageOrientationPatient cosines within a series


@contextmanager
def _quiet_itk():
    """Silence ITK's stderr warnings (e.g. "No Series were found", "Non uniform sampling") for
    the duration; the checks here report such findings to the user themselves."""
    import SimpleITK as sitk

    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM Part 10 preamble (``DICM`` at byte 128) or a DICOM-style name; DICOMDIR excluded."""
    if path.name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in _DICOM_NAME_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _uid_in_bytes(data: bytes) -> str | None:
    """SeriesInstanceUID (0020,000E) found in raw little-endian DICOM bytes (explicit or implicit
    VR), without a full parse: for files GDCM refuses (truncated). None if not found."""
    tag = b"\x20\x00\x0e\x00"
    start = 0
    while True:
        i = data.find(tag, start)
        if i < 0:
            return None
        start = i + 1
        if data[i + 4:i + 6] == b"UI":
            n, value_at = int.from_bytes(data[i + 6:i + 8], "little"), i + 8
        else:
            n, value_at = int.from_bytes(data[i + 4:i + 8], "little"), i + 8
        if not 1 <= n <= 64:
            continue
        value = data[value_at:value_at + n].rstrip(b"\x00 ")
        if value and set(value) <= _UID_CHARS and b".." not in value:
            return value.decode("ascii")


def _unreadable_dicom_files(folder: Path, listed: set[str]) -> dict[str, str | None]:
    """{path: SeriesInstanceUID or None} of DICOM-like files in ``folder`` that GDCM did not
    list in any series and that SimpleITK cannot read either (truncated or damaged)."""
    import SimpleITK as sitk

    out: dict[str, str | None] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for path in entries:
        try:
            if not path.is_file() or str(path.resolve()) in listed or not _looks_like_dicom(path):
                continue
        except OSError:
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
            continue  # readable: GDCM left it out for another reason (not an image of a series)
        except RuntimeError:
            pass
        try:
            with open(path, "rb") as fh:
                data = fh.read(1 << 18)
        except OSError:
            data = b""
        if _DICOMDIR_SOP_CLASS in data[:1024]:
            continue
        out[str(path)] = _uid_in_bytes(data)
    return out


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """All DICOM series directly in ``folder`` (empty list if there are none).

    Each series also lists the files GDCM could not read: ``damaged_files`` (their
    SeriesInstanceUID is this series') and ``unidentified_files`` (series unknown).
    Raises ScanReadError when the folder does not exist or cannot be listed.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise ScanReadError(f"{folder} is not a folder (a DICOM series is opened by choosing its folder).")
    try:
        os.listdir(folder)
    except OSError as exc:
        raise ScanReadError(f"Cannot list the folder {folder}: {exc.strerror or exc}.") from None
    try:
        with _quiet_itk():
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise ScanReadError(f"Cannot scan {folder} for DICOM files: {_short_reason(exc)}.") from None
    out = []
    for uid in uids:
        with _quiet_itk():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if not files:
            continue
        description = modality = ""
        cols = rows = 0
        frames = 1
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        try:
            reader.ReadImageInformation()
            description = _tag(reader, "0008|103e")
            modality = _tag(reader, "0008|0060")
            size = reader.GetSize()
            cols, rows = int(size[0]), int(size[1])
            frames = int(size[2]) if len(size) > 2 else 1
        except RuntimeError:
            pass
        n_z = len(files) * frames if len(files) > 1 else frames
        out.append(DicomSeriesInfo(uid=uid, description=description, size_xyz=(cols, rows, n_z),
                                   n_slices=len(files), files=files, modality=modality))
    if out:
        listed = {str(Path(f).resolve()) for s in out for f in s.files}
        unreadable = _unreadable_dicom_files(folder, listed)
        unknown = [f for f, u in unreadable.items() if u is None]
        for s in out:
            s.damaged_files = [f for f, u in unreadable.items() if u == s.uid]
            s.unidentified_files = list(unknown)
    return out


def choose_series(folder: str | os.PathLike, series_uid: str | None) -> DicomSeriesInfo:
    """The series to open: the given UID, or the only one. Raises ScanReadError / MultipleSeriesError."""
    series = list_dicom_series(folder)
    if not series:
        subdirs = [p.name for p in Path(folder).iterdir() if p.is_dir()][:5] if Path(folder).is_dir() else []
        hint = f" It has sub-folders ({', '.join(subdirs)}); open the one holding the images." if subdirs else ""
        raise ScanReadError(f"No DICOM series found in the folder {folder}.{hint}")
    if series_uid is None:
        if len(series) > 1:
            raise MultipleSeriesError(folder, series)
        return series[0]
    for s in series:
        if s.uid == series_uid:
            return s
    listing = "\n".join(f"  - {s.summary()}" for s in series)
    raise ScanReadError(f"No DICOM series with UID {series_uid} in {folder}. Series there:\n{listing}")


def _names(files, limit: int = 5) -> str:
    names = [Path(f).name for f in files]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _floats(reader, i: int, key: str, n: int) -> np.ndarray | None:
    try:
        if not reader.HasMetaDataKey(i, key):
            return None
        vals = [float(v) for v in reader.GetMetaData(i, key).strip().split("\\")]
    except (RuntimeError, ValueError):
        return None
    arr = np.asarray(vals, dtype=float)
    return arr if arr.size == n and np.all(np.isfinite(arr)) else None


def _execute(files: list[str], info: DicomSeriesInfo):
    """ImageSeriesReader over ``files`` with per-slice tags kept; ITK's own "non uniform
    sampling" warning is silenced (the checks below say it clearly)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        with _quiet_itk():
            return reader, reader.Execute()
    except RuntimeError as exc:
        raise ScanReadError(
            f"Could not read the DICOM series {info.uid} ({len(files)} files): {_short_reason(exc)}. "
            "The files may be damaged or use an unsupported compression."
        ) from None


def _fmt_mm(v: float) -> str:
    return f"{v:.4g}"


def read_dicom_series(info: DicomSeriesInfo, notices: list[str] | None = None):
    """Read one series' files as a SimpleITK image (no size check here; the caller checks).

    Refuses (ScanReadError) a series with a damaged member file, slices with different
    orientations, a gap or uneven slice steps (> ``SPACING_TOLERANCE``), or two different
    slices at one position; drops identical duplicate slices. Human-readable notices (dropped
    duplicates, unreadable files of unknown series, slice positions missing) are appended to
    ``notices`` when given.
    """
    import SimpleITK as sitk

    notices = notices if notices is not None else []
    folder = Path(info.files[0]).parent if info.files else Path(".")
    if info.damaged_files:
        k = len(info.damaged_files)
        raise ScanReadError(
            f"The DICOM series {info.uid} in {folder} is incomplete: {_names(info.damaged_files)} "
            f"belong{'s' if k == 1 else ''} to it but cannot be read (truncated or damaged), so "
            f"{'its slice' if k == 1 else f'{k} slices'} would be missing. Copy the series again from its source."
        )
    if info.unidentified_files:
        notices.append(
            f"{len(info.unidentified_files)} file(s) in {folder} look like DICOM but cannot be read "
            f"(truncated or damaged?): {_names(info.unidentified_files)}. If they belong to this series, "
            "slices may be missing at its first or last end."
        )
    files = list(info.files)
    reader, img = _execute(files, info)
    n = len(files)
    if n < 2 or img.GetDimension() != 3 or img.GetSize()[2] != n:
        return img  # one file, or multi-frame files: no per-file positions to check
    ipps = [_floats(reader, i, "0020|0032", 3) for i in range(n)]
    iops = [_floats(reader, i, "0020|0037", 6) for i in range(n)]
    if any(p is None for p in ipps) or any(o is None for o in iops):
        missing = sum(p is None or o is None for p, o in zip(ipps, iops))
        notices.append(
            f"{missing} of {n} slices have no usable position/orientation (ImagePositionPatient/"
            "ImageOrientationPatient), so the slice order and spacing could not be checked; the "
            f"slice spacing {_fmt_mm(img.GetSpacing()[2])} mm is assumed."
        )
        return img
    iop = iops[0]
    worst = max(float(np.max(np.abs(o - iop))) for o in iops)
    if worst > ORIENTATION_TOLERANCE:
        raise ScanReadError(
            f"The DICOM series {info.uid} in {folder} mixes slices with different orientations "
            "(e.g. a 3-plane localizer), so it is not one volume. Open a series of parallel slices."
        )
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ScanReadError(f"The DICOM series {info.uid} in {folder} has an invalid slice orientation "
                            f"(ImageOrientationPatient {tuple(iop)}).")
    pos = np.asarray([float(np.dot(p, normal / norm)) for p in ipps])  # mm along the slice axis
    steps = np.diff(pos)
    steps = steps if float(np.median(steps)) >= 0 else -steps  # GDCM may sort high to low

    dup = [int(i) for i in np.flatnonzero(np.abs(steps) < DUPLICATE_TOLERANCE_MM)]
    if dup:
        arr = sitk.GetArrayViewFromImage(img)
        different = [i for i in dup if not np.array_equal(arr[i], arr[i + 1])]
        if different:
            i = different[0]
            more = f", and {len(different) - 1} more such pairs" if len(different) > 1 else ""
            raise ScanReadError(
                f"The DICOM series {info.uid} in {folder} has two different slices at the same position "
                f"z={_fmt_mm(pos[i])} mm ({Path(files[i]).name} and {Path(files[i + 1]).name}{more}): it "
                "mixes several acquisitions (e.g. repeated scans, echoes or time points), so no single "
                "volume fits. Put the files of one acquisition in a folder of their own and open that."
            )
        drop = {i + 1 for i in dup}
        keep = [f for j, f in enumerate(files) if j not in drop]
        notices.append(
            f"{len(drop)} duplicate slice file(s) ignored (same position and identical pixels as "
            f"another file): {_names([files[j] for j in sorted(drop)])}."
        )
        reduced = DicomSeriesInfo(uid=info.uid, description=info.description,
                                  size_xyz=(info.size_xyz[0], info.size_xyz[1], len(keep)),
                                  n_slices=len(keep), files=keep, modality=info.modality)
        return read_dicom_series(reduced, notices)

    nominal = float(np.median(steps))
    if nominal < DUPLICATE_TOLERANCE_MM or float(steps.min()) <= 0:
        raise ScanReadError(
            f"The DICOM series {info.uid} in {folder} cannot be opened as a regular volume: its slices "
            "do not follow one another along the slice axis (ImagePositionPatient goes back and forth). "
            "Copy or export the series again."
        )
    deviation = np.abs(steps - nominal) / nominal
    if float(deviation.max()) > SPACING_TOLERANCE:
        gaps = [i for i in range(len(steps)) if steps[i] > nominal * (1 + SPACING_TOLERANCE)
                and round(steps[i] / nominal) >= 2]
        if gaps and len(gaps) == int(np.count_nonzero(deviation > SPACING_TOLERANCE)):
            where = "; ".join(
                f"between z={_fmt_mm(pos[i])} mm and z={_fmt_mm(pos[i + 1])} mm "
                f"(about {round(steps[i] / nominal) - 1} slice{'s' if round(steps[i] / nominal) > 2 else ''})"
                for i in gaps[:3]) + (f"; and {len(gaps) - 3} more gaps" if len(gaps) > 3 else "")
            problem = (f"slices missing {where}: the series is incomplete (its other slices are "
                       f"{_fmt_mm(nominal)} mm apart)")
        else:
            problem = (f"its slice spacing is not uniform (steps from {_fmt_mm(float(steps.min()))} to "
                       f"{_fmt_mm(float(steps.max()))} mm, more than {SPACING_TOLERANCE:.0%} apart), so "
                       "no regular grid fits and slices would be misplaced")
        raise ScanReadError(
            f"The DICOM series {info.uid} in {folder} cannot be opened as a regular volume: {problem}. "
            "z is the position along the slice axis (ImagePositionPatient). Copy or export the complete "
            "series again."
        )
    return img
