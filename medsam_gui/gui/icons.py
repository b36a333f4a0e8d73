"""qtawesome icons and key-bearing tooltips for the window's actions and the panels' buttons.

Icons are drawn in the napari theme's icon colour (light on the dark theme). The names come
from :data:`.shortcuts.SHORTCUTS` for actions; the panels' run buttons get theirs here.
"""

from __future__ import annotations

import qtawesome
from qtpy.QtGui import QIcon

from .shortcuts import SHORTCUTS, tooltip

# panel buttons that are not window actions: (panel field, button attribute) -> icon
RUN_BUTTON_ICONS = {
    ("medsam", "clear_button"): "mdi6.delete-sweep",
    ("universeg", "segment_button"): "mdi6.play",
    ("universeg", "cancel_button"): "mdi6.stop-circle-outline",
    ("universeg", "accept_button"): "mdi6.check-bold",
    ("universeg", "reject_button"): "mdi6.close-thick",
}
# the MedSAM panel's tool buttons do what these actions do
TOOL_BUTTONS = {"box_button": "box_tool", "recist_button": "recist_tool", "select_button": "select_tool"}


def theme_color(viewer) -> str:
    """The icon colour of ``viewer``'s napari theme ("#d1d2d4" on the dark theme)."""
    from napari.utils.theme import get_theme

    return str(get_theme(viewer.theme).icon.as_hex())


def icon(name: str, color: str) -> QIcon:
    """The qtawesome icon ``name`` ("mdi6.redo") in ``color``."""
    return qtawesome.icon(name, color=color)


def decorate_action(action, name: str, color: str, *, tip: str = "") -> None:
    """The icon of the registry entry ``name`` on ``action``, and a tooltip saying what it
    does (``tip``, else the registry's words, else the action's text) and its keys."""
    entry = SHORTCUTS.get(name)
    words = tip or (entry.tip if entry is not None else action.text().replace("&", "").rstrip("…"))
    if entry is not None and entry.icon:
        action.setIcon(icon(entry.icon, color))
    action.setToolTip(tooltip(words, [s.toString() for s in action.shortcuts()]))
    action.setStatusTip(words)


def decorate_panels(window, color: str) -> None:
    """Icons on the MedSAM and UniverSeg panels' tool and run buttons; the tool buttons'
    tooltips name their keys (those of the window's tool actions)."""
    panels = window.panels
    medsam = panels.medsam
    if medsam is not None:
        for attr, action_name in TOOL_BUTTONS.items():
            button = getattr(medsam, attr)
            action = window.actions[action_name]
            button.setIcon(action.icon())
            button.setToolTip(action.toolTip())
        medsam.propagation_box.propagate_button.setIcon(icon("mdi6.cube-scan", color))
    for (panel_name, attr), name in RUN_BUTTON_ICONS.items():
        panel = getattr(panels, panel_name)
        if panel is not None:
            getattr(panel, attr).setIcon(icon(name, color))
