"""Hermes-R network against the official golden file (tests/golden/hermes_seed2024_crop.pt):
key names/order/shapes, the rebuilt golden weights, one 64^3 forward, and checkpoint loading."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import hermes_helpers as H
from medsam_gui.errors import CheckpointError
from medsam_gui.models.hermes.network import build_hermes_r, hermes_r


def test_state_dict_layout_is_the_official_one():
    g = H.gold()
    net = build_hermes_r()
    ours = [f"{k}\t{','.join(map(str, v.shape))}" for k, v in net.state_dict().items()]
    assert ours == g["weights_index"].strip().splitlines()
    assert sum(p.numel() for p in net.parameters()) == 60_884_998
    assert len(list(net.buffers())) == 0


def test_golden_weights_match_fingerprint():
    g = H.gold()
    sums = np.array([np.asarray(v, dtype=np.float64).sum() for v in H.state_dict().values()])
    ref = g["weights_fingerprint"].numpy()
    assert np.all(np.abs(sums - ref) <= 1e-9 * np.maximum(np.abs(ref), 1.0))


@pytest.fixture(scope="module")
def net64():
    """(logits, modality logits, per-task classifier vectors) of the golden 64^3 forward."""
    g = H.gold()
    net = H.network()
    vectors = []
    hook = net.out.register_forward_hook(lambda m, args, out: vectors.append(m.weights(args[1])))
    try:
        with torch.no_grad():
            logits, mod_out = net(g["net64_input"], g["tgt_idx"], g["mod_idx"])
    finally:
        hook.remove()
    return logits, mod_out, vectors[0]


def test_net64_logits_and_modality_match_golden(net64):
    g = H.gold()
    logits, mod_out, _ = net64
    assert logits.shape == (1, 14, 64, 64, 64)
    diff = (logits[:, g["net64_logits_channels"]] - g["net64_logits"]).abs()
    assert diff.max() <= 5e-4 and diff.mean() <= 5e-5
    assert (mod_out - g["net64_mod_out"]).abs().max() <= 1e-5
    flat = logits[0].reshape(14, -1).double()
    stats = torch.stack([flat.mean(1), flat.std(1, correction=0), flat.min(1).values, flat.max(1).values], 1)
    assert torch.allclose(stats[:, :2], g["net64_logits_stats"][:, :2], atol=5e-5)
    assert torch.allclose(stats[:, 2:], g["net64_logits_stats"][:, 2:], atol=5e-4)


def test_classifier_vectors_match_and_depend_on_the_whole_token_list(net64):
    g = H.gold()
    assert (net64[2] - g["net64_classifier_weights"]).abs().max() <= 5e-4
    fuse = H.network().prior_init_fuse_2
    x = torch.randn(1, 128, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, all_tokens = fuse(x, g["tgt_idx"], g["mod_idx"])
        _, fewer = fuse(x, g["tgt_idx"][:, 1:], g["mod_idx"])
    assert (all_tokens[:, 1:14] - fewer[:, :13]).abs().max() > 1e-3


def test_null_token_and_unknown_modality_are_the_last_prior_rows():
    """-1 selects task_prior row 72 and modality_prior row 5: copying those rows to 71 and 4
    makes the explicit indices give the same priors."""
    fuse = copy.deepcopy(H.network().prior_init_fuse_2)
    with torch.no_grad():
        fuse.task_prior[71] = fuse.task_prior[72]
        fuse.modality_prior[4] = fuse.modality_prior[5]
        x = torch.randn(1, 128, 2, 2, 2, generator=torch.Generator().manual_seed(0))
        _, explicit = fuse(x, torch.tensor([[3, 71]]), torch.tensor([[4]]))
        _, wrapped = fuse(x, torch.tensor([[3, -1]]), torch.tensor([[-1]]))
        _, other = fuse(x, torch.tensor([[3, 70]]), torch.tensor([[4]]))
    assert torch.equal(explicit, wrapped)
    assert not torch.allclose(explicit, other)
    with pytest.raises(ValueError, match="task"):
        fuse(x, torch.tensor([[-2]]), torch.tensor([[0]]))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An official-layout checkpoint: EMA = golden weights; the raw model weights are a stub that
    would fail validation if they were the ones loaded."""
    path = tmp_path_factory.mktemp("hermes") / "hermes_r.pth"
    torch.save({"epoch": 199, "model_state_dict": {"inc.conv1.weight": torch.zeros(32, 1, 3, 3, 3)},
                "ema_model_state_dict": H.state_dict(), "optimizer_state_dict": {}}, path)
    return path


def test_hermes_r_loads_the_ema_weights(checkpoint):
    import medsam_gui.models

    assert medsam_gui.models.hermes_r is hermes_r
    net = hermes_r(checkpoint)
    key = "prior_fuse_6.task_prior"
    assert torch.equal(net.state_dict()[key], H.state_dict()[key])
    assert not net.training


def test_truncated_and_foreign_checkpoints_are_refused(checkpoint, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        hermes_r(cut)
    universal = tmp_path / "universal.pth"
    torch.save({"net": {"module.swinViT.patch_embed.proj.weight": torch.zeros(48, 1, 2, 2, 2)}}, universal)
    with pytest.raises(CheckpointError, match="Universal Model"):
        hermes_r(universal)
    universeg = tmp_path / "universeg.pth"
    torch.save({"enc_blocks.0.cross.cross_conv.weight": torch.zeros(64, 3, 3, 3)}, universeg)
    with pytest.raises(CheckpointError, match="UniverSeg"):
        hermes_r(universeg)
    partial = tmp_path / "partial.pth"
    torch.save({"ema_model_state_dict": {"inc.conv1.weight": torch.zeros(32, 1, 3, 3, 3)}}, partial)
    with pytest.raises(CheckpointError, match="404 expected keys are missing"):
        hermes_r(partial)
