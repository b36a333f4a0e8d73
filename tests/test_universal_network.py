"""The Universal Model network reproduces the official one window (golden file, tests/golden)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_gui.errors import CheckpointError
from medsam_gui.models.universal.network import UniversalModel, apply_heads, universal_model
from universal_helpers import golden, golden_state, unpack

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def g():
    return golden()


@pytest.fixture(scope="module")
def released_files(g, tmp_path_factory):
    """The golden weights written in the released layout: ckpt['net'] + txt_encoding.pth."""
    state = golden_state(UniversalModel(), int(g["seed"]))
    folder = tmp_path_factory.mktemp("universal")
    net = {"module." + k.removeprefix("backbone."): v for k, v in state.items()}
    torch.save({"epoch": 0, "net": net}, folder / "clip_driven_universal_swin_unetr.pth")
    torch.save(torch.from_numpy(g["organ_embedding_f16"]), folder / "txt_encoding.pth")
    return folder / "clip_driven_universal_swin_unetr.pth", folder / "txt_encoding.pth", state


@pytest.fixture(scope="module")
def window(g, released_files):
    """One forward of the golden window: (model, logits (32,96,96,96), backbone outputs)."""
    model = universal_model(*released_files[:2])
    z0, z1 = (int(v) for v in g["sw_pad"][2])
    x = torch.from_numpy(np.pad(g["net_input_real"], ((0, 0), (0, 0), (z0, z1))))[None, None]
    seen = {}
    hook = model.backbone.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        logits = model(x)[0]
    hook.remove()
    return model, logits, seen["out"]


def test_golden_weights_rebuilt_under_official_names(g, released_files):
    state = released_files[2]
    assert list(state) == g["state_keys"].split("\n")
    assert len(state) == 170
    sums = dict(zip(g["fingerprint_keys"].split("\n"), g["fingerprint_sums"]))
    assert len(sums) == 162
    for key, expected in sums.items():
        assert state[key].double().sum().item() == pytest.approx(expected, rel=1e-9, abs=1e-9), key


def test_one_window_matches_official_logits_and_masks(g, window):
    model, logits, _ = window
    assert tuple(logits.shape) == (32, 96, 96, 96)
    assert torch.equal(model.organ_embedding, torch.from_numpy(g["organ_embedding_f16"]).float())
    idx = int(g["net_logits_idx"][0])
    ours = logits[idx, ::2, ::2, ::2].numpy()
    assert np.abs(ours - g["net_logits_3_s2"]).max() <= 1e-3
    sub = logits[:, ::2, ::2, ::2].numpy()
    expected = unpack(g["net_masks_s2_packed"], sub.shape)
    differ = (sub > 0) != expected
    assert np.all(np.abs(sub[differ]) < 1e-3)
    counts = (logits > 0).sum((1, 2, 3)).numpy()
    borderline = (logits.abs() < 1e-3).sum((1, 2, 3)).numpy()
    assert np.all(np.abs(counts - g["net_mask_counts"]) <= borderline)


def test_heads_of_a_subset_equal_the_full_forward(window):
    model, logits, (dec4, out) = window
    with torch.no_grad():
        params = model.head_params(dec4, [9, 5])
        sub = apply_heads(params, model.precls_conv(out)[0])
    assert torch.allclose(sub, logits[[9, 5]], atol=1e-5)


def test_wrong_files_are_refused_with_a_reason(tmp_path, released_files):
    emb = tmp_path / "emb.pth"
    torch.save(torch.zeros(32, 512, dtype=torch.float16), emb)
    with pytest.raises(CheckpointError, match="text embedding"):
        universal_model(emb)
    hermes = tmp_path / "hermes.pth"
    torch.save({"epoch": 1, "model_state_dict": {"w": torch.zeros(1)}, "ema_model_state_dict": {}}, hermes)
    with pytest.raises(CheckpointError, match="Hermes"):
        universal_model(hermes)
    partial = tmp_path / "partial.pth"
    torch.save({"net": {"module.organ_embedding": torch.zeros(32, 512)}}, partial)
    with pytest.raises(CheckpointError, match=r"missing: .*\(169\)"):
        universal_model(partial)
    truncated = tmp_path / "truncated.pth"
    with open(released_files[0], "rb") as fh:
        truncated.write_bytes(fh.read(1 << 20))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        universal_model(truncated)
    with pytest.raises(CheckpointError, match=r"\(32, 512\) CLIP"):
        universal_model(released_files[0], partial)
