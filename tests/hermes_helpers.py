"""Shared Hermes-R test objects (built once per process): the cropped golden record
(tests/golden/hermes_seed2024_crop.pt, see tests/golden/hermes_README.md), the golden-rule
weights (crc32-randn-v1) and one network on them."""

from __future__ import annotations

import threading
from pathlib import Path

from weight_rule import rule_tensor

_lock = threading.Lock()
_memo: dict = {}
GOLDEN = Path(__file__).resolve().parent / "golden" / "hermes_seed2024_crop.pt"
CT = Path(__file__).resolve().parent / "data" / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"


def rule_weights(index: str, seed: int) -> dict:
    """The crc32-randn-v1 golden weights for the "key<TAB>shape" lines of ``index``."""
    out = {}
    for line in index.strip().splitlines():
        key, dims = line.split("\t")
        shape = tuple(int(d) for d in dims.split(","))
        out[key] = rule_tensor(seed, key, shape)
    return out


def gold() -> dict:
    import torch

    with _lock:
        if "gold" not in _memo:
            _memo["gold"] = torch.load(GOLDEN, weights_only=True)
        return _memo["gold"]


def state_dict() -> dict:
    g = gold()
    with _lock:
        if "sd" not in _memo:
            _memo["sd"] = rule_weights(g["weights_index"], g["weights_seed"])
        return _memo["sd"]


def network():
    """HermesUNet (CPU, float32, eval) on the golden weights."""
    sd = state_dict()
    with _lock:
        if "net" not in _memo:
            import torch

            from medsam_gui.models.hermes.network import build_hermes_r

            torch.set_num_threads(min(2, torch.get_num_threads()))
            net = build_hermes_r()
            net.load_state_dict(sd, strict=True)
            _memo["net"] = net.eval()
        return _memo["net"]


def prepared():
    """The demo CT (tests/data) read and prepared as the official pipeline does (CT)."""
    with _lock:
        if "prepared" not in _memo:
            from medsam_gui.io.readers import load_volume
            from medsam_gui.models.hermes.preprocess import prepare

            ct = load_volume(CT)
            _memo["prepared"] = (ct, prepare(ct, "CT"))
        return _memo["prepared"]
