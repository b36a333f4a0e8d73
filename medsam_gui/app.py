"""Build and run the medsam-gui window (napari + PyQt6).

``run_app`` is what ``medsam-gui [SCAN] [--labels L] [--demo] [--session S]`` calls;
``build_app`` builds the same window without entering the Qt event loop (tests, scripts).
It creates the panels explicitly (session manager, MedSAM + Measurements, UniverSeg,
Auto-segment) and
keeps them in ``window.panels``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from .errors import MedsamGuiError, ScanReadError, SessionError

log = logging.getLogger(__name__)


def _check_inputs(scan, labels, demo: bool, session) -> str | None:
    """Validate CLI inputs before any window opens; returns the scan path to open (or None)."""
    from .config import demo_scan_path

    if demo and scan:
        raise MedsamGuiError("Give either a scan or --demo, not both.")
    if demo:
        scan = demo_scan_path()
        if not Path(scan).is_file():
            raise ScanReadError(f"The demo scan {scan} is missing from this installation; reinstall medsam-gui.")
    if scan is not None and not Path(scan).expanduser().exists():
        raise ScanReadError(f"The scan {scan} does not exist. Check the path.")
    if labels is not None:
        if scan is None:
            raise MedsamGuiError("--labels needs a scan to open them on (medsam-gui SCAN --labels LABELS).")
        if not Path(labels).expanduser().is_file():
            raise ScanReadError(f"The label map {labels} does not exist. Check the path.")
    if session is not None and not Path(session).expanduser().exists():
        raise SessionError(f"The session {session} does not exist. Check the path.")
    return str(Path(scan).expanduser()) if scan is not None else None


def build_app(scan=None, labels=None, demo: bool = False, session=None, *, show: bool = True,
              install_panels: bool = True):
    """Build the main window (napari viewer + medsam-gui panels) and start opening the inputs.

    Returns the :class:`medsam_gui.gui.main_window.MainWindow` (``.controller``, ``.viewer``,
    ``.panels``). Without ``install_panels`` only the viewer, labels and window docks are
    built (tests install the panels they need). The scan loads in the background; wait with
    ``window.controller.wait_idle()``.
    """
    scan_path = _check_inputs(scan, labels, demo, session)
    if session is not None and not install_panels:
        raise MedsamGuiError("Opening a session needs the session panel (install_panels=True).")
    import napari

    from .gui import auto_panel, medsam_panel, prompts_file_actions, session as session_panel, session_files, universeg_panel
    from .gui.controller import Controller
    from .gui.main_window import MainWindow
    from .gui.panels import Panels

    viewer = napari.Viewer(title="medsam-gui", show=show)
    controller = Controller(viewer)
    window = MainWindow(controller)
    if install_panels:
        sessions = session_panel.install(controller)
        medsam = medsam_panel.install(controller)
        universeg = universeg_panel.install(controller, medsam=medsam)
        auto = auto_panel.install(controller)
        prompts_file_actions.install(controller)  # File > Save/Open prompts (the batch input)
        window.raise_dock("MedSAM")  # where a new user starts
        window.panels = Panels(session=sessions, medsam=medsam, measurements=medsam.measurements,
                               universeg=universeg, auto=auto)
        window.decorate_panels()
    if session is not None:
        session_files.open_session(window.panels.session, session)
    elif scan_path is not None:
        controller.open_scan(scan_path, labels=labels, confirm=False)
    return window


def install_excepthook(controller) -> None:
    """Show unexpected exceptions (from Qt callbacks etc.) in a dialog instead of killing the app."""
    previous = sys.excepthook

    def hook(etype, value, tb):
        if issubclass(etype, KeyboardInterrupt):
            previous(etype, value, tb)
            return
        traceback.print_exception(etype, value, tb)
        try:
            controller.show_error(value if value is not None else etype())
        except Exception:  # pragma: no cover - never let the hook itself crash
            previous(etype, value, tb)

    sys.excepthook = hook


def run_app(scan=None, labels=None, demo: bool = False, session=None) -> int:
    """Open the app window and run until it is closed; returns the exit status (0)."""
    _check_inputs(scan, labels, demo, session)
    from napari.qt import get_qapp

    app = get_qapp()
    app.setApplicationName("medsam-gui")
    window = build_app(scan=scan, labels=labels, demo=demo, session=session, show=True)
    install_excepthook(window.controller)
    window.show()
    code = int(app.exec() or 0)
    window.close(force=True)  # done already when the window closed (the event loop has ended)
    return code
