"""`medsam-gui info`: text and JSON output, DICOM series choice, errors, and a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medsam_gui.cli import main

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parent.parent


def test_info_text(capsys):
    rc = main(["info", str(DATA / "msd_hippocampus/hippocampus_003_image.nii.gz")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "34 x 52 x 35" in out
    assert "RAS" in out and "oblique:      no" in out
    assert "MR" in out and "float32" in out
    assert "(-1, -1, 1)" in out  # origin


def test_info_json_keys_and_values(capsys):
    rc = main(["info", str(DATA / "totalsegmentator_example_ct/example_ct_sm.nii.gz"), "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_xyz"] == [122, 101, 30]
    assert info["spacing"] == [3.0, 3.0, 3.0]
    assert info["dtype"] == "int16" and info["modality"] == "CT"
    assert info["orientation"] == "RAS" and info["oblique"] is False
    assert info["min"] == -1100 and isinstance(info["max"], int)
    assert len(info["direction"]) == 9 and len(info["origin"]) == 3


def test_info_dicom_series(capsys):
    folder = DATA / "dcmqi_ct3slice_liver/dicom"
    assert main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_xyz"] == [512, 512, 3] and info["modality"] == "CT" and info["orientation"] == "LPS"
    uid = info["series_uid"]
    assert main(["info", str(folder), "--series", uid]) == 0
    assert uid in capsys.readouterr().out
    assert main(["info", str(folder), "--series", "9.9.9"]) == 1
    assert "No DICOM series with UID 9.9.9" in capsys.readouterr().err


def test_info_errors(capsys, tmp_path):
    assert main(["info", str(tmp_path / "missing.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medsam-gui: error:") and "does not exist" in err
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    assert main(["info", str(bad)]) == 1
    assert "NRRD" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        main(["info"])
    assert ei.value.code == 2


def test_info_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "medsam_gui", "info", str(DATA / "brain_mr/brain1_label.nrrd"), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["size_xyz"] == [256, 256, 25] and info["orientation"] == "LAS"
    assert info["min"] == 0 and info["max"] == 1


def test_info_loads_no_qt_or_torch():
    code = (
        "import sys; from medsam_gui.cli import main; "
        f"rc = main(['info', {str(DATA / 'msd_hippocampus/hippocampus_001_image.nii.gz')!r}]); "
        "heavy = [m for m in ('torch', 'PyQt6', 'napari') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
