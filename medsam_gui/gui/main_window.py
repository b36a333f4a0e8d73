"""The main window: napari's window with medsam-gui's menus, docks, status bar and drops.

napari's own File/Layers/Plugins menus are removed (they would open files with napari's
readers, which do not keep the scan's geometry); files always open through
``medsam_gui.io``. Drops of files/folders on the window are intercepted before napari's
handler (an event filter) and go to the controller. Closing the window asks about unsaved
labels.

Status bar (right side, permanent widgets): message label, oblique-scan notice, progress
bar + Cancel button for background work (``Controller.run_worker``).

Geometry: the first time the window opens it fills the screen (maximised); after that it comes
back at the size and position it had when it was last closed (settings key ``"window_geometry"``).
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

from qtpy.QtCore import QByteArray, QEvent, QObject, Qt, QTimer
from qtpy.QtGui import QAction, QKeySequence
from qtpy.QtWidgets import (
    QApplication,
    QLabel,
    QMenu,
    QMessageBox,
    QProgressBar,
    QToolBar,
    QToolButton,
    QWidget,
)

from .. import __version__, config
from . import dialogs, icons, shortcuts
from .collapsible import SettingsScroll
from .cursor_readout import CursorReadout
from .labels_panel import LabelsPanel
from .linked_views import LinkedViews
from .panels import Panels
from .shortcuts import SHORTCUTS
from .shortcuts_dialog import ShortcutsDialog
from .window_actions import WindowActionsMixin
from .window_panel import WindowPanel
from .workers import set_bar_value

OBLIQUE_NOTICE = "Oblique scan: shown in voxel order (not re-sliced); edge letters are approximate"
LABEL_DESCRIPTION_SUFFIXES = (".label", ".txt")
_AREAS = {"right", "left", "bottom", "top"}
GEOMETRY_KEY = "window_geometry"


class _WindowFilter(QObject):
    """An event filter owned by the Qt window that refers to its MainWindow weakly: once the
    window is closed (``detach``) or its Python side is collected (even half-way: the garbage
    collector may clear this object's attributes while Qt still delivers events to it during
    the Qt window's own deletion), it lets every event through untouched."""

    def __init__(self, window: "MainWindow") -> None:
        super().__init__(window.qt_window)
        self._window_ref = weakref.ref(window)

    def window(self) -> "MainWindow | None":
        ref = getattr(self, "_window_ref", None)
        return ref() if ref is not None else None

    def detach(self) -> None:
        """Stop acting on events (the window is closing for good)."""
        self._window_ref = None


class _DropFilter(_WindowFilter):
    """Event filter taking drag-enter/drop of files away from napari's QtViewer."""

    def _open_later(self, paths: list[str]) -> None:
        window = self.window()
        if window is not None:
            window.open_paths(paths)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt naming
        if self.window() is None:
            return False
        etype = event.type()
        if etype in (QEvent.Type.DragEnter, QEvent.Type.DragMove):
            mime = event.mimeData()
            if mime is not None and mime.hasUrls():
                event.acceptProposedAction()
                return True
            return False
        if etype == QEvent.Type.Drop:
            mime = event.mimeData()
            if mime is not None and mime.hasUrls():
                paths = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]
                event.acceptProposedAction()
                # handle after the drop returns (dialogs inside a drop handler misbehave)
                QTimer.singleShot(0, lambda p=paths: self._open_later(p))
                return True
            return False
        return False


class _CloseFilter(_WindowFilter):
    """Asks about unsaved labels before the window closes; once it has closed (a Close event
    followed by the window hiding) the window finishes closing (:meth:`MainWindow.closed`)."""

    def __init__(self, window: "MainWindow") -> None:
        super().__init__(window)
        self._closing = False

    def detach(self) -> None:
        super().detach()
        self._closing = False

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        window = self.window()
        if window is None or obj is not window.qt_window:
            return False
        etype = event.type()
        if etype == QEvent.Type.Close:
            if not window.force_close and not window.controller.confirm_discard("quit"):
                event.ignore()
                return True
            window.controller.cancel_all()
            self._closing = True
            QTimer.singleShot(0, self._after_close)
        elif etype == QEvent.Type.Hide and self._closing:
            self._closing = False
            window.closed()
        return False

    def _after_close(self) -> None:
        window = self.window()
        if window is None or not getattr(self, "_closing", False):
            return
        self._closing = False
        try:
            hidden = not window.qt_window.isVisible()
        except RuntimeError:  # the window is already deleted
            hidden = True
        if hidden:  # a window closed while never shown (no Hide event)
            window.closed()


class MainWindow(WindowActionsMixin):
    """medsam-gui's main window around a napari viewer.

    Attributes: ``viewer`` (napari.Viewer), ``controller``, ``qt_window`` (the QMainWindow),
    ``qt_viewer``, ``labels_panel``, ``window_panel``, ``panels`` (:class:`~.panels.Panels`,
    filled by ``app.build_app``), ``actions`` ({name: QAction}),
    ``view_buttons`` ({"axial"|"coronal"|"sagittal": QToolButton}), ``tool_buttons``
    ({"box_tool"|"recist_tool"|"select_tool": QToolButton}), ``shortcuts_dialog`` (the last one
    opened), ``start_screen``, ``oblique_notice``,
    ``message_label``, ``progress_bar``, ``cancel_button``.
    """

    def __init__(self, controller) -> None:
        self.controller = controller
        self.viewer = controller.viewer
        self.qt_window = self.viewer.window._qt_window
        self.qt_viewer = self.viewer.window._qt_viewer
        self.force_close = False
        self.actions: dict[str, QAction] = {}
        self.docks: dict[str, QWidget] = {}
        self.panels = Panels()
        self._menus: dict[str, QMenu] = {}
        self._tracked = []
        self._icon_color = icons.theme_color(self.viewer)
        self.shortcuts_dialog: ShortcutsDialog | None = None
        controller.attach_window(self)

        self.qt_window.setWindowTitle("medsam-gui")
        self._build_status_bar()
        self._build_menus()
        self._build_toolbar()
        self._build_start_screen()
        self._hide_napari_view_buttons()
        self.labels_panel = LabelsPanel(controller)
        self.window_panel = WindowPanel(controller)
        self.labels_dock = self.add_dock(self.labels_panel, "Labels", "right")
        self.window_dock = self.add_dock(self.window_panel, "Window / level", "right")
        self.cursor_readout = CursorReadout(self)
        self.linked_views = LinkedViews(self, self.cursor_readout)
        self.restore_geometry()

        self._drop_filter = _DropFilter(self)
        self._filtered: list[tuple[QObject, QObject]] = []  # (watched widget, filter), for close()
        for widget in (self.qt_viewer, self.qt_window):
            widget.setAcceptDrops(True)
            self._install_filter(widget, self._drop_filter)
        canvas = getattr(getattr(self.qt_viewer, "canvas", None), "native", None)
        if isinstance(canvas, QWidget):
            self._install_filter(canvas, self._drop_filter)
        self._close_filter = _CloseFilter(self)
        self._install_filter(self.qt_window, self._close_filter)
        controller.view_changed.connect(self._on_view_changed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(controller.shutdown)

    # ------------------------------------------------------------------ building
    def _build_status_bar(self) -> None:
        bar = self.qt_window.statusBar()
        self.message_label = QLabel("")
        self.message_label.setMinimumWidth(200)
        self.oblique_notice = QLabel(OBLIQUE_NOTICE)
        self.oblique_notice.setStyleSheet(
            "QLabel { background: #b35c00; color: white; padding: 1px 6px; border-radius: 3px; }")
        self.oblique_notice.setVisible(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(160)
        self.progress_bar.setMaximumHeight(16)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(False)
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Cancel the running task")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.controller.cancel_all)
        for w in (self.message_label, self.oblique_notice, self.progress_bar, self.cancel_button):
            bar.addPermanentWidget(w)
        self._message_timer = QTimer(self.qt_window)
        self._message_timer.setSingleShot(True)
        self._message_timer.timeout.connect(lambda: self.message_label.setText(""))

    def menu(self, menu_id: str) -> QMenu:
        """The menu "file", "edit", "view", "models" or "help"."""
        if menu_id not in self._menus:
            raise KeyError(f"no menu {menu_id!r}; menus are {', '.join(self._menus)}")
        return self._menus[menu_id]

    def add_action(self, menu_id: str, name: str, text: str, slot, *, shortcut=None, tip: str = "",
                   after: str | None = None, separator_before: bool = False) -> QAction:
        """Add an entry calling ``slot()`` to menu ``menu_id``; kept as ``actions[name]``.

        ``shortcut``: a key (or a list of keys); without one the keys of ``name`` in
        :data:`.shortcuts.SHORTCUTS` apply, with its icon and tip (``tip`` overrides the tip).
        ``after``: name of an action already in that menu to insert behind (default: at the
        end); ``separator_before`` puts a separator in front of the entry.
        """
        menu = self.menu(menu_id)
        act = QAction(text, self.qt_window)
        entry = SHORTCUTS.get(name)
        if shortcut is None:
            keys = list(entry.keys) if entry is not None else []
        else:
            keys = list(shortcut) if isinstance(shortcut, (list, tuple)) else [shortcut]
        act.setShortcuts([QKeySequence(k) for k in keys])
        icons.decorate_action(act, name, self._icon_color, tip=tip)
        act.triggered.connect(lambda _checked=False: slot())
        before = None
        if after is not None:
            entries = menu.actions()
            anchor = self.actions.get(after)
            if anchor not in entries:
                raise KeyError(f"no action {after!r} in the {menu_id} menu")
            i = entries.index(anchor)
            before = entries[i + 1] if i + 1 < len(entries) else None
        added = [act]
        if separator_before:
            sep = QAction(self.qt_window)
            sep.setSeparator(True)
            added.insert(0, sep)
        for entry_action in added:
            if before is not None:
                menu.insertAction(before, entry_action)
            else:
                menu.addAction(entry_action)
        self.actions[name] = act
        return act

    def _build_menus(self) -> None:
        bar = self.qt_window.menuBar()
        for act in list(bar.actions()):  # napari's menus: they would open files with napari's readers
            bar.removeAction(act)
        for menu_id, title in (("file", "&File"), ("edit", "&Edit"), ("view", "&View"), ("models", "&Models"),
                               ("help", "&Help")):
            self._menus[menu_id] = bar.addMenu(title)
        c = self.controller
        add = self.add_action
        add("file", "open_scan", "Open scan…", self.ask_open_scan)
        add("file", "open_dicom", "Open DICOM folder…", self.ask_open_dicom)
        add("file", "open_labels", "Open labels…", self.ask_open_labels)
        add("file", "save_labels", "Save labels", lambda: c.save_labels(), separator_before=True)
        add("file", "save_labels_as", "Save labels as…", lambda: c.save_labels(ask=True))
        add("file", "import_descriptions", "Import label descriptions (ITK-SNAP)…", self.labels_panel_import,
            separator_before=True)
        add("file", "export_descriptions", "Export label descriptions (ITK-SNAP)…", self.labels_panel_export)
        add("file", "quit", "Quit", self.qt_window.close, separator_before=True)

        add("edit", "undo", "Undo label edit", c.undo)
        add("edit", "redo", "Redo label edit", c.redo)
        add("edit", "add_label", "Add label", lambda: c.add_label(), separator_before=True)

        for name in ("axial", "coronal", "sagittal"):
            act = add("view", f"view_{name}", name.capitalize(), lambda n=name: c.set_view(n))
            act.setCheckable(True)
        add("view", "reset_view", "Fit to window", self.viewer.reset_view, separator_before=True)
        self._build_tool_actions()
        self._build_3d_action()

        add("help", "keyboard_shortcuts", "Keyboard shortcuts…", self.show_shortcuts)
        add("help", "about", "About medsam-gui", self.show_about)
        shortcuts.block_napari_keys(self.viewer)

    def _build_toolbar(self) -> None:
        tb = QToolBar("Views", self.qt_window)
        tb.setObjectName("medsam_views")
        tb.setMovable(False)
        self.view_buttons: dict[str, QToolButton] = {}
        for name in ("axial", "coronal", "sagittal"):
            btn = QToolButton()
            btn.setDefaultAction(self.actions[f"view_{name}"])
            btn.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            tb.addWidget(btn)
            self.view_buttons[name] = btn
        tb.addSeparator()
        self.tool_buttons: dict[str, QToolButton] = {}
        for name in ("box_tool", "recist_tool", "select_tool"):
            btn = QToolButton()
            btn.setDefaultAction(self.actions[name])
            btn.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            tb.addWidget(btn)
            self.tool_buttons[name] = btn
        self.actions["view_axial"].setChecked(True)
        self.qt_window.addToolBar(Qt.ToolBarArea.TopToolBarArea, tb)
        self.toolbar = tb

    # ------------------------------------------------------------------ services for the controller
    def add_dock(self, widget: QWidget, name: str, area: str = "right", *, tabify: bool = False):
        if area not in _AREAS:
            raise ValueError(f"dock area must be one of {sorted(_AREAS)}, got {area!r}")
        if widget.sizeHint().height() > 400 and widget.findChild(SettingsScroll) is None:
            # A scroll area lets tall panels fit any screen instead of forcing the window
            # taller than the display; never scroll sideways. (Panels with a SettingsScroll,
            # MedSAM and UniverSeg, scroll their settings themselves, their actions stay put.)
            from qtpy.QtCore import Qt
            from qtpy.QtWidgets import QFrame, QScrollArea

            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            scroll.setWidget(widget)
            bar = scroll.verticalScrollBar().sizeHint().width()
            scroll.setMinimumWidth(widget.minimumSizeHint().width() + bar + 4)
            scroll.setMinimumHeight(200)
            widget = scroll
        dock = self.viewer.window.add_dock_widget(widget, name=name, area=area, tabify=tabify)
        self.docks[name] = dock
        return dock

    def raise_dock(self, name: str) -> None:
        """Bring the dock ``name`` to the front of its tab group (now and after pending layout)."""
        dock = self.docks[name]
        dock.raise_()
        QTimer.singleShot(0, dock.raise_)

    def show_status(self, message: str, timeout_ms: int = 5000) -> None:
        self.message_label.setText(message)
        self.message_label.setToolTip(message)
        self._message_timer.stop()
        if timeout_ms and timeout_ms > 0:
            self._message_timer.start(int(timeout_ms))

    def status_text(self) -> str:
        return self.message_label.text()

    def track_worker(self, handle) -> None:
        self._tracked = [h for h in self._tracked if not h.finished] + [handle]
        handle.add_progress_callback(lambda h: self._update_progress())
        handle.add_done_callback(lambda h: self._update_progress())
        self._update_progress()

    def _update_progress(self) -> None:
        active = [h for h in self._tracked if not h.finished]
        self._tracked = active
        busy = bool(active)
        self.progress_bar.setVisible(busy)
        self.cancel_button.setVisible(busy and any(h.cancellable for h in active))
        if not busy:
            return
        h = active[-1]
        self.progress_bar.setToolTip(h.description)
        if h.progress and h.progress[1] > 0:
            set_bar_value(self.progress_bar, min(h.progress[0], h.progress[1]), h.progress[1])
        else:
            self.progress_bar.setRange(0, 0)  # busy indicator
        if h.description:
            self.show_status(h.description, 0)

    def on_volume_shown(self, volume, orientation) -> None:
        # Notices from the reader (NaN replaced, 2D opened as one slice, component chosen,
        # DICOM duplicates dropped, ...) and the oblique notice share one visible label.
        notices = [str(n) for n in (volume.meta.get("notices") or [])]
        parts = [OBLIQUE_NOTICE] if orientation.oblique else []
        if notices:
            parts.append(notices[0] if len(notices) == 1 else f"{len(notices)} notices about this scan")
        self.oblique_notice.setText(" · ".join(parts))
        self.oblique_notice.setToolTip("\n".join(notices))
        self.oblique_notice.setVisible(bool(parts))
        name = volume.name or (Path(volume.path).name if volume.path else "scan")
        self.qt_window.setWindowTitle(f"{name} — medsam-gui")

    def _on_view_changed(self, view: str) -> None:
        for name in ("axial", "coronal", "sagittal"):
            self.actions[f"view_{name}"].setChecked(name == view)
        self.fit_slider_labels()
        QTimer.singleShot(0, self.fit_slider_labels)  # after napari's own resize of the labels

    def fit_slider_labels(self) -> None:
        """Widen the slice slider's axis name ("axial", "sagittal") to its full text.

        napari sizes these fields with its dims widget's font, smaller than the fields' own
        (style-sheet) font, which cut "axial" to "axi".
        """
        dims = getattr(self.qt_viewer, "dims", None)
        for w in getattr(dims, "slider_widgets", []) or []:
            lab = getattr(w, "axis_label", None)
            if lab is None:
                continue
            fm = lab.fontMetrics()
            need = max(fm.horizontalAdvance(t) for t in ("sagittal", lab.text() or "")) + 14
            if lab.width() < need:
                lab.setFixedWidth(need)

    # ------------------------------------------------------------------ user actions
    def ask_open_scan(self) -> None:
        path = dialogs.ask_open_file(self.qt_window, "Open scan", dialogs.SCAN_FILTER)
        if path:
            if Path(path).suffix.lower() == ".dcm":
                path = str(Path(path).parent)
            self.controller.open_scan(path)

    def ask_open_dicom(self) -> None:
        path = dialogs.ask_open_folder(self.qt_window, "Open DICOM folder")
        if path:
            self.controller.open_scan(path)

    def ask_open_labels(self) -> None:
        if self.controller.volume is None:
            self.controller.show_error("Open a scan before opening labels: a label map is shown on its scan.")
            return
        path = dialogs.ask_open_file(self.qt_window, "Open labels", dialogs.LABELS_OPEN_FILTER)
        if path:
            self.controller.open_labels(path)

    def labels_panel_import(self) -> None:
        self.labels_panel.import_descriptions()

    def labels_panel_export(self) -> None:
        self.labels_panel.export_descriptions()

    def open_paths(self, paths: list[str]) -> None:
        """Open dropped files/folders with medsam-gui's loader.

        A label description file (.label/.txt) is imported; with no scan open the first path
        opens as the scan (a second one as its labels); with a scan open a folder opens as a new
        scan and a file asks whether it is labels for this scan or a new scan.
        """
        paths = [p for p in paths if p]
        if not paths:
            return
        c = self.controller
        first = paths[0]
        if os.path.isfile(first) and first.lower().endswith(LABEL_DESCRIPTION_SUFFIXES):
            if c.volume is None:
                c.show_error("Open a scan before importing label descriptions.")
            else:
                c.import_label_descriptions(first)
            return
        if first.lower().endswith(".dcm"):
            first = str(Path(first).parent)
        if c.volume is None or os.path.isdir(first):
            c.open_scan(first, labels=paths[1] if len(paths) > 1 and os.path.isfile(paths[1]) else None)
            return
        choice = dialogs.ask_drop_action(self.qt_window, first)
        if choice == "labels":
            c.open_labels(first)
        elif choice == "scan":
            c.open_scan(first)

    def show_about(self) -> None:
        QMessageBox.about(
            self.qt_window, "About medsam-gui",
            f"medsam-gui {__version__}\n\nSegment 3D CT and MR scans with MedSAM and UniverSeg; "
            "label maps are saved on the scan's own grid.\n\nNot a medical device: check every "
            "segmentation before clinical use.",
        )

    # ------------------------------------------------------------------ geometry
    def restore_geometry(self) -> None:
        """Put the window where it was when last closed; the first time, fill the screen.
        Hidden windows (scripts, tests) keep their size: a never-shown window that was
        maximised is not torn down by napari's close."""
        saved = config.get_setting(GEOMETRY_KEY)
        w = self.qt_window
        if not w.isVisible():
            return
        if isinstance(saved, str) and w.restoreGeometry(QByteArray.fromBase64(saved.encode("ascii"))):
            return
        screen = w.screen() or QApplication.primaryScreen()
        if screen is not None:  # also where no window manager maximises (Xvfb)
            w.setGeometry(screen.availableGeometry())
        w.setWindowState(w.windowState() | Qt.WindowState.WindowMaximized)

    def save_geometry(self) -> None:
        """Remember the window's size, position and maximised state for the next start."""
        if not self.qt_window.isVisible():
            return
        data = bytes(self.qt_window.saveGeometry().toBase64()).decode("ascii")
        config.try_set_setting(GEOMETRY_KEY, data)

    # ------------------------------------------------------------------ lifecycle
    def show(self) -> None:
        self.qt_window.show()
        self.qt_window.raise_()

    def _install_filter(self, widget: QObject, event_filter: QObject) -> None:
        widget.installEventFilter(event_filter)
        self._filtered.append((widget, event_filter))

    def _remove_filters(self) -> None:
        """Take the drop and close filters off their widgets (those Qt has not deleted yet) and
        detach them, so no later Qt event reaches this object's Python side."""
        for widget, event_filter in self._filtered:
            try:
                widget.removeEventFilter(event_filter)
            except RuntimeError:  # the widget or the filter is already deleted
                pass
            try:
                event_filter.detach()
            except RuntimeError:
                pass
        self._filtered.clear()

    def closed(self) -> None:
        """The user closed the window: stop the background work now, and tear napari's window
        down once this event has been handled (napari only hides a window closed that way)."""
        self.controller.shutdown()
        QTimer.singleShot(0, lambda: self.close(force=True))

    def close(self, force: bool = True) -> None:
        """Close the window (``force``: without asking about unsaved labels), shut the
        controller down and take this window's event filters off the Qt widgets."""
        self.force_close = force
        self.controller.cancel_all()
        if self._qt_alive():  # not when the user closed it already (Qt has deleted its widgets)
            self.save_geometry()
            self._detach_start_screen()
            self.viewer.close()
            if self._qt_alive():  # napari does not delete a never-shown window: Qt does it
                self.qt_window.deleteLater()
        self.controller.shutdown()
        self._remove_filters()
        self.start_screen = None
        # the Qt side is deleted: drop the wrappers so they are freed with it (a closed window
        # stays referenced from signal connections of the controller's panels)
        self.qt_viewer = None
        self.qt_window = None

    def _detach_start_screen(self) -> None:
        """Disconnect the start screen from this object before the Qt side goes."""
        if self.start_screen is not None:
            self.start_screen.detach()

    def _qt_alive(self) -> bool:
        """True while Qt has not deleted the window's QMainWindow and napari's QtViewer."""
        if self.qt_window is None or self.qt_viewer is None:  # closed by close()
            return False
        try:
            self.qt_window.objectName()
            self.qt_viewer.objectName()
        except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
            return False
        return True
