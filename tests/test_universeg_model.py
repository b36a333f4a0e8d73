"""UniverSeg v1 network: golden parity with the reference model, parameter count, strict loading
and refusal of wrong checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch

from medsam_gui.errors import CheckpointError
from medsam_gui.models import universeg_v1
from medsam_gui.models.universeg import N_PARAMETERS, UniverSeg, load_universeg_state_dict

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return torch.load(golden_dir / "universeg_v1_seed1234_S8.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def golden_model(golden):
    return universeg_v1(golden["state_dict"])


def test_parameter_count_and_key_layout(golden):
    model = UniverSeg()
    assert sum(p.numel() for p in model.parameters()) == N_PARAMETERS == 1_182_785
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in golden["state_dict"].items()}
    assert len(ref) == 44
    assert ours == ref
    assert ours["enc_blocks.0.cross.cross_conv.weight"] == (64, 3, 3, 3)
    assert ours["dec_blocks.0.cross.cross_conv.weight"] == (64, 256, 3, 3)


def test_golden_logits_parity(golden, golden_model):
    assert not golden_model.training
    # strict load of the reference state dict
    fresh = UniverSeg()
    missing, unexpected = fresh.load_state_dict(golden["state_dict"], strict=True)
    assert not missing and not unexpected
    with torch.inference_mode():
        logits = golden_model(golden["target_image"], golden["support_images"], golden["support_labels"])
    assert logits.shape == (1, 1, 128, 128)
    diff = (logits - golden["expected_logits"]).abs().max().item()
    assert diff < 1e-4, diff
    # the support labels matter: a wrong label channel changes the output
    with torch.inference_mode():
        other = golden_model(golden["target_image"], golden["support_images"], 1 - golden["support_labels"])
    assert (other - golden["expected_logits"]).abs().max().item() > 1e-2


def test_batch_of_targets_matches_single(golden, golden_model):
    t = golden["target_image"]
    si, sl = golden["support_images"][:, :3], golden["support_labels"][:, :3]
    t2 = torch.cat([t, t.flip(-1)])
    with torch.inference_mode():
        both = golden_model(t2, si.expand(2, -1, -1, -1, -1), sl.expand(2, -1, -1, -1, -1))
        one = golden_model(t.flip(-1), si, sl)
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_checkpoint_file_and_wrapper(tmp_path, golden):
    sd = golden["state_dict"]
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": sd, "epoch": 3}, wrapped)
    for source in (plain, str(wrapped), {"state_dict": sd}):
        model = universeg_v1(source)
        assert not model.training
        w = model.state_dict()["out_conv.conv.weight"]
        assert torch.equal(w, sd["out_conv.conv.weight"])


def _expect_error(source, *fragments):
    with pytest.raises(CheckpointError) as info:
        universeg_v1(source)
    msg = str(info.value)
    for frag in fragments:
        assert frag.lower() in msg.lower(), msg
    return msg


def test_refuses_wrong_checkpoints(tmp_path, golden):
    sd = dict(golden["state_dict"])
    # missing key
    missing = dict(sd)
    del missing["out_conv.conv.bias"]
    _expect_error(missing, "missing", "out_conv.conv.bias")
    # extra key
    extra = dict(sd)
    extra["enc_blocks.4.cross.cross_conv.weight"] = torch.zeros(1)
    _expect_error(extra, "unexpected", "enc_blocks.4")
    # wrong shape (a narrower network)
    wrong = dict(sd)
    wrong["out_conv.conv.weight"] = torch.zeros(1, 32, 1, 1)
    _expect_error(wrong, "shape", "out_conv.conv.weight")
    # MedSAM / SAM weights
    _expect_error({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
                   "mask_decoder.iou_token.weight": torch.zeros(1, 256)}, "MedSAM")
    # empty dict, and a non-dict
    _expect_error({}, "empty")
    _expect_error([1, 2, 3], "dict")
    # truncated file
    full = tmp_path / "full.pt"
    torch.save(sd, full)
    data = full.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    _expect_error(trunc, "corrupt")
    # empty file and missing file
    (tmp_path / "zero.pt").write_bytes(b"")
    _expect_error(tmp_path / "zero.pt", "empty")
    _expect_error(tmp_path / "nope.pt", "not found")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_refuses_pickle_with_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": _Evil()}}, path)
    _expect_error(path, "refused: the file contains code")
    assert "code ran" not in capsys.readouterr().out
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        universeg_v1(raw)
    assert "code ran" not in capsys.readouterr().out


def test_validated_state_dict_strips_module_prefix(golden):
    sd = {"module." + k: v for k, v in golden["state_dict"].items()}
    out = load_universeg_state_dict(sd)
    assert set(out) == set(golden["state_dict"])
