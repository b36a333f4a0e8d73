"""MedSAM2 checkpoint loading: the official layout ({"model": state_dict}, 471 keys, no
prefix) loads strictly; wrong models, truncated files and code-carrying pickles are refused
with a CheckpointError that says what is wrong."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from medsam_gui.errors import CheckpointError
from medsam_gui.models.medsam2.engine import MedSAM2Engine, expected_shapes, load_medsam2_state_dict


@pytest.fixture(scope="module")
def zero_sd():
    return {k: torch.zeros(s) for k, s in expected_shapes().items()}


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, zero_sd):
    p = tmp_path_factory.mktemp("m2ckpt") / "MedSAM2_latest.pt"
    torch.save({"model": zero_sd}, p)
    return p


def test_official_layout_loads_strictly(official_file, zero_sd):
    sd = load_medsam2_state_dict(official_file)
    assert len(sd) == 471 and set(sd) == set(zero_sd)
    assert "maskmem_tpos_enc" in sd and tuple(sd["maskmem_tpos_enc"].shape) == (7, 1, 1, 64)
    eng = MedSAM2Engine(official_file, device="cpu")
    assert len(eng.checkpoint_id) == 64 and eng.precision == "fp32"
    assert not any(p.requires_grad for p in eng.model.parameters())


def test_truncated_file(tmp_path, official_file):
    bad = tmp_path / "MedSAM2_latest.pt"
    data = official_file.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_medsam2_state_dict(bad)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MEDSAM_GUI_HOME', '/tmp')}/medsam2_pwned",))


def test_pickles_that_run_code_are_refused(tmp_path, zero_sd):
    p = tmp_path / "evil.pt"
    torch.save({"model": {"no_obj_ptr": zero_sd["no_obj_ptr"]}, "x": _Payload()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        load_medsam2_state_dict(p)
    assert not os.path.exists(os.path.join(os.environ["MEDSAM_GUI_HOME"], "medsam2_pwned"))
    p2 = tmp_path / "with_args.pt"  # a training checkpoint that pickles its argparse namespace
    torch.save({"model": {"no_obj_ptr": zero_sd["no_obj_ptr"]}, "args": argparse.Namespace(lr=1e-4)}, p2)
    with pytest.raises(CheckpointError, match="refused"):
        load_medsam2_state_dict(p2)


def test_wrong_models_are_named(tmp_path, zero_sd):
    sam = {"image_encoder.blocks.0.norm1.weight": torch.zeros(768), "mask_decoder.iou_token.weight": torch.zeros(1, 256)}
    p = tmp_path / "medsam_vit_b.pth"
    torch.save(sam, p)
    with pytest.raises(CheckpointError, match="segment-anything") as e:
        load_medsam2_state_dict(p)
    assert "MedSAM2" in str(e.value)

    small = dict(zero_sd)  # Hiera-small: 16 trunk blocks of embed 96
    for i in range(12, 16):
        for k, v in zero_sd.items():
            if k.startswith("image_encoder.trunk.blocks.11."):
                small[k.replace("blocks.11.", f"blocks.{i}.")] = v
    p = tmp_path / "sam2.1_hiera_small.pt"
    torch.save({"model": small}, p)
    with pytest.raises(CheckpointError, match="Hiera-small"):
        load_medsam2_state_dict(p)

    missing = {k: v for k, v in zero_sd.items() if not k.startswith("memory_")}
    p = tmp_path / "image_only.pt"
    torch.save({"model": missing}, p)
    with pytest.raises(CheckpointError, match="memory modules are missing"):
        load_medsam2_state_dict(p)

    one_short = dict(zero_sd)
    del one_short["no_obj_embed_spatial"]
    p = tmp_path / "one_short.pt"
    torch.save({"model": one_short}, p)
    with pytest.raises(CheckpointError, match="1 expected keys are missing: no_obj_embed_spatial"):
        load_medsam2_state_dict(p)

    wrong_shape = dict(zero_sd)
    wrong_shape["maskmem_tpos_enc"] = torch.zeros(9, 1, 1, 64)
    with pytest.raises(CheckpointError, match="wrong shape"):
        MedSAM2Engine(wrong_shape, device="cpu")
