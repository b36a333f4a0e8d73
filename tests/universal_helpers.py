"""Golden weights and golden-file access for the CLIP-Driven Universal Model tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from weight_rule import rule_tensor

GOLDEN = Path(__file__).parent / "golden" / "universal_seed2024_cut.npz"


def golden() -> dict:
    """The cut golden file (see tests/golden/README.md) as {key: numpy array or str}."""
    with np.load(GOLDEN, allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].dtype.kind == "U" else z[k]) for k in z.files}




def golden_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The rule's weights for every floating-point entry of model's state dict (ints kept)."""
    return {k: rule_tensor(seed, k, tuple(v.shape)) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


def unpack(bits: np.ndarray, shape) -> np.ndarray:
    """np.packbits data -> bool array of shape."""
    return np.unpackbits(bits, count=math.prod(shape)).reshape(tuple(shape)).astype(bool)
