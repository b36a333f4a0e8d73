"""Loading MedSAM / SAM ViT-B weights safely, and refusing everything else with a clear reason."""

from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch

from medsam_gui.errors import CheckpointError
from medsam_gui.models.checkpoints import extract_state_dict, file_sha256, load_state_dict_file
from medsam_gui.models.medsam import load_medsam_state_dict
from medsam_gui.models.sam_loader import build_sam_vit_b, sam_modeling, vit_b_state_dict_shapes



def test_vit_b_built_without_torchvision():
    assert "torchvision" not in sys.modules
    m = sam_modeling()
    if torch.__class__ and __import__("importlib").util.find_spec("torchvision") is None:
        # private copy of segment_anything.modeling; segment_anything/__init__ never ran
        assert m.__name__ == "_medsam_gui_sam_modeling"
        assert "segment_anything" not in sys.modules
    with torch.device("meta"):
        sam = build_sam_vit_b()
    enc = sam.image_encoder
    assert len(enc.blocks) == 12
    assert enc.patch_embed.proj.out_channels == 768
    assert [i for i, b in enumerate(enc.blocks) if b.window_size == 0] == [2, 5, 8, 11]
    assert enc.blocks[0].window_size == 14 and enc.blocks[0].attn.num_heads == 12
    assert sam.prompt_encoder.image_embedding_size == (64, 64)
    assert sam.mask_decoder.num_multimask_outputs == 3
    assert len(sam.mask_decoder.transformer.layers) == 2
    assert "torchvision" not in sys.modules
    shapes = vit_b_state_dict_shapes()
    assert len(shapes) == 314 and shapes["image_encoder.pos_embed"] == (1, 64, 64, 768)


def test_official_plain_state_dict_loads_strictly(medsam_state_dict, medsam_checkpoint):
    path = medsam_checkpoint
    sd = load_medsam_state_dict(path)
    ref = medsam_state_dict
    assert set(sd) == set(ref)
    assert torch.equal(sd["mask_decoder.iou_prediction_head.layers.2.weight"],
                       ref["mask_decoder.iou_prediction_head.layers.2.weight"])
    assert len(file_sha256(path)) == 64


def test_training_checkpoint_with_module_prefix(tmp_path, medsam_state_dict):
    ref = medsam_state_dict
    wrapped = {"model": {f"module.{k}": v for k, v in ref.items()}, "epoch": 12,
               "optimizer": {"lr": 1e-4}}
    p = tmp_path / "medsam_model_best.pth"
    torch.save(wrapped, p)
    sd = load_medsam_state_dict(p)
    assert set(sd) == set(ref)
    assert torch.equal(sd["image_encoder.neck.0.weight"], ref["image_encoder.neck.0.weight"])


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_medsam_state_dict(tmp_path / "nope.pth")


def test_truncated_file(tmp_path, medsam_checkpoint):
    src = medsam_checkpoint
    p = tmp_path / "medsam_vit_b.pth"
    with open(src, "rb") as fin, open(p, "wb") as fout:
        fout.write(fin.read(5_000_000))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_medsam_state_dict(p)


def test_empty_and_html_files(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_medsam_state_dict(empty)
    html = tmp_path / "medsam_vit_b.pth"
    html.write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(CheckpointError, match="not a PyTorch weights file"):
        load_medsam_state_dict(html)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Custom:
    pass


def test_code_carrying_pickles_are_refused_and_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "x": _Evil(marker)}, p)
    with pytest.raises(CheckpointError, match="refused: the file contains code/objects, not plain weights"):
        load_medsam_state_dict(p)
    assert not marker.exists()
    # a raw (non-torch) pickle with the same payload
    raw = tmp_path / "evil_raw.pth"
    with open(raw, "wb") as fh:
        pickle.dump({"x": _Evil(marker)}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refused: the file contains code/objects"):
        load_medsam_state_dict(raw)
    assert not marker.exists()
    custom = tmp_path / "custom.pth"
    torch.save({"model": _Custom()}, custom)
    with pytest.raises(CheckpointError, match="refused"):
        load_medsam_state_dict(custom)


def test_vit_h_shapes_are_named(tmp_path, medsam_state_dict):
    ref = medsam_state_dict
    # a small file: SAM's decoder/prompt encoder plus a few ViT-H-shaped encoder tensors
    fake = {k: v for k, v in ref.items() if not k.startswith("image_encoder.")}
    fake["image_encoder.patch_embed.proj.weight"] = torch.zeros(1280, 3, 16, 16)
    fake["image_encoder.pos_embed"] = torch.zeros(1, 64, 64, 1280)
    fake["image_encoder.blocks.31.norm1.weight"] = torch.zeros(1280)
    p = tmp_path / "sam_vit_h_4b8939.pth"
    torch.save(fake, p)
    with pytest.raises(CheckpointError) as ei:
        load_medsam_state_dict(p)
    msg = str(ei.value)
    # one sentence naming the model, no key names (issue 17)
    assert msg.startswith("This file (sam_vit_h_4b8939.pth) is a SAM ViT-H checkpoint, not MedSAM (SAM ViT-B).")
    assert "image_encoder" not in msg and "Choose the official MedSAM (SAM ViT-B) weights file" in msg


def test_universeg_keys_are_named(tmp_path, golden_dir):
    g = torch.load(golden_dir / "universeg_v1_seed1234_S8.pt", map_location="cpu", weights_only=True)
    p = tmp_path / "universeg_v1_nf64_ss64_STA.pt"
    torch.save(g["state_dict"], p)
    with pytest.raises(CheckpointError) as ei:
        load_medsam_state_dict(p)
    msg = str(ei.value)
    assert msg.startswith("This file (universeg_v1_nf64_ss64_STA.pt) is a UniverSeg checkpoint, not MedSAM")
    assert "enc_blocks" not in msg


def test_empty_dict_and_non_dict(tmp_path):
    p = tmp_path / "empty_dict.pth"
    torch.save({}, p)
    with pytest.raises(CheckpointError, match="no weights .an empty dictionary"):
        load_medsam_state_dict(p)
    q = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], q)
    with pytest.raises(CheckpointError, match="not a dictionary of tensors"):
        load_medsam_state_dict(q)


def test_partial_checkpoint_lists_missing_keys(tmp_path, medsam_state_dict):
    ref = medsam_state_dict
    partial = {k: v for k, v in ref.items() if not k.startswith("image_encoder.")}
    p = tmp_path / "decoder_only.pth"
    torch.save(partial, p)
    with pytest.raises(CheckpointError) as ei:
        load_medsam_state_dict(p)
    msg = str(ei.value)
    assert "the image encoder weights are missing" in msg
    assert "expected keys are missing: image_encoder.pos_embed" in msg


def test_generic_helper_for_other_models(tmp_path):
    p = tmp_path / "tiny.pt"
    torch.save({"state_dict": {"module.conv.weight": torch.ones(2, 1, 3, 3), "module.conv.bias": torch.zeros(2)}}, p)
    sd = load_state_dict_file(p, expected_keys={"conv.weight": (2, 1, 3, 3), "conv.bias": (2,)}, model_name="Tiny")
    assert set(sd) == {"conv.weight", "conv.bias"}
    with pytest.raises(CheckpointError, match=r"conv.bias \(2,\) \(expected \(3,\)\)"):
        load_state_dict_file(p, expected_keys={"conv.weight": (2, 1, 3, 3), "conv.bias": (3,)}, model_name="Tiny")
    assert set(extract_state_dict({"model": {"_orig_mod.a": torch.zeros(1)}})) == {"a"}


def test_sha256_is_cached_by_path_mtime_size(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    h1 = file_sha256(p)
    assert h1 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    p.write_bytes(b"abcd")  # size changes -> rehash
    assert file_sha256(p) != h1
