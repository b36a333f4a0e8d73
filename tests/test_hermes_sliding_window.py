"""Hermes-R sliding window: the official window list, its averaging (repeated windows count
again), float16 sums, progress/stop. The full run against the golden masks needs nine 128^3
windows (minutes on a CPU): bench/hermes.py does it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hermes_helpers as H
from medsam_gui.models.hermes import sliding_window as sw
from medsam_gui.models.hermes.sliding_window import (WindowPlan, WindowsStopped, axis_starts, sliding_window,
                                                     stride_for)


def test_window_list_is_the_official_call_order():
    g = H.gold()
    plan = WindowPlan(tuple(g["prep_final_shape"].tolist()), 128, stride_for(128, 0.5))
    assert plan.stride == 64
    assert plan.padded == tuple(g["sw_padded_shape"].tolist())
    assert plan.calls() == [tuple(w) for w in g["sw_windows"].tolist()]
    assert len(plan.distinct()) == g["sw_distinct_windows"]
    assert axis_starts(256, 128, 64) == [0, 64, 128, 128]
    assert axis_starts(200, 128, 96) == [0, 72]  # coverage kept when the stride exceeds half a window


def _official_mean(forward, volume, window, stride):
    """The official loop: every call adds its sigmoid and one count."""
    padded = np.pad(volume, [(0, max(0, window - n)) for n in volume.shape])
    total = np.zeros((2, *padded.shape))
    count = np.zeros(padded.shape)
    for d0, d1, h0, h1, w0, w1 in WindowPlan(volume.shape, window, stride).calls():
        logits = forward(torch.from_numpy(padded[d0:d1, h0:h1, w0:w1]).reshape(1, 1, d1 - d0, h1 - h0, w1 - w0))
        total[:, d0:d1, h0:h1, w0:w1] += torch.sigmoid(logits)[0].double().numpy()
        count[d0:d1, h0:h1, w0:w1] += 1
    return (total / count)[(slice(None), *(slice(0, n) for n in volume.shape))]


def _toy_forward(x):
    """Two channels that differ between windows (the window's content and its position)."""
    return torch.stack([x[0, 0] * 3 - x.mean() * 5, x[0, 0].flip(0) - 1.0])[None]


def test_average_weights_repeated_windows_like_the_official_loop():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(16, 5, 13)).astype(np.float32)  # z repeats a start, y is padded
    seen = []
    centred = sliding_window(_toy_forward, volume, 2, window=8, overlap=0.5, progress=lambda d, t: seen.append((d, t)))
    expected = _official_mean(_toy_forward, volume, 8, 4)
    assert centred.shape == (2, 16, 5, 13)
    assert np.abs(centred + 0.5 - expected).max() < 1e-6
    assert seen == [(i + 1, 9) for i in range(9)]  # z starts 0,4,8,8 -> 3 distinct; x starts 0,4,5
    assert len(WindowPlan((16, 5, 13), 8, 4).calls()) == 4 * 2 * 3  # y padded to 8: starts 0, 0


def test_float16_sums_past_the_memory_budget(monkeypatch):
    """Past the budget the centred sums are float16: probabilities stay within 1e-3 and masks
    agree wherever |p - 0.5| >= 1e-3."""
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(16, 12, 13)).astype(np.float32)
    exact = sliding_window(_toy_forward, volume, 2, window=8)
    monkeypatch.setattr(sw, "ACCUMULATOR_BUDGET", 1000)
    small = sliding_window(_toy_forward, volume, 2, window=8)
    assert exact.dtype == np.float32 and small.dtype == np.float16
    assert np.abs(small.astype(np.float32) - exact).max() < 1e-3
    clear = np.abs(exact) >= 1e-3
    assert np.array_equal((small >= 0)[clear], (exact >= 0)[clear])


def test_stop_between_windows():
    calls = []
    with pytest.raises(WindowsStopped):
        sliding_window(lambda x: calls.append(1) or _toy_forward(x), np.zeros((16, 8, 8), np.float32), 2,
                       window=8, stop=lambda: len(calls) >= 2)
    assert len(calls) == 2
