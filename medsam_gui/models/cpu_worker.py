"""One thread for the box-prompt engines' CPU inference.

torch runs its CPU kernels on an OpenMP thread pool per calling thread. Once several threads
have run torch (the background embedding, the box decoder, the GUI), there are more pool threads
than CPUs; libgomp then stops spinning between kernels and wakes its threads through the kernel
for each one. Measured on the 2-core machine: a LiteMedSAM encoder pass 0.46 -> 0.6-0.7 s, a box
decode 20 -> 28 ms, with one idle second pool. So the engines run their CPU model work on this
one thread (one pool) and callers on other threads wait for their call's result.

Urgent calls (boxes) go before waiting ones (encoder passes), and a running pass serves them at
its pause points (:meth:`CpuWorker.serve_urgent`, a few ms apart), so a box does not wait for
the background embedding. The thread runs at the background priority
(:func:`~medsam_gui.runtime.lower_thread_priority`), so the GUI thread goes first: in the app
bench the longest GUI stall while a 300-slice scan embeds was 33-39 ms with it, 46-51 ms without.
No Qt.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from ..runtime import lower_thread_priority


class CpuWorker:
    """A daemon thread (started on the first call) running submitted calls one at a time. Its
    name lacks the ``medsam-`` prefix of the panels' threads: the app does not wait for it when
    closing (it idles between calls, and the threads that wait for its calls are joined)."""

    def __init__(self, name: str = "cpu-inference") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._urgent: deque = deque()
        self._normal: deque = deque()
        self._thread: threading.Thread | None = None

    def on_thread(self) -> bool:
        """True on the worker's own thread."""
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[[], Any], *, urgent: bool = False) -> Any:
        """``fn()`` run on the worker thread (at once when called from it); its result or its
        exception."""
        if self.on_thread():
            return fn()
        fut: Future = Future()
        with self._cond:
            (self._urgent if urgent else self._normal).append((fn, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return fut.result()

    def serve_urgent(self) -> None:
        """A pause point of a running call: run the urgent calls waiting now (no-op off the
        worker thread)."""
        if not self._urgent or not self.on_thread():
            return
        while True:
            with self._cond:
                if not self._urgent:
                    return
                fn, fut = self._urgent.popleft()
            _run(fn, fut)

    def _loop(self) -> None:
        lower_thread_priority()  # before torch starts this thread's OpenMP workers
        while True:
            with self._cond:
                while not self._urgent and not self._normal:
                    self._cond.wait()
                fn, fut = (self._urgent or self._normal).popleft()
            _run(fn, fut)


def _run(fn: Callable[[], Any], fut: Future) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        fut.set_exception(exc)


_WORKER = CpuWorker()


def cpu_worker() -> CpuWorker:
    """The process's CPU inference thread."""
    return _WORKER
