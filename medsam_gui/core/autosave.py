"""Autosave and crash recovery.

Each running app instance owns one *slot*, a folder ``autosave-<host>-<pid>-<time>-<token>``
under :func:`medsam_gui.config.sessions_dir` (the user data folder: never next to or over a
scan). The slot holds

- ``owner.lock``: JSON ``{"pid", "hostname", "start_time", "proc_start", "app_version"}``,
  kept open and locked (``fcntl.flock`` / ``msvcrt.locking``) for the life of the instance.
  The OS drops the lock when the process dies (even on SIGKILL), which is how another
  instance tells a crashed slot from a live one; where locking is unavailable the pid (and
  its start time) is checked instead.
- ``snap-000001.medsamsession`` ...: session folders written by
  :func:`medsam_gui.core.session.save_session` (atomic, verified); the newest two are kept.
- ``CLEAN``: written when the app closed normally (the slot is then deleted).

Threading model. The GUI calls :meth:`AutosaveManager.mark_dirty` after every change, on its
own thread, passing ``snapshot_fn`` (returns a :class:`Session` whose arrays are *copies*, e.g.
``session.snapshot()``). A snapshot is taken at most once every ``interval_s`` on the caller's
thread (a memcpy); a change made less than ``interval_s`` after the last snapshot is picked up
by :meth:`poll`, which the GUI calls from a timer (every ~1 s; :meth:`due_in` says when it is
needed). With ``snapshot_in_worker=True`` (for thread-safe snapshot functions) the background
thread takes the due snapshot itself and no timer is needed. Writing happens on one background
thread and never blocks the caller; snapshots taken while a write is in progress are coalesced
(only the newest is written next).

Failures (disk full, read-only) never raise into the caller: they go to ``on_error(exc)``
(called on the worker thread; the GUI forwards it to its own thread) and the write is retried
one ``interval_s`` later, with the newest snapshot. The in-memory annotation is never touched.

Guarantee: with ``interval_s <= 5`` and ``poll()`` called at least every second (or
``snapshot_in_worker=True``), every change is on disk within ``interval_s`` + poll period +
write time, so a crash loses at most the last 10 seconds of work (writes of typical label maps
take well under a second; see tests/test_autosave.py).

Public API::

    AutosaveManager(root=None, interval_s=5.0, *, on_error=None, on_saved=None,
                    snapshot_in_worker=False, keep=2)
        .slot, .mark_dirty(snapshot_fn=None), .poll() -> bool, .due_in() -> float | None,
        .flush(timeout=30.0) -> bool, .close(clean=True, timeout=30.0), .stats -> dict

Finding and discarding crashed runs' slots: :mod:`medsam_gui.core.autosave_slots`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..errors import ExportError, MedsamGuiError
from ..interactive import pause_point
from ..runtime import WRITER_NICE, lower_thread_priority, parked
from .atomic import describe_os_error
from .autosave_slots import (
    CLEAN_FILE,
    LOCK_FILE,
    SLOT_PREFIX,
    RecoverableSession,
    find_recoverable,
    hostname,
    proc_start,
    snapshots,
    try_lock,
    unlock,
)
from .session import SESSION_SUFFIX, Session, save_session

# ------------------------------------------------------------------------------------------
# the manager
# ------------------------------------------------------------------------------------------
class AutosaveManager:
    """Periodic, non-blocking autosave of one app instance's session (see module docs).

    ``root``: folder holding the slots (default ``config.sessions_dir()``); ``interval_s``:
    minimum time between snapshots (keep <= 5 for the 10-second guarantee); ``on_error(exc)``
    and ``on_saved(path)`` are called on the worker thread; ``keep``: snapshots kept (>= 1).
    """

    def __init__(self, root: str | os.PathLike | None = None, interval_s: float = 5.0, *,
                 on_error: Callable[[BaseException], Any] | None = None,
                 on_saved: Callable[[Path], Any] | None = None,
                 snapshot_in_worker: bool = False, keep: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if root is None:
            from ..config import sessions_dir

            root = sessions_dir()
        self.root = Path(root)
        self.interval_s = float(interval_s)
        self.on_error = on_error
        self.on_saved = on_saved
        self.snapshot_in_worker = bool(snapshot_in_worker)
        self.keep = max(1, int(keep))
        self._clock = clock
        self._cond = threading.Condition()
        self._fn: Callable[[], Session] | None = None
        self._dirty = False
        self._last_snap = -float("inf")
        self._pending: Session | None = None
        self._writing = False
        self._retry_at = -float("inf")
        self._stop = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._attempts = 0
        self._last_ok = True
        self.last_error: BaseException | None = None
        self.last_saved_path: Path | None = None
        self.last_saved_at: float | None = None
        self.snapshots_taken = 0
        self.snapshots_coalesced = 0
        self.saves_completed = 0
        self.saves_failed = 0
        self._lock_fd: int | None = None
        self.slot: Path | None = None
        try:
            self._create_slot()
        except OSError as exc:
            self.slot = None
            self._report(ExportError("Autosave is off: " + describe_os_error(exc, self.root)))

    # -- slot ---------------------------------------------------------------------------------
    def _create_slot(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9_.-]+", "_", hostname())[:40]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{SLOT_PREFIX}{host}-{os.getpid()}-{stamp}-{secrets.token_hex(3)}"
        tmp = self.root / f".{name}.tmp"
        os.mkdir(tmp)
        try:
            owner = {"pid": os.getpid(), "hostname": hostname(), "start_time": time.time(),
                     "proc_start": proc_start(os.getpid()), "app_version": __version__}
            fd = os.open(os.fspath(tmp / LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            try:
                os.write(fd, json.dumps(owner).encode("utf-8"))
                os.fsync(fd)
                try_lock(fd)
            except BaseException:
                os.close(fd)
                raise
            os.rename(tmp, self.root / name)  # appears complete, locked, to other instances
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._lock_fd = fd
        self.slot = self.root / name

    # -- callbacks ----------------------------------------------------------------------------
    def _report(self, exc: BaseException) -> None:
        self.last_error = exc
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:  # a broken callback must not kill autosave
                pass

    # -- public API (caller's thread) ---------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.slot is not None and not self._closed

    @property
    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"snapshots_taken": self.snapshots_taken, "snapshots_coalesced": self.snapshots_coalesced,
                    "saves_completed": self.saves_completed, "saves_failed": self.saves_failed,
                    "pending": self._pending is not None, "writing": self._writing, "dirty": self._dirty}

    def mark_dirty(self, snapshot_fn: Callable[[], Session] | None = None) -> None:
        """Record a change. ``snapshot_fn()`` returns a Session with copied arrays; it is
        called now (on this thread) when the last snapshot is ``interval_s`` old, otherwise by
        a later :meth:`poll` (or the worker with ``snapshot_in_worker``). Never raises."""
        if not self.enabled:
            return
        with self._cond:
            if snapshot_fn is not None:
                self._fn = snapshot_fn
            self._dirty = True
            self._cond.notify_all()
        self._ensure_thread()
        self._take_snapshot(force=False)

    def poll(self) -> bool:
        """Take the pending snapshot if one is due (call from a GUI timer, ~1 s). True if taken."""
        if not self.enabled:
            return False
        return self._take_snapshot(force=False)

    def due_in(self) -> float | None:
        """Seconds until a snapshot is due (0 = now), or None when nothing changed."""
        with self._cond:
            if not self._dirty or self._fn is None:
                return None
            return max(0.0, self._last_snap + self.interval_s - self._clock())

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Snapshot any unsaved change now and wait until it is written (for quitting).
        True when everything is on disk; False on a write failure (reported to on_error)
        or timeout. Never raises."""
        if not self.enabled:
            return False
        self._take_snapshot(force=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._pending is None and not self._writing:
                return self._last_ok
            self._ensure_thread_locked()
            start_attempts = self._attempts
            self._retry_at = -float("inf")
            self._cond.notify_all()
            while True:
                if not self._writing and self._pending is None:
                    return self._last_ok
                if not self._writing and self._attempts > start_attempts and not self._last_ok:
                    return False
                if self._thread is None or not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def close(self, clean: bool = True, timeout: float = 30.0) -> None:
        """Stop autosaving. ``clean=True`` (the user saved or discarded their work): the slot
        is deleted and never offered for recovery. ``clean=False``: unsaved changes are
        flushed first and the slot is kept, to be offered by :func:`find_recoverable`."""
        if self._closed:
            return
        if not clean and self.slot is not None:
            self.flush(timeout)
        with self._cond:
            self._stop = True
            self._pending = None if clean else self._pending
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._closed = True
        if self.slot is not None and clean:
            try:
                (self.slot / CLEAN_FILE).touch()
            except OSError:
                pass
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.slot is not None and clean:
            shutil.rmtree(self.slot, ignore_errors=True)

    def recoverable(self) -> list[RecoverableSession]:
        """:func:`find_recoverable` for this manager's root (never this instance's own slot)."""
        return [r for r in find_recoverable(self.root) if r.slot != self.slot]

    def __enter__(self) -> "AutosaveManager":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(clean=exc_type is None)

    # -- internals ----------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._cond:
            self._ensure_thread_locked()

    def _ensure_thread_locked(self) -> None:
        if self._thread is None and not self._stop:
            self._thread = threading.Thread(target=self._run, name="medsam-autosave", daemon=True)
            self._thread.start()

    def _take_snapshot(self, force: bool) -> bool:
        with self._cond:
            if not self._dirty or self._fn is None or self._stop:
                return False
            now = self._clock()
            if not force and now - self._last_snap < self.interval_s:
                return False
            fn = self._fn
            self._dirty = False
            self._last_snap = now
        return self._call_snapshot(fn)

    def _call_snapshot(self, fn: Callable[[], Session]) -> bool:
        try:
            snap = fn()
            if not isinstance(snap, Session):
                raise TypeError(f"snapshot_fn returned {type(snap).__name__}, not a Session")
        except Exception as exc:
            with self._cond:
                self._dirty = True
            self._report(exc)
            return False
        with self._cond:
            if self._pending is not None:
                self.snapshots_coalesced += 1
            self._pending = snap
            self.snapshots_taken += 1
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        lower_thread_priority(WRITER_NICE)  # writes give way to the GUI and to the box decoder
        while True:
            snap: Session | None = None
            fn: Callable[[], Session] | None = None
            with self._cond:
                while True:
                    if self._stop:
                        return
                    now = self._clock()
                    if self._pending is not None and now >= self._retry_at:
                        snap, self._pending = self._pending, None
                        self._writing = True
                        break
                    waits = []
                    if self._pending is not None:
                        waits.append(self._retry_at - now)
                    if self.snapshot_in_worker and self._dirty and self._fn is not None:
                        due = max(self._last_snap + self.interval_s, self._retry_at)
                        if now >= due:
                            fn = self._fn
                            self._dirty = False
                            self._last_snap = now
                            break
                        waits.append(due - now)
                    with parked():
                        self._cond.wait(max(0.0, min(waits)) if waits else None)
            if fn is not None:
                self._call_snapshot(fn)
                continue
            pause_point()  # not while a box is being decoded
            self._write(snap)

    def _write(self, snap: Session) -> None:
        ok = False
        err: BaseException | None = None
        path = None
        try:
            self._check_target(snap)
            seq = self._seq + 1
            path = save_session(snap, self.slot / f"snap-{seq:06d}{SESSION_SUFFIX}", overwrite=True)
            self._seq = seq
            for _, old in snapshots(self.slot)[self.keep:]:
                shutil.rmtree(old, ignore_errors=True)
            ok = True
        except BaseException as exc:  # never let the worker die
            err = exc if isinstance(exc, MedsamGuiError) else ExportError(f"Autosave failed: {exc}")
            if not isinstance(exc, Exception):
                raise
        with self._cond:
            self._writing = False
            self._attempts += 1
            self._last_ok = ok
            if ok:
                self.saves_completed += 1
                self.last_saved_path = path
                self.last_saved_at = time.time()
                self.last_error = None
            else:
                self.saves_failed += 1
                if self._pending is None:  # retry with this one unless a newer snapshot came
                    self._pending = snap
                self._retry_at = self._clock() + self.interval_s
            self._cond.notify_all()
        if ok:
            if self.on_saved is not None:
                try:
                    self.on_saved(path)
                except Exception:
                    pass
        else:
            self._report(err)

    def _check_target(self, snap: Session) -> None:
        slot = self.slot.absolute()
        for p in snap.scan.paths:
            sp = Path(p).absolute()
            if sp == slot or sp.parent == slot or slot in sp.parents:
                raise ExportError(f"Autosave refused: the scan {sp} lies in the autosave folder {slot}.")
