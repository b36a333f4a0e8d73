"""What a :class:`~medsam_gui.models.volume_predictor.VolumePredictor` tells its user (no Qt)."""

from __future__ import annotations

import numpy as np


class PredictorListener:
    """What a :class:`VolumePredictor` reports (no-ops here; called on worker threads)."""

    def prepared(self) -> None:
        """The scan's engine input is ready (after ``set_volume``)."""

    def embedding_started(self, index: int) -> None:
        """The engine started embedding slice ``index``."""

    def embedding_done(self, index: int, seconds: float) -> None:
        """Slice ``index`` was embedded in ``seconds``."""

    def embedding_failed(self, index: int, exc: BaseException) -> None:
        """Preparing the scan (index -1) or embedding slice ``index`` failed."""

    def mask_ready(self, token, index: int, box, mask: np.ndarray, decode_ms: float, gen: int) -> None:
        """A :meth:`VolumePredictor.segment_async` request was decoded."""

    def mask_failed(self, token, exc: BaseException) -> None:
        """A :meth:`VolumePredictor.segment_async` request failed."""

    def waiting(self, token, index: int) -> None:
        """A box waits for slice ``index``'s embedding."""

    def notice(self, message: str) -> None:
        """The engine changed device or batch size (out of GPU memory)."""
