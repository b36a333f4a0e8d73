"""Headless commands check every argument before a scan or model is loaded, and `segment`
writes the ITK-SNAP ``.label`` description beside its label map, as the app does."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import medsam_gui.io
from medsam_gui import api
from medsam_gui.cli import main
from medsam_gui.io import load_volume, read_label_description, save_labels
from medsam_gui.io.label_files import HEADER

from box_engine import BrightBoxEngine

HIPPO = "msd_hippocampus/hippocampus_003_image.nii.gz"  # (z, y, x) 35 x 52 x 34, MR


class Loads:
    """Counts loads of scans and models; without ``engine`` a model load fails the command outright."""

    def __init__(self, monkeypatch, engine=None):
        self.scans = 0
        self.models = 0
        self.engine = engine
        real_load_volume = api.load_volume

        def load_volume_spy(*args, **kwargs):
            self.scans += 1
            return real_load_volume(*args, **kwargs)

        def load_model(*args, **kwargs):
            self.models += 1
            if self.engine is None:
                raise AssertionError("a model was loaded although an argument is wrong")
            return self.engine

        monkeypatch.setattr(api, "load_volume", load_volume_spy)
        monkeypatch.setattr(medsam_gui.io, "load_volume", load_volume_spy)
        for name in ("load_engine", "load_medsam2", "load_universeg"):
            monkeypatch.setattr(api, name, load_model)


@pytest.fixture
def scan(data_dir):
    return data_dir / HIPPO


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"never read: the loaders are replaced")
    return path


BOX = ["--box", "11,7,30,26,44"]


@pytest.mark.parametrize(
    "tail, message, reads_scan",
    [  # {tmp}: the test's folder (it holds folder.nii.gz/ and the weights file {ckpt})
        (BOX + ["--out", "{tmp}/seg.png"], "'seg.png': cannot write this format; use a name ending in .nii.gz",
         False),
        (BOX + ["--out", "{tmp}/missing/seg.nii.gz"], "the folder", False),
        (BOX + ["--out", "{tmp}/folder.nii.gz"], "is a folder", False),
        (BOX + ["--window", "40,0", "--out", "{tmp}/seg.nii.gz"], "the width must be above 0", False),
        (BOX + ["--out", "{tmp}/seg.nii.gz", "--checkpoint", "{tmp}/nowhere.pth"], "weights not found", False),
        (["--box", "35,1,1,5,5", "--out", "{tmp}/seg.nii.gz"], "slice 35 is outside the scan (slices 0..34)", True),
        (["--box", "11,40,60,45,70", "--out", "{tmp}/seg.nii.gz"], "lies outside slice 11", True),
        (BOX + ["--propagate", "--z-range", "3,35", "--out", "{tmp}/seg.nii.gz"],
         "--z-range 3,35 is outside the scan", True),
        (BOX + ["--engine", "medsam2", "--propagate", "--z-range", "1,40", "--out", "{tmp}/seg.nii.gz"],
         "--z-range 1,40 is outside", True),
    ],
)
def test_segment_reports_bad_arguments_before_loading_a_model(monkeypatch, tmp_path, capsys, scan, ckpt, tail,
                                                              message, reads_scan):
    loads = Loads(monkeypatch)
    (tmp_path / "folder.nii.gz").mkdir()
    args = ["segment", str(scan), "--checkpoint", str(ckpt)] + [a.format(tmp=tmp_path) for a in tail]
    rc = main(args)  # a second --checkpoint replaces the first
    err = capsys.readouterr().err
    assert rc == 1, err
    assert message in err
    assert loads.models == 0
    assert loads.scans == (1 if reads_scan else 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.nii.gz", "weights.pth"]


def test_segment_refuses_the_scan_as_output_and_an_existing_label_file(monkeypatch, tmp_path, capsys, data_dir,
                                                                       ckpt):
    loads = Loads(monkeypatch)
    vol = load_volume(data_dir / HIPPO)
    scan = save_labels(np.zeros(vol.shape, np.uint8), vol, tmp_path / "scan.nii.gz")
    rc = main(["segment", str(scan), "--box", "11,7,30,26,44", "--checkpoint", str(ckpt), "--overwrite",
               "--out", str(scan)])
    assert rc == 1 and "is an input of this command" in capsys.readouterr().err
    (tmp_path / "seg.label").write_text("keep")
    rc = main(["segment", str(scan), "--box", "11,7,30,26,44", "--checkpoint", str(ckpt),
               "--out", str(tmp_path / "seg.nii.gz")])
    assert rc == 1 and "seg.label already exists" in capsys.readouterr().err
    rc = main(["segment", str(tmp_path / "no_scan.nii.gz"), "--box", "11,7,30,26,44", "--checkpoint", str(ckpt),
               "--out", str(tmp_path / "other.nii.gz")])
    assert rc == 1 and "no_scan.nii.gz does not exist" in capsys.readouterr().err
    assert (tmp_path / "seg.label").read_text() == "keep"
    assert loads.models == 0 and loads.scans == 0


def test_segment_writes_the_label_description_beside_its_output(monkeypatch, tmp_path, capsys, scan, ckpt):
    engine = BrightBoxEngine(threshold=0)  # the mask is the whole box
    loads = Loads(monkeypatch, engine)
    out = tmp_path / "seg.nrrd"
    rc = main(["segment", str(scan), "--box", "11,7,30,26,44", "--label", "3", "--name", "left hippocampus",
               "--checkpoint", str(ckpt), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert loads.models == 1 and loads.scans == 1
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(arr).tolist()) == {0, 3} and int(np.count_nonzero(arr)) == 20 * 15
    description = tmp_path / "seg.label"
    text = description.read_text()
    assert text.splitlines()[0] == HEADER
    table = read_label_description(description)
    assert [(i.value, i.name) for i in table] == [(3, "left hippocampus")]
    # without --name the label keeps the app's default name; --overwrite replaces both files
    rc = main(["segment", str(scan), "--box", "11,7,30,26,44", "--checkpoint", str(ckpt), "--overwrite",
               "--out", str(out)])
    assert rc == 0
    assert [(i.value, i.name) for i in read_label_description(description)] == [(1, "label 1")]


def test_universeg_reports_bad_arguments_before_loading_the_network(monkeypatch, tmp_path, capsys, data_dir, scan,
                                                                    ckpt):
    loads = Loads(monkeypatch)
    vol = load_volume(scan)
    partial = np.zeros(vol.shape, np.uint8)
    partial[[10, 13], 20:30, 10:20] = 1
    support = save_labels(partial, vol, tmp_path / "partial.nii.gz")
    base = ["universeg", str(scan), "--support-labels", str(support), "--device", "cpu"]
    cases = [
        (["--checkpoint", str(ckpt), "--out", str(tmp_path / "o.mgz")], "cannot write this format", 0),
        (["--checkpoint", str(ckpt), "--out", str(tmp_path / "no" / "o.nii.gz")], "does not exist", 0),
        (["--out", str(tmp_path / "o.nii.gz")], "--checkpoint", 0),  # none installed in the test home
        (["--checkpoint", str(ckpt), "--out", str(tmp_path / "o.nii.gz"), "--save-example-set",
          str(tmp_path / "set.txt")], "--save-example-set 'set.txt'", 0),
        (["--checkpoint", str(ckpt), "--out", str(tmp_path / "o.nii.gz"), "--z-range", "0,60"],
         "--z-range 0,60 is outside the scan (indices along axis 0 0..34)", 1),
        (["--checkpoint", str(ckpt), "--out", str(tmp_path / "o.nii.gz"), "--label", "2"],
         "label 2 is not drawn", 1),
    ]
    scans = 0
    for extra, message, reads in cases:
        assert main(base + extra) == 1
        assert message in capsys.readouterr().err
        scans += reads
        assert loads.scans == scans
    rc = main(["universeg", str(scan), "--support-labels", str(tmp_path / "gone.nii.gz"), "--checkpoint", str(ckpt),
               "--out", str(tmp_path / "o.nii.gz")])
    assert rc == 1 and "--support-labels" in capsys.readouterr().err
    assert loads.models == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial.nii.gz", "weights.pth"]


def test_measure_checks_its_paths_before_reading_the_scan(monkeypatch, tmp_path, capsys, data_dir):
    loads = Loads(monkeypatch)
    hip = data_dir / "msd_hippocampus"
    scan, labels = hip / "hippocampus_003_image.nii.gz", hip / "hippocampus_003_label.nii.gz"
    assert main(["measure", str(scan), str(labels), "--csv", str(tmp_path / "no" / "m.csv")]) == 1
    assert "could not write --csv" in capsys.readouterr().err
    assert main(["measure", str(scan), str(tmp_path / "gone.nii.gz")]) == 1
    assert "the label map" in capsys.readouterr().err
    assert main(["measure", str(scan), str(labels), "--csv", str(tmp_path / "m.txt")]) == 1
    assert "use a name ending in .csv" in capsys.readouterr().err
    assert loads.scans == 0
