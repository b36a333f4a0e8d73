"""Qt side of MedSAM's background image embedding and box decoding.

:class:`EmbeddingService` wraps the Qt-free
:class:`~medsam_gui.models.scheduler.EmbeddingScheduler` for the scan on screen:

- ``configure(volume, orientation, bounds, axis)`` prepares, on a background thread, the
  MedSAM input of the whole scan (``intensity.volume_to_uint8`` with ``bounds``: MedSAM's
  reference whole-volume windowing, computed once per (scan, window)) in *display order*
  (``orientation.to_display``) and the scan's fingerprint, then starts a scheduler that embeds
  display slices ``np.take(display_uint8, i, axis)`` nearest to the focus slice first;
- ``set_focus(i)`` re-prioritises (the GUI calls it when the slider moves);
- ``request(i)`` -> ``concurrent.futures.Future`` of slice ``i``'s embedding;
- ``segment_async(token, i, box)`` decodes a box on a dedicated decoder thread as soon as the
  slice's embedding exists (computing it first, at top priority, when needed) and emits
  ``mask_ready``; ``segment_blocking(i, box)`` does the same on the calling (worker) thread;
- ``warm_decoder(i)`` (called by ``set_focus`` and when the focus slice's embedding arrives)
  does the decoder's box-independent work for the slice on screen on the decoder thread while
  no box waits, so the first box there is as fast as the next ones.

Nothing here runs MedSAM on the GUI thread. Signals are emitted from worker threads and
delivered queued to the GUI thread: ``started(index)``, ``done(index, seconds)``,
``error(index, exc)``, ``ready()`` (preparation done), ``mask_ready(token, index, box, mask,
decode_ms, generation)``, ``mask_failed(token, exc)``, ``waiting(token, index)`` (a decode waits
for the slice's embedding), ``notice(message)`` (the engine's ``on_notice``: the GPU ran out of
memory, MedSAM goes on with smaller batches or on the CPU; also kept in ``device_notice`` and
shown after ``last_message``).

Cache keys (``embedding_cache.embedding_key``) include the scan fingerprint (voxels and
geometry) marked as display order, the display axis and index, the window bounds, the
checkpoint id and the precision, so a different scan, window or checkpoint never reuses a
stale embedding. Embeddings computed in this session are also kept in float32 for the last
:data:`FP32_MEMO_SLICES` slices (the on-disk/in-memory cache stores float16), so a freshly
embedded slice decodes exactly like ``MedSAMEngine.segment``.

Coordinates: display order (z, y, x) arrays, boxes (x0, y0, x1, y1) in pixels of the 2D
display slice (x = column, y = row).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..errors import CheckpointError, MedsamGuiError

log = logging.getLogger(__name__)

FP32_MEMO_SLICES = 16
WARM_DELAY_S = 0.15  # a slice shown this long gets its decoder work prepared (FastDecoder.prepare)


class EmbeddingCancelled(MedsamGuiError):
    """A blocking wait for an embedding was cancelled."""


def decode_box(engine, embedding, box_xyxy, hw: tuple[int, int]) -> np.ndarray:
    """bool mask (H, W) for one box (x0, y0, x1, y1) on an (H, W) slice with its embedding.

    ``MedSAMEngine.decode`` holds only the decoder's lock, so a box never waits behind a
    background image-encoder pass.
    """
    return np.asarray(engine.decode(embedding, box_xyxy, hw), dtype=bool)


class _Context:
    """What one scheduler works on: (scan, display orientation, window, axis, engine)."""

    def __init__(self, volume, orientation, bounds, axis: int, engine, modality: str) -> None:
        self.volume = volume
        self.orientation = orientation
        # None: MR/unknown auto window (intensity.mr_auto_bounds), computed in prepare()
        self.requested_bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.bounds = self.requested_bounds
        self.axis = int(axis)
        self.engine = engine
        self.modality = modality
        self.fingerprint: str | None = None
        self.display_uint8: np.ndarray | None = None  # display order view of the uint8 volume
        self.n_slices = int(orientation.display_shape(volume.shape)[self.axis])
        shape = orientation.display_shape(volume.shape)
        self.hw = tuple(int(s) for j, s in enumerate(shape) if j != self.axis)

    def prepare(self) -> None:
        from ..core.intensity import mr_auto_bounds, volume_to_uint8

        if self.bounds is None:
            self.bounds = mr_auto_bounds(self.volume.array)
        vol8 = volume_to_uint8(self.volume.array, self.modality, self.bounds)
        self.display_uint8 = self.orientation.to_display(vol8)
        self.fingerprint = self.volume.fingerprint() + ":display"

    def slice_uint8(self, index: int) -> np.ndarray:
        """(H, W) uint8 display slice ``index`` along ``axis`` (contiguous copy)."""
        return np.ascontiguousarray(np.take(self.display_uint8, int(index), axis=self.axis))

    def key(self, index: int) -> str:
        from ..models.embedding_cache import embedding_key

        return embedding_key(self.fingerprint, self.axis, int(index), self.bounds,
                             self.engine.checkpoint_id, getattr(self.engine, "precision", "fp32"))


class EmbeddingService(QObject):
    """Background MedSAM embeddings + box decoding for the scan on screen (see module doc).

    ``cache``: an :class:`~medsam_gui.models.embedding_cache.EmbeddingCache` (default: memory
    + disk in ``config.embeddings_dir()``). ``neighbours``: slices on each side of the focus
    embedded in the background; ``prefetch_all``: then every other slice too; ``background``:
    False embeds only what is requested.
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
        self._cache = cache
        self.neighbours = int(neighbours)
        self.prefetch_all = bool(prefetch_all)
        self.background = bool(background)
        self._lock = threading.RLock()
        self._engine = None
        self._ctx: _Context | None = None
        self._ctx_ready = threading.Event()
        self._ctx_error: BaseException | None = None
        self._scheduler = None
        self._pending: list[tuple[_Context, int, Future]] = []
        self._focus: int | None = None
        self._memo: OrderedDict[str, Any] = OrderedDict()
        self.embed_seconds: list[tuple[int, float]] = []
        self.last_message = ""
        self.device_notice = ""
        # decoder thread
        self._dcond = threading.Condition()
        self._djobs: OrderedDict[Any, tuple] = OrderedDict()
        self._latest: dict[Any, int] = {}
        self._gen = itertools.count(1)
        self._dthread: threading.Thread | None = None
        self._dstop = False
        # decoder warm-up: (display index, monotonic time asked) of the slice to prepare next
        self._warm: tuple[int, float] | None = None
        self.prepared: list[int] = []  # slices whose decoder work was done ahead (newest last)

    # ------------------------------------------------------------------ properties
    @property
    def cache(self):
        if self._cache is None:
            from ..models.embedding_cache import EmbeddingCache

            self._cache = EmbeddingCache()
        return self._cache

    @property
    def engine(self):
        return self._engine

    @property
    def scheduler(self):
        """The running EmbeddingScheduler (None before preparation finished / without engine)."""
        return self._scheduler

    @property
    def context(self) -> _Context | None:
        return self._ctx

    @property
    def is_ready(self) -> bool:
        return self._ctx is not None and self._ctx_ready.is_set() and self._ctx_error is None

    @property
    def axis(self) -> int | None:
        return None if self._ctx is None else self._ctx.axis

    @property
    def bounds(self) -> tuple[float, float] | None:
        return None if self._ctx is None else self._ctx.bounds

    # ------------------------------------------------------------------ configuration
    def set_engine(self, engine) -> None:
        """Use ``engine`` (a MedSAMEngine, or None); restarts the scheduler for the same scan."""
        self._engine = engine
        self.device_notice = ""
        if engine is not None:
            try:
                engine.on_notice = self._on_engine_notice  # called on a worker thread
            except AttributeError:  # pragma: no cover - a read-only stand-in engine
                pass
        ctx = self._ctx
        if ctx is not None:
            self.configure(ctx.volume, ctx.orientation, ctx.requested_bounds, ctx.axis, modality=ctx.modality)

    def configure(self, volume, orientation, bounds, axis: int = 0, *, modality: str | None = None) -> None:
        """Work on display slices along display ``axis`` of ``volume`` windowed with ``bounds``
        ((lo, hi) in scan units; None = the MR auto window ``intensity.mr_auto_bounds``).

        Returns at once; the uint8 volume and fingerprint are computed on a background thread
        (then ``ready`` is emitted). A configuration equal to the current one is kept.
        """
        modality = modality or volume.modality
        old = self._ctx
        ctx = _Context(volume, orientation, bounds, axis, self._engine, modality)
        same_input = (old is not None and old.volume is volume and old.requested_bounds == ctx.requested_bounds
                      and old.modality == modality and old.orientation == orientation)
        if same_input and old.axis == ctx.axis and old.engine is self._engine and self._ctx_error is None:
            return
        self._stop_scheduler()
        reuse = same_input and old.display_uint8 is not None and self._ctx_error is None
        with self._lock:
            self._ctx = ctx
            self._ctx_ready = threading.Event()
            self._ctx_error = None
            ready_event = self._ctx_ready
        if reuse:  # only the axis or the engine changed: no need to recompute the uint8 volume
            ctx.bounds = old.bounds
            ctx.display_uint8 = old.display_uint8
            ctx.fingerprint = old.fingerprint
            self._on_prepared(ctx, ready_event, None)
            return
        threading.Thread(target=self._prepare, args=(ctx, ready_event), name="medsam-prepare", daemon=True).start()

    def _prepare(self, ctx: _Context, ready_event: threading.Event) -> None:
        err = None
        try:
            t0 = time.perf_counter()
            ctx.prepare()
            log.info("MedSAM input prepared in %.2f s", time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - reported through the futures/signal
            err = exc
        self._on_prepared(ctx, ready_event, err)

    def _on_prepared(self, ctx: _Context, ready_event: threading.Event, err) -> None:
        with self._lock:
            if ctx is not self._ctx:
                return
            self._ctx_error = err
            if err is None and ctx.engine is not None:
                self._start_scheduler(ctx)
            pending, self._pending = [p for p in self._pending if p[0] is ctx], []
            ready_event.set()
        for _, index, fut in pending:
            self._forward(ctx, index, fut)
        if err is not None:
            self.error.emit(-1, err)
        else:
            if ctx.engine is not None and self._focus is not None:
                self.warm_decoder(self._focus)  # e.g. a reopened scan whose embeddings are on disk
            self.ready.emit()

    def _start_scheduler(self, ctx: _Context) -> None:
        from ..models.scheduler import EmbeddingScheduler

        def embed_fn(index: int):
            emb = ctx.engine.embed(ctx.slice_uint8(index))
            self._remember(ctx.key(index), emb)
            return emb

        def on_started(index: int) -> None:
            if ctx is self._ctx:
                self.last_message = self._with_notice(f"MedSAM: embedding slice {index}…")
                self.started.emit(int(index))

        def on_done(index: int, seconds: float) -> None:
            self.embed_seconds.append((int(index), float(seconds)))
            if ctx is self._ctx and self._focus == int(index):
                self.warm_decoder(int(index), delay=0.0)
            if ctx is self._ctx:
                self.last_message = self._with_notice(f"MedSAM: slice {index} embedded in {seconds:.1f} s")
                self.done.emit(int(index), float(seconds))

        def on_error(exc: BaseException) -> None:
            if ctx is self._ctx:
                self.error.emit(int(getattr(exc, "slice_index", -1)), exc)

        focus = self._focus if self.background else None
        if focus is not None:
            focus = min(max(int(focus), 0), ctx.n_slices - 1)
        self._scheduler = EmbeddingScheduler(
            embed_fn, ctx.key, ctx.n_slices, self.cache, focus=focus, neighbours=self.neighbours,
            prefetch_all=self.prefetch_all, on_started=on_started, on_done=on_done, on_error=on_error,
        )

    def _on_engine_notice(self, message: str) -> None:
        """Engine thread: the GPU ran out of memory (queued to the GUI thread by ``notice``)."""
        self.device_notice = f"MedSAM: {message}"
        self.last_message = self.device_notice
        self.notice.emit(self.device_notice)

    def _with_notice(self, message: str) -> str:
        return f"{message} ({self.device_notice})" if self.device_notice else message

    def _stop_scheduler(self) -> None:
        with self._lock:
            sched, self._scheduler = self._scheduler, None
        if sched is not None:
            sched.stop(wait=False)

    def apply_settings(self, *, neighbours: int | None = None, prefetch_all: bool | None = None,
                       background: bool | None = None) -> None:
        """Change the background-embedding settings (take effect at once)."""
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
        """The slice the user looks at (display index along the configured axis)."""
        self._focus = None if index is None else int(index)
        sched = self._scheduler
        if sched is not None:
            sched.set_focus(self._focus if self.background else None)
        if self._focus is not None:
            self.warm_decoder(self._focus)

    def pause_background(self, paused: bool) -> None:
        """Stop (True) / resume (False) background embedding; requests still run."""
        sched = self._scheduler
        if sched is not None:
            sched.set_focus(None if paused or not self.background else self._focus)

    def shutdown(self) -> None:
        """Stop the scheduler and the decoder thread (the app is closing)."""
        self._stop_scheduler()
        with self._dcond:
            self._dstop = True
            self._djobs.clear()
            self._warm = None
            self._dcond.notify_all()

    # ------------------------------------------------------------------ embeddings
    def _remember(self, key: str, emb) -> None:
        with self._lock:
            self._memo[key] = emb
            self._memo.move_to_end(key)
            while len(self._memo) > FP32_MEMO_SLICES:
                self._memo.popitem(last=False)

    def key(self, index: int) -> str | None:
        ctx = self._ctx
        if ctx is None or not self._ctx_ready.is_set() or ctx.fingerprint is None or ctx.engine is None:
            return None
        return ctx.key(index)

    def cached(self, index: int):
        """Slice ``index``'s embedding if it exists (float32 when computed recently, else the
        cache's float16), else None. Never computes."""
        key = self.key(index)
        if key is None:
            return None
        with self._lock:
            emb = self._memo.get(key)
        if emb is not None:
            return emb
        return self.cache.get(key)

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
            ctx = self._ctx
            if ctx is None:
                fut.set_exception(MedsamGuiError("No scan is open. Open a scan first."))
                return fut
            if ctx.engine is None:
                fut.set_exception(CheckpointError("MedSAM's weights are not loaded (Models > Load MedSAM weights…)."))
                return fut
            if not self._ctx_ready.is_set():
                self._pending.append((ctx, int(index), fut))
                return fut
        self._forward(ctx, int(index), fut)
        return fut

    def _forward(self, ctx: _Context, index: int, fut: Future) -> None:
        if self._ctx_error is not None:
            fut.set_exception(self._ctx_error)
            return
        key = ctx.key(index)
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

    def embedding_blocking(self, index: int, cancel: Callable[[], bool] | None = None, timeout: float | None = None):
        """Slice ``index``'s embedding, waiting for it (call from a worker thread, never the GUI).

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

    # ------------------------------------------------------------------ decoding
    def slice_hw(self) -> tuple[int, int] | None:
        return None if self._ctx is None else self._ctx.hw

    def segment_blocking(self, index: int, box, cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """bool mask (H, W) of display slice ``index`` for ``box``; waits for the embedding
        (worker threads only)."""
        ctx = self._ctx
        if ctx is None or ctx.engine is None:
            raise CheckpointError("MedSAM's weights are not loaded (Models > Load MedSAM weights…).")
        emb = self.embedding_blocking(index, cancel)
        return decode_box(ctx.engine, emb, box, ctx.hw)

    def segment_async(self, token, index: int, box) -> int:
        """Decode ``box`` on display slice ``index`` on the decoder thread; ``mask_ready``
        (or ``mask_failed``) follows. A newer request with the same ``token`` supersedes an
        older one still queued. Returns the request's generation number."""
        gen = next(self._gen)
        ctx = self._ctx
        axis = None if ctx is None else ctx.axis
        with self._dcond:
            self._latest[token] = gen
            self._djobs.pop(token, None)
            self._djobs[token] = (token, int(index), tuple(float(v) for v in box), gen, axis)
            self._ensure_decoder_thread()
            self._dcond.notify_all()
        return gen

    def warm_decoder(self, index: int, delay: float | None = None) -> None:
        """Prepare the decoder for display slice ``index`` on the decoder thread once its
        embedding exists, so the first box there is answered at the cached speed.

        Runs only when no box is waiting, ``delay`` seconds (default :data:`WARM_DELAY_S`)
        after the request (slider moves are coalesced: only the newest slice is prepared).
        Nothing happens when the slice has no embedding yet (the scheduler's ``done`` asks
        again) or the engine decodes with segment-anything's own decoder (``fp32``)."""
        wait = WARM_DELAY_S if delay is None else max(0.0, float(delay))
        with self._dcond:
            if self._dstop:  # shut down (the app is closing)
                return
            self._warm = (int(index), time.monotonic() + wait)
            self._ensure_decoder_thread()
            self._dcond.notify_all()

    def _ensure_decoder_thread(self) -> None:  # caller holds self._dcond
        self._dstop = False
        if self._dthread is None or not self._dthread.is_alive():
            self._dthread = threading.Thread(target=self._decode_loop, name="medsam-decoder", daemon=True)
            self._dthread.start()

    def _run_warm(self, index: int) -> None:
        """Decoder thread: the prepare step of :meth:`warm_decoder` (errors are only logged:
        the box that follows reports them)."""
        ctx = self._ctx
        if ctx is None or ctx.engine is None or not self._ctx_ready.is_set():
            return
        prepare = getattr(ctx.engine, "prepare_decoder", None)
        if prepare is None:
            return
        try:
            emb = self.cached(index)
            if emb is not None and prepare(emb):
                self.prepared.append(int(index))
                del self.prepared[:-64]
        except Exception:  # noqa: BLE001 - a warm-up must never disturb the user
            log.debug("decoder warm-up for slice %s failed", index, exc_info=True)

    def is_latest(self, token, gen: int) -> bool:
        with self._dcond:
            return self._latest.get(token) == gen

    def _decode_loop(self) -> None:
        while True:
            with self._dcond:
                warm = None
                while not self._djobs and not self._dstop:
                    if self._warm is not None:
                        due = self._warm[1] - time.monotonic()
                        if due <= 0:
                            warm, self._warm = self._warm[0], None
                            break
                        self._dcond.wait(due)
                    else:
                        self._dcond.wait()
                if self._dstop:
                    return
                job = None if warm is not None else self._djobs.popitem(last=False)[1]
            if job is None:  # no box waits: prepare the focus slice's decoder work
                self._run_warm(warm)
                continue
            token, index, box, gen, axis = job
            if not self.is_latest(token, gen):
                continue
            try:
                ctx = self._ctx  # the window may have changed since: the box (display pixels) still holds
                if ctx is None or ctx.axis != axis:
                    raise MedsamGuiError("The scan or view changed before the box could be segmented; draw it again.")
                if ctx.engine is None:
                    raise CheckpointError("MedSAM's weights are not loaded (Models > Load MedSAM weights…).")
                emb = self.cached(index) if self._ctx_ready.is_set() else None
                if emb is None:
                    fut = self.request(index)
                    self.waiting.emit(token, index)
                    fut.add_done_callback(lambda f, job=job: self._requeue(job, f))
                    continue
                t0 = time.perf_counter()
                mask = decode_box(ctx.engine, emb, box, ctx.hw)
                ms = (time.perf_counter() - t0) * 1000.0
            except BaseException as exc:  # noqa: BLE001 - reported to the GUI
                self.mask_failed.emit(token, exc)
                continue
            self.mask_ready.emit(token, index, box, mask, ms, gen)

    def _requeue(self, job, fut: Future) -> None:
        token, index, box, gen, axis = job
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and not isinstance(exc, EmbeddingCancelled):
            if self.is_latest(token, gen):
                self.mask_failed.emit(token, exc)
            return
        # done, or cancelled because the scheduler was replaced (new window): decode again
        with self._dcond:
            if self._latest.get(token) != gen or token in self._djobs:
                return
            self._djobs[token] = job
            self._dcond.notify_all()
