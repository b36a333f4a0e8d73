"""The main window's tool, 3D, help and start-screen entries (a mixin of
:class:`~medsam_gui.gui.main_window.MainWindow`, kept apart so main_window.py stays short):
Edit > Box / RECIST / Move tools (B, R, S), View > 3D view (no key), Help > Keyboard
shortcuts (F1), File > Open the demo and Open recent, the start screen, napari's view buttons hidden, and
icons on the panels' buttons."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QMenu

from ..config import demo_scan_path
from . import icons
from .scan_files import recent_scans
from .shortcuts_dialog import ShortcutsDialog
from .start_screen import StartScreen


class WindowActionsMixin:
    """Methods of MainWindow (uses its ``add_action``, ``actions``, ``panels``, ``viewer``,
    ``qt_viewer``, ``qt_window``, ``controller``, ``show_status``)."""

    def _build_tool_actions(self) -> None:
        """Edit > Box tool (B), RECIST tool (R), Move / resize (S): the MedSAM panel's tools."""
        tools = (("box_tool", "Box tool", "activate_box_tool"), ("recist_tool", "RECIST tool", "activate_recist_tool"),
                 ("select_tool", "Move / resize prompts", "activate_select_tool"))
        for i, (name, text, method) in enumerate(tools):
            self.add_action("edit", name, text, lambda m=method: self._use_tool(m), separator_before=i == 0)

    def _use_tool(self, method: str) -> None:
        medsam = self.panels.medsam
        if medsam is None:
            self.controller.show_error("The MedSAM panel is not open, so its tools are not available.")
            return
        if self.controller.volume is None:  # a key pressed before any scan: no error dialog for that
            self.show_status("Open a scan first (File > Open scan…): the tools draw on its slices.", 8000)
            return
        getattr(medsam, method)()

    def _build_3d_action(self) -> None:
        """View > 3D view: the only way into napari's 3D display (no key, so no accident)."""
        act = self.add_action("view", "view_3d", "3D view (drag rotates)", self.toggle_3d, separator_before=True)
        act.setCheckable(True)
        self.viewer.dims.events.ndisplay.connect(self._on_ndisplay)

    def _hide_napari_view_buttons(self) -> None:
        """napari's console, 2D/3D, roll, transpose and grid buttons under the layer list do
        what the keys turned off in ``shortcuts.NAPARI_KEYS_OFF`` did (their tooltips name
        those keys); 3D stays on View > 3D view."""
        buttons = self.qt_viewer.viewerButtons
        for button in (buttons.consoleButton, buttons.ndisplayButton, buttons.rollDimsButton,
                       buttons.transposeDimsButton, buttons.gridViewButton):
            button.setVisible(False)

    def toggle_3d(self) -> None:
        """Switch between the 2D slice view and napari's 3D view."""
        self.viewer.dims.ndisplay = 2 if self.viewer.dims.ndisplay == 3 else 3
        if self.viewer.dims.ndisplay == 3:
            self.show_status("3D view: dragging rotates the camera; View > 3D view again returns to 2D.", 10000)

    def _on_ndisplay(self, _event=None) -> None:
        self.actions["view_3d"].setChecked(self.viewer.dims.ndisplay == 3)

    def decorate_panels(self) -> None:
        """Icons and key tooltips on the panels' tool and run buttons (once ``panels`` is filled)."""
        icons.decorate_panels(self, self._icon_color)

    def show_shortcuts(self) -> ShortcutsDialog:
        """Help > Keyboard shortcuts (non-modal); returns the dialog."""
        dialog = ShortcutsDialog(self, self.qt_window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        self.shortcuts_dialog = dialog
        return dialog

    def _build_start_screen(self) -> None:
        """File > Open the demo, and the start screen over the canvas in place of napari's
        welcome page (``start_screen``, visible while no scan is open)."""
        self.add_action("file", "open_demo", "Open the demo", lambda: self.controller.open_scan(demo_scan_path()),
                        after="open_dicom")
        self._build_recent_menu()
        self.qt_viewer.show_welcome_screen = False
        self.start_screen = StartScreen(self, self.qt_viewer.canvas.native)

    def _build_recent_menu(self) -> None:
        """File > Open recent (``recent_menu``): the recent scans, read when the menu opens."""
        file_menu = self.menu("file")
        entries = file_menu.actions()
        after = entries[entries.index(self.actions["open_demo"]) + 1]
        self.recent_menu = QMenu("Open recent", self.qt_window)
        self.recent_menu.setIcon(icons.icon("mdi6.history", self._icon_color))
        file_menu.insertMenu(after, self.recent_menu)
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)

    def _fill_recent_menu(self) -> None:
        menu = self.recent_menu
        menu.clear()
        paths = recent_scans()
        for path in paths:
            act = menu.addAction(f"{path.name}  —  {path.parent}")
            act.setToolTip(str(path))
            act.triggered.connect(lambda _checked=False, p=path: self.controller.open_scan(p))
        if not paths:
            menu.addAction("No recent scans").setEnabled(False)
