"""MONAI 0.9 Gaussian sliding window, tested alone with the golden probe predictor (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsam_gui.io.readers import load_volume
from medsam_gui.models.auto_model import AutoSegmentationCancelled
from medsam_gui.models.universal.preprocess import preprocess
from medsam_gui.models.universal.sliding_window import gaussian_line, padding, sliding_window, window_starts
from universal_helpers import golden

CT = Path(__file__).parent / "data" / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"
_R = torch.arange(96, dtype=torch.float32)
PROBE = 1 + _R[:, None, None] / 95 + 2 * _R[None, :, None] / 95 + 4 * _R[None, None, :] / 95


def probe(x: torch.Tensor) -> torch.Tensor:
    """The golden file's stand-in predictor: x * (1 + a/95 + 2b/95 + 4c/95) inside each window."""
    return x * PROBE


@pytest.fixture(scope="module")
def g():
    return golden()


@pytest.fixture(scope="module")
def image():
    return preprocess(load_volume(CT)).image


def test_gaussian_line_windows_and_padding_as_monai_0_9(g, image):
    assert torch.allclose(gaussian_line(), torch.from_numpy(g["sw_importance_line"]), atol=1e-6, rtol=0)
    assert window_starts(image.shape) == [tuple(s) for s in g["sw_window_starts"].tolist()]
    assert padding(image.shape) == [tuple(p) for p in g["sw_pad"].tolist()]
    assert window_starts((100, 96, 20), overlap=0.25) == [(0, 0, 0), (4, 0, 0)]


def test_blending_matches_the_golden_probe(g, image):
    seen = []
    out = sliding_window(image, probe, 1, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 15) for i in range(1, 16)]
    assert tuple(out.shape) == (1,) + image.shape
    idx = torch.from_numpy(g["sw_sample_idx"].astype(np.int64))
    at = out[0][idx[:, 0], idx[:, 1], idx[:, 2]]
    assert (at - torch.from_numpy(g["probe_at_samples"])).abs().max() <= 1e-5
    o = out[0].double()
    assert np.allclose([o.mean(), o.std(), o.min(), o.max()], g["probe_stats"][0], atol=1e-5, rtol=0)
    half = sliding_window(image, probe, 1, accumulate=torch.float16)
    assert half.dtype == torch.float16
    assert ((half[0].float() - out[0]).abs() / out[0].abs().clamp(min=1)).max() <= 5e-3  # ~4 float16 ulps


def test_stop_is_checked_between_windows():
    calls = []

    def predictor(x):
        calls.append(1)
        return x.repeat(1, 2, 1, 1, 1)

    with pytest.raises(AutoSegmentationCancelled):
        sliding_window(np.zeros((150, 100, 40), np.float32), predictor, 2, stop=lambda: len(calls) == 2)
    assert len(calls) == 2
