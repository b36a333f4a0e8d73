"""Driving the viewer from code (tests, benchmarks, scripted demos) as a user's mouse would."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def drag_on_layer(layer, p0_data: Sequence[float], p1_data: Sequence[float], *,
                  displayed: Sequence[int] = (1, 2), steps: int = 3) -> None:
    """Press at ``p0_data``, drag to ``p1_data`` in ``steps`` moves, release: layer data
    coordinates (e.g. (slice, row, col)), sent through napari's mouse callbacks of ``layer`` -
    what a mouse drag on the canvas calls (box and line tools, brushes)."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    scale = np.asarray(layer.scale, float)
    w0 = np.asarray(p0_data, float) * scale
    w1 = np.asarray(p1_data, float) * scale
    disp = list(displayed)
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=tuple(w0), dims_displayed=disp))
    for t in np.linspace(0, 1, steps + 1)[1:]:
        mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True,
                                                          position=tuple(w0 + t * (w1 - w0)), dims_displayed=disp))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=tuple(w1),
                                                         dims_displayed=disp))
