"""Shared MedSAM2 test objects (built once per process, whichever test asks first): the golden
record, the golden-rule random weights (crc32-randn-v1, tests/test_medsam2_golden.py) and one
MedSAM2Engine on them that keeps every slice's encoder features, so tests that run the golden
7-slice range (slices 30..36 of tests/data/lung_ct) share one encoding."""

from __future__ import annotations

import threading
from pathlib import Path

_lock = threading.Lock()
_memo: dict = {}
GOLDEN = Path(__file__).resolve().parent / "golden" / "medsam2_seed2024_reduced.pt"
OBJ_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"


def gold() -> dict:
    import torch

    with _lock:
        if "gold" not in _memo:
            _memo["gold"] = torch.load(GOLDEN, weights_only=True)
        return _memo["gold"]


def rule_state_dict() -> dict:
    """The golden weights (rule weights + the golden's overrides), CPU float32; do not modify."""
    g = gold()
    with _lock:
        if "sd" not in _memo:
            from test_medsam2_golden import rule_weights

            sd = rule_weights(g["state_keys"], g["state_shapes"], g["weights"]["seed"])
            for key, ov in g["weight_overrides"].items():
                sd[key] = sd[key] + ov["added"]
            _memo["sd"] = sd
        return _memo["sd"]


def engine():
    """MedSAM2Engine (CPU, fp32) on the golden weights, every slice's features cached."""
    sd = rule_state_dict()
    with _lock:
        if "engine" not in _memo:
            import torch

            from medsam_gui.models.medsam2.engine import MedSAM2Engine

            torch.set_num_threads(min(2, torch.get_num_threads()))
            _memo["engine"] = MedSAM2Engine(sd, device="cpu", precision="fp32", cache_slices=None)
        return _memo["engine"]


class no_object:
    """Context manager: the engine's object-score bias of the golden's no-object case (every
    slice reports no object), restored on exit."""

    def __init__(self, eng) -> None:
        self.bias = eng.model.sam_mask_decoder.pred_obj_score_head.layers[2].bias

    def __enter__(self):
        import torch

        ov = gold()["weight_overrides"][OBJ_BIAS]
        self.saved = self.bias.detach().clone()
        with torch.no_grad():
            self.bias.copy_(ov["rule_value"] + ov["added_for_nobj"])
        return self

    def __exit__(self, *exc):
        import torch

        with torch.no_grad():
            self.bias.copy_(self.saved)
        return False


def unpack(name: str):
    import math

    import numpy as np

    g = gold()
    shape = g[f"{name}_shape"]
    return np.unpackbits(g[f"{name}_packbits"].numpy(), count=math.prod(shape)).reshape(shape).astype(bool)
