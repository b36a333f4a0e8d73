"""Generators of malformed inputs (scans and model checkpoints), shared by tests.

``SCAN_CASES`` / ``CHECKPOINT_CASES`` are static lists (their names are usable for pytest
parametrisation at collection time); ``build_scan_corpus(folder)`` and
``build_checkpoint_corpus(folder)`` write the files into ``folder`` and return
``{name: built case}``. Each case carries its expected outcome:

- scans: ``expect`` is ``"open"`` (``load_volume(path, **kwargs)`` must return a valid Volume;
  ``notice`` names what must be visible on it: ``"2d"`` one slice, ``"nonfinite"`` NaN/Inf
  replaced and counted in ``meta["nonfinite_replaced"]``, ``"oblique"`` an oblique direction),
  ``"error"`` (must raise a MedsamGuiError, of class ``error`` when given), ``"either"``
  (a valid Volume or a MedsamGuiError are both acceptable), or ``"error_or_notice"`` (a
  MedsamGuiError, or a valid Volume whose ``meta["notices"]`` is a non-empty list of strings:
  the user must be told, never handed silently wrong geometry);
- checkpoints: every case must raise CheckpointError from the loaders named in ``targets``
  (``"medsam"``, ``"universeg"``).

Payloads that would run code when unpickled create the file ``MARKER_NAME`` in the corpus
folder; tests assert that it never appears. Real data: the truncations start from real scans
in tests/data. Everything is small (the corpus is about 3 MB and builds in about a second).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MARKER_NAME = "CODE_WAS_EXECUTED"
HUGE = 100000


# ------------------------------------------------------------------------------------------
# case records
# ------------------------------------------------------------------------------------------
@dataclass
class ScanCase:
    name: str
    build: Callable[[Path], Path]
    expect: str  # "open" | "error" | "either"
    why: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    notice: str | None = None
    error: str | None = None  # class name of the MedsamGuiError expected


@dataclass
class BuiltScan:
    case: ScanCase
    path: Path

    @property
    def name(self) -> str:
        return self.case.name


@dataclass
class CheckpointCase:
    name: str
    build: Callable[[Path], Path]
    why: str
    targets: tuple[str, ...] = ("medsam", "universeg")


@dataclass
class BuiltCheckpoint:
    case: CheckpointCase
    path: Path

    @property
    def name(self) -> str:
        return self.case.name


class CodeMarker:
    """Unpickling this calls ``open(path, "w")``: it creates the marker file (code execution)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _sitk():
    import SimpleITK as sitk

    return sitk


def _hippo_image():
    return _sitk().ReadImage(str(DATA_DIR / "msd_hippocampus" / "hippocampus_003_image.nii.gz"))


def _small_image(shape_zyx=(6, 10, 12), dtype=np.int16, seed=0):
    sitk = _sitk()
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1000, size=shape_zyx).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-10.0, 20.0, 5.0))
    return img


def _write(folder: Path, name: str, img, compress: bool = False) -> Path:
    path = folder / name
    _sitk().WriteImage(img, str(path), compress)
    return path


def _cut(src: Path, dst: Path, keep: int | float) -> Path:
    data = src.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    dst.write_bytes(data[:n])
    return dst


def _bytes(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _random(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _png_bytes() -> bytes:
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    w = h = 8
    raw = b"".join(b"\x00" + bytes(range(w)) for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _jpeg_bytes() -> bytes:
    # JPEG start-of-image, a JFIF APP0 segment and junk: what a renamed photo starts like
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + _random(2000, 7) + b"\xff\xd9"


def _nrrd(folder: Path, name: str, *, sizes, directions=None, ntype="short", data: bytes | None = None,
          encoding="raw", extra: str = "") -> Path:
    dim = len(sizes)
    lines = ["NRRD0004", f"type: {ntype}", f"dimension: {dim}"]
    if directions is not None:
        lines.append("space: left-posterior-superior")
        lines.append("space directions: " + " ".join("(" + ",".join(repr(float(c)) for c in v) + ")"
                                                      for v in directions))
        lines.append("space origin: (0,0,0)")
    lines += [f"sizes: {' '.join(str(s) for s in sizes)}", "kinds: " + " ".join(["domain"] * dim),
              "endian: little", f"encoding: {encoding}"]
    if extra:
        lines.append(extra)
    header = ("\n".join(lines) + "\n\n").encode("ascii")
    if data is None:
        n = int(np.prod([int(s) for s in sizes]))
        data = np.arange(n, dtype=np.int16).tobytes()
    path = folder / name
    path.write_bytes(header + data)
    return path


def _nifti_huge(folder: Path, name: str, version: int) -> Path:
    import nibabel as nib

    if version == 1:
        hdr = nib.Nifti1Header()
        hdr.set_data_shape((32767, 32767, 32767))  # NIfTI-1 dims are int16: the largest it can declare
    else:
        hdr = nib.Nifti2Header()
        hdr.set_data_shape((HUGE, HUGE, HUGE))
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((1.0, 1.0, 1.0))
    buf = io.BytesIO()
    hdr.write_to(buf)
    offset = int(hdr["vox_offset"])
    raw = buf.getvalue().ljust(offset, b"\x00") + b"\x01\x00" * 64
    data = gzip.compress(raw) if name.endswith(".gz") else raw
    return _bytes(folder, name, data)


def _mha_text(folder: Path, name: str, header: dict[str, str], data: bytes = b"") -> Path:
    text = "".join(f"{k} = {v}\n" for k, v in header.items())
    return _bytes(folder, name, text.encode("ascii") + data)


def _dicom_series(folder: Path, *, uid: str, z_positions, size=(12, 10), prefix="img", seed=0,
                  study="1.2.826.0.1.3680043.8.498.1", description="hostile") -> Path:
    """Write one small CT series (one .dcm per slice) with SimpleITK, tags set explicitly."""
    sitk = _sitk()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, z in enumerate(z_positions):
        arr = rng.integers(-1000, 1000, size=(size[1], size[0])).astype(np.int16)
        sl = sitk.GetImageFromArray(arr)
        sl.SetSpacing((0.7, 0.7))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{i + 1}",
            "0008|0060": "CT",
            "0008|103e": description,
            "0020|000d": study,
            "0020|000e": uid,
            "0020|0013": str(i + 1),
            "0020|0032": f"0\\0\\{float(z)}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.7\\0.7",
            "0018|0050": "2.5",
        }
        for k, v in tags.items():
            sl.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"{prefix}{i:03d}.dcm"))
        writer.Execute(sl)
    return folder


# ------------------------------------------------------------------------------------------
# scan builders
# ------------------------------------------------------------------------------------------
def _real(folder: Path, ext: str) -> Path:
    """The real hippocampus MR as ``ext`` (".nrrd.gz": gzip-encoded NRRD), written once."""
    compress = ext == ".nrrd.gz"
    path = folder / ("_real_hippo_gz.nrrd" if compress else "_real_hippo" + ext)
    if not path.exists():
        _sitk().WriteImage(_hippo_image(), str(path), compress)
    return path


def _truncated(ext: str, keep, tag: str, src_ext: str | None = None) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        src = _real(folder, src_ext or ext)
        out_ext = ".nrrd" if ext == ".nrrd.gz" else ext
        return _cut(src, folder / f"trunc_{tag}{out_ext}", keep)
    return build


def _truncated_mhd_raw(keep) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        sub = folder / f"mhd_raw_cut_{keep}"
        sub.mkdir()
        _write(sub, "scan.mhd", _hippo_image())
        raw = sub / "scan.raw"
        _cut(raw, raw, keep)
        return sub / "scan.mhd"
    return build


def _truncated_mhd_header(folder: Path) -> Path:
    sub = folder / "mhd_header_cut"
    sub.mkdir()
    path = _write(sub, "scan.mhd", _hippo_image())
    text = path.read_text()
    path.write_text(text[: len(text) // 3])
    return path


def _random_file(ext: str, n: int, seed: int) -> Callable[[Path], Path]:
    return lambda folder: _bytes(folder, f"random_{seed}{ext}", _random(n, seed))


def _gzip_random(folder: Path) -> Path:
    return _bytes(folder, "gzip_of_random.nii.gz", gzip.compress(_random(5000, 11)))


def _renamed_nifti_as_nrrd(folder: Path) -> Path:
    src = _real(folder, ".nii.gz")
    return _bytes(folder, "nifti_named.nrrd", src.read_bytes())


def _renamed_nrrd_as_mha(folder: Path) -> Path:
    src = _real(folder, ".nrrd")
    return _bytes(folder, "nrrd_named.mha", src.read_bytes())


def _pickle_as_nifti(folder: Path) -> Path:
    payload = pickle.dumps(CodeMarker(str(folder / MARKER_NAME)), protocol=2)
    return _bytes(folder, "pickle_named.nii.gz", payload)


def _npy_as_nii(folder: Path) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 4, 4), np.int16))
    return _bytes(folder, "numpy_named.nii", buf.getvalue())


def _empty(ext: str) -> Callable[[Path], Path]:
    return lambda folder: _bytes(folder, f"empty{ext}", b"")


def _nonfinite_array() -> np.ndarray:
    arr = np.linspace(-100, 300, 6 * 10 * 12, dtype=np.float32).reshape(6, 10, 12)
    arr[0, 0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    arr[3, 5, 5] = np.nan
    return arr


def _nonfinite(ext: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        return _write(folder, f"nan_inf{ext}", _sitk().GetImageFromArray(_nonfinite_array()))
    return build


def _nonfinite_nibabel(folder: Path) -> Path:
    import nibabel as nib

    path = folder / "nan_inf_nibabel.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(_nonfinite_array(), (2, 1, 0)), np.eye(4)), str(path))
    return path


def _all_nan(folder: Path) -> Path:
    sitk = _sitk()
    return _write(folder, "all_nan.nrrd", sitk.GetImageFromArray(np.full((3, 4, 5), np.nan, np.float32)))


def _image_2d(ext: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        sitk = _sitk()
        arr = _sitk().GetArrayFromImage(_hippo_image())[17]
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.5, 0.6))
        return _write(folder, f"slice_2d{ext}", img)
    return build


def _image_4d(folder: Path) -> Path:
    sitk = _sitk()
    vols = [_small_image(seed=s) for s in range(3)]
    return _write(folder, "four_d.nii.gz", sitk.JoinSeries(vols))


def _vector(ext: str, dim: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        sitk = _sitk()
        shape = (6, 10, 12) if dim == 3 else (10, 12)
        chans = [sitk.GetImageFromArray(np.full(shape, c * 10, np.uint8)) for c in range(3)]
        return _write(folder, f"rgb_{dim}d{ext}", sitk.Compose(chans))
    return build


def _oblique(folder: Path) -> Path:
    img = _small_image()
    a = np.deg2rad(30)
    img.SetDirection((np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0))
    return _write(folder, "oblique_30deg.nrrd", img)


def _single_voxel(folder: Path) -> Path:
    return _write(folder, "one_voxel.nii", _sitk().GetImageFromArray(np.ones((1, 1, 1), np.int16)))


# ------------------------------------------------------------------------------------------
# DICOM builders
# ------------------------------------------------------------------------------------------
def _dicom_good(folder: Path) -> Path:
    return _dicom_series(folder / "dicom_good", uid="1.2.826.0.1.3680043.8.498.10", z_positions=[0, 2.5, 5, 7.5])


def _dicom_mixed(folder: Path) -> Path:
    d = folder / "dicom_mixed"
    _dicom_series(d, uid="1.2.826.0.1.3680043.8.498.21", z_positions=[0, 2.5, 5], prefix="a", seed=1,
                  description="series A")
    _dicom_series(d, uid="1.2.826.0.1.3680043.8.498.22", z_positions=[0, 2.5, 5, 7.5], prefix="b", seed=2,
                  description="series B", size=(8, 8))
    return d


def _dicom_missing_slices(folder: Path) -> Path:
    return _dicom_series(folder / "dicom_gap", uid="1.2.826.0.1.3680043.8.498.30",
                         z_positions=[0, 2.5, 5, 12.5, 15])


def _dicom_duplicate_positions(folder: Path) -> Path:
    return _dicom_series(folder / "dicom_dup_pos", uid="1.2.826.0.1.3680043.8.498.35",
                         z_positions=[0, 2.5, 2.5, 5])


def _dicom_inconsistent_size(folder: Path) -> Path:
    d = _dicom_series(folder / "dicom_sizes", uid="1.2.826.0.1.3680043.8.498.40", z_positions=[0, 2.5, 5])
    _dicom_series(d, uid="1.2.826.0.1.3680043.8.498.40", z_positions=[7.5], prefix="odd", size=(20, 20), seed=9)
    return d


def _dicom_truncated_member(folder: Path) -> Path:
    d = _dicom_series(folder / "dicom_trunc_member", uid="1.2.826.0.1.3680043.8.498.50",
                      z_positions=[0, 2.5, 5, 7.5])
    victim = sorted(d.glob("*.dcm"))[2]
    _cut(victim, victim, 0.6)
    return d


def _dicom_single_truncated_file(folder: Path) -> Path:
    d = _dicom_series(folder / "dicom_one_trunc", uid="1.2.826.0.1.3680043.8.498.60", z_positions=[0])
    f = sorted(d.glob("*.dcm"))[0]
    _cut(f, f, 0.5)
    return f


def _empty_folder(folder: Path) -> Path:
    d = folder / "empty_folder"
    d.mkdir()
    return d


def _folder_of_text(folder: Path) -> Path:
    d = folder / "not_dicom_folder"
    d.mkdir()
    (d / "readme.txt").write_text("no images here\n")
    (d / "IM0001").write_bytes(_random(600, 3))
    return d


def _nested_dicom(folder: Path) -> Path:
    d = folder / "nested_outer"
    _dicom_series(d / "inner", uid="1.2.826.0.1.3680043.8.498.70", z_positions=[0, 2.5])
    return d


def _dir_named_nifti(folder: Path) -> Path:
    d = folder / "folder.nii.gz"
    d.mkdir()
    return d


SCAN_CASES: list[ScanCase] = [
    # truncated real scans (MR hippocampus from tests/data), several cut points per format
    *[ScanCase(f"truncated {ext} at {keep}", _truncated(ext, keep, f"{ext.strip('.').replace('.', '_')}_{i}"),
               "error", "file cut short (interrupted copy/download)", error="ScanReadError")
      for ext in (".nii.gz", ".nii", ".nrrd", ".mha")
      for i, keep in enumerate((20, 200, 0.5, -7 if ext != ".nii.gz" else -40))],
    ScanCase("nii.gz without gzip trailer", _truncated(".nii.gz", -7, "gz_trailer"), "either",
             "only the gzip CRC/size trailer is missing; every voxel is still there"),
    ScanCase("truncated .nrrd(gzip) at 0.5", _truncated(".nrrd.gz", 0.5, "nrrdgz_half"), "error",
             "gzip-encoded NRRD cut in half", error="ScanReadError"),
    ScanCase("truncated .nrrd(gzip) at -7", _truncated(".nrrd.gz", -7, "nrrdgz_tail"), "error",
             "gzip-encoded NRRD missing its last bytes", error="ScanReadError"),
    ScanCase("truncated .mhd raw at 0.5", _truncated_mhd_raw(0.5), "error", ".raw beside the .mhd is short",
             error="ScanReadError"),
    ScanCase("truncated .mhd raw at 0", _truncated_mhd_raw(0), "error", ".raw beside the .mhd is empty",
             error="ScanReadError"),
    ScanCase("truncated .mhd header", _truncated_mhd_header, "error", ".mhd header cut short", error="ScanReadError"),
    # random bytes with medical extensions
    *[ScanCase(f"random bytes {ext}", _random_file(ext, n, seed), "error", "noise named like a scan",
               error="ScanReadError")
      for seed, (ext, n) in enumerate([(".nii.gz", 4000), (".nii", 4000), (".nrrd", 4000), (".mha", 4000),
                                       (".mhd", 500), (".mgz", 4000), (".dcm", 4000), (".nhdr", 300)])],
    ScanCase("gzip of random .nii.gz", _gzip_random, "error", "valid gzip stream, no NIfTI inside",
             error="ScanReadError"),
    # wrong extension
    ScanCase("png named .nii.gz", lambda f: _bytes(f, "photo.nii.gz", _png_bytes()), "error", "a PNG renamed",
             error="ScanReadError"),
    ScanCase("jpeg named .nii", lambda f: _bytes(f, "photo.nii", _jpeg_bytes()), "error", "a JPEG renamed",
             error="ScanReadError"),
    ScanCase("text named .nrrd", lambda f: _bytes(f, "notes.nrrd", b"patient notes\n" * 50), "error",
             "a text file renamed", error="ScanReadError"),
    ScanCase("html named .nii.gz", lambda f: _bytes(f, "download.nii.gz", b"<html><body>404</body></html>"),
             "error", "an error page saved instead of the download", error="ScanReadError"),
    ScanCase("nifti named .nrrd", _renamed_nifti_as_nrrd, "error", "a real NIfTI with a NRRD extension",
             error="ScanReadError"),
    ScanCase("nrrd named .mha", _renamed_nrrd_as_mha, "error", "a real NRRD with a MetaImage extension",
             error="ScanReadError"),
    ScanCase("pickle named .nii.gz", _pickle_as_nifti, "error", "a code-carrying pickle renamed: must not run",
             error="ScanReadError"),
    ScanCase("npy named .nii", _npy_as_nii, "error", "a numpy .npy renamed", error="ScanReadError"),
    # zero size
    *[ScanCase(f"zero-size {ext}", _empty(ext), "error", "empty file", error="ScanReadError")
      for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mgz", ".dcm")],
    # huge declared sizes
    ScanCase("huge nifti1 32767^3", lambda f: _nifti_huge(f, "huge1.nii", 1), "error",
             "header declares 3.5e13 voxels, file has 128 bytes", error="ScanReadError"),
    ScanCase("huge nifti2 100000^3 gz", lambda f: _nifti_huge(f, "huge2.nii.gz", 2), "error",
             "NIfTI-2 header declares 1e15 voxels", error="ScanReadError"),
    ScanCase("huge nrrd 100000^3", lambda f: _nrrd(f, "huge.nrrd", sizes=(HUGE, HUGE, HUGE), data=b"\0" * 64),
             "error", "NRRD sizes 1e15 voxels", error="ScanReadError"),
    ScanCase("huge mha 100000^3", lambda f: _mha_text(f, "huge.mha", {
        "ObjectType": "Image", "NDims": "3", "DimSize": f"{HUGE} {HUGE} {HUGE}", "ElementType": "MET_SHORT",
        "ElementDataFile": "LOCAL"}, b"\0" * 64), "error", "MetaImage DimSize 1e15 voxels", error="ScanReadError"),
    ScanCase("huge nrrd 2D 100000^2 x 1000", lambda f: _nrrd(f, "huge_flat.nrrd", sizes=(HUGE, HUGE, 1000),
                                                          data=b"\0" * 64),
             "error", "1e13 voxels in a flat shape", error="ScanReadError"),
    ScanCase("zero dimension nrrd", lambda f: _nrrd(f, "zero_dim.nrrd", sizes=(0, 10, 10), data=b""), "error",
             "a size of 0 along x"),
    ScanCase("mhd missing data file", lambda f: _mha_text(f, "nodata.mhd", {
        "ObjectType": "Image", "NDims": "3", "DimSize": "4 4 4", "ElementType": "MET_SHORT",
        "ElementDataFile": "missing.raw"}), "error", "MetaImage header whose .raw is gone", error="ScanReadError"),
    # values and shapes that should open, with a notice
    ScanCase("nan and inf voxels nrrd", _nonfinite(".nrrd"), "open", "float scan with NaN/Inf voxels",
             notice="nonfinite"),
    ScanCase("nan and inf voxels mha", _nonfinite(".mha"), "open", "float scan with NaN/Inf voxels",
             notice="nonfinite"),
    ScanCase("nan and inf voxels nifti", _nonfinite_nibabel, "open",
             "float NIfTI with NaN/Inf voxels (ITK's NIfTI reader may zero them itself)"),
    ScanCase("all nan voxels", _all_nan, "either", "no finite voxel at all"),
    ScanCase("2d nifti", _image_2d(".nii.gz"), "open", "a single 2D slice", notice="2d"),
    ScanCase("2d nrrd", _image_2d(".nrrd"), "open", "a single 2D slice", notice="2d"),
    ScanCase("single voxel", _single_voxel, "open", "1x1x1 volume"),
    ScanCase("4d nifti without component", _image_4d, "error", "3 time points, none chosen",
             error="MultiComponentError"),
    ScanCase("4d nifti component 2", _image_4d, "open", "3 time points, the third chosen", kwargs={"component": 2}),
    ScanCase("4d nifti component 7", _image_4d, "error", "component out of range", kwargs={"component": 7},
             error="ScanReadError"),
    ScanCase("rgb 3d nrrd without component", _vector(".nrrd", 3), "error", "vector pixels, none chosen",
             error="MultiComponentError"),
    ScanCase("rgb 3d nrrd component 1", _vector(".nrrd", 3), "open", "vector pixels, green chosen",
             kwargs={"component": 1}),
    ScanCase("rgb 2d mha without component", _vector(".mha", 2), "error", "2D RGB image, no channel chosen",
             error="MultiComponentError"),
    ScanCase("rgb 2d mha component 0", _vector(".mha", 2), "open", "2D RGB image, red chosen",
             kwargs={"component": 0}, notice="2d"),
    # geometry
    ScanCase("oblique 30 degrees", _oblique, "open", "rotated but orthonormal direction", notice="oblique"),
    ScanCase("non-orthogonal directions nrrd", lambda f: _nrrd(
        f, "sheared.nrrd", sizes=(4, 4, 4), directions=[(1, 0, 0), (0.5, 1, 0), (0, 0, 1)]), "either",
        "sheared (non-orthogonal) axes"),
    ScanCase("singular directions nrrd", lambda f: _nrrd(
        f, "singular.nrrd", sizes=(4, 4, 4), directions=[(1, 0, 0), (1, 0, 0), (0, 0, 1)]), "error",
        "two axes point the same way", error="ScanReadError"),
    ScanCase("zero direction vector nrrd", lambda f: _nrrd(
        f, "zero_axis.nrrd", sizes=(4, 4, 4), directions=[(1, 0, 0), (0, 0, 0), (0, 0, 1)]), "error",
        "an axis of length 0 (zero spacing)"),
    ScanCase("singular TransformMatrix mha", lambda f: _mha_text(f, "singular.mha", {
        "ObjectType": "Image", "NDims": "3", "DimSize": "2 2 2", "ElementType": "MET_UCHAR",
        "TransformMatrix": "1 0 0 1 0 0 0 0 1", "ElementSpacing": "1 1 1", "ElementDataFile": "LOCAL"},
        bytes(range(8))), "error", "MetaImage direction with two equal columns", error="ScanReadError"),
    ScanCase("negative spacing mha", lambda f: _mha_text(f, "neg_spacing.mha", {
        "ObjectType": "Image", "NDims": "3", "DimSize": "2 2 2", "ElementType": "MET_UCHAR",
        "ElementSpacing": "-1 1 0", "ElementDataFile": "LOCAL"}, bytes(range(8))), "either",
        "spacing -1 and 0"),
    # DICOM
    ScanCase("dicom good series", _dicom_good, "open", "control: a clean 4-slice series"),
    ScanCase("dicom mixed series", _dicom_mixed, "error", "two series in one folder, none chosen",
             error="MultipleSeriesError"),
    ScanCase("dicom mixed series chosen", _dicom_mixed, "open", "two series, the second chosen",
             kwargs={"series_uid": "1.2.826.0.1.3680043.8.498.22"}),
    ScanCase("dicom unknown series uid", _dicom_mixed, "error", "a series uid that is not there",
             kwargs={"series_uid": "1.2.3.4"}, error="ScanReadError"),
    ScanCase("dicom missing slices", _dicom_missing_slices, "error_or_notice",
             "a gap in slice positions: a uniform grid would misplace the slices after the gap"),
    ScanCase("dicom duplicate positions", _dicom_duplicate_positions, "error_or_notice",
             "two slices at one position: no uniform grid fits"),
    ScanCase("dicom inconsistent slice size", _dicom_inconsistent_size, "either", "one slice 20x20 among 12x10"),
    ScanCase("dicom truncated member", _dicom_truncated_member, "error_or_notice",
             "one file of the series cut short: silently dropping it leaves a gap"),
    ScanCase("dicom single truncated file", _dicom_single_truncated_file, "error", "a lone .dcm cut in half"),
    ScanCase("empty folder", _empty_folder, "error", "nothing in it", error="ScanReadError"),
    ScanCase("folder without dicom", _folder_of_text, "error", "text and noise only", error="ScanReadError"),
    ScanCase("dicom one level deeper", _nested_dicom, "error", "the series is in a sub-folder",
             error="ScanReadError"),
    ScanCase("folder named .nii.gz", _dir_named_nifti, "error", "a folder with a scan extension"),
    ScanCase("missing path", lambda f: f / "does_not_exist.nii.gz", "error", "no such file", error="ScanReadError"),
]


def build_scan_corpus(folder: str | os.PathLike) -> dict[str, BuiltScan]:
    """Write every scan case into ``folder`` (must exist, empty); {case name: BuiltScan}."""
    folder = Path(folder)
    names = [c.name for c in SCAN_CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    built: dict[str, BuiltScan] = {}
    cache: dict[Callable, Path] = {}
    for case in SCAN_CASES:
        if case.build not in cache:
            cache[case.build] = case.build(folder)
        built[case.name] = BuiltScan(case, cache[case.build])
    return built


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def _universeg_state():
    torch = _torch()
    return torch.load(GOLDEN_DIR / "universeg_v1_seed1234_S8.pt", map_location="cpu", weights_only=True)["state_dict"]


def _save(folder: Path, name: str, obj) -> Path:
    path = folder / name
    _torch().save(obj, path)
    return path


def _medsam_like_keys():
    torch = _torch()
    g = torch.Generator().manual_seed(0)
    return {
        "image_encoder.pos_embed": torch.randn(1, 64, 64, 768, generator=g) * 0.01,
        "image_encoder.patch_embed.proj.weight": torch.randn(768, 3, 16, 16, generator=g) * 0.01,
        "image_encoder.patch_embed.proj.bias": torch.zeros(768),
        "image_encoder.blocks.0.norm1.weight": torch.ones(768),
        "prompt_encoder.point_embeddings.0.weight": torch.randn(1, 256, generator=g),
        "mask_decoder.iou_token.weight": torch.randn(1, 256, generator=g),
    }


def _ck_truncated(keep: float) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        full = _save(folder, "_universeg_full.pt", _universeg_state())
        return _cut(full, folder / f"truncated_{keep}.pt", keep)
    return build


def _ck_wrong_arch(folder: Path) -> Path:
    torch = _torch()
    g = torch.Generator().manual_seed(1)
    return _save(folder, "resnet_like.pth", {"conv1.weight": torch.randn(8, 3, 7, 7, generator=g),
                                             "bn1.running_mean": torch.zeros(8),
                                             "fc.weight": torch.randn(10, 8, generator=g), "fc.bias": torch.zeros(10)})


def _ck_code_zip(folder: Path) -> Path:
    torch = _torch()
    return _save(folder, "code_in_zip.pth", {"image_encoder.x": torch.zeros(1), "evil": CodeMarker(str(folder / MARKER_NAME))})


def _ck_code_raw_pickle(folder: Path) -> Path:
    return _bytes(folder, "code_raw_pickle.pth", pickle.dumps({"state_dict": CodeMarker(str(folder / MARKER_NAME))},
                                                              protocol=2))


def _ck_code_legacy_torch(folder: Path) -> Path:
    torch = _torch()
    path = folder / "code_legacy_torch.pt"
    torch.save([CodeMarker(str(folder / MARKER_NAME))], path, _use_new_zipfile_serialization=False)
    return path


def _ck_zip_not_torch(folder: Path) -> Path:
    path = folder / "archive.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "weights are in another castle")
        z.writestr("data/0", _random(256, 5))
    return path


def _ck_universeg_nan(folder: Path) -> Path:
    sd = dict(_universeg_state())
    k = next(iter(sd))
    t = sd[k].clone()
    t.view(-1)[0] = float("nan")
    sd[k] = t
    return _save(folder, "universeg_nan.pt", sd)


def _ck_universeg_wrong_shape(folder: Path) -> Path:
    torch = _torch()
    sd = dict(_universeg_state())
    k = "out_conv.conv.weight" if "out_conv.conv.weight" in sd else next(iter(sd))
    sd[k] = torch.zeros(tuple(s + 1 for s in sd[k].shape))
    return _save(folder, "universeg_wrong_shape.pt", sd)


def _ck_universeg_int(folder: Path) -> Path:
    sd = {k: v.to(_torch().int32) for k, v in _universeg_state().items()}
    return _save(folder, "universeg_int.pt", sd)


def _ck_sam_vit_h_like(folder: Path) -> Path:
    torch = _torch()
    return _save(folder, "sam_vit_h_like.pth", {
        "image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16),
        "image_encoder.blocks.31.norm1.weight": torch.ones(1280),
        "mask_decoder.iou_token.weight": torch.zeros(1, 256)})


CHECKPOINT_CASES: list[CheckpointCase] = [
    CheckpointCase("truncated at 0.5", _ck_truncated(0.5), "download cut in half"),
    CheckpointCase("truncated at 0.98", _ck_truncated(0.98), "only the zip directory missing"),
    CheckpointCase("truncated at 0.05", _ck_truncated(0.05), "only the start of the file"),
    CheckpointCase("wrong architecture", _ck_wrong_arch, "random tensors of another network"),
    CheckpointCase("code in torch zip", _ck_code_zip, "torch.save'd object whose unpickling runs code"),
    CheckpointCase("code in raw pickle", _ck_code_raw_pickle, "plain pickle whose unpickling runs code"),
    CheckpointCase("code in legacy torch file", _ck_code_legacy_torch, "pre-1.6 torch format carrying code"),
    CheckpointCase("empty dict", lambda f: _save(f, "empty_dict.pth", {}), "no weights at all"),
    CheckpointCase("plain list", lambda f: _save(f, "list.pth", [_torch().zeros(3), _torch().ones(2)]),
                   "a list of tensors"),
    CheckpointCase("single tensor", lambda f: _save(f, "tensor.pth", _torch().zeros(3, 3)), "one bare tensor"),
    CheckpointCase("dict of non-tensors", lambda f: _save(f, "hyperparams.pth", {"lr": 0.1, "epochs": 5,
                                                                                   "name": "x"}),
                   "training metadata, no tensors"),
    CheckpointCase("text file", lambda f: _bytes(f, "weights.pth", b"version https://git-lfs.github.com/spec/v1\n"
                                                                    b"oid sha256:abc\nsize 375042383\n"),
                   "a Git LFS pointer instead of the weights"),
    CheckpointCase("html page", lambda f: _bytes(f, "medsam_vit_b.pth", b"<!DOCTYPE html><html>quota exceeded</html>"),
                   "an error page saved as the download"),
    CheckpointCase("zip not torch", _ck_zip_not_torch, "a zip archive of other files"),
    CheckpointCase("zero-size file", lambda f: _bytes(f, "zero.pth", b""), "empty file"),
    CheckpointCase("random bytes", lambda f: _bytes(f, "random.pth", _random(10000, 13)), "noise"),
    CheckpointCase("folder", lambda f: (f / "a_folder.pth").mkdir() or (f / "a_folder.pth"), "a folder"),
    CheckpointCase("missing file", lambda f: f / "nope.pth", "no such file"),
    CheckpointCase("universeg weights given to medsam", lambda f: _save(f, "universeg.pt", _universeg_state()),
                   "the real UniverSeg v1 key set", targets=("medsam",)),
    CheckpointCase("medsam keys given to universeg", lambda f: _save(f, "medsam_like.pth", _medsam_like_keys()),
                   "SAM-style keys", targets=("universeg",)),
    CheckpointCase("partial medsam keys", lambda f: _save(f, "medsam_partial.pth", _medsam_like_keys()),
                   "a few SAM ViT-B keys, the rest missing", targets=("medsam",)),
    CheckpointCase("sam vit-h like", _ck_sam_vit_h_like, "another SAM size", targets=("medsam", "universeg")),
    CheckpointCase("universeg with nan", _ck_universeg_nan, "right keys, NaN inside", targets=("universeg",)),
    CheckpointCase("universeg wrong shape", _ck_universeg_wrong_shape, "one tensor of another shape",
                   targets=("universeg",)),
    CheckpointCase("universeg int tensors", _ck_universeg_int, "right keys, integer tensors",
                   targets=("universeg",)),
]


def build_checkpoint_corpus(folder: str | os.PathLike) -> dict[str, BuiltCheckpoint]:
    """Write every checkpoint case into ``folder``; {case name: BuiltCheckpoint}."""
    folder = Path(folder)
    names = [c.name for c in CHECKPOINT_CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    return {c.name: BuiltCheckpoint(c, c.build(folder)) for c in CHECKPOINT_CASES}


def describe(built: dict) -> str:
    """One line per case (for debugging a corpus folder)."""
    return "\n".join(f"{n}: {b.path.name} ({b.case.why})" for n, b in built.items())


if __name__ == "__main__":  # python tests/hostile_corpus.py OUT_FOLDER
    import sys

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "scans").mkdir(exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    print(describe(build_scan_corpus(out / "scans")))
    print(describe(build_checkpoint_corpus(out / "checkpoints")))
    print(json.dumps({"scans": len(SCAN_CASES), "checkpoints": len(CHECKPOINT_CASES)}))
