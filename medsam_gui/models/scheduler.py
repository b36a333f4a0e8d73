"""Background computation of MedSAM slice embeddings, nearest-to-the-user first (no Qt).

One worker thread computes embeddings one slice at a time, in this priority order:

1. slices explicitly asked for with :meth:`EmbeddingScheduler.request` (first asked, first
   done), each answered through a ``concurrent.futures.Future``;
2. the focus slice (the one the user looks at), then its neighbours outward
   (z+1, z-1, z+2, z-2, ... up to ``neighbours`` away);
3. optionally (``prefetch_all=True``) every other slice, still outward from the focus.

Finished embeddings go into an :class:`~medsam_gui.models.embedding_cache.EmbeddingCache`;
a slice whose key is already cached is never recomputed, and one key is never computed twice
at the same time. ``set_focus`` re-prioritises at once (the slice being computed finishes
first: the cancel flag is checked between slices). A background slice yields to a request:
``should_yield()`` turns true while one waits, the ``embed_fn`` passes it to the engine as a
stop point, and the abandoned slice (:class:`~medsam_gui.models.engine.EncoderInterrupted`)
goes back in the queue instead of failing. Event hooks run on the worker thread:
``on_started(index)``, ``on_done(index, seconds)``, ``on_error(exc)`` (the exception also
has ``slice_index`` set and is stored in ``errors``), ``on_idle()`` (nothing is left to do after
at least one embedding was computed; called without the scheduler's lock held, once per busy
spell). The GUI wraps these in Qt signals.
The worker thread runs at a lower CPU priority (:func:`~medsam_gui.runtime.lower_thread_priority`)
and runs torch single-threaded: its own work (cache copies and writes) gives way to the GUI thread
and the box decoder; a box engine on the CPU encodes on its one CPU thread
(:mod:`~medsam_gui.models.cpu_worker`), which serves boxes first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from concurrent.futures import Future
from typing import Callable, Iterator


from ..runtime import lower_thread_priority, parked, single_threaded_torch
from .embedding_cache import EmbeddingCache
from .engine import EncoderInterrupted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingProgress:
    """Background embedding of one axis: ``done`` of ``total`` slices embedded, ``left`` planned
    ones not yet, ``running`` the slice in the encoder (or None), ``seconds_per_slice`` recent."""

    done: int
    total: int
    left: int
    running: int | None
    seconds_per_slice: float | None

    @property
    def seconds_left(self) -> float | None:
        return None if self.seconds_per_slice is None else self.left * self.seconds_per_slice

    def describe(self) -> str:
        """E.g. "Embedded 40 / 120 slices · slice 57 running · about 1 min 10 s left"."""
        parts = [f"Embedded {self.done} / {self.total} slices"]
        if self.running is not None:
            parts.append(f"slice {self.running} running")
        secs = self.seconds_left
        if self.left and secs is not None:
            parts.append(f"about {_duration(secs)} left")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def outward_order(focus: int, n: int, radius: int | None = None) -> Iterator[int]:
    """focus, focus+1, focus-1, focus+2, focus-2, ... within [0, n) and ``radius``."""
    if n <= 0:
        return
    focus = min(max(int(focus), 0), n - 1)
    yield focus
    limit = n if radius is None else int(radius)
    for d in range(1, limit + 1):
        hi, lo = focus + d, focus - d
        if hi >= n and lo < 0:
            return
        if hi < n:
            yield hi
        if lo >= 0:
            yield lo


class EmbeddingScheduler:
    """Qt-free background embedding worker for one volume (see the module docstring).

    ``embed_fn(index) -> tensor (1, 256, 64, 64)`` computes one slice; ``key_fn(index) -> str``
    gives its cache key (see :func:`embedding_key`); ``n_slices`` the number of slices along
    the slice axis. ``cache`` defaults to a memory-only cache.
    """

    def __init__(
        self,
        embed_fn: Callable[[int], object],
        key_fn: Callable[[int], str],
        n_slices: int,
        cache: EmbeddingCache | None = None,
        *,
        focus: int | None = None,
        neighbours: int = 3,
        prefetch_all: bool = False,
        on_started: Callable[[int], None] | None = None,
        on_done: Callable[[int, float], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        autostart: bool = True,
    ) -> None:
        self.embed_fn = embed_fn
        self.key_fn = key_fn
        self.n_slices = int(n_slices)
        self.cache = cache if cache is not None else EmbeddingCache(disk_bytes=0)
        self.neighbours = int(neighbours)
        self.prefetch_all = bool(prefetch_all)
        self.on_started = on_started
        self.on_done = on_done
        self.on_error = on_error
        self.on_idle = on_idle
        self._busy = False  # an embedding was computed since on_idle was last called
        self.errors: dict[int, BaseException] = {}
        self.computed: list[int] = []  # indices computed by this scheduler, in order
        self.yielded: list[int] = []  # background slices abandoned for a request, in order
        self._cond = threading.Condition()
        self._focus: int | None = None if focus is None else int(focus)
        self._requests: deque[int] = deque()
        self._futures: dict[int, list[Future]] = {}
        self._done: set[int] = set()
        self._failed: set[int] = set()
        self._inflight: int | None = None
        self._inflight_background = False
        self._stop = False
        self._thread: threading.Thread | None = None
        if autostart:
            self.start()

    # ------------------------------------------------------------ control
    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="medsam-embedding-scheduler", daemon=True)
            self._thread.start()

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop after the slice being computed; pending request futures are cancelled."""
        with self._cond:
            self._stop = True
            pending = [f for fs in self._futures.values() for f in fs]
            self._futures.clear()
            self._requests.clear()
            self._cond.notify_all()
        for f in pending:
            f.cancel()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop

    @property
    def running_index(self) -> int | None:
        """The slice in the encoder now (None when idle)."""
        return self._inflight

    @property
    def cancelled(self) -> bool:
        return self._stop

    def set_options(self, *, neighbours: int | None = None, prefetch_all: bool | None = None) -> None:
        """Change how far ahead to compute (``neighbours`` each side of the focus) and whether
        to go on with the rest of the volume; takes effect at the next slice."""
        with self._cond:
            if neighbours is not None:
                self.neighbours = int(neighbours)
            if prefetch_all is not None:
                self.prefetch_all = bool(prefetch_all)
            self._cond.notify_all()

    def set_focus(self, index: int | None) -> None:
        """The slice the user is on; it and its neighbours are computed next."""
        with self._cond:
            self._focus = None if index is None else int(index)
            self._cond.notify_all()

    def request(self, index: int) -> Future:
        """A Future for slice ``index``'s embedding (float16 CPU tensor), computed next if
        not cached. Retries a slice that failed before."""
        index = int(index)
        fut: Future = Future()
        if not 0 <= index < self.n_slices:
            fut.set_exception(IndexError(f"slice {index} is outside 0..{self.n_slices - 1}"))
            return fut
        cached = self.cache.get(self.key_fn(index))
        if cached is not None:
            fut.set_result(cached)
            return fut
        with self._cond:
            if self._stop:
                fut.cancel()
                return fut
            self._futures.setdefault(index, []).append(fut)
            self._failed.discard(index)
            self._done.discard(index)
            if index != self._inflight and index not in self._requests:
                self._requests.append(index)
            self._cond.notify_all()
        return fut

    def should_yield(self) -> bool:
        """True while a background slice is embedded and a requested slice waits for it."""
        with self._cond:
            return self._inflight is not None and self._inflight_background and bool(self._requests)

    def progress(self) -> tuple[int, int]:
        """(slices embedded, slices planned and not embedded yet): the planned ones are the
        requests and the focus's neighbourhood (the whole scan with ``prefetch_all``). Cheap
        (no cache look-ups): the worker keeps the set of embedded slices, starting with those
        already cached when it starts."""
        with self._cond:
            focus, radius = self._focus, (None if self.prefetch_all else self.neighbours)
            planned = set(self._requests)
            if focus is not None:
                planned.update(outward_order(focus, self.n_slices, radius))
            return len(self._done), len(planned - self._done)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is left to do (or timeout); True when idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._stop or (self._inflight is None and self._next_index_locked(peek=True) is None):
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 0.5)

    # ------------------------------------------------------------ worker
    def _next_index_locked(self, peek: bool = False) -> int | None:
        if self._requests:
            return self._requests[0] if peek else self._requests.popleft()
        if self._focus is None:
            return None
        radius = None if self.prefetch_all else self.neighbours
        for i in outward_order(self._focus, self.n_slices, radius):
            if i in self._done or i in self._failed or i == self._inflight:
                continue
            if self.cache.contains(self.key_fn(i)):
                self._done.add(i)
                continue
            return i
        return None

    def _emit(self, hook, *args) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:  # a broken listener must not kill the worker
            log.exception("embedding scheduler callback failed")

    def _resolve(self, index: int, result=None, exc: BaseException | None = None) -> None:
        with self._cond:
            futures = self._futures.pop(index, [])
        for f in futures:
            if f.done():
                continue
            if exc is not None:
                f.set_exception(exc)
            else:
                f.set_result(result)

    def _yield_back(self, index: int, background: bool) -> bool:
        """After an interrupted pass: True when it was a background slice yielding to a
        request (it is queued again if someone now waits for it)."""
        with self._cond:
            if self._stop or not background:
                return False
            self._inflight = None
            self.yielded.append(index)
            if self._futures.get(index) and index not in self._requests:
                self._requests.append(index)
            self._cond.notify_all()
        return True

    def _find_cached(self) -> None:
        """Mark the slices already in the cache (e.g. on disk from an earlier session) as done."""
        cached = [i for i in range(self.n_slices) if not self._stop and self.cache.contains(self.key_fn(i))]
        with self._cond:
            self._done.update(cached)

    def _run(self) -> None:
        lower_thread_priority()
        single_threaded_torch()  # the engine's work runs on its CPU thread; this one only waits
        self._find_cached()
        while True:
            idle = False
            with self._cond:
                index = None
                while not self._stop:
                    background = not self._requests
                    index = self._next_index_locked()
                    if index is not None:
                        break
                    self._cond.notify_all()  # wake wait_idle
                    if self._busy and self.on_idle is not None:
                        self._busy, idle = False, True
                        break
                    with parked():
                        self._cond.wait()
                if self._stop:
                    self._cond.notify_all()
                    return
                if idle:
                    index = None
                else:
                    self._inflight = index
                    self._inflight_background = background
            if idle:  # outside the lock: requests and focus changes are never held up by it
                self._emit(self.on_idle)
                continue
            key = self.key_fn(index)
            cached = self.cache.get(key)
            if cached is not None:
                with self._cond:
                    self._done.add(index)
                    self._inflight = None
                self._resolve(index, cached)
                continue
            self._emit(self.on_started, index)
            t0 = time.perf_counter()
            try:
                emb = self.embed_fn(index)
                self.cache.put(key, emb)
            except Exception as exc:  # noqa: BLE001 - reported to the listener and the futures
                if isinstance(exc, EncoderInterrupted) and self._yield_back(index, background):
                    continue
                try:
                    exc.slice_index = index  # type: ignore[attr-defined]
                except Exception:
                    pass
                with self._cond:
                    self._failed.add(index)
                    self.errors[index] = exc
                    self._inflight = None
                    self._cond.notify_all()
                self._resolve(index, exc=exc)
                self._emit(self.on_error, exc)
                continue
            seconds = time.perf_counter() - t0
            result = self.cache.get(key)
            if result is None:  # memory budget of 0: hand the computed one back
                result = self.cache._to_half(emb)
            with self._cond:
                self._done.add(index)
                self.computed.append(index)
                self._busy = True
                self._inflight = None
                self._cond.notify_all()
            self._resolve(index, result)
            self._emit(self.on_done, index, seconds)
