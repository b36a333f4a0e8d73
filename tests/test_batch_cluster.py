"""``medsam-gui batch`` on a real Dask LocalCluster of 2 worker processes, on the MSD hippocampus
MR scans, with the golden random-weight LiteMedSAM and UniverSeg checkpoints: boxes (2D and
propagated) and example sets, a worker killed mid-case, a corrupt scan, the automatic task,
resume after an interrupted run, the report files, the CLI."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from distributed import LocalCluster
from litemedsam_helpers import golden_checkpoint
from PIL import Image

from medsam_gui import api
from medsam_gui.batch import outputs
from medsam_gui.batch.manifest import ManifestError
from medsam_gui.batch.runner import run_batch
from medsam_gui.cli import main
from medsam_gui.core.example_sets import save_example_set
from medsam_gui.core.prompts import Prompt, box_corners
from medsam_gui.core.prompts_file import Propagation, PromptsFile, ScanGrid, write_prompts_file
from medsam_gui.core.support_set import SupportSet

torch.set_num_threads(2)

HIPPO = Path(__file__).resolve().parent / "data" / "msd_hippocampus"
BOX_003 = (6, 25, 30, 38)  # label 1 (anterior hippocampus) on slice 15 of hippocampus_003
RECIST_003 = np.array([[15, 18, 7], [15, 29, 18]], float)  # (z, y, x): label 2, also on slice 15
BOX_001 = (9, 27, 31, 41)  # label 1 on slice 13 of hippocampus_001, propagated over 13..14


def scan(n: str) -> Path:
    return HIPPO / f"hippocampus_{n}_image.nii.gz"


def _box_prompt(label: int, z: int, box) -> Prompt:
    from medsam_gui.core.prompts import Box

    return Prompt("box", label, box_corners(0, z, Box(*box)))


def kill_worker_once(marker: Path, case) -> None:
    """The before_case hook: the first attempt of case "h003" kills its worker process."""
    if case.name == "h003" and not marker.exists():
        marker.write_text("killed")
        os._exit(1)


def record_case(log: Path, case) -> None:
    """The before_case hook of a resume: note every case that a worker starts."""
    with open(log, "a") as fh:
        fh.write(case.name + "\n")


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, universeg_checkpoint):
    """A cohort folder: prompts files, an example set, a corrupt scan and the checkpoints."""
    d = tmp_path_factory.mktemp("cohort")
    v003, v001 = api.load_volume(scan("003")), api.load_volume(scan("001"))
    write_prompts_file(d / "h003.json", PromptsFile(ScanGrid.of(v003), (
        _box_prompt(1, 15, BOX_003), Prompt("recist", 2, RECIST_003)), None))
    write_prompts_file(d / "h001.json", PromptsFile(ScanGrid.of(v001), (_box_prompt(1, 13, BOX_001),),
                                                    Propagation(0, 13, 14)))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(HIPPO / "hippocampus_003_label.nii.gz")))
    save_example_set(d / "anterior.npz", SupportSet.from_partial_labels(
        v003.array, labels, 1, bounds=(0.0, 800.0), slices=[8, 12], modality="MR", label_name="anterior"))
    sitk.WriteImage(sitk.ReadImage(str(scan("367")))[:, :, 14:18], str(d / "h367_crop.nii.gz"))  # 4 slices
    raw = scan("001").read_bytes()
    (d / "broken.nii.gz").write_bytes(raw[: len(raw) // 2])
    lite = d / "lite_medsam.pth"
    shutil.copy(golden_checkpoint(), lite)
    return {"dir": d, "checkpoints": {"litemedsam": str(lite), "universeg": str(universeg_checkpoint)}}


def manifest(folder: Path, rows: list[str]) -> Path:
    path = folder / "manifest.csv"
    path.write_text("scan,task,input,engine,label,out\n" + "\n".join(rows) + "\n")
    return path


def full_rows() -> list[str]:
    return [f"{scan('003')},boxes,h003.json,litemedsam,,h003",
            f"{scan('001')},boxes,h001.json,litemedsam,,h001",
            "h367_crop.nii.gz,universeg,anterior.npz,,3,h367",
            "broken.nii.gz,boxes,h001.json,litemedsam,,broken",
            f"{scan('003')},auto,universal:liver,,,auto003"]


def read_report(out: Path) -> dict[str, dict]:
    with open(out / "report.csv", newline="") as fh:
        return {r["case"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def first_run(cluster, cohort, tmp_path_factory):
    """One run of every task; the first attempt of h003 kills its worker."""
    out = tmp_path_factory.mktemp("out")
    marker = out.parent / "killed.marker"
    from functools import partial

    summary = run_batch(api, manifest(cohort["dir"], full_rows()), out, scheduler=cluster,
                        checkpoints=cohort["checkpoints"], report=True, before_case=partial(kill_worker_once, marker))
    return summary, out, marker


def test_killed_worker_case_is_rescheduled_and_matches_the_api(first_run, cohort):
    summary, out, marker = first_run
    assert marker.read_text() == "killed"  # the worker really died during h003
    row = read_report(out)["h003"]
    assert row["status"] == "ok", row["message"]
    vol = api.load_volume(scan("003"))
    written = api.load_volume(out / "h003.nii.gz")
    assert written.same_grid(vol)
    got = written.array.astype(np.uint8)
    engine = api.load_engine("litemedsam", cohort["checkpoints"]["litemedsam"], device="cpu")
    with api.open_predictor(vol, engine=engine) as p:  # one embedding: both prompts are on slice 15
        box = p.segment_box(15, BOX_003)
        line = p.segment_recist(15, (7, 18), (18, 29), 5.0)[0]
    assert box.any() and np.array_equal(got[15] == 1, box)
    assert (line & ~box).any() and np.array_equal(got[15] == 2, line & ~box)  # labels never overwrite
    assert set(np.flatnonzero(got.reshape(len(got), -1).any(axis=1))) == {15}
    assert row["output_sha256"] and row["input_sha256"] and row["worker"].startswith("tcp://")


def test_propagation_and_universeg_cases(first_run):
    _, out, _ = first_run
    report = read_report(out)
    assert report["h001"]["status"] == "ok" and report["h367"]["status"] == "ok"
    prop = api.load_volume(out / "h001.nii.gz").array
    slices = set(np.flatnonzero(prop.reshape(len(prop), -1).any(axis=1)))
    assert 13 in slices and slices <= {13, 14}
    fill = api.load_volume(out / "h367.nii.gz").array
    assert set(np.unique(fill)) <= {0, 3} and (fill == 3).any()  # the manifest's label value
    assert "anterior" in (out / "h367.label").read_text()


def test_corrupt_scan_and_missing_automatic_model_fail_alone(first_run):
    summary, out, _ = first_run
    report = read_report(out)
    assert report["broken"]["status"] == "failed" and "broken.nii.gz" in report["broken"]["message"]
    auto = report["auto003"]  # no Universal Model weights on this machine
    assert auto["status"] == "failed"
    assert auto["message"].startswith("no universal_text_embedding weights installed: pass --checkpoint "
                                      "universal_text_embedding=FILE")
    assert (summary.ok, summary.failed, summary.skipped) == (3, 2, 0)
    assert list(report) == ["h003", "h001", "h367", "broken", "auto003"]  # manifest order


def test_measurements_qc_picture_and_html_report(first_run):
    _, out, _ = first_run
    labels = api.load_volume(out / "h003.nii.gz").array.astype(np.int64)
    with open(out / "measurements" / "h003.csv", newline="") as fh:
        rows = {int(r["label"]): r for r in csv.DictReader(fh)}
    assert float(rows[1]["volume_ml"]) == pytest.approx((labels == 1).sum() / 1000.0)  # 1 mm voxels
    assert rows[2]["prompt"] == "recist" and float(rows[2]["long_axis_mm"]) > 0
    png = np.asarray(Image.open(out / "qc" / "h003.png").convert("RGB"))
    vol = api.load_volume(scan("003"))
    s = outputs.scale_of(vol.shape[1:])
    first = png[: vol.shape[1] * s, : vol.shape[2] * s]  # label 1's panel: its largest slice, 15
    red = np.all(first == [230, 25, 75], axis=-1)
    expected = outputs.outline(np.repeat(np.repeat(labels[15] == 1, s, 0), s, 1))
    assert red.any() and np.array_equal(red, expected)
    html = (out / "report.html").read_text()
    assert html.count("<tr class=") == 5 and 'src="qc/h003.png"' in html and "3 ok, 2 failed" in html


def test_resume_skips_unchanged_cases_without_running_them(first_run, cluster, cohort, tmp_path):
    _, out, _ = first_run
    log = tmp_path / "started.txt"
    from functools import partial

    summary = run_batch(api, cohort["dir"] / "manifest.csv", out, scheduler=cluster, checkpoints=cohort["checkpoints"],
                        resume=True, before_case=partial(record_case, log))
    assert sorted(log.read_text().split()) == ["auto003", "broken"]  # only the failed cases ran again
    report = read_report(out)
    assert [report[c]["status"] for c in ("h003", "h001", "h367")] == ["skipped"] * 3
    assert summary.skipped == 3


def test_interrupted_run_resumes(cluster, cohort, tmp_path):
    crop, examples = cohort["dir"] / "h367_crop.nii.gz", cohort["dir"] / "anterior.npz"
    path = manifest(tmp_path, [f"{crop},universeg,{examples},,1,a", f"{crop},universeg,{examples},,2,b"])
    out = tmp_path / "out"

    def ctrl_c(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(api, path, out, scheduler=cluster, checkpoints=cohort["checkpoints"], on_case=ctrl_c)
    done = read_report(out)
    assert len(done) == 1 and next(iter(done.values()))["status"] == "ok"
    summary = run_batch(api, path, out, scheduler=cluster, checkpoints=cohort["checkpoints"], resume=True)
    assert sorted(r["status"] for r in summary.rows) == ["ok", "skipped"]
    assert [r["case"] for r in summary.rows] == ["a", "b"]
    assert set(np.unique(api.load_volume(out / "b.nii.gz").array)) == {0, 2}


def test_bad_manifest_rows_are_all_listed_before_anything_runs(cohort, tmp_path):
    (tmp_path / "bad.json").write_text('{"format": "medsam-gui-prompts", "version": 1, "prompts": []}')
    path = manifest(tmp_path, [f"{scan('003')},boxes,bad.json,litemedsam,,x",
                               "missing.nii.gz,boxes,bad.json,,,y",
                               f"{scan('003')},segment,bad.json,,,z",
                               f"{scan('003')},boxes,{cohort['dir'] / 'h003.json'},litemedsam,,ok"])
    # an unreachable scheduler: reaching it would be a BatchError, so nothing got that far
    with pytest.raises(ManifestError) as err:
        run_batch(api, path, tmp_path / "out", scheduler="tcp://127.0.0.1:9", checkpoints=cohort["checkpoints"])
    text = str(err.value)
    assert "3 bad row(s)" in text and "row 5" not in text
    assert "row 2: " in text and '"scan" must be an object' in text
    assert "row 3: " in text and "missing.nii.gz does not exist" in text
    assert "row 4: unknown task 'segment'" in text
    assert not (tmp_path / "out").exists()


def test_cli_local_cluster_one_worker(cohort, tmp_path, capsys):
    # the corrupt scan: the LocalCluster path end to end without a model pass
    path = manifest(tmp_path, [f"{cohort['dir'] / 'broken.nii.gz'},boxes,{cohort['dir'] / 'h001.json'},litemedsam,,b"])
    out = tmp_path / "out"
    rc = main(["batch", str(path), "--out", str(out), "--workers", "1", "--checkpoint",
               f"litemedsam={cohort['checkpoints']['litemedsam']}", "--report"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 case(s) failed; see" in err, err
    assert "Dask dashboard: http" in err and "0 ok, 1 failed, 0 skipped" in err
    assert read_report(out)["b"]["status"] == "failed" and (out / "report.html").is_file()
    rc = main(["batch", str(path), "--out", str(out), "--checkpoint", f"sam={cohort['checkpoints']['litemedsam']}"])
    assert rc == 1 and "--checkpoint sam=...: unknown model" in capsys.readouterr().err
