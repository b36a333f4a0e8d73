"""Reading scans: every test scan equals SimpleITK's reading; DICOM; MGZ; bad inputs."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.core.orientation import DisplayOrientation
from medsam_gui.core.volume import Volume
from medsam_gui.errors import MedsamGuiError, ScanReadError
from medsam_gui.io import (
    MultiComponentError,
    MultipleSeriesError,
    list_dicom_series,
    load_volume,
    volume_info,
)
from medsam_gui.io.readers import guess_modality, lps_geometry_to_ras_affine

DATA = Path(__file__).resolve().parent / "data"
SCANS = sorted(p for p in DATA.rglob("*") if p.name.endswith((".nii.gz", ".nrrd")))
DICOM_DIR = DATA / "dcmqi_ct3slice_liver" / "dicom"


def _assert_no_dump(exc: BaseException) -> None:
    text = str(exc)
    assert ".cxx" not in text and "Exception thrown" not in text and "sitk::ERROR" not in text, text


@pytest.mark.parametrize("path", SCANS, ids=lambda p: p.name)
def test_every_scan_equals_simpleitk(path):
    vol = load_volume(path)
    ref = sitk.ReadImage(str(path))
    ref_arr = sitk.GetArrayFromImage(ref)
    assert vol.array.dtype == ref_arr.dtype
    assert np.array_equal(vol.array, ref_arr)
    assert vol.spacing == tuple(ref.GetSpacing())
    assert vol.origin == tuple(ref.GetOrigin())
    assert vol.direction == tuple(ref.GetDirection())
    assert vol.meta["nonfinite_replaced"] == 0
    assert vol.meta["notices"] == []  # clean axis-aligned 3D scans: nothing to tell
    assert vol.path == str(path)


def test_dicom_series_matches_nrrd():
    series = list_dicom_series(DICOM_DIR)
    assert len(series) == 1
    s = series[0]
    assert s.n_slices == 3 and s.size_xyz == (512, 512, 3) and s.modality == "CT"
    assert len(s.files) == 3 and s.uid.startswith("1.2.392.")
    vol = load_volume(DICOM_DIR)
    ref = sitk.ReadImage(str(DATA / "dcmqi_ct3slice_liver" / "ct_3slice.nrrd"))
    assert vol.shape == (3, 512, 512)
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-4)
    assert vol.modality == "CT"
    assert vol.meta["series_uid"] == s.uid
    assert vol.meta["notices"] == [] and s.damaged_files == [] and s.unidentified_files == []
    # by uid too
    vol2 = load_volume(DICOM_DIR, series_uid=s.uid)
    assert np.array_equal(vol2.array, vol.array)
    with pytest.raises(ScanReadError, match="No DICOM series with UID"):
        load_volume(DICOM_DIR, series_uid="1.2.3.4")


def test_single_dicom_file_opens_its_series():
    vol = load_volume(DICOM_DIR / "02.dcm")
    assert vol.shape == (3, 512, 512) and vol.meta["format"] == "DICOM"
    assert Path(vol.path) == DICOM_DIR
    assert np.array_equal(vol.array, load_volume(DICOM_DIR).array)


def test_dicom_folder_with_two_series(tmp_path):
    folder = tmp_path / "two"
    shutil.copytree(DICOM_DIR, folder)
    new_uid = "1.2.826.0.1.3680043.2.1125.99.1"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, f in enumerate(sorted(DICOM_DIR.glob("*.dcm"))):
        img = sitk.ReadImage(str(f))
        img.SetMetaData("0020|000e", new_uid)
        img.SetMetaData("0008|103e", "second series")
        img.SetMetaData("0008|0018", f"{new_uid}.{i + 1}")
        writer.SetFileName(str(folder / f"b{i}.dcm"))
        writer.Execute(img)
    series = list_dicom_series(folder)
    assert len(series) == 2
    assert {s.n_slices for s in series} == {3}
    with pytest.raises(MultipleSeriesError) as ei:
        load_volume(folder)
    assert isinstance(ei.value, MedsamGuiError)
    assert len(ei.value.series) == 2
    assert new_uid in str(ei.value) and "second series" in str(ei.value)
    vol = load_volume(folder, series_uid=new_uid)
    assert vol.shape == (3, 512, 512)
    assert vol.meta["series_description"] == "second series"
    ref = load_volume(DICOM_DIR)
    assert np.array_equal(vol.array, ref.array)


@pytest.mark.parametrize("name", ["msd_hippocampus/hippocampus_003_image.nii.gz",
                                  "totalsegmentator_example_ct/example_ct_sm.nii.gz",
                                  "itksnap_brain_mr/MRIcrop-orig.nii.gz"])
def test_mgz_round_trip_lps_geometry(tmp_path, name):
    src = DATA / name
    nimg = nib.load(str(src))
    data = np.asanyarray(nimg.dataobj)
    mgz = tmp_path / "scan.mgz"
    nib.save(nib.MGHImage(data, nimg.affine), str(mgz))
    vol = load_volume(mgz)
    ref = sitk.ReadImage(str(src))
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-4)
    assert vol.meta["format"] == "MGH"
    # the RAS affine rebuilt from our LPS geometry is nibabel's
    np.testing.assert_allclose(lps_geometry_to_ras_affine(vol.spacing, vol.origin, vol.direction),
                               nib.load(str(mgz)).affine, atol=1e-4)


def test_modality_guess():
    assert load_volume(DATA / "totalsegmentator_example_ct/example_ct_sm.nii.gz").modality == "CT"
    assert load_volume(DATA / "dcmqi_ct3slice_liver/ct_3slice.nrrd").modality == "CT"
    assert load_volume(DATA / "msd_hippocampus/hippocampus_003_image.nii.gz").modality == "MR"
    assert load_volume(DATA / "itksnap_brain_mr/MRIcrop-orig.nii.gz").modality == "MR"
    assert load_volume(DATA / "brain_mr/brain1_image.nrrd").modality == "MR"
    arr = np.full((2, 2, 2), -1024, np.int16)
    assert guess_modality(arr) == "CT"
    assert guess_modality(arr.astype(np.float32)) == "MR"  # float data: not guessed as CT
    assert guess_modality(np.zeros((2, 2, 2), np.int16), "CT") == "CT"
    assert guess_modality(arr, "MR") == "MR"


# --- bad inputs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_nii_bytes():
    return (DATA / "totalsegmentator_example_ct/example_ct_sm.nii.gz").read_bytes()


def test_truncated_niigz(tmp_path, small_nii_bytes):
    p = tmp_path / "trunc.nii.gz"
    p.write_bytes(small_nii_bytes[: len(small_nii_bytes) // 2])
    with pytest.raises(ScanReadError, match="truncated") as ei:
        load_volume(p)
    _assert_no_dump(ei.value)


def test_truncated_uncompressed_nii(tmp_path, small_nii_bytes):
    raw = gzip.decompress(small_nii_bytes)
    p = tmp_path / "trunc.nii"
    p.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ScanReadError, match="truncated"):
        load_volume(p)
    full = tmp_path / "full.nii"
    full.write_bytes(raw)
    assert load_volume(full).shape == (30, 101, 122)


@pytest.mark.parametrize("cut", [1, 7, 2000])
def test_truncated_nii_short_cuts_name_the_sizes(tmp_path, small_nii_bytes, cut):
    """A .nii missing even its last byte is refused with the declared vs present voxel bytes
    (the 352-byte header counted: ITK would pad the missing voxels with garbage)."""
    raw = gzip.decompress(small_nii_bytes)
    n_data = 30 * 101 * 122 * 2  # int16
    assert len(raw) == 352 + n_data
    p = tmp_path / "short.nii"
    p.write_bytes(raw[:-cut])
    with pytest.raises(ScanReadError) as ei:
        load_volume(p)
    assert (f"the file is truncated: expected {n_data:,} bytes of voxel data, found {n_data - cut:,}"
            in str(ei.value))
    padded = tmp_path / "padded.nii"  # extra bytes after the data are harmless
    padded.write_bytes(raw + b"\0" * 16)
    assert np.array_equal(load_volume(padded).array, load_volume(DATA / "totalsegmentator_example_ct/example_ct_sm.nii.gz").array)


@pytest.mark.parametrize("cut", [40, 12])
def test_truncated_niigz_tail_refused(tmp_path, small_nii_bytes, cut):
    """Cutting the last bytes of a .nii.gz loses the end of the voxel data (and the gzip trailer)."""
    p = tmp_path / "tail.nii.gz"
    p.write_bytes(small_nii_bytes[:-cut])
    with pytest.raises(ScanReadError, match=r"the file is truncated: expected 739,320 bytes of voxel data, found \d"):
        load_volume(p)


def test_nifti_layout_parser_nifti1_and_2(tmp_path, small_nii_bytes):
    """Data offset and size from the raw header (NIfTI-1 and -2, either byte order); not NIfTI: None."""
    from medsam_gui.io.readers import _nifti_layout

    assert _nifti_layout(gzip.decompress(small_nii_bytes)[:540]) == (352, 30 * 101 * 122 * 2)
    arr = np.zeros((6, 5, 4), np.float32)
    for cls, hdr, offset in ((nib.Nifti2Image, nib.Nifti2Header(), 544),
                             (nib.Nifti1Image, nib.Nifti1Header(endianness=">"), 352)):
        p = tmp_path / "h.nii"
        nib.save(cls(arr, np.eye(4), header=hdr), str(p))
        head = p.read_bytes()[:540]
        assert head[:4] in (b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00")  # big-endian 348 / little 540
        assert _nifti_layout(head) == (offset, 6 * 5 * 4 * 4)
    assert _nifti_layout(b"\0" * 540) is None and _nifti_layout(b"short") is None


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_truncated_nrrd_mha(tmp_path, ext):
    img = sitk.ReadImage(str(DATA / "msd_hippocampus/hippocampus_003_image.nii.gz"))
    full = tmp_path / f"full{ext}"
    sitk.WriteImage(img, str(full), useCompression=True)
    data = full.read_bytes()
    p = tmp_path / f"trunc{ext}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanReadError) as ei:
        load_volume(p)
    _assert_no_dump(ei.value)


@pytest.mark.parametrize("name", ["random.nii.gz", "random.nrrd", "random.mha", "random.nii", "random.mgz",
                                  "random.dat"])
def test_random_bytes(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ScanReadError) as ei:
        load_volume(p)
    _assert_no_dump(ei.value)
    assert str(p) in str(ei.value)


def test_png_renamed_niigz(tmp_path):
    png = tmp_path / "img.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(100, dtype=np.uint8).reshape(10, 10)), str(png))
    fake = tmp_path / "fake.nii.gz"
    os.replace(png, fake)
    with pytest.raises(ScanReadError, match="NIfTI") as ei:
        load_volume(fake)
    _assert_no_dump(ei.value)


def test_empty_folder_missing_path_empty_file(tmp_path):
    with pytest.raises(ScanReadError, match="No DICOM series"):
        load_volume(tmp_path)
    with pytest.raises(ScanReadError, match="does not exist"):
        load_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ScanReadError, match="empty"):
        load_volume(tmp_path / "empty.nii.gz")
    assert list_dicom_series(tmp_path) == []


# --- DICOM series that fit no regular grid --------------------------------------------------------

def _series(folder, z_positions, seed=0, uid="1.2.826.0.1.3680043.8.498.901"):
    import hostile_corpus as hc  # tests/ is on sys.path

    return hc._dicom_series(folder, uid=uid, z_positions=z_positions, seed=seed)


def _rewrite_slice(src: Path, dst: Path, **tags) -> None:
    img = sitk.ReadImage(str(src))
    for k, v in tags.items():
        img.SetMetaData(k, v)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    w.SetFileName(str(dst))
    w.Execute(img)


def test_dicom_gap_refused_naming_positions(tmp_path):
    d = _series(tmp_path / "gap", [0, 2.5, 5, 12.5, 15])
    with pytest.raises(ScanReadError) as ei:
        load_volume(d)
    msg = str(ei.value)
    assert "slices missing between z=5 mm and z=12.5 mm" in msg and "the series is incomplete" in msg
    assert "about 2 slices" in msg and "2.5 mm apart" in msg
    _assert_no_dump(ei.value)
    # a series sorted from high to low positions says the same
    d2 = _series(tmp_path / "gap_down", [15, 12.5, 5, 2.5, 0])
    with pytest.raises(ScanReadError, match="slices missing between z=12.5 mm and z=5 mm|"
                                            "slices missing between z=5 mm and z=12.5 mm"):
        load_volume(d2)


def test_dicom_uneven_spacing_refused_rounding_accepted(tmp_path):
    with pytest.raises(ScanReadError, match="slice spacing is not uniform"):
        load_volume(_series(tmp_path / "uneven", [0, 2.5, 4.0, 6.5, 9.0]))
    # position rounding (< 1 % of the step) is not a gap: opens, spacing the mean step, no notice
    vol = load_volume(_series(tmp_path / "rounded", [0, 2.5, 5.02, 7.5, 10.0]))
    assert vol.shape == (5, 10, 12) and vol.meta["notices"] == []
    assert vol.spacing[2] == pytest.approx(2.5, abs=1e-6)


def test_dicom_duplicates(tmp_path):
    # two different images at one position: refused, both files named
    with pytest.raises(ScanReadError, match=r"two different slices at the same position z=2\.5 mm "
                                            r"\(img001\.dcm and img002\.dcm\)"):
        load_volume(_series(tmp_path / "dup", [0, 2.5, 2.5, 5]))
    # an identical copy of a slice (same pixels, same position): one kept, a notice says so
    d = _series(tmp_path / "copy", [0, 2.5, 5, 7.5])
    ref = load_volume(d)
    _rewrite_slice(d / "img001.dcm", d / "img001_copy.dcm", **{"0008|0018": "1.2.826.0.1.3680043.8.498.901.99"})
    assert list_dicom_series(d)[0].n_slices == 5
    vol = load_volume(d)
    assert vol.shape == (4, 10, 12) and np.array_equal(vol.array, ref.array)
    assert vol.spacing == pytest.approx(ref.spacing) and vol.origin == pytest.approx(ref.origin)
    assert len(vol.meta["notices"]) == 1 and "duplicate slice" in vol.meta["notices"][0]


def test_dicom_truncated_member_refused(tmp_path):
    d = _series(tmp_path / "trunc", [0, 2.5, 5, 7.5])
    victim = d / "img003.dcm"  # the last slice: no gap would reveal it
    victim.write_bytes(victim.read_bytes()[:700])  # header (with the series UID) kept, pixels cut
    info = list_dicom_series(d)[0]
    assert info.n_slices == 3 and [Path(f).name for f in info.damaged_files] == ["img003.dcm"]
    with pytest.raises(ScanReadError, match=r"is incomplete: img003\.dcm belongs to it but cannot be read"):
        load_volume(d)
    with pytest.raises(ScanReadError, match="img003.dcm"):  # opened through one of its files too
        load_volume(d / "img000.dcm")


def test_dicom_unidentifiable_damaged_file_gives_notice(tmp_path):
    d = _series(tmp_path / "stub", [0, 2.5, 5])
    stub = d / "zz_stub.dcm"
    stub.write_bytes((d / "img000.dcm").read_bytes()[:300])  # DICM preamble, no series UID left
    vol = load_volume(d)
    assert vol.shape == (3, 10, 12)
    assert len(vol.meta["notices"]) == 1 and "zz_stub.dcm" in vol.meta["notices"][0]
    assert volume_info(vol)["notices"] == vol.meta["notices"]


def test_dicom_mixed_orientations_refused(tmp_path):
    d = _series(tmp_path / "planes", [0, 2.5, 5])
    _rewrite_slice(d / "img002.dcm", d / "img002.dcm", **{"0020|0037": "1\\0\\0\\0\\0\\-1"})
    with pytest.raises(ScanReadError, match="different orientations"):
        load_volume(d)


def test_2d_image_opens_as_one_slice(tmp_path):
    arr = np.arange(12 * 7, dtype=np.int16).reshape(7, 12)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7))
    img.SetOrigin((3.0, -4.0))
    for name in ("flat.nii.gz", "flat.png"):
        p = tmp_path / name
        sitk.WriteImage(img if name.endswith("gz") else sitk.Cast(img, sitk.sitkUInt8), str(p))
        vol = load_volume(p)
        assert vol.shape == (1, 7, 12)
        assert np.array_equal(vol.array[0], arr.astype(vol.array.dtype))
        assert len(vol.meta["notices"]) == 1 and "2D image" in vol.meta["notices"][0]
        if name.endswith("gz"):
            np.testing.assert_allclose(vol.spacing, (0.5, 0.7, 1.0), atol=1e-6)
            np.testing.assert_allclose(vol.origin, (3.0, -4.0, 0.0), atol=1e-6)


def test_4d_image_needs_component(tmp_path):
    rng = np.random.default_rng(1)
    vols = [rng.integers(0, 100, (4, 5, 6)).astype(np.int16) for _ in range(3)]
    img = sitk.JoinSeries([sitk.GetImageFromArray(v) for v in vols])
    p = tmp_path / "t.nii.gz"
    sitk.WriteImage(img, str(p))
    with pytest.raises(MultiComponentError) as ei:
        load_volume(p)
    assert ei.value.n_components == 3 and isinstance(ei.value, MedsamGuiError)
    vol = load_volume(p, component=1)
    assert np.array_equal(vol.array, vols[1])
    assert len(vol.direction) == 9 and vol.meta["component"] == 1
    assert vol.meta["notices"] == ["This image holds 3 volumes (4th dimension); volume 1 (counting from 0) was opened."]
    with pytest.raises(ScanReadError, match="component must be"):
        load_volume(p, component=3)


@pytest.mark.parametrize("ext", [".mha", ".nii.gz"])
def test_vector_image_needs_component(tmp_path, ext):
    rng = np.random.default_rng(2)
    chans = [rng.integers(0, 255, (3, 4, 5)).astype(np.uint8) for _ in range(3)]
    img = sitk.Compose([sitk.GetImageFromArray(c) for c in chans])
    img.SetSpacing((1.5, 2.0, 2.5))
    p = tmp_path / f"rgb{ext}"
    sitk.WriteImage(img, str(p))
    with pytest.raises(MultiComponentError) as ei:
        load_volume(p)
    assert ei.value.n_components == 3
    vol = load_volume(p, component=2)
    assert np.array_equal(vol.array, chans[2])
    assert any("3 channels" in n and "channel 2" in n for n in vol.meta["notices"])
    assert vol.spacing == (1.5, 2.0, 2.5)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])  # (ITK's NIfTI reader itself turns NaN into 0)
def test_nan_inf_replaced(tmp_path, ext):
    arr = np.linspace(-5, 5, 60, dtype=np.float32).reshape(3, 4, 5)
    arr[0, 0, 0] = np.nan
    arr[1, 2, 3] = np.inf
    arr[2, 3, 4] = -np.inf
    p = tmp_path / f"nan{ext}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    vol = load_volume(p)
    assert vol.meta["nonfinite_replaced"] == 3
    assert np.all(np.isfinite(vol.array))
    finite_min = np.nanmin(np.where(np.isfinite(arr), arr, np.nan))
    assert vol.array[0, 0, 0] == finite_min and vol.array[1, 2, 3] == finite_min
    assert volume_info(vol)["nonfinite_replaced"] == 3
    assert vol.meta["notices"] == [f"3 voxels were not a number (NaN) or infinite; they were set to the "
                                   f"smallest finite value ({finite_min:g})."]


def test_huge_declared_header_refused(tmp_path):
    (tmp_path / "huge.raw").write_bytes(bytes(1000))
    hdr = tmp_path / "huge.mhd"
    hdr.write_text("ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\n"
                   "ElementType = MET_UCHAR\nElementDataFile = huge.raw\n")
    with pytest.raises(ScanReadError, match="more than this app can open"):
        load_volume(hdr)


def test_mhd_with_data_file_records_both_sources(tmp_path):
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    p = tmp_path / "s.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    vol = load_volume(p)
    assert np.array_equal(vol.array, arr)
    assert len(vol.meta["source_files"]) == 2


def test_non_orthogonal_direction_loads_as_oblique(tmp_path):
    img = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    img.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))
    p = tmp_path / "skew.mha"
    sitk.WriteImage(img, str(p))
    vol = load_volume(p)
    assert vol.direction == (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    orient = DisplayOrientation.from_direction(vol.direction, vol.shape)
    assert orient.oblique and orient.is_identity
    assert volume_info(vol)["oblique"] is True
    assert len(vol.meta["notices"]) == 1 and "not perpendicular" in vol.meta["notices"][0]
    # a rotated (orthonormal) direction is told as oblique
    a = np.deg2rad(30)  # (core.orientation: oblique once no axis is within ~25 degrees)
    img.SetDirection((np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1))
    sitk.WriteImage(img, str(p))
    notices = load_volume(p).meta["notices"]
    assert len(notices) == 1 and "oblique" in notices[0]


def test_singular_direction_clear_error(tmp_path):
    p = tmp_path / "sing.mha"
    p.write_text("ObjectType = Image\nNDims = 3\nTransformMatrix = 1 0 0 1 0 0 0 0 1\nDimSize = 2 2 2\n"
                 "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    with open(p, "ab") as fh:
        fh.write(bytes(8))
    with pytest.raises(ScanReadError, match="singular") as ei:
        load_volume(p)
    _assert_no_dump(ei.value)


def test_volume_info_keys():
    vol = load_volume(DATA / "msd_hippocampus/hippocampus_001_image.nii.gz")
    info = volume_info(vol)
    for key in ("size_xyz", "spacing", "origin", "direction", "dtype", "min", "max", "modality",
                "orientation", "oblique"):
        assert key in info
    assert info["size_xyz"] == [35, 51, 35]
    assert info["orientation"] == "RAS" and info["oblique"] is False
    assert info["dtype"] == "uint8"
    assert info["min"] == int(vol.array.min()) and info["max"] == int(vol.array.max())
    assert isinstance(vol, Volume)
