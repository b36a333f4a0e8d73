"""The scan a :class:`~medsam_gui.models.volume_predictor.VolumePredictor` works on: the volume
in display order, its window and the engine input of each slice (no Qt)."""

from __future__ import annotations

import numpy as np

from ..core.orientation import plane


class PredictorScan:
    """What the predictor works on: (scan, display orientation, window, axis, engine)."""

    def __init__(self, volume, orientation, bounds, axis: int, engine, modality: str) -> None:
        self.volume = volume
        self.orientation = orientation
        # None: the MR/unknown auto window (intensity.mr_auto_bounds), computed in prepare()
        self.requested_bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.bounds = self.requested_bounds
        self.axis = int(axis)
        self.engine = engine
        self.modality = modality
        self.fingerprint: str | None = None
        # the scan in display order (a view) and the range volume_to_uint8 scales: each slice is
        # windowed when it is embedded (~3 ms), not the whole scan kept as uint8 (75 MiB for
        # 512 x 512 x 300) - bit for bit the same engine input
        self.display: np.ndarray | None = None
        self.scale: tuple[float, float] | None = None
        self.prepared = False
        self.shape = tuple(int(s) for s in (volume.shape if orientation is None
                                             else orientation.display_shape(volume.shape)))
        self.n_slices = self.shape[self.axis]
        self.hw = tuple(s for j, s in enumerate(self.shape) if j != self.axis)

    def same_input(self, other: "PredictorScan") -> bool:
        return (other.volume is self.volume and other.requested_bounds == self.requested_bounds
                and other.modality == self.modality and other.orientation == self.orientation)

    def prepare(self) -> None:
        from ..core.intensity import mr_auto_bounds, uint8_scale

        if self.bounds is None:
            self.bounds = mr_auto_bounds(self.volume.array)
        arr = self.volume.array
        self.scale = uint8_scale(arr, self.bounds)
        self.display = arr if self.orientation is None else self.orientation.to_display(arr)
        self.fingerprint = self.volume.fingerprint() + ("" if self.orientation is None else ":display")
        self.prepared = True

    def take_prepared(self, old: "PredictorScan") -> None:
        """Use ``old``'s preparation (same scan, window and orientation)."""
        self.bounds, self.scale, self.display, self.fingerprint = old.bounds, old.scale, old.display, old.fingerprint
        self.prepared = True

    def slice_uint8(self, index: int) -> np.ndarray:
        """(H, W) uint8 slice ``index`` along ``axis`` (contiguous): ``volume_to_uint8`` of the
        whole scan, in display order, there."""
        from ..core.intensity import part_to_uint8

        part = plane(self.display, index, self.axis)  # a view, not a copy of the whole scan
        return np.ascontiguousarray(part_to_uint8(part, self.modality, self.bounds, self.scale))

    def display_uint8(self) -> np.ndarray:
        """The whole engine input (uint8, display order), computed now (75 MiB for 512 x 512 x 300)."""
        from ..core.intensity import volume_to_uint8

        vol8 = volume_to_uint8(self.volume.array, self.modality, self.bounds)
        return vol8 if self.orientation is None else self.orientation.to_display(vol8)

    def key(self, index: int) -> str:
        return self.engine.cache_key(self.fingerprint, self.axis, int(index), self.bounds)
