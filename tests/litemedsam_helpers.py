"""Helpers for the LiteMedSAM tests: the golden weights (rule "crc32-randn-v1") rebuilt from the
trimmed golden file, and a checkpoint file in the official ``lite_medsam.pth`` layout."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from weight_rule import rule_tensor

GOLDEN = Path(__file__).resolve().parent / "golden" / "litemedsam_seed2024_trim.npz"


@lru_cache(maxsize=1)
def golden() -> dict:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}




def golden_layout() -> list[tuple[str, tuple[int, ...]]]:
    g = golden()
    keys = str(g["state_keys"]).split("\n")
    shapes = [tuple(int(v) for v in s.split(",") if v) for s in str(g["state_shapes"]).split("\n")]
    return list(zip(keys, shapes))


@lru_cache(maxsize=1)
def golden_state_dict() -> dict:
    """The 435-tensor golden state dict (official key names; num_batches_tracked = 0)."""
    seed = int(golden()["seed"])
    sd = {}
    for key, shape in golden_layout():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0, dtype=torch.long)
        else:
            sd[key] = rule_tensor(seed, key, shape)
    return sd


_tmp = None


@lru_cache(maxsize=1)
def golden_checkpoint() -> Path:
    """``lite_medsam.pth`` (plain state dict, torch.save) with the golden weights, written once per
    test session into a temporary folder."""
    global _tmp
    _tmp = tempfile.TemporaryDirectory(prefix="litemedsam-")
    path = Path(_tmp.name) / "lite_medsam.pth"
    torch.save(golden_state_dict(), path)
    return path
