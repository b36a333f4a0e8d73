"""One box-prompt engine applied to one whole scan (segment-anything's predictor, for volumes).

:class:`VolumePredictor` owns the expensive state for one scan and one engine
(:class:`~medsam_gui.models.engine.BoxPromptEngine`): the engine input of the whole scan
(``intensity.volume_to_uint8`` with the window bounds: its scale computed once per (scan,
window), each slice windowed when it is embedded, so no uint8 copy of the scan is kept), the
embedding cache, a background scheduler that embeds slices nearest to the focus first, and a
decoder thread for interactive boxes. The viewer uses it through a thin Qt adapter
(``gui.embedding_service``); the CLI, the Python API and batches use it directly.

- ``set_volume(volume, bounds=..., orientation=..., axis=..., wait=True)``;
- ``set_focus(i)``, ``prefetch(indices)``, ``request(i) -> Future``, ``embedding(i)``;
- ``segment_box(i, box)``, ``segment_recist(i, p0, p1, margin)``, ``propagate(key_boxes, ...)``
  (a generator of ``core.propagation.SliceResult``, cancellable, embedding ahead);
- ``segment_async(token, i, box)`` and ``warm_decoder(i)`` for the viewer (decoder thread);
- ``shutdown()`` stops and joins every thread it started.

Events go to a :class:`~medsam_gui.models.predictor_listener.PredictorListener` (called on
worker threads). Slice ``i`` is the engine input of plane ``i`` along the axis of the scan in
*display order* (``orientation.to_display``; without an orientation, the scan's own (z, y, x)
order), see :class:`~medsam_gui.models.predictor_scan.PredictorScan`. Boxes
are (x0, y0, x1, y1) in pixels of that 2D slice (x = column, y = row).

Cache keys (``engine.cache_key``) include the scan fingerprint, the axis and index, the window
bounds, the engine, its weights and precision, so nothing stale is ever reused. The cache
stores float16; the last ``keep_float32`` embeddings computed here are also kept in float32, so
a freshly embedded slice decodes exactly like ``engine.decode(engine.embed_slice(slice))``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..errors import CheckpointError, MedsamGuiError
from .box_decoder_thread import NO_ENGINE, BoxDecoderThread
from .engine import EmbeddingCancelled
from .predictor_listener import PredictorListener
from .predictor_scan import PredictorScan
from .scheduler import EmbeddingProgress

log = logging.getLogger(__name__)

KEEP_FLOAT32 = 16
TRIM_EVERY = 16  # slices embedded between two trims of the C heap (runtime.HeapTrimmer)


class VolumePredictor:
    """Embeddings, boxes and 3D propagation on one scan with one engine (see the module doc).

    ``cache``: an :class:`~medsam_gui.models.embedding_cache.EmbeddingCache` (default: memory
    and disk in ``config.embeddings_dir()``). ``neighbours``: slices each side of the focus
    embedded in the background; ``prefetch_all``: then every other slice; ``background``:
    False embeds only what is requested. ``keep_float32``: recent embeddings kept in float32.
    """

    def __init__(self, engine=None, cache=None, *, neighbours: int = 2, prefetch_all: bool = False,
                 background: bool = True, keep_float32: int = KEEP_FLOAT32,
                 listener: PredictorListener | None = None) -> None:
        self._cache = cache
        self.neighbours = int(neighbours)
        self.prefetch_all = bool(prefetch_all)
        self.background = bool(background)
        self.keep_float32 = max(1, int(keep_float32))
        self.listener = listener or PredictorListener()
        self._lock = threading.RLock()
        self._engine = None
        self._scan: PredictorScan | None = None
        self._ready = threading.Event()
        self._scan_error: BaseException | None = None
        self._scheduler = None
        self._pending: list[tuple[PredictorScan, int, Future]] = []
        self._focus: int | None = None
        self._memo: OrderedDict[str, Any] = OrderedDict()
        self._threads: list[threading.Thread] = []
        self.embed_seconds: list[tuple[int, float]] = []
        self.last_message = ""
        self.device_notice = ""
        self._closed = False
        self._decoder = BoxDecoderThread(self)
        if engine is not None:
            self.set_engine(engine)

    # ------------------------------------------------------------------ properties
    @property
    def cache(self):
        if self._cache is None:
            from .embedding_cache import EmbeddingCache

            self._cache = EmbeddingCache()
        return self._cache

    @property
    def engine(self):
        return self._engine

    @property
    def scheduler(self):
        """The running EmbeddingScheduler (None before the scan is prepared / without engine)."""
        return self._scheduler

    @property
    def is_ready(self) -> bool:
        return self._scan is not None and self._ready.is_set() and self._scan_error is None

    @property
    def preparing(self) -> bool:
        """True while the scan's engine input is being prepared."""
        return self._scan is not None and not self._ready.is_set()

    @property
    def input_uint8(self) -> np.ndarray | None:
        """The engine input of the whole scan (uint8, display order), once prepared; computed on
        each call (slices are windowed one at a time when embedded, the whole is not kept)."""
        scan = self._scan
        return None if scan is None or not scan.prepared else scan.display_uint8()

    @property
    def axis(self) -> int | None:
        return None if self._scan is None else self._scan.axis

    @property
    def bounds(self) -> tuple[float, float] | None:
        return None if self._scan is None else self._scan.bounds

    @property
    def volume(self):
        return None if self._scan is None else self._scan.volume

    @property
    def n_slices(self) -> int:
        return 0 if self._scan is None else self._scan.n_slices

    def slice_hw(self) -> tuple[int, int] | None:
        return None if self._scan is None else self._scan.hw

    def slice_uint8(self, index: int) -> np.ndarray:
        """The engine's (H, W) uint8 input slice ``index`` (after ``set_volume`` is ready)."""
        self._ready.wait()
        if self._scan_error is not None:
            raise self._scan_error
        return self._scan.slice_uint8(index)

    # ------------------------------------------------------------------ configuration
    def set_engine(self, engine) -> None:
        """Use ``engine`` (a BoxPromptEngine, or None); the scan stays, the scheduler restarts."""
        self._engine = engine
        self.device_notice = ""
        if engine is not None:
            engine.on_notice = self._on_engine_notice  # called on a worker thread
        scan = self._scan
        if scan is not None:
            self.set_volume(scan.volume, bounds=scan.requested_bounds, orientation=scan.orientation,
                            axis=scan.axis, modality=scan.modality, wait=False)

    def set_volume(self, volume, *, bounds=None, orientation=None, axis: int = 0,
                   modality: str | None = None, wait: bool = True) -> None:
        """Work on slices along ``axis`` of ``volume`` (in display order when ``orientation``
        is given) windowed with ``bounds`` ((lo, hi) in scan units; None = the MR auto window).

        ``wait=False`` returns at once and prepares on a background thread (then
        ``listener.prepared``); a configuration equal to the current one is kept.
        """
        modality = modality or volume.modality
        old = self._scan
        scan = PredictorScan(volume, orientation, bounds, axis, self._engine, modality)
        same = old is not None and scan.same_input(old)
        if same and old.axis == scan.axis and old.engine is self._engine and self._scan_error is None:
            if wait:
                self._ready.wait()
            return
        self._stop_scheduler()
        reuse = same and old.prepared and self._scan_error is None
        with self._lock:
            self._scan = scan
            self._ready = threading.Event()
            self._scan_error = None
            ready = self._ready
        if reuse:  # only the axis or the engine changed: the preparation stays
            scan.take_prepared(old)
            self._on_prepared(scan, ready, None)
        elif wait:
            self._prepare(scan, ready)
        else:
            self._start_thread(self._prepare, (scan, ready), "medsam-prepare")
        if wait and self._scan_error is not None:
            raise self._scan_error

    def _start_thread(self, target, args, name: str) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return t

    def _prepare(self, scan: PredictorScan, ready: threading.Event) -> None:
        err = None
        try:
            t0 = time.perf_counter()
            scan.prepare()
            log.info("engine input prepared in %.2f s", time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - reported through the futures and listener
            err = exc
        self._on_prepared(scan, ready, err)

    def _on_prepared(self, scan: PredictorScan, ready: threading.Event, err) -> None:
        with self._lock:
            if scan is not self._scan:
                return
            self._scan_error = err
            if err is None and scan.engine is not None and not self._closed:
                self._start_scheduler(scan)
            pending, self._pending = [p for p in self._pending if p[0] is scan], []
            ready.set()
        for _, index, fut in pending:
            self._forward(scan, index, fut)
        if err is not None:
            self.listener.embedding_failed(-1, err)
            return
        if scan.engine is not None and self._focus is not None:
            self.warm_decoder(self._focus)  # e.g. a reopened scan whose embeddings are on disk
        self.listener.prepared()

    def _start_scheduler(self, scan: PredictorScan) -> None:
        from ..runtime import HeapTrimmer
        from .scheduler import EmbeddingScheduler

        scheduler = []
        # the C heap is trimmed after the first slice (what loading the engine left free), then
        # every 16 slices (the embedding worker's heap fragments by several MiB a slice) and when
        # the worker goes idle (_on_idle)
        trimmer = HeapTrimmer(TRIM_EVERY)

        def stop() -> bool:  # the scan changed, the app closes, or a requested slice goes first
            return self._closed or (bool(scheduler) and (scheduler[0].cancelled or scheduler[0].should_yield()))

        def embed_fn(index: int):
            emb = scan.engine.embed([scan.slice_uint8(index)], stop=stop)
            self._remember(scan.key(index), emb)
            trimmer.tick()
            return emb

        def on_started(index: int) -> None:
            if scan is self._scan:
                self.last_message = self._with_notice(f"MedSAM: embedding slice {index}…")
                self.listener.embedding_started(int(index))

        def on_done(index: int, seconds: float) -> None:
            self.embed_seconds.append((int(index), float(seconds)))
            if scan is self._scan and self._focus == int(index):
                self.warm_decoder(int(index), delay=0.0)
            if scan is self._scan:
                self.last_message = self._with_notice(f"MedSAM: slice {index} embedded in {seconds:.1f} s")
                self.listener.embedding_done(int(index), float(seconds))

        def on_error(exc: BaseException) -> None:
            if scan is self._scan and not isinstance(exc, EmbeddingCancelled):
                self.listener.embedding_failed(int(getattr(exc, "slice_index", -1)), exc)

        focus = self._focus if self.background else None
        if focus is not None:
            focus = min(max(int(focus), 0), scan.n_slices - 1)
        self._scheduler = EmbeddingScheduler(
            embed_fn, scan.key, scan.n_slices, self.cache, focus=focus, neighbours=self.neighbours,
            prefetch_all=self.prefetch_all, on_started=on_started, on_done=on_done, on_error=on_error,
            on_idle=self._on_idle,
        )
        scheduler.append(self._scheduler)

    def _on_idle(self) -> None:
        """The scheduler has nothing left to embed: the encoder's working memory, free but
        resident in the worker's heap (a few hundred MiB for LiteMedSAM), goes back to the system."""
        from ..runtime import trim_heap

        trim_heap()

    def _on_engine_notice(self, message: str) -> None:
        self.device_notice = f"MedSAM: {message}"
        self.last_message = self.device_notice
        self.listener.notice(self.device_notice)

    def _with_notice(self, message: str) -> str:
        return f"{message} ({self.device_notice})" if self.device_notice else message

    def _stop_scheduler(self, wait: bool = False, timeout: float | None = None) -> None:
        with self._lock:
            sched, self._scheduler = self._scheduler, None
        if sched is not None:
            sched.stop(wait=wait, timeout=timeout)

    def apply_settings(self, *, neighbours: int | None = None, prefetch_all: bool | None = None,
                       background: bool | None = None) -> None:
        """Change the background-embedding settings (they take effect at once)."""
        if neighbours is not None:
            self.neighbours = int(neighbours)
        if prefetch_all is not None:
            self.prefetch_all = bool(prefetch_all)
        if background is not None:
            self.background = bool(background)
        sched = self._scheduler
        if sched is not None:
            sched.set_options(neighbours=self.neighbours, prefetch_all=self.prefetch_all)
            sched.set_focus(self._focus if self.background else None)

    def set_focus(self, index: int | None) -> None:
        """The slice the user looks at (index along the configured axis)."""
        self._focus = None if index is None else int(index)
        sched = self._scheduler
        if sched is not None:
            sched.set_focus(self._focus if self.background else None)
        if self._focus is not None:
            self.warm_decoder(self._focus)

    def embedding_progress(self) -> "EmbeddingProgress | None":
        """Where background embedding stands on the configured axis (None before the scan is
        prepared or without an engine); the time left uses the median of the last slices."""
        sched = self._scheduler
        if sched is None:
            return None
        done, left = sched.progress()
        recent = [s for _, s in self.embed_seconds[-9:]]
        per = float(np.median(recent)) if recent else None
        running = sched.running_index
        return EmbeddingProgress(done, sched.n_slices, left, running, per)

    def pause_background(self, paused: bool) -> None:
        """Stop (True) / resume (False) background embedding; requests still run."""
        sched = self._scheduler
        if sched is not None:
            sched.set_focus(None if paused or not self.background else self._focus)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the scheduler (an encoder pass in progress is abandoned at its next stop point),
        the decoder and the preparation threads, and wait for them (``timeout`` s in all)."""
        end = time.monotonic() + timeout
        self._closed = True
        self._stop_scheduler(wait=True, timeout=timeout)
        threads = self._decoder.stop()
        with self._lock:
            threads += self._threads
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, end - time.monotonic()))

    def __enter__(self) -> "VolumePredictor":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ embeddings
    def _remember(self, key: str, emb) -> None:
        with self._lock:
            self._memo[key] = emb
            self._memo.move_to_end(key)
            while len(self._memo) > self.keep_float32:
                self._memo.popitem(last=False)

    def key(self, index: int) -> str | None:
        scan = self._scan
        if scan is None or not self._ready.is_set() or scan.fingerprint is None or scan.engine is None:
            return None
        return scan.key(index)

    def cached(self, index: int):
        """Slice ``index``'s embedding if it exists (float32 when computed recently, else the
        cache's float16), else None. Never computes."""
        key = self.key(index)
        if key is None:
            return None
        with self._lock:
            emb = self._memo.get(key)
        return emb if emb is not None else self.cache.get(key)

    def has_embedding(self, index: int) -> bool:
        key = self.key(index)
        if key is None:
            return False
        with self._lock:
            if key in self._memo:
                return True
        return self.cache.contains(key)

    def request(self, index: int) -> Future:
        """A Future of slice ``index``'s embedding, computed next when not cached."""
        fut: Future = Future()
        with self._lock:
            scan = self._scan
            if scan is None:
                fut.set_exception(MedsamGuiError("No scan is open. Open a scan first."))
                return fut
            if scan.engine is None:
                fut.set_exception(CheckpointError(NO_ENGINE))
                return fut
            if not self._ready.is_set():
                self._pending.append((scan, int(index), fut))
                return fut
        self._forward(scan, int(index), fut)
        return fut

    def _forward(self, scan: PredictorScan, index: int, fut: Future) -> None:
        if self._scan_error is not None:
            fut.set_exception(self._scan_error)
            return
        key = scan.key(index)
        with self._lock:
            emb = self._memo.get(key)
        if emb is not None:
            fut.set_result(emb)
            return
        sched = self._scheduler
        if sched is None:
            fut.set_exception(MedsamGuiError("MedSAM embedding is not running (the scan changed)."))
            return
        inner = sched.request(index)

        def relay(f: Future) -> None:
            if fut.done():
                return
            if f.cancelled():
                fut.set_exception(EmbeddingCancelled(f"the embedding of slice {index} was cancelled"))
                return
            exc = f.exception()
            if exc is not None:
                fut.set_exception(exc)
                return
            with self._lock:
                memo = self._memo.get(key)
            fut.set_result(memo if memo is not None else f.result())

        inner.add_done_callback(relay)

    def prefetch(self, indices) -> None:
        """Ask for these slices' embeddings ahead (results stay in the cache)."""
        for i in indices:
            if not self.has_embedding(int(i)):
                self.request(int(i))

    def embedding(self, index: int, cancel: Callable[[], bool] | None = None, timeout: float | None = None):
        """Slice ``index``'s embedding, waiting for it (never call it on a GUI thread).

        ``cancel()`` is polled every 0.1 s; when it returns True, EmbeddingCancelled is raised.
        """
        emb = self.cached(index)
        if emb is not None:
            return emb
        fut = self.request(index)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return fut.result(timeout=0.1)
            except TimeoutError:
                pass
            if cancel is not None and cancel():
                raise EmbeddingCancelled(f"waiting for slice {index}'s embedding was cancelled")
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"slice {index}'s embedding did not arrive in time")

    # ------------------------------------------------------------------ prompts
    def _require_engine(self) -> PredictorScan:
        scan = self._scan
        if scan is None:
            raise MedsamGuiError("No scan is open. Open a scan first.")
        if scan.engine is None:
            raise CheckpointError(NO_ENGINE)
        return scan

    def segment_box(self, index: int, box, cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """bool mask (H, W) of slice ``index`` for ``box`` (x0, y0, x1, y1); waits for the
        embedding (computed first when needed)."""
        scan = self._require_engine()
        emb = self.embedding(index, cancel)
        return np.asarray(scan.engine.decode(emb, box, scan.hw), dtype=bool)

    def segment_recist(self, index: int, p0, p1, margin: float = 5.0,
                       cancel: Callable[[], bool] | None = None):
        """``(mask (H, W) bool, box)`` for a RECIST long-axis line p0-p1 ((x, y) pixels) on slice
        ``index``: the engine gets the square box around the line, ``margin`` pixels wider."""
        from ..core.prompts import recist_to_box

        scan = self._require_engine()
        box = recist_to_box(p0, p1, margin=margin).clip(*scan.hw).xyxy()
        return self.segment_box(index, box, cancel), box

    def propagate(self, key_boxes: Mapping[int, Sequence[float]], *, limits: tuple[int, int] | None = None,
                  margin: float | None = None, cancel: Callable[[], bool] | None = None,
                  **options) -> Iterator:
        """Follow a structure from boxes on key slices through the scan along ``axis``.

        A generator of :class:`~medsam_gui.core.propagation.SliceResult` (index, box, mask,
        kind), embedding the next slices ahead while the current one decodes. ``limits``:
        inclusive (first, last) slices it may reach; ``cancel()`` stops it between slices;
        ``options`` go to :func:`medsam_gui.core.propagation.propagate`. Returns at once (also
        while the scan is being prepared); validation errors are raised here.
        """
        from ..core import propagation

        scan = self._require_engine()
        if margin is not None:
            options["margin"] = margin
        gen = propagation.propagate(scan.shape, dict(key_boxes), lambda i, b: self.segment_box(i, b, cancel),
                                    axis=scan.axis, limits=limits, cancel=cancel, prefetch=self.prefetch,
                                    **options)
        self.prefetch(sorted(key_boxes)[:2])
        return gen

    # ------------------------------------------------------------------ interactive decoding
    def segment_async(self, token, index: int, box) -> int:
        """Decode ``box`` on slice ``index`` on the decoder thread; ``listener.mask_ready`` (or
        ``mask_failed``) follows. A newer request with the same ``token`` supersedes an older one
        still queued. Returns the request's generation number."""
        return self._decoder.submit(token, index, box, self.axis)

    def speculate(self, index: int, box) -> None:
        """Decode ``box`` on slice ``index`` ahead while the user draws it (nothing reported; the
        same box submitted later takes that mask)."""
        if not self._closed:
            self._decoder.speculate(index, box, self.axis)

    def wait_result(self, token, gen: int, timeout_s: float) -> tuple[np.ndarray, float] | None:
        """(mask, decode ms) of :meth:`segment_async` request ``gen`` of ``token`` if it is decoded
        within ``timeout_s``; else None (the listener still reports it)."""
        return self._decoder.wait_result(token, gen, timeout_s)

    def warm_decoder(self, index: int, delay: float | None = None) -> None:
        """Do the decoder's box-independent work for slice ``index`` on the decoder thread once
        its embedding exists, so the first box there is answered at the cached speed (only while
        no box waits, ``delay`` seconds after the request; only the newest slice is prepared)."""
        if not self._closed:
            self._decoder.warm(index, delay)

    def is_latest(self, token, gen: int) -> bool:
        return self._decoder.is_latest(token, gen)

    @property
    def prepared(self) -> list[int]:
        """Slices whose decoder work was done ahead (newest last)."""
        return self._decoder.prepared

    @property
    def decoded_ahead(self) -> list[tuple]:
        """(slice, box) of the boxes decoded ahead while drawn (newest last)."""
        return self._decoder.decoded_ahead
