"""Session files for a SessionManager: File > Save session… / Open session… (one
``NAME.medsamsession`` folder, :func:`medsam_gui.core.session.save_session`) and restoring a
session or an autosave slot. Loading and writing run off the GUI thread.

The ``ask_*`` dialogs are module level so tests replace them with monkeypatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from ..core import autosave_slots
from ..core.session import (
    SESSION_JSON,
    SESSION_SUFFIX,
    ScanChangedError,
    ScanMissingError,
    Session,
    load_session,
    open_session_scan,
    relocate_scan,
    save_session,
)
from ..errors import SessionError
from . import dialogs

SESSION_FILTER = "medsam-gui sessions (*.medsamsession)"


def ask_scan_location(parent: QWidget | None, session: Session, message: str) -> str | None:
    """The session's scan is missing or changed: ask where it is now (file or DICOM folder)."""
    QMessageBox.information(parent, "Locate the scan", f"{message}\n\nChoose where the scan is now.")
    if session.scan.series_uid:
        return dialogs.ask_open_folder(parent, f"Locate the DICOM folder of {session.scan.name}")
    return dialogs.ask_open_file(parent, f"Locate {session.scan.name or 'the scan'}", dialogs.SCAN_FILTER)


def ask_save_session_path(parent: QWidget | None, suggested: str | None) -> str | None:
    path, _ = QFileDialog.getSaveFileName(parent, "Save session", suggested or "", SESSION_FILTER)
    if not path:
        return None
    if not path.endswith(SESSION_SUFFIX):
        path += SESSION_SUFFIX
    dialogs.remember_dir(Path(path).parent)
    return path


def ask_open_session_path(parent: QWidget | None) -> str | None:
    """A session is a folder (``*.medsamsession``); picking its session.json works too."""
    path = QFileDialog.getExistingDirectory(parent, "Open session (a .medsamsession folder)", dialogs._last_dir())
    if not path:
        return None
    dialogs.remember_dir(Path(path).parent)
    return path


def parent_widget(controller):
    return controller.window.qt_window if controller.window is not None else None


def _suggested_session_path(mgr) -> str:
    if mgr.session_path is not None:
        return str(mgr.session_path)
    vol = mgr.controller.volume
    name = "session"
    folder = Path(dialogs._last_dir())
    if vol is not None:
        name = vol.name or (Path(vol.path).name if vol.path else "session")
        for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
    return str(folder / f"{name}{SESSION_SUFFIX}")


def save_session_as(mgr, path: str | Path | None = None):
    """Save the current work as ``path`` (a ``.medsamsession`` folder; asked when None).

    The snapshot is taken now; writing happens off the GUI thread. Returns the WorkerHandle
    (None when there is no scan or the user cancelled). Errors are shown; nothing is lost.
    """
    controller = mgr.controller
    if controller.volume is None:
        controller.show_error("There is no scan open, so there is no session to save.")
        return None
    if path is None:
        path = ask_save_session_path(parent_widget(controller), _suggested_session_path(mgr))
        if not path:
            return None
    path = Path(path)
    if not path.name.endswith(SESSION_SUFFIX):
        path = path.with_name(path.name + SESSION_SUFFIX)
    try:
        snap = mgr.snapshot()
    except Exception as exc:
        controller.show_error(exc, title="Could not save the session")
        return None
    snap.name = path.name[: -len(SESSION_SUFFIX)] or snap.name

    def work():
        return save_session(snap, path, overwrite=True)

    def done(written):
        mgr.session_path = Path(written)
        mgr._name = snap.name
        controller.status(f"Saved session to {written}", 8000)

    return controller.run_worker(work, on_done=done, on_error=lambda e: controller.show_error(
        e, title="Could not save the session"), description=f"Saving session {path.name}…")


def _resolve_session_folder(path: Path) -> Path:
    """A .medsamsession folder, its session.json, or an autosave slot (newest snapshot)."""
    if path.is_file() and path.name == SESSION_JSON:
        return path.parent
    if path.is_dir() and not (path / SESSION_JSON).exists():
        snaps = sorted(path.glob(f"snap-*{SESSION_SUFFIX}"), reverse=True)
        for snap in snaps:
            if (snap / SESSION_JSON).is_file():
                return snap
    return path


def restore_session(mgr, path_or_slot):
    """Open a session (``.medsamsession`` folder, an autosave slot folder, or a
    :class:`~medsam_gui.core.autosave_slots.RecoverableSession`) with no dialog in between, unless
    the scan moved (then :func:`ask_scan_location` asks for it; another scan is refused with
    a message). Loading runs off the GUI thread; returns the WorkerHandle (None if cancelled).
    A recovered slot is deleted once this instance has autosaved the restored work.
    """
    controller = mgr.controller
    if isinstance(path_or_slot, autosave_slots.RecoverableSession):
        item = path_or_slot
        slot: Path | None = Path(item.slot)
        load = item.load
        label = item.scan_name or item.name
        source: Path | None = None
    else:
        folder = _resolve_session_folder(Path(path_or_slot).expanduser())
        source = folder
        slot = None
        if folder.parent.name.startswith(autosave_slots.SLOT_PREFIX):
            slot = folder.parent
        load = lambda f=folder: load_session(f)  # noqa: E731
        label = folder.name
    if controller.volume is not None and not controller.confirm_discard("restore the session"):
        return None
    mgr.last_restore_error = None

    def work():
        from .. import io as mio

        session = load()
        try:
            volume = open_session_scan(session, mio.load_volume)
        except (ScanMissingError, ScanChangedError) as exc:
            return {"kind": "locate", "session": session, "message": str(exc)}
        return {"kind": "ok", "session": session, "volume": volume}

    def failed(exc):
        mgr.last_restore_error = str(exc)
        controller.show_error(exc, title="Could not open the session")

    def done(result):
        if result["kind"] == "locate":
            _locate_and_apply(mgr, result["session"], result["message"], slot, failed, source)
            return
        _finish(mgr, result["session"], result["volume"], slot, source)

    return controller.run_worker(work, on_done=done, on_error=failed, description=f"Opening session {label}…")


def _finish(mgr, session: Session, volume, slot: Path | None, source: Path | None = None) -> None:
    mgr.apply(session, volume, recovered_slot=slot)
    if slot is None and source is not None and source.name.endswith(SESSION_SUFFIX):
        mgr.session_path = source
    n = sum(session.label_voxel_counts().values())
    where = "recovered" if slot is not None else "opened"
    mgr.controller.status(f"Session {where}: {session.scan.name or 'scan'}, {n:,} labelled voxels.", 8000)


def _locate_and_apply(mgr, session: Session, message: str, slot: Path | None, failed: Callable,
                      source: Path | None = None) -> None:
    controller = mgr.controller
    new_path = ask_scan_location(parent_widget(controller), session, message)
    if not new_path:
        mgr.last_restore_error = message
        controller.status("Restoring cancelled: the scan was not located.", 8000)
        return

    def work():
        from .. import io as mio

        return relocate_scan(session, new_path, mio.load_volume)

    def done(result):
        new_session, volume = result
        _finish(mgr, new_session, volume, slot, source)

    controller.run_worker(work, on_done=done, on_error=failed, description=f"Opening {Path(new_path).name}…")


def open_session(mgr, path):
    """Open a saved session (app.py's ``--session`` and File > Open session…)."""
    path = Path(path).expanduser()
    if not path.exists():
        mgr.controller.show_error(SessionError(f"The session {path} does not exist. Check the path."))
        return None
    return restore_session(mgr, path)
