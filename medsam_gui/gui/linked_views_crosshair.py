"""The linked views' crosshair on napari's main canvas: one vispy line node (two segments) in
the canvas scene, drawn above the layers. It is not a napari layer, so it never shows in the
layer list, sessions or exports.

napari's 2D scene coordinates are world coordinates (mm) of the displayed dims, scene x =
the horizontal (last displayed) dim, scene y = the vertical one; the camera applies the
view's flips, so the line needs none.
"""

from __future__ import annotations

import numpy as np

from .linked_views_pane import CROSSHAIR_RGB


def crosshair_segments(point, order, shape, scale, translate) -> np.ndarray:
    """Scene coordinates (4, 2) of the two crosshair segments through display ``point``.

    ``order``: napari dims order of the view (the last two are displayed: vertical,
    horizontal); ``shape``/``scale``/``translate``: the image layer's display shape, scale
    (mm) and translate along display axes 0, 1, 2. Each segment spans the whole scan.
    """
    dv, dh = order[1], order[2]

    def world(d: int, value: float) -> float:
        return float(value) * float(scale[d]) + float(translate[d])

    v, h = world(dv, point[dv]), world(dh, point[dh])
    v0, v1 = world(dv, -0.5), world(dv, shape[dv] - 0.5)
    h0, h1 = world(dh, -0.5), world(dh, shape[dh] - 0.5)
    return np.array([[h0, v], [h1, v], [h, v0], [h, v1]], dtype=np.float32)


class CanvasCrosshair:
    """The crosshair line on the main canvas (``qt_viewer.canvas``: napari's VispyCanvas)."""

    def __init__(self, qt_viewer) -> None:
        from vispy.scene.visuals import Line

        self._scene = qt_viewer.canvas.view.scene
        color = tuple(c / 255.0 for c in CROSSHAIR_RGB) + (1.0,)
        self.line = Line(pos=np.zeros((4, 2), np.float32), color=color, width=1, connect="segments")
        self.line.order = 1_000_000  # above every layer
        self.line.set_gl_state("translucent", depth_test=False)
        self.segments: np.ndarray | None = None

    def show(self, segments: np.ndarray) -> None:
        self.segments = segments
        self.line.set_data(pos=segments)
        if self.line.parent is None:
            self.line.parent = self._scene

    def hide(self) -> None:
        self.segments = None
        self.line.parent = None
