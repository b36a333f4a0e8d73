"""The display half of :class:`~medsam_gui.gui.controller.Controller`: window/level of the
scan (the data never change) and the axial / coronal / sagittal views with edge letters.

Every method here is a ``Controller`` method (this mixin only keeps controller.py short).
"""

from __future__ import annotations

from ..core import intensity
from ..errors import MedsamGuiError
from .layers import view_spec

_EDGE_POSITIONS = ("top_center", "bottom_center", "middle_left", "middle_right")


class DisplayMixin:
    """Window/level and views of the controller (see controller.py for the API)."""

    # ------------------------------------------------------------------ window / level
    def _range_for(self, bounds, disp=None) -> tuple[float, float]:
        lo, hi = float(bounds[0]), float(bounds[1])
        if hi <= lo:
            hi = lo + 1.0
        return (lo, hi)

    def _set_contrast(self, bounds) -> None:
        layer = self._image_layer
        lo, hi = self._range_for(bounds)
        dmin, dmax = self._data_range
        rlo, rhi = min(lo, dmin), max(hi, dmax)
        if rhi <= rlo:
            rhi = rlo + 1.0
        self._syncing = True
        try:
            layer.contrast_limits_range = (rlo, rhi)
            layer.contrast_limits = (lo, hi)
        finally:
            self._syncing = False

    def set_window(self, lo: float, hi: float) -> None:
        """Show the scan with display window [lo, hi] (scan units). The data never change."""
        self._require_volume()
        if not hi > lo:
            raise MedsamGuiError(f"The window's upper bound ({hi}) must be above its lower bound ({lo}).")
        self._set_contrast((lo, hi))
        self.window_changed.emit(*self.window_bounds)

    def set_level_width(self, level: float, width: float) -> None:
        if width <= 0:
            raise MedsamGuiError(f"The window width must be positive, got {width}.")
        self.set_window(*intensity.window_bounds(level, width))

    def apply_preset(self, name: str) -> None:
        """A CT preset from ``intensity.WINDOW_PRESETS`` ("soft tissue", "lung", "bone", "brain", "liver")."""
        if name not in intensity.WINDOW_PRESETS:
            raise MedsamGuiError(f"Unknown window preset {name!r}; choose one of {', '.join(intensity.WINDOW_PRESETS)}.")
        self.set_level_width(*intensity.WINDOW_PRESETS[name])

    def auto_window(self) -> None:
        """MR auto window (0.5/99.5 percentiles of voxels > 0; ``intensity.mr_auto_bounds``)."""
        self._require_volume()
        if self._auto_bounds is None:
            self._auto_bounds = intensity.mr_auto_bounds(self._volume.array)
        self.set_window(*self._auto_bounds)

    def default_window(self) -> None:
        self._require_volume()
        self.set_window(*intensity.default_bounds(self._volume.array, self._volume.modality)
                        if self._volume.modality == "CT" or self._auto_bounds is None else self._auto_bounds)

    # ------------------------------------------------------------------ views
    def set_view(self, view: str) -> None:
        """Show the "axial", "coronal" or "sagittal" view (superior up, patient right on screen left)."""
        if self._orientation is None:
            self._view = view
            return
        spec = view_spec(view, self._orientation)
        viewer = self._viewer
        viewer.dims.ndisplay = 2
        viewer.dims.axis_labels = ("z", "y", "x") if self._orientation.oblique else ("axial", "coronal", "sagittal")
        viewer.dims.order = spec.order
        viewer.camera.orientation2d = spec.camera
        self._view = view
        self._update_edge_letters(spec)
        viewer.reset_view()
        self.view_changed.emit(view)

    def _update_edge_letters(self, spec) -> None:
        try:
            from napari.components.overlays import TextOverlay
        except ImportError:  # pragma: no cover - older napari: no letters
            return
        overlays = self._viewer.canvas.overlays
        prefix = "≈" if spec.approximate else ""
        for pos, letter in zip(_EDGE_POSITIONS, spec.edges):
            key = f"medsam_edge_{pos}"
            text = f"{prefix}{letter}" if letter and letter != "?" else ""
            if key not in self._edge_overlays:
                overlay = TextOverlay(text=text, position=pos, visible=True, font_size=13, color=(1.0, 0.85, 0.2, 1.0))
                overlays[key] = overlay
                self._edge_overlays[key] = overlay
            else:
                self._edge_overlays[key].text = text

    def edge_letters(self) -> dict[str, str]:
        """Letters now shown at the screen edges: {"top", "bottom", "left", "right"}."""
        names = ("top", "bottom", "left", "right")
        return {n: self._edge_overlays[f"medsam_edge_{p}"].text if f"medsam_edge_{p}" in self._edge_overlays else ""
                for n, p in zip(names, _EDGE_POSITIONS)}

    def _on_contrast_limits(self, event=None) -> None:
        if self._syncing or self._image_layer is None:
            return
        self.window_changed.emit(*self.window_bounds)
