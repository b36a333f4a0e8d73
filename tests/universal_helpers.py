"""Golden weights and golden-file access for the CLIP-Driven Universal Model tests."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).parent / "golden" / "universal_seed2024_cut.npz"


def golden() -> dict:
    """The cut golden file (see tests/golden/README.md) as {key: numpy array or str}."""
    with np.load(GOLDEN, allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].dtype.kind == "U" else z[k]) for k in z.files}


def rule_tensor(seed: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """crc32-randn-v1: the golden weight of one floating-point tensor."""
    g = torch.Generator().manual_seed((seed * 1000003 + zlib.crc32(key.encode())) % 2**63)
    last = key.rsplit(".", 1)[-1]
    if last == "running_var":
        return torch.rand(shape, generator=g) + 0.5
    if last == "running_mean":
        return torch.randn(shape, generator=g) * 0.1
    if len(shape) <= 1:
        return (1.0 if last == "weight" else 0.0) + torch.randn(shape, generator=g) * 0.1
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))


def golden_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The rule's weights for every floating-point entry of model's state dict (ints kept)."""
    return {k: rule_tensor(seed, k, tuple(v.shape)) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


def unpack(bits: np.ndarray, shape) -> np.ndarray:
    """np.packbits data -> bool array of shape."""
    return np.unpackbits(bits, count=math.prod(shape)).reshape(tuple(shape)).astype(bool)
