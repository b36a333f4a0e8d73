"""Shared, expensive MedSAM test objects, built once per test process.

A random-weight SAM ViT-B (seed 0) saved like the official ``medsam_vit_b.pth`` (a plain state
dict, ~358 MiB) costs seconds to build and save, and one image-encoder pass costs tens of
seconds on the 2-core CI CPU. Pytest would re-run a session fixture imported into several
modules once per module, so the objects are memoised here at module level and the fixtures
below only hand them out.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
_lock = threading.Lock()
_memo: dict = {}


def _tmpdir() -> Path:
    if "dir" not in _memo:
        d = Path(tempfile.mkdtemp(prefix="medsam_test_weights_"))
        atexit.register(shutil.rmtree, d, True)
        _memo["dir"] = d
    return _memo["dir"]


def vit_b_state_dict() -> dict:
    """Random SAM ViT-B weights (seed 0), CPU float32 (shared: do not modify in place)."""
    with _lock:
        if "sd" not in _memo:
            import torch

            from medsam_gui.models.sam_loader import build_sam_vit_b

            torch.set_num_threads(2)
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(0)
            model = build_sam_vit_b()
            torch.random.set_rng_state(gen_state)
            _memo["sd"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return _memo["sd"]


def vit_b_checkpoint() -> Path:
    """Path of the random ViT-B weights saved as a plain state dict (official layout)."""
    sd = vit_b_state_dict()
    with _lock:
        if "ckpt" not in _memo:
            import torch

            path = _tmpdir() / "medsam_vit_b.pth"
            torch.save(sd, path)
            _memo["ckpt"] = path
        return _memo["ckpt"]


def engine():
    """A MedSAMEngine (CPU, fp32) on the random ViT-B checkpoint."""
    ckpt = vit_b_checkpoint()
    with _lock:
        if "engine" not in _memo:
            import torch

            from medsam_gui.models.medsam import MedSAMEngine

            torch.set_num_threads(2)
            _memo["engine"] = MedSAMEngine(ckpt, device="cpu", precision="fp32")
        return _memo["engine"]


def hippocampus_golden() -> dict:
    d = np.load(GOLDEN / "medsam_hippocampus003_mr.npz")
    return {k: d[k] for k in d.files}


def hippocampus_embedding():
    """The real engine's fp32 embedding (1,256,64,64) of the hippocampus golden slice
    (computed once per process: one encoder pass)."""
    eng = engine()
    with _lock:
        if "emb" not in _memo:
            _memo["emb"] = eng.embed_slice(hippocampus_golden()["volume_uint8_slice"])
        return _memo["emb"]


def has_embedding() -> bool:
    return "emb" in _memo


@pytest.fixture
def vit_b_ckpt() -> Path:
    return vit_b_checkpoint()


@pytest.fixture
def medsam_engine():
    return engine()
