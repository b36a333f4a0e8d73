"""File menu entries of the SessionManager: Save session…, Open session…, Recover unsaved work…
(after "Save labels as…")."""

from __future__ import annotations

from . import recovery_dialog, session_files


def install_menu(mgr, window) -> None:
    """Add the session entries to ``window``'s File menu (a :class:`~.main_window.MainWindow`)."""
    controller = mgr.controller

    def do_open():
        path = session_files.ask_open_session_path(window.qt_window)
        if path:
            session_files.open_session(mgr, path)

    def do_recover():
        if recovery_dialog.offer_recovery(mgr) is None:
            controller.status("There is no unsaved work from an earlier run to recover.", 5000)

    window.add_action("file", "save_session", "Save session…", lambda: session_files.save_session_as(mgr),
                      shortcut="Ctrl+Shift+S", after="save_labels_as", separator_before=True,
                      tip="Save scan reference, labels, names, window and tool state as one .medsamsession folder")
    window.add_action("file", "open_session", "Open session…", do_open, after="save_session",
                      tip="Open a .medsamsession folder")
    window.add_action("file", "recover_sessions", "Recover unsaved work…", do_recover, after="open_session",
                      tip="Restore work autosaved by a medsam-gui that did not close normally")
