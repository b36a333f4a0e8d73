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


def test_auto_case_without_the_automatic_models(tmp_path):
    (tmp_path / "m.csv").write_text(f"scan,task,input\n{SCAN},auto,hermes:liver\n")
    case, = read_manifest(tmp_path / "m.csv")
    row = run_case(case, Settings(types.ModuleType("api_without_auto"), str(tmp_path / "out")))
    assert row["status"] == "failed"
    assert row["message"] == "automatic model hermes is not available in this installation."
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
