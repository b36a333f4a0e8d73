"""Agreement measures between two embeddings or two masks (benchmarks and tests)."""

from __future__ import annotations

import numpy as np


def cosine_and_relerr(a, b) -> tuple[float, float]:
    """(cosine similarity, relative L2 error |a-b|/|b|) of two embeddings (any shape)."""
    import torch

    a = torch.as_tensor(a).double().reshape(-1)
    b = torch.as_tensor(b).double().reshape(-1)
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-30))
    rel = float((a - b).norm() / b.norm().clamp_min(1e-30))
    return cos, rel


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)
