"""`medsam-gui segment --engine litemedsam` end to end on the golden weights (in-process CLI):
the label map written for the golden MR case equals the official inference's mask."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsam_gui import api
from medsam_gui.cli import main
from medsam_gui.errors import CheckpointError

import litemedsam_helpers as H

torch.set_num_threads(2)
HIPPO = "msd_hippocampus/hippocampus_003_image.nii.gz"


def _borderline(c: int, hw) -> np.ndarray:
    """Pixels whose golden probability is within 1e-4 of 0.5 (allowed to differ)."""
    g = H.golden()
    lg = torch.from_numpy(g[f"c{c}_low_res_logits_crop"])[None, None]
    p = torch.sigmoid(torch.nn.functional.interpolate(lg, size=hw, mode="bilinear", align_corners=False))
    return (p[0, 0] - 0.5).abs().numpy() < 1e-4


def test_segment_with_litemedsam_engine_matches_golden(data_dir, tmp_path, capsys):
    g = H.golden()
    z = int(g["c1_slice_index"])
    x0, y0, x1, y1 = (int(v) for v in g["c1_box_xyxy"])
    out = tmp_path / "hippo_lite.nii.gz"
    rc = main(["segment", str(data_dir / HIPPO), "--engine", "litemedsam", "--checkpoint", str(H.golden_checkpoint()),
               "--box", f"{z},{x0},{y0},{x1},{y1}", "--label", "3", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "LiteMedSAM loaded from" in err and "(fp32)" in err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    src = sitk.ReadImage(str(data_dir / HIPPO))
    assert labels.shape == sitk.GetArrayFromImage(src).shape
    assert set(np.unique(labels)) <= {0, 3}
    assert not labels[np.arange(labels.shape[0]) != z].any()
    mine = labels[z] == 3
    gold = g["c1_mask"].astype(bool)
    assert gold.any()
    assert not ((mine != gold) & ~_borderline(1, gold.shape)).any()


def test_litemedsam_engine_needs_its_weights(data_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no LiteMedSAM weights installed.*weights download litemedsam"):
        api.resolve_checkpoint("litemedsam")
    rc = main(["segment", str(data_dir / HIPPO), "--engine", "litemedsam", "--box", "11,7,30,26,44",
               "--out", str(tmp_path / "x.nii.gz")])
    assert rc == 1 and not (tmp_path / "x.nii.gz").exists()


def test_api_engines_and_default():
    assert api.ENGINES["litemedsam"] == ("litemedsam", "LiteMedSAM")
    assert api.ENGINES["medsam"][0] == "medsam_vit_b"
    from medsam_gui.cli import _command_parser

    parser = _command_parser("segment")
    args = parser.parse_args(["segment", "scan.nii.gz", "--box", "1,1,1,2,2", "--out", "o.nii.gz"])
    assert args.engine == "medsam"
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "s.nii.gz", "--engine", "vit_h", "--box", "1,1,1,2,2", "--out", "o.nii.gz"])


def test_load_engine_builds_litemedsam():
    eng = api.load_engine("litemedsam", H.golden_checkpoint(), device="cpu", precision="auto")
    from medsam_gui.models.device import cpu_has_native_bf16
    from medsam_gui.models.litemedsam import LiteMedSAMEngine

    auto = "bf16" if cpu_has_native_bf16() else "fast"
    assert isinstance(eng, LiteMedSAMEngine) and eng.precision == auto and eng.name == "litemedsam"
    assert len(eng.checkpoint_id) == 64
