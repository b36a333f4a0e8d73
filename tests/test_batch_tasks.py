"""One batch case in this process (no cluster): task=auto against the pinned
``api.auto_segment(volume, model, structures, checkpoint, text_embedding=...)`` with a stand-in
api module, and its outputs on the scan's grid."""

from __future__ import annotations

import csv
import types
from pathlib import Path

import numpy as np

from medsam_gui.batch.manifest import read_manifest
from medsam_gui.batch.tasks import Settings, run_case
from medsam_gui.io import load_volume

SCAN = Path(__file__).resolve().parent / "data" / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"


def test_auto_case_writes_each_structure_as_a_label(tmp_path):
    calls = []

    def auto_segment(volume, model, structures, checkpoint, text_embedding=None, modality=None, overlap=None):
        calls.append((model, structures, checkpoint, text_embedding))
        liver = np.zeros(volume.shape, np.uint8)
        liver[10:14, 40:60, 30:70] = 1
        spleen = np.zeros(volume.shape, np.uint8)
        spleen[12:20, 50:70, 60:90] = 1  # overlaps the liver: the first structure keeps its voxels
        return {"liver": liver, "spleen": spleen}

    fake_api = types.ModuleType("stand_in_api")
    fake_api.auto_segment = auto_segment
    (tmp_path / "ckpt.pth").write_bytes(b"weights")
    (tmp_path / "emb.pth").write_bytes(b"embedding")
    (tmp_path / "m.csv").write_text(f"scan,task,input,label\n{SCAN},auto,universal:liver+1,5\n")
    case, = read_manifest(tmp_path / "m.csv")
    weights = {"universal": str(tmp_path / "ckpt.pth"), "universal_text_embedding": str(tmp_path / "emb.pth")}
    settings = Settings(fake_api, str(tmp_path / "out"), "cpu", weights)
    row = run_case(case, settings)
    assert row["status"] == "ok", row["message"]
    assert calls == [("universal", ["liver", 1], str(tmp_path / "ckpt.pth"), str(tmp_path / "emb.pth"))]
    vol = load_volume(SCAN)
    out = load_volume(row["label_map"])
    assert out.same_grid(vol)
    labels = out.array.astype(np.int64)
    assert (labels == 5).sum() == 4 * 20 * 40  # the liver, whole
    assert (labels == 6).sum() == 8 * 20 * 30 - 2 * 10 * 10  # the spleen less the overlap
    assert '"liver"' in (tmp_path / "out" / "example_ct_sm.label").read_text()
    with open(row["measurements"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["label"], r["name"], r["prompt"]) for r in rows] == [("5", "liver", "auto"), ("6", "spleen", "auto")]
    assert row["volumes_ml"][5] == labels[labels == 5].size * vol.voxel_volume_mm3 / 1000


def test_auto_case_without_weights_fails_alone_with_how_to_get_them(tmp_path):
    from medsam_gui import api

    (tmp_path / "m.csv").write_text(f"scan,task,input\n{SCAN},auto,hermes:liver_bcv\n")
    case, = read_manifest(tmp_path / "m.csv")
    row = run_case(case, Settings(api, str(tmp_path / "out")))
    assert row["status"] == "failed"
    assert row["message"] == ("no hermes_r weights installed: pass --checkpoint hermes=FILE, or install them once "
                              "with `medsam-gui weights download hermes_r`.")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_medsam2_boxes_follow_each_prompt_in_3d_within_the_range(tmp_path):
    from medsam_gui.core.prompts import Box, Prompt, box_corners
    from medsam_gui.core.prompts_file import Propagation, PromptsFile, ScanGrid, write_prompts_file

    calls = []

    def segment_lesion_3d(volume, z, box=None, recist=None, *, engine, z_range, device):
        calls.append((z, box, None if recist is None else np.asarray(recist).tolist(), engine, z_range, device))
        mask = np.zeros(volume.shape, bool)
        mask[z, 40:50, 40:50] = True
        return mask

    fake_api = types.ModuleType("stand_in_api")
    fake_api.load_engine = lambda model, checkpoint, device: ("engine", model, checkpoint, device)
    fake_api.segment_lesion_3d = segment_lesion_3d
    vol = load_volume(SCAN)
    prompts = (Prompt("box", 1, box_corners(0, 12, Box(30, 35, 60, 70))),
               Prompt("recist", 3, np.array([[14, 45, 40], [14, 48, 55]], float)))
    write_prompts_file(tmp_path / "p.json", PromptsFile(ScanGrid.of(vol), prompts, Propagation(0, 8, 20)))
    (tmp_path / "m.csv").write_text(f"scan,task,input,engine\n{SCAN},boxes,p.json,medsam2\n")
    case, = read_manifest(tmp_path / "m.csv")
    row = run_case(case, Settings(fake_api, str(tmp_path / "out"), "cpu", {"medsam2": "m2.pt"}))
    assert row["status"] == "ok", row["message"]
    engine = ("engine", "medsam2", "m2.pt", "cpu")
    assert calls == [(12, (30.0, 35.0, 60.0, 70.0), None, engine, (8, 20), "cpu"),
                     (14, None, [[40.0, 45.0], [55.0, 48.0]], engine, (8, 20), "cpu")]  # (x, y) line ends
    labels = load_volume(row["label_map"]).array
    assert set(np.unique(labels[12])) == {0, 1} and set(np.unique(labels[14])) == {0, 3}
    assert row["load_s"] > 0  # loaded here; a second case in this process reuses it
    assert run_case(case, Settings(fake_api, str(tmp_path / "out"), "cpu", {"medsam2": "m2.pt"}))["load_s"] == 0.0


def test_resume_check_follows_inputs_and_outputs(tmp_path):
    from medsam_gui.batch.manifest import file_checksum
    from medsam_gui.batch.runner import unchanged

    (tmp_path / "m.csv").write_text(f"scan,task,input,out\n{SCAN},auto,hermes:liver,c\n")
    case, = read_manifest(tmp_path / "m.csv")
    label_map = tmp_path / "c.nii.gz"
    label_map.write_bytes(b"labels")
    row = {"status": "ok", "label_map": str(label_map), "output_sha256": file_checksum(label_map),
           "input_sha256": case.input_checksum()}
    assert unchanged(case, row) and unchanged(case, {**row, "status": "skipped"})
    assert not unchanged(case, {**row, "status": "failed"}) and not unchanged(case, None)
    assert not unchanged(case, {**row, "input_sha256": "0" * 64})  # the scan or input changed
    label_map.write_bytes(b"edited")
    assert not unchanged(case, row)  # the output was changed or replaced
