"""``medsam-gui measure`` on real scans and label maps."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.cli import main


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_measure_lung_tumour_prints_table_and_saves_csv(data_dir, tmp_path, capsys):
    out = tmp_path / "lung.csv"
    rc = main(["measure", str(data_dir / "lung_ct" / "lung1_image.nrrd"),
               str(data_dir / "lung_ct" / "lung1_label.nrrd"), "--csv", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0].split()
    assert header[:2] == ["label", "name"] and "voxels" in header and "slices" in header
    row = text.splitlines()[1]
    assert row.split()[0] == "1" and "837" in row.split() and "32..34" in row
    (r,) = _rows(out)
    assert r["voxels"] == "837" and (r["z_min"], r["z_max"]) == ("32", "34")
    assert float(r["volume_ml"]) == pytest.approx(837 * 0.5703125 ** 2 * 5.0 / 1000, abs=1e-6)
    assert 0 < float(r["short_axis_mm"]) <= float(r["long_axis_mm"])


def test_measure_uses_label_names_beside_the_labels(data_dir, tmp_path, capsys):
    folder = data_dir / "itksnap_brain_mr"
    out = tmp_path / "brain.csv"
    rc = main(["measure", str(folder / "MRIcrop-orig.nii.gz"), str(folder / "MRIcrop-seg.nii.gz"), "--csv", str(out)])
    assert rc == 0
    rows = _rows(out)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "MRIcrop-seg.nii.gz")))
    values = [int(v) for v in np.unique(labels) if v > 0]
    assert [int(r["label"]) for r in rows] == values
    for r in rows:
        v = int(r["label"])
        assert int(r["voxels"]) == int((labels == v).sum())
        assert float(r["volume_ml"]) == pytest.approx((labels == v).sum() / 1000.0, abs=1e-6)  # 1 mm iso
    names = {r["name"] for r in rows}
    assert not any(n.startswith("label ") for n in names)  # names came from MRIcrop-seg.label
    assert rows[0]["name"] in capsys.readouterr().out


def test_measure_refuses_labels_off_the_scan_grid(data_dir, capsys):
    hip = data_dir / "msd_hippocampus"
    rc = main(["measure", str(hip / "hippocampus_003_image.nii.gz"), str(hip / "hippocampus_001_label.nii.gz")])
    assert rc == 1
    assert "error" in capsys.readouterr().err


def test_measure_unwritable_csv_is_a_user_error(data_dir, tmp_path, capsys):
    hip = data_dir / "msd_hippocampus"
    rc = main(["measure", str(hip / "hippocampus_001_image.nii.gz"), str(hip / "hippocampus_001_label.nii.gz"),
               "--csv", str(tmp_path / "no" / "such" / "dir" / "m.csv")])
    assert rc == 1
    assert "could not write" in capsys.readouterr().err


def test_measure_command_loads_no_qt_or_torch(data_dir):
    hip = data_dir / "msd_hippocampus"
    code = (
        "import sys; from medsam_gui.cli import main; "
        f"rc = main(['measure', {str(hip / 'hippocampus_001_image.nii.gz')!r}, "
        f"{str(hip / 'hippocampus_001_label.nii.gz')!r}]); "
        "bad = [m for m in ('torch', 'PyQt6', 'napari') if m in sys.modules]; "
        "print('BAD', bad); sys.exit(rc or (3 if bad else 0))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BAD []" in proc.stdout
