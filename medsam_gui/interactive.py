"""Background work gives way to interactive work (a box being decoded) at its pause points.

Lower CPU priority is not enough on a 2-core machine: the engine's OpenMP team decodes a box on
both cores and waits for its slower thread at every kernel, so a low-priority thread that holds
one core for a scheduler slice delays the whole team. Measured in the app bench: the
measurements thread (nice +19) and the autosave writer (nice +10) running beside the decode
raised its p50 from 16 to 23-26 ms.

So work that nobody waits for (measuring, autosave) calls :func:`pause_point` between steps of a
few milliseconds, and the box decoder marks its decode with :func:`interactive_work`: a pause
point waits while a decode is in flight. No Qt.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

MAX_PAUSE_S = 2.0  # a pause point never waits longer (background work must still progress)

_cond = threading.Condition()
_in_flight = 0


@contextlib.contextmanager
def interactive_work() -> Iterator[None]:
    """Mark interactive work in flight while the block runs (nests; any thread)."""
    global _in_flight
    with _cond:
        _in_flight += 1
    try:
        yield
    finally:
        with _cond:
            _in_flight -= 1
            if _in_flight == 0:
                _cond.notify_all()


def pause_point(timeout_s: float = MAX_PAUSE_S) -> bool:
    """Wait while interactive work is in flight, at most ``timeout_s`` s; True when it waited.
    Returns at once when none is (the common case: one lock, no wait)."""
    with _cond:
        if _in_flight == 0:
            return False
        _cond.wait_for(lambda: _in_flight == 0, timeout=timeout_s)
        return True
