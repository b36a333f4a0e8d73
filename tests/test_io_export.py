"""Writing and reading label maps on the exact source grid (SimpleITK and nibabel agree)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.core.labels import default_table
from medsam_gui.errors import ExportError, GeometryMismatchError, ScanReadError
from medsam_gui.io import load_labels, load_volume, read_label_description, save_labels
from medsam_gui.io.readers import lps_geometry_to_ras_affine
from medsam_gui.io.writers import label_description_path

DATA = Path(__file__).resolve().parent / "data"
PAIRS = [
    ("msd_hippocampus/hippocampus_003_image.nii.gz", "msd_hippocampus/hippocampus_003_label.nii.gz"),
    ("totalsegmentator_example_ct/example_ct_sm.nii.gz", "totalsegmentator_example_ct/example_seg.nii.gz"),
    ("itksnap_brain_mr/MRIcrop-orig.nii.gz", "itksnap_brain_mr/MRIcrop-seg.nii.gz"),
    ("brain_mr/brain1_image.nrrd", "brain_mr/brain1_label.nrrd"),
]


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def volumes():
    return {img: load_volume(DATA / img) for img, _ in PAIRS}


@pytest.mark.parametrize("img,lab", PAIRS, ids=lambda s: s.split("/")[-1])
def test_round_trip_sitk_and_nibabel(tmp_path, volumes, img, lab):
    vol = volumes[img]
    labels = load_labels(DATA / lab, vol)
    assert labels.dtype == np.uint8 and labels.max() >= 1
    out = save_labels(labels, vol, tmp_path / "seg.nii.gz")
    assert out == tmp_path / "seg.nii.gz"
    assert _leftovers(tmp_path, {"seg.nii.gz"}) == []
    # SimpleITK
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(back), labels)
    np.testing.assert_allclose(back.GetSpacing(), vol.spacing, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.GetOrigin(), vol.origin, atol=1e-6, rtol=0)
    np.testing.assert_allclose(back.GetDirection(), vol.direction, atol=1e-6, rtol=0)
    # nibabel: voxels (i, j, k) = array transposed; affine = LPS->RAS of the scan's geometry
    nimg = nib.load(str(out))
    assert np.array_equal(np.asanyarray(nimg.dataobj).transpose(2, 1, 0), labels)
    expected = lps_geometry_to_ras_affine(vol.spacing, vol.origin, vol.direction)
    np.testing.assert_allclose(nimg.affine, expected, atol=1e-6, rtol=0)
    # and our own reader
    assert np.array_equal(load_labels(out, vol), labels)


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nii"])
def test_other_formats(tmp_path, volumes, ext):
    img, lab = PAIRS[1]
    vol = volumes[img]
    labels = load_labels(DATA / lab, vol)
    out = save_labels(labels, vol, tmp_path / f"seg{ext}")
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), labels)
    np.testing.assert_allclose(back.GetOrigin(), vol.origin, atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), vol.direction, atol=1e-6)


def test_dtype_selection(tmp_path, volumes):
    vol = volumes[PAIRS[0][0]]
    arr = np.zeros(vol.shape, np.int64)
    arr[1, 2, 3] = 255
    p8 = save_labels(arr, vol, tmp_path / "a.nii.gz")
    assert sitk.ReadImage(str(p8)).GetPixelID() == sitk.sitkUInt8
    arr[2, 2, 3] = 300
    p16 = save_labels(arr, vol, tmp_path / "b.nii.gz")
    back = sitk.ReadImage(str(p16))
    assert back.GetPixelID() == sitk.sitkUInt16
    assert sitk.GetArrayFromImage(back)[2, 2, 3] == 300
    assert load_labels(p16, vol).dtype == np.uint16
    save_labels(arr > 0, vol, tmp_path / "bool.nii.gz")  # bool masks are fine
    arr[0, 0, 0] = 70000
    with pytest.raises(ExportError, match="65535"):
        save_labels(arr, vol, tmp_path / "c.nii.gz")
    with pytest.raises(ExportError, match="negative"):
        save_labels(-arr, vol, tmp_path / "d.nii.gz")
    with pytest.raises(ExportError, match="shape"):
        save_labels(arr[:-1], vol, tmp_path / "e.nii.gz")
    with pytest.raises(ExportError, match="non-integer"):
        save_labels(np.full(vol.shape, 0.5), vol, tmp_path / "f.nii.gz")
    with pytest.raises(ExportError, match="ending in"):
        save_labels(arr, vol, tmp_path / "g.png")
    assert _leftovers(tmp_path, {"a.nii.gz", "b.nii.gz", "bool.nii.gz"}) == []


def test_refuses_source_scan(tmp_path):
    src = tmp_path / "scan.nii.gz"
    shutil.copy(DATA / PAIRS[0][0], src)
    before = src.read_bytes()
    vol = load_volume(src)
    labels = np.zeros(vol.shape, np.uint8)
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="source scan"):
            save_labels(labels, vol, src, overwrite=overwrite)
        with pytest.raises(ExportError, match="source scan"):  # same file by another spelling
            save_labels(labels, vol, tmp_path / "." / "sub" / ".." / "scan.nii.gz", overwrite=overwrite)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(src)
    with pytest.raises(ExportError, match="source scan"):
        save_labels(labels, vol, link, overwrite=True)
    assert src.read_bytes() == before


def test_refuses_dicom_source_folder(tmp_path):
    folder = tmp_path / "dicom"
    shutil.copytree(DATA / "dcmqi_ct3slice_liver" / "dicom", folder)
    vol = load_volume(folder)
    labels = np.zeros(vol.shape, np.uint8)
    with pytest.raises(ExportError, match="DICOM folder"):
        save_labels(labels, vol, folder / "labels.nii.gz")
    out = save_labels(labels, vol, tmp_path / "labels.nii.gz")
    assert out.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["01.dcm", "02.dcm", "03.dcm"]


def test_existing_file_needs_overwrite(tmp_path, volumes):
    vol = volumes[PAIRS[0][0]]
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"old")
    labels = np.ones(vol.shape, np.uint8)
    with pytest.raises(ExportError, match="already exists"):
        save_labels(labels, vol, target)
    assert target.read_bytes() == b"old"
    save_labels(labels, vol, target, overwrite=True)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), labels)
    assert _leftovers(tmp_path, {"seg.nii.gz"}) == []


def test_read_only_folder_chmod(tmp_path, volumes):
    vol = volumes[PAIRS[0][0]]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running with privileges that ignore folder permissions (root)")
        with pytest.raises(ExportError, match=r"seg\.nii\.gz: the folder .*ro is read-only for you") as ei:
            save_labels(np.zeros(vol.shape, np.uint8), vol, ro / "seg.nii.gz")
        assert "Choose a folder you can write to" in str(ei.value)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_system_folder(volumes):
    target_dir = Path("/sys")  # sysfs refuses new files, even for root
    if not target_dir.is_dir():
        pytest.skip("no /sys")
    vol = volumes[PAIRS[0][0]]
    # (core.atomic.describe_os_error words it: the folder is read-only for you / permission denied)
    with pytest.raises(ExportError, match=r"Could not write /sys/seg\.nii\.gz: the folder /sys is read-only"):
        save_labels(np.zeros(vol.shape, np.uint8), vol, target_dir / "seg.nii.gz")
    assert not (target_dir / "seg.nii.gz").exists()


def test_write_failure_leaves_nothing(tmp_path, volumes, monkeypatch):
    """Disk full / read-only during the write: ExportError, the partial temp file is removed."""
    vol = volumes[PAIRS[0][0]]
    real_write = sitk.WriteImage

    def failing_write(img, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: x.cxx:1:\nITK ERROR: NiftiImageIO(0x1): "
                           "No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(ExportError, match="No space left") as ei:
        save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "seg.nii.gz")
    assert ".cxx" not in str(ei.value)
    assert list(tmp_path.iterdir()) == []

    def replace_fails(src, dst):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(sitk, "WriteImage", real_write)
    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(ExportError, match="read-only file system"):
        save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "seg.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_failed_read_back_replaces_nothing(tmp_path, volumes, monkeypatch):
    """The read-back check runs on the temp file before it replaces anything: a writer that
    silently drops the geometry leaves the old file exactly as it was and no temp file."""
    vol = volumes[PAIRS[0][0]]
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"old")
    real_write = sitk.WriteImage

    def write_without_geometry(img, path, *a, **k):
        bare = sitk.GetImageFromArray(sitk.GetArrayFromImage(img))
        real_write(bare, path, *a, **k)

    monkeypatch.setattr(sitk, "WriteImage", write_without_geometry)
    with pytest.raises(ExportError, match="does not hold the scan's exact grid"):
        save_labels(np.zeros(vol.shape, np.uint8), vol, target, overwrite=True)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"seg.nii.gz"}) == []


def test_uses_the_shared_atomic_writer(tmp_path, volumes, monkeypatch):
    """save_labels goes through core.atomic.atomic_write (one atomic-write mechanism)."""
    import medsam_gui.core.atomic as atomic
    import medsam_gui.io.writers as writers

    calls = []
    real = atomic.atomic_write

    def spy(path, write_fn, *, verify=None):
        calls.append((Path(path), verify is not None))
        return real(path, write_fn, verify=verify)

    monkeypatch.setattr(writers, "atomic_write", spy)
    vol = volumes[PAIRS[0][0]]
    out = save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "seg.nrrd")
    assert calls == [(out, True)]
    assert not hasattr(writers, "tempfile")


def test_label_description_written_beside(tmp_path, volumes):
    vol = volumes[PAIRS[2][0]]
    table = read_label_description(DATA / "itksnap_brain_mr" / "MRIcrop-seg.label")
    labels = load_labels(DATA / PAIRS[2][1], vol)
    out = save_labels(labels, vol, tmp_path / "brain.seg.nii.gz", label_table=table)
    desc = tmp_path / "brain.seg.label"
    assert label_description_path(out) == desc and desc.exists()
    assert read_label_description(desc) == table
    out2 = save_labels(labels, vol, tmp_path / "x.nrrd", label_table=default_table(2))
    assert [i.name for i in read_label_description(tmp_path / "x.label")] == ["label 1", "label 2"]
    assert out2.exists()


def test_load_labels_grid_mismatch(tmp_path, volumes):
    vol = volumes[PAIRS[0][0]]
    with pytest.raises(GeometryMismatchError) as ei:
        load_labels(DATA / "msd_hippocampus/hippocampus_001_label.nii.gz", vol)
    msg = str(ei.value)
    assert "(34, 52, 35)" in msg and "(35, 51, 35)" in msg  # both grids named
    # same size, shifted origin
    img = sitk.ReadImage(str(DATA / PAIRS[0][1]))
    img.SetOrigin(tuple(o + 0.5 for o in img.GetOrigin()))
    shifted = tmp_path / "shifted.nii.gz"
    sitk.WriteImage(img, str(shifted))
    with pytest.raises(GeometryMismatchError, match="origin"):
        load_labels(shifted, vol)


def test_load_labels_casts_integral_floats_refuses_fractions(tmp_path, volumes):
    vol = volumes[PAIRS[0][0]]
    assert sitk.ReadImage(str(DATA / PAIRS[0][1])).GetPixelID() == sitk.sitkFloat32
    labels = load_labels(DATA / PAIRS[0][1], vol)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
    img = sitk.ReadImage(str(DATA / PAIRS[0][1])) * 0.5
    frac = tmp_path / "frac.nrrd"
    sitk.WriteImage(img, str(frac))
    with pytest.raises(ScanReadError, match="non-integer"):
        load_labels(frac, vol)
