"""The volume predictor's decoder thread: interactive boxes answered off the GUI thread.

Boxes are queued per ``token`` (a newer box with the same token replaces a queued older one) and
decoded as soon as their slice's embedding exists; a box whose slice is not embedded yet asks
the predictor for it, reports ``listener.waiting`` and is decoded when it arrives. While no box
waits, the slice on screen gets its box-independent decoder work done ahead (``warm``), so its
first box is answered at the cached speed. Results go to the predictor's listener.

A box being drawn is decoded ahead (``speculate``: the newest one only, after any real box,
never asking for an embedding, not reported): when the drawn box is released where it was last
decoded ahead, its real request takes that mask instead of decoding again (reported with 0 ms).
A caller may wait briefly for its box's result (``wait_result``) instead of receiving it through
the listener later.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..errors import CheckpointError, MedsamGuiError
from ..interactive import interactive_work
from ..runtime import parked, single_threaded_torch
from .engine import EmbeddingCancelled

log = logging.getLogger(__name__)

WARM_DELAY_S = 0.15  # a slice shown this long gets its decoder work prepared
NO_ENGINE = "MedSAM's weights are not loaded (Models > Load MedSAM weights…)."
SPECULATIVE = object()  # the token of the box being drawn
KEPT_RESULTS = 8  # decoded masks kept for wait_result


class BoxDecoderThread:
    """One decoder thread for a :class:`~medsam_gui.models.volume_predictor.VolumePredictor`
    (:meth:`stop` ends it). It starts with the object, on the caller's thread, so that it has the
    caller's CPU priority (a thread started from the background embedding thread would inherit
    that thread's lower priority, and boxes would wait for the background work)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self._cond = threading.Condition()
        self._jobs: OrderedDict[Any, tuple] = OrderedDict()
        self._latest: dict[Any, int] = {}
        self._gen = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._warm: tuple[int, float] | None = None  # (index, monotonic time due)
        self.prepared: list[int] = []  # slices whose decoder work was done ahead (newest last)
        self.decoded_ahead: list[tuple] = []  # (slice, box) decoded while drawn (newest last)
        self._ahead: tuple | None = None  # (slice, box, embedding key, hw, mask) of the newest
        self._results: OrderedDict[Any, tuple] = OrderedDict()  # token -> (gen, mask or None, ms)
        with self._cond:
            self._ensure_thread()

    def submit(self, token, index: int, box, axis: int | None) -> int:
        """Queue ``box`` on slice ``index`` (of ``axis``); returns the request's generation."""
        gen = next(self._gen)
        with self._cond:
            self._latest[token] = gen
            self._jobs.pop(token, None)
            if token is not SPECULATIVE:
                self._jobs.pop(SPECULATIVE, None)  # a real box goes first
            self._jobs[token] = (token, int(index), tuple(float(v) for v in box), gen, axis)
            self._ensure_thread()
            self._cond.notify_all()
        return gen

    def speculate(self, index: int, box, axis: int | None) -> None:
        """Decode ``box`` ahead while it is being drawn (replaces an older one; see the module
        docstring)."""
        self.submit(SPECULATIVE, index, box, axis)

    def _ahead_mask(self, index: int, box: tuple, key, hw):
        """The mask of the box last decoded ahead if it is this one (caller holds the lock)."""
        ahead = self._ahead
        return ahead[4] if ahead is not None and key is not None and ahead[:4] == (index, box, key, hw) else None

    def _decode_ahead(self, index: int, box, axis) -> None:
        """A speculative job: decoded when its slice is embedded, the mask kept for the real box;
        errors only logged (the real box reports them)."""
        p = self.predictor
        try:
            key, emb, hw = p.key(index), p.cached(index), p.slice_hw()
            if emb is None or hw is None or p.axis != axis or p.engine is None:
                return
            with interactive_work():
                mask = np.asarray(p.engine.decode(emb, box, hw), dtype=bool)
            with self._cond:
                self._ahead = (int(index), tuple(box), key, hw, mask)
            self.decoded_ahead.append((int(index), tuple(box)))
            del self.decoded_ahead[:-64]
        except Exception:  # noqa: BLE001 - a speculation must never disturb the user
            log.debug("decoding ahead on slice %s failed", index, exc_info=True)

    def warm(self, index: int, delay: float | None = None) -> None:
        """Prepare slice ``index`` ``delay`` s from now (default :data:`WARM_DELAY_S`) if no box
        waits then; a newer call replaces an older one."""
        wait = WARM_DELAY_S if delay is None else max(0.0, float(delay))
        with self._cond:
            if self._stopped:
                return
            self._warm = (int(index), time.monotonic() + wait)
            self._ensure_thread()
            self._cond.notify_all()

    def is_latest(self, token, gen: int) -> bool:
        with self._cond:
            return self._latest.get(token) == gen

    def stop(self) -> list[threading.Thread]:
        """Drop the queue and end the thread; returns the thread to join (if any)."""
        with self._cond:
            self._stopped = True
            self._jobs.clear()
            self._warm = None
            self._cond.notify_all()
            return [self._thread] if self._thread is not None else []

    def _ensure_thread(self) -> None:  # caller holds self._cond
        if self._stopped:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="medsam-decoder", daemon=True)
            self._thread.start()

    def _next_job(self):
        """Wait for a box (returns the job) or a due warm-up (returns its index as an int);
        None when stopped."""
        with self._cond:
            while not self._jobs and not self._stopped:
                if self._warm is not None:
                    due = self._warm[1] - time.monotonic()
                    if due <= 0:
                        index, self._warm = self._warm[0], None
                        return index
                    with parked():
                        self._cond.wait(due)
                else:
                    with parked():
                        self._cond.wait()
            if self._stopped:
                return None
            return self._jobs.popitem(last=False)[1]

    def _prepare(self, index: int) -> None:
        """The work of :meth:`warm` (errors are only logged: the box that follows reports them)."""
        engine = self.predictor.engine
        try:
            emb = self.predictor.cached(index)
            if engine is not None and emb is not None and engine.prepare_decoder(emb):
                self.prepared.append(int(index))
                del self.prepared[:-64]
        except Exception:  # noqa: BLE001 - a warm-up must never disturb the user
            log.debug("decoder warm-up for slice %s failed", index, exc_info=True)

    def _loop(self) -> None:
        single_threaded_torch()  # the engine decodes on its CPU thread; this one only waits
        p = self.predictor
        while True:
            job = self._next_job()
            if job is None:
                return
            if isinstance(job, int):
                self._prepare(job)
                continue
            token, index, box, gen, axis = job
            if not self.is_latest(token, gen):
                continue
            if token is SPECULATIVE:
                self._decode_ahead(index, box, axis)
                continue
            try:
                hw = p.slice_hw()  # the window may have changed since: the box (pixels) still holds
                if hw is None or p.axis != axis:
                    raise MedsamGuiError("The scan or view changed before the box could be segmented; draw it again.")
                if p.engine is None:
                    raise CheckpointError(NO_ENGINE)
                emb = p.cached(index)
                if emb is None:
                    fut = p.request(index)
                    p.listener.waiting(token, index)
                    fut.add_done_callback(lambda f, job=job: self._requeue(job, f))
                    continue
                key = p.key(index)
                t0 = time.perf_counter()
                with self._cond:
                    mask = self._ahead_mask(index, box, key, hw)  # decoded while it was drawn
                ms = 0.0
                if mask is None:
                    with interactive_work():  # background work waits at its pause points meanwhile
                        mask = np.asarray(p.engine.decode(emb, box, hw), dtype=bool)
                    ms = (time.perf_counter() - t0) * 1000.0
            except BaseException as exc:  # noqa: BLE001 - reported to the listener
                self._keep_result(token, gen, None, 0.0)
                p.listener.mask_failed(token, exc)
                continue
            self._keep_result(token, gen, mask, ms)
            p.listener.mask_ready(token, index, box, mask, ms, gen)

    def _keep_result(self, token, gen: int, mask, ms: float) -> None:
        """For :meth:`wait_result` (the newest few only; a failure is kept as None)."""
        with self._cond:
            self._results.pop(token, None)
            self._results[token] = (gen, mask, ms)
            while len(self._results) > KEPT_RESULTS:
                self._results.popitem(last=False)
            self._cond.notify_all()

    def wait_result(self, token, gen: int, timeout_s: float) -> tuple[np.ndarray, float] | None:
        """(mask, decode ms) of request ``gen`` of ``token`` once decoded, waiting at most
        ``timeout_s``; None when it takes longer, failed, or is no longer the newest (the
        listener is told of it in every case)."""
        def settled():
            return self._results.get(token, (None,))[0] == gen or self._latest.get(token) != gen

        with self._cond:
            self._cond.wait_for(settled, timeout=timeout_s)
            got = self._results.get(token)
            if got is None or got[0] != gen or got[1] is None:
                return None
            del self._results[token]
            return got[1], got[2]

    def _requeue(self, job, fut: Future) -> None:
        token, index, box, gen, axis = job
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and not isinstance(exc, EmbeddingCancelled):
            if self.is_latest(token, gen):
                self.predictor.listener.mask_failed(token, exc)
            return
        # done, or cancelled because the scheduler was replaced (new window): decode again
        with self._cond:
            if self._latest.get(token) != gen or token in self._jobs or self._stopped:
                return
            self._jobs[token] = job
            self._cond.notify_all()
