"""Autosave slots on disk: which instance owns a slot, and the crashed runs' slots that can be
restored (see :mod:`medsam_gui.core.autosave` for the slot layout).

``find_recoverable(root=None) -> list[RecoverableSession]`` (newest first), ``discard(slot)``,
``slot_owner_alive(slot)``; for the writer: ``hostname``, ``proc_start``, ``try_lock``,
``unlock``, ``snapshots``. No Qt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SessionError
from .session import SESSION_SUFFIX, Session, load_session, read_session_summary

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

SLOT_PREFIX = "autosave-"
LOCK_FILE = "owner.lock"
CLEAN_FILE = "CLEAN"
_SNAP_RE = re.compile(r"^snap-(\d{6,})" + re.escape(SESSION_SUFFIX) + r"$")
_WIN_LOCK_OFFSET = 1 << 30  # lock a byte far beyond the JSON so readers are not blocked


# ------------------------------------------------------------------------------------------
# process identity and liveness
# ------------------------------------------------------------------------------------------
def hostname() -> str:
    try:
        return socket.gethostname() or "localhost"
    except OSError:  # pragma: no cover
        return "localhost"


def proc_start(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux /proc; clock ticks since boot) or None."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def try_lock(fd: int) -> bool | None:
    """Take the slot lock without waiting: True taken, False held by someone, None unknown."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        if msvcrt is not None:  # pragma: no cover - Windows
            os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
    except (BlockingIOError, PermissionError):
        return False
    except OSError as exc:
        import errno

        if exc.errno in (errno.EAGAIN, errno.EACCES, getattr(errno, "EDEADLK", -1)):
            return False
        return None
    return None


def unlock(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:  # pragma: no cover - Windows
            os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass


def _read_owner(slot: Path) -> dict[str, Any]:
    try:
        with open(slot / LOCK_FILE, "rb") as fh:
            data = json.loads(fh.read(65536).decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def slot_owner_alive(slot: str | os.PathLike) -> bool:
    """True while the app instance that owns ``slot`` is running (including this one)."""
    slot = Path(slot)
    lock_path = slot / LOCK_FILE
    try:
        fd = os.open(os.fspath(lock_path), os.O_RDWR | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return False
    except OSError:
        fd = None
    if fd is not None:
        try:
            got = try_lock(fd)
            if got:
                unlock(fd)
                return False
            if got is False:
                return True
        finally:
            os.close(fd)
    # No usable lock: fall back to the recorded pid on this host.
    owner = _read_owner(slot)
    if owner.get("hostname") != hostname():
        return True  # cannot tell; never take another machine's work away
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    recorded, now = owner.get("proc_start"), proc_start(pid)
    return recorded is None or now is None or recorded == now


# ------------------------------------------------------------------------------------------
# recovery listing
# ------------------------------------------------------------------------------------------
def snapshots(slot: Path) -> list[tuple[int, Path]]:
    """(sequence number, path) of the slot's snapshot folders, newest first."""
    out = []
    try:
        for p in slot.iterdir():
            m = _SNAP_RE.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
    except OSError:
        return []
    return sorted(out, reverse=True)


def _snapshot_complete(doc: dict[str, Any], snap: Path) -> bool:
    files = doc.get("files")
    if not isinstance(files, dict):
        return False
    for name, entry in files.items():
        try:
            if (snap / name).stat().st_size != entry.get("size"):
                return False
        except (OSError, AttributeError):
            return False
    return True


@dataclass
class RecoverableSession:
    """Unsaved work left by an app instance that did not close normally.

    ``saved_at``: POSIX time of the newest good autosave; ``label_voxels``: {label value:
    voxel count}; ``scan_path`` may be None (scan not from a file).
    """

    slot: Path
    session_path: Path
    name: str
    scan_name: str
    scan_path: str | None
    saved_at: float
    label_voxels: dict[int, int] = field(default_factory=dict)
    owner_pid: int | None = None
    owner_hostname: str = ""
    app_version: str = ""

    def load(self) -> Session:
        """The autosaved session (newest snapshot that reads back intact); SessionError if
        none does."""
        first_error: SessionError | None = None
        candidates = [self.session_path] + [p for _, p in snapshots(self.slot) if p != self.session_path]
        for path in candidates:
            try:
                return load_session(path)
            except SessionError as exc:
                first_error = first_error or exc
        raise first_error or SessionError(f"No autosaved session left in {self.slot}.")


def _is_slot(path: Path) -> bool:
    return path.name.startswith(SLOT_PREFIX) and path.is_dir()


def find_recoverable(root: str | os.PathLike | None = None) -> list[RecoverableSession]:
    """Autosave slots under ``root`` (default ``config.sessions_dir()``) whose owning app is
    no longer running and which were not closed cleanly, newest first. Cleanly closed slots
    and dead slots without any snapshot are deleted on the way (they hold no work)."""
    if root is None:
        from ..config import sessions_dir

        root = sessions_dir()
    root = Path(root)
    found: list[RecoverableSession] = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for slot in entries:
        if not _is_slot(slot) or slot_owner_alive(slot):
            continue
        snaps = snapshots(slot)
        if (slot / CLEAN_FILE).exists() or not snaps:
            shutil.rmtree(slot, ignore_errors=True)
            continue
        owner = _read_owner(slot)
        for _, snap in snaps:
            try:
                doc = read_session_summary(snap)
            except SessionError:
                continue
            if not _snapshot_complete(doc, snap):
                continue
            scan = doc.get("scan") if isinstance(doc.get("scan"), dict) else {}
            paths = scan.get("paths") or []
            labels = doc.get("labels") if isinstance(doc.get("labels"), dict) else {}
            voxels = labels.get("voxels", {}) if isinstance(labels.get("voxels", {}), dict) else {}
            try:
                counts = {int(k): int(v) for k, v in voxels.items()}
                saved_at = float(doc.get("saved_at", 0.0))
            except (TypeError, ValueError):
                continue
            found.append(RecoverableSession(
                slot=slot, session_path=snap, name=str(doc.get("name", "")),
                scan_name=str(scan.get("name", "")),
                scan_path=paths[0] if paths and isinstance(paths[0], str) else None,
                saved_at=saved_at, label_voxels=counts,
                owner_pid=owner.get("pid") if isinstance(owner.get("pid"), int) else None,
                owner_hostname=str(owner.get("hostname", "")),
                app_version=str(doc.get("app_version", "")),
            ))
            break
    found.sort(key=lambda r: r.saved_at, reverse=True)
    return found


def discard(slot: "RecoverableSession | str | os.PathLike") -> None:
    """Delete an autosave slot the user chose not to recover. SessionError if it is not an
    autosave slot or its app is still running."""
    path = Path(slot.slot if isinstance(slot, RecoverableSession) else slot)
    if not path.exists():
        return
    if not _is_slot(path) or not (path / LOCK_FILE).exists():
        raise SessionError(f"{path} is not an autosave folder; it was left alone.")
    if slot_owner_alive(path):
        raise SessionError(f"The autosave {path} belongs to a medsam-gui that is still running.")
    try:
        (path / CLEAN_FILE).touch()
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)
