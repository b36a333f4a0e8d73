"""Qt adapter of the volume predictor for the scan on screen.

:class:`EmbeddingService` owns a Qt-free :class:`~medsam_gui.models.volume_predictor.VolumePredictor`
(``.predictor``) and turns its listener calls, made on worker threads, into Qt signals delivered
queued to the GUI thread: ``started(index)``, ``done(index, seconds)``, ``error(index, exc)``,
``ready()`` (the scan's engine input is prepared), ``mask_ready(token, index, box, mask,
decode_ms, generation)``, ``mask_failed(token, exc)``, ``waiting(token, index)`` (a box waits
for its slice's embedding), ``notice(message)`` (the GPU ran out of memory; also kept in
``device_notice``). Everything else is the predictor's, on display slices of the scan on screen:
``configure`` is ``set_volume(..., wait=False)``; ``embedding_blocking`` and
``segment_blocking`` are for worker threads only. Nothing here runs a model on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..models.volume_predictor import PredictorListener, VolumePredictor


class _SignalListener(PredictorListener):
    def __init__(self, service: "EmbeddingService") -> None:
        self.service = service

    def prepared(self) -> None:
        self.service.ready.emit()

    def embedding_started(self, index: int) -> None:
        self.service.started.emit(index)

    def embedding_done(self, index: int, seconds: float) -> None:
        self.service.done.emit(index, seconds)

    def embedding_failed(self, index: int, exc: BaseException) -> None:
        self.service.error.emit(index, exc)

    def mask_ready(self, token, index, box, mask, decode_ms, gen) -> None:
        self.service.mask_ready.emit(token, index, box, mask, decode_ms, gen)

    def mask_failed(self, token, exc) -> None:
        self.service.mask_failed.emit(token, exc)

    def waiting(self, token, index: int) -> None:
        self.service.waiting.emit(token, index)

    def notice(self, message: str) -> None:
        self.service.notice.emit(message)


class EmbeddingService(QObject):
    """Background embeddings and box decoding for the scan on screen (see the module doc).

    ``cache``, ``neighbours``, ``prefetch_all`` and ``background`` are the predictor's.
    """

    started = Signal(int)
    done = Signal(int, float)
    error = Signal(int, object)
    ready = Signal()
    mask_ready = Signal(object, int, object, object, float, int)
    mask_failed = Signal(object, object)
    waiting = Signal(object, int)
    notice = Signal(str)

    def __init__(self, cache=None, *, neighbours: int = 2, prefetch_all: bool = False,
                 background: bool = True, parent=None) -> None:
        super().__init__(parent)
        self.predictor = VolumePredictor(cache=cache, neighbours=neighbours, prefetch_all=prefetch_all,
                                         background=background, listener=_SignalListener(self))

    # ------------------------------------------------------------------ state
    @property
    def engine(self):
        return self.predictor.engine

    @property
    def cache(self):
        return self.predictor.cache

    @property
    def scheduler(self):
        return self.predictor.scheduler

    @property
    def is_ready(self) -> bool:
        return self.predictor.is_ready

    @property
    def axis(self) -> int | None:
        return self.predictor.axis

    @property
    def bounds(self) -> tuple[float, float] | None:
        return self.predictor.bounds

    @property
    def neighbours(self) -> int:
        return self.predictor.neighbours

    @property
    def prefetch_all(self) -> bool:
        return self.predictor.prefetch_all

    @property
    def background(self) -> bool:
        return self.predictor.background

    @property
    def embed_seconds(self) -> list[tuple[int, float]]:
        return self.predictor.embed_seconds

    @property
    def prepared(self) -> list[int]:
        return self.predictor.prepared

    @property
    def decoded_ahead(self) -> list[tuple]:
        return self.predictor.decoded_ahead

    @property
    def last_message(self) -> str:
        return self.predictor.last_message

    @property
    def device_notice(self) -> str:
        return self.predictor.device_notice

    def slice_hw(self) -> tuple[int, int] | None:
        return self.predictor.slice_hw()

    def embedding_progress(self):
        return self.predictor.embedding_progress()

    # ------------------------------------------------------------------ configuration
    def set_engine(self, engine) -> None:
        self.predictor.set_engine(engine)

    def configure(self, volume, orientation, bounds, axis: int = 0, *, modality: str | None = None) -> None:
        """Work on display slices along display ``axis`` of ``volume`` windowed with ``bounds``;
        returns at once (``ready`` follows)."""
        self.predictor.set_volume(volume, bounds=bounds, orientation=orientation, axis=axis,
                                  modality=modality, wait=False)

    def apply_settings(self, *, neighbours: int | None = None, prefetch_all: bool | None = None,
                       background: bool | None = None) -> None:
        self.predictor.apply_settings(neighbours=neighbours, prefetch_all=prefetch_all, background=background)

    def set_focus(self, index: int | None) -> None:
        self.predictor.set_focus(index)

    def pause_background(self, paused: bool) -> None:
        self.predictor.pause_background(paused)

    def shutdown(self) -> None:
        """Stop and join the predictor's threads (the app is closing)."""
        self.predictor.shutdown()

    # ------------------------------------------------------------------ embeddings and boxes
    def key(self, index: int) -> str | None:
        return self.predictor.key(index)

    def cached(self, index: int):
        return self.predictor.cached(index)

    def has_embedding(self, index: int) -> bool:
        return self.predictor.has_embedding(index)

    def request(self, index: int) -> Future:
        return self.predictor.request(index)

    def prefetch(self, indices) -> None:
        self.predictor.prefetch(indices)

    def embedding_blocking(self, index: int, cancel: Callable[[], bool] | None = None, timeout: float | None = None):
        return self.predictor.embedding(index, cancel, timeout)

    def segment_blocking(self, index: int, box, cancel: Callable[[], bool] | None = None) -> np.ndarray:
        return self.predictor.segment_box(index, box, cancel)

    def segment_async(self, token, index: int, box) -> int:
        return self.predictor.segment_async(token, index, box)

    def speculate(self, index: int, box) -> None:
        self.predictor.speculate(index, box)

    def wait_result(self, token, gen: int, timeout_s: float):
        return self.predictor.wait_result(token, gen, timeout_s)

    def warm_decoder(self, index: int, delay: float | None = None) -> None:
        self.predictor.warm_decoder(index, delay)

    def is_latest(self, token, gen: int) -> bool:
        return self.predictor.is_latest(token, gen)
