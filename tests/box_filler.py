"""A stand-in box segmenter for GUI tests: every box comes back filled (no model needed)."""

from __future__ import annotations

import numpy as np


def box_filler(hw):
    """``segment(index, box) -> bool (H, W)`` mask of the box (x0, y0, x1, y1), inclusive."""
    def segment(_index, box):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        m = np.zeros(hw, bool)
        m[y0:y1 + 1, x0:x1 + 1] = True
        return m
    return segment
