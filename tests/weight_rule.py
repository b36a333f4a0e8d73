"""The golden files' weight rule "crc32-randn-v1" (../shared/golden/README.md): each tensor drawn
from a generator seeded by the file's seed and the crc32 of its key name."""

from __future__ import annotations

import math
import zlib

import torch


def rule_tensor(seed: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The golden weight of one floating-point tensor ``key`` of ``shape``."""
    g = torch.Generator().manual_seed((seed * 1000003 + zlib.crc32(key.encode())) % 2**63)
    last = key.rsplit(".", 1)[-1]
    if last == "running_var":
        return torch.rand(shape, generator=g) + 0.5
    if last == "running_mean":
        return torch.randn(shape, generator=g) * 0.1
    if len(shape) <= 1:
        return (1.0 if last == "weight" else 0.0) + torch.randn(shape, generator=g) * 0.1
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
