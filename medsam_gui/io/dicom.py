"""DICOM series in a folder: list them, read one as a volume (SimpleITK / GDCM).

Only the folder itself is scanned (not sub-folders). Series are told apart by their
SeriesInstanceUID; GDCM sorts each series' files by slice position.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MedsamGuiError, ScanReadError


@dataclass
class DicomSeriesInfo:
    """One DICOM series: ``uid`` (SeriesInstanceUID), ``description`` (SeriesDescription, may be
    empty), ``size_xyz`` (columns, rows, slices), ``n_slices`` (number of files; multi-frame files
    count their frames in size_xyz[2]), ``files`` (sorted paths), ``modality`` (DICOM Modality tag)."""

    uid: str
    description: str
    size_xyz: tuple[int, int, int]
    n_slices: int
    files: list[str] = field(default_factory=list)
    modality: str = ""

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


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """All DICOM series directly in ``folder`` (empty list if there are none).

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
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise ScanReadError(f"Cannot scan {folder} for DICOM files: {_short_reason(exc)}.") from None
    out = []
    for uid in uids:
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


def read_dicom_series(info: DicomSeriesInfo):
    """Read one series' files as a SimpleITK image (no size check here; the caller checks)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(info.files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ScanReadError(
            f"Could not read the DICOM series {info.uid} ({len(info.files)} files): {_short_reason(exc)}. "
            "The files may be damaged or use an unsupported compression."
        ) from None
