"""Background work that never blocks the GUI thread.

:func:`start_worker` runs a function (or a generator function / generator object) on a
worker thread (napari/superqt thread workers, a ``QThreadPool``) and calls back on the GUI
thread:

- ``on_yield(value)`` for every value a generator yields;
- ``on_done(result)`` with the function's return value (a generator's ``return`` value);
- ``on_error(exc)`` with the exception raised in the worker.

It returns a :class:`WorkerHandle`. ``handle.cancel()`` asks the work to stop: a generator
stops at its next ``yield``; a plain function cannot be interrupted, but its result is then
discarded (``on_done`` is not called). A cancelled handle calls ``on_cancel`` once.

The controller (``medsam_gui.gui.controller.Controller.run_worker``) adds the status-bar
progress bar and Cancel button on top of this module; panels should use the controller.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

_ids = itertools.count(1)


def set_bar_value(bar, value: int, maximum: int | None = None) -> None:
    """``QProgressBar.setValue`` without its synchronous repaint.

    ``setValue`` repaints the bar at once (``repaint()``), which in napari's window also
    flushes everything else waiting to be drawn, the GL canvas included: ~10-30 ms of GUI
    thread per progress step. With updates briefly disabled the repaint is skipped and
    ``setUpdatesEnabled(True)`` schedules an ordinary ``update()`` for the next paint cycle.
    """
    enabled = bar.updatesEnabled()
    bar.setUpdatesEnabled(False)
    try:
        if maximum is not None and (bar.minimum() != 0 or bar.maximum() != int(maximum)):
            bar.setRange(0, int(maximum))
        bar.setValue(int(value))
    finally:
        bar.setUpdatesEnabled(enabled)


class WorkerHandle:
    """A running piece of background work.

    Attributes: ``id`` (int), ``description`` (str), ``cancellable`` (bool),
    ``cancelled`` / ``finished`` (bool), ``result`` (the return value once done),
    ``error`` (the exception if it failed), ``progress`` ((done, total) or None).
    """

    def __init__(self, description: str = "", cancellable: bool = True) -> None:
        self.id = next(_ids)
        self.description = description
        self.cancellable = cancellable
        self.cancelled = False
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.progress: tuple[int, int] | None = None
        self._worker = None
        self._on_cancel: Callable[[], None] | None = None
        self._on_progress: list[Callable[["WorkerHandle"], None]] = []
        self._on_finished: list[Callable[["WorkerHandle"], None]] = []

    def cancel(self) -> None:
        """Ask the work to stop (generators stop at their next yield); idempotent."""
        if self.finished or self.cancelled:
            return
        self.cancelled = True
        worker = self._worker
        if worker is not None:
            try:
                worker.quit()
            except RuntimeError:  # the C++ side may be gone already
                pass
        if self._on_cancel is not None:
            try:
                self._on_cancel()
            except Exception:  # pragma: no cover - a callback error must not break cancelling
                log.exception("on_cancel callback failed")
        self._finish()

    def set_progress(self, done: int, total: int) -> None:
        """Report progress (``done`` of ``total`` steps); shown by the controller's status bar."""
        self.progress = (int(done), int(total))
        for fn in self._on_progress:
            fn(self)

    def add_progress_callback(self, fn: Callable[["WorkerHandle"], None]) -> None:
        """Call ``fn(handle)`` on each :meth:`set_progress` until the work ends."""
        if not self.finished:
            self._on_progress.append(fn)

    @property
    def running(self) -> bool:
        return not self.finished

    def add_done_callback(self, fn: Callable[["WorkerHandle"], None]) -> None:
        """Call ``fn(handle)`` on the GUI thread when the work ends (done, failed or cancelled);
        at once if it has already ended."""
        if self.finished:
            fn(self)
        else:
            self._on_finished.append(fn)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        callbacks, self._on_finished = self._on_finished, []
        self._on_progress = []  # the callbacks' owners (windows, panels) are not kept alive
        for cb in callbacks:
            try:
                cb(self)
            except Exception:  # pragma: no cover
                log.exception("worker finished callback failed")

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else ("finished" if self.finished else "running")
        return f"<WorkerHandle {self.id} {self.description!r} {state}>"


class _TaskFailed(Exception):
    """Carries a RuntimeError out of a worker (see start_worker)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def start_worker(
    fn_or_generator: Callable[[], Any] | Any,
    *,
    on_yield: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_cancel: Callable[[], None] | None = None,
    description: str = "",
    cancellable: bool = True,
) -> WorkerHandle:
    """Run ``fn_or_generator`` on a worker thread; callbacks run on the GUI thread.

    ``fn_or_generator``: a callable taking no arguments (use ``functools.partial``), a generator
    function, or a generator object. Returns the :class:`WorkerHandle` at once.
    """
    from napari.qt.threading import create_worker

    handle = WorkerHandle(description, cancellable)
    handle._on_cancel = on_cancel

    # superqt treats a RuntimeError escaping a generator worker as "worker deleted" and emits
    # neither errored nor finished; torch raises RuntimeErrors. Wrap them so every failure is
    # reported through on_error and the handle always finishes.
    if inspect.isgenerator(fn_or_generator) or inspect.isgeneratorfunction(fn_or_generator):
        source = fn_or_generator

        def target():
            gen_obj = source if inspect.isgenerator(source) else source()
            try:
                return (yield from gen_obj)
            except RuntimeError as exc:
                raise _TaskFailed(exc) from exc

    elif callable(fn_or_generator):
        func = fn_or_generator

        def target():
            try:
                return func()
            except RuntimeError as exc:
                raise _TaskFailed(exc) from exc

    else:
        raise TypeError(f"run_worker needs a callable or a generator, got {type(fn_or_generator).__name__}")

    worker = create_worker(target, _start_thread=False, _ignore_errors=True)
    handle._worker = worker

    def _yielded(value: Any) -> None:
        if handle.cancelled or on_yield is None:
            return
        try:
            on_yield(value)
        except Exception as exc:  # a failing callback stops the work and reports the error
            handle.cancel()
            handle.error = exc
            if on_error is not None:
                on_error(exc)
            else:
                raise

    def _returned(result: Any) -> None:
        if handle.cancelled:
            return
        handle.result = result
        try:
            if on_done is not None:
                on_done(result)
        except Exception as exc:  # a failing callback is reported like a failing task
            handle.error = exc
            if on_error is not None:
                on_error(exc)
            else:
                raise
        finally:
            handle._finish()

    def _errored(exc: BaseException) -> None:
        if isinstance(exc, _TaskFailed):
            exc = exc.original
        if handle.cancelled:
            return
        handle.error = exc
        try:
            if on_error is not None:
                on_error(exc)
            else:
                log.error("background task %r failed: %s", description, exc)
        finally:
            handle._finish()

    def _finished() -> None:
        # a generator stopped by quit() emits aborted/finished but not returned
        if not handle.finished:
            handle._finish()

    if hasattr(worker, "yielded"):
        worker.yielded.connect(_yielded)
    worker.returned.connect(_returned)
    worker.errored.connect(_errored)
    worker.finished.connect(_finished)
    worker.start()
    return handle
