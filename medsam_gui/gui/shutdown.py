"""The shutdown half of :class:`~medsam_gui.gui.controller.Controller`: hooks run when the app
closes, then the background work is waited for (see ``Controller.shutdown``).

Every method here is a ``Controller`` method (this mixin only keeps controller.py short).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..runtime import is_parked

log = logging.getLogger(__name__)

THREAD_PREFIX = "medsam-"  # every background thread medsam-gui starts is named medsam-*
SHUTDOWN_WAIT_S = 10.0  # longest wait for background threads when the app closes


def background_threads() -> list[threading.Thread]:
    """medsam-gui's background threads (named ``medsam-*``) still running, the caller's aside."""
    current = threading.current_thread()
    return [t for t in threading.enumerate()
            if t is not current and t.name.startswith(THREAD_PREFIX) and t.is_alive()]


class ShutdownMixin:
    """Shutdown hooks and the bounded wait for background work (see controller.py for the API)."""

    def add_shutdown_hook(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once when the app closes (hooks run last added first)."""
        self._shutdown_hooks.append(fn)

    def shutdown(self, timeout_s: float = SHUTDOWN_WAIT_S) -> None:
        """Stop everything running in the background before the app exits (idempotent).

        Runs the shutdown hooks (panels stop their services), cancels the workers, then waits
        up to ``timeout_s`` in all for Qt's thread pool (``run_worker`` work) and every
        ``medsam-*`` Python thread (a thread still inside torch when the interpreter exits
        aborts the process: "terminate called without an active exception"; an encoder pass
        stops at its next transformer block once its predictor is shut down). Threads parked
        waiting for work (``runtime.parked``: another window's decoder, say) run no model code
        and are not waited for.
        """
        if self._shut_down:
            return
        self._shut_down = True
        for hook in reversed(self._shutdown_hooks):
            try:
                hook()
            except Exception:  # one failing panel must not keep the others running
                log.exception("shutdown hook %r failed", hook)
        self.cancel_all()
        end = time.monotonic() + timeout_s
        from qtpy.QtCore import QThreadPool

        QThreadPool.globalInstance().waitForDone(int(timeout_s * 1000))
        for thread in background_threads():
            if is_parked(thread):
                continue
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                log.warning("background thread %s still runs at exit", thread.name)
