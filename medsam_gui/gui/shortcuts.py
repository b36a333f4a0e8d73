"""Every key of medsam-gui in one place, the napari keys the app turns off, and the table of
live keys shown by Help > Keyboard shortcuts.

``SHORTCUTS`` holds, per action name (``MainWindow.actions`` key), its keys (Qt portable text,
the first one shown in menus), what it does (tooltip) and its qtawesome icon.
:func:`block_napari_keys` turns napari's viewer keys in ``NAPARI_KEYS_OFF`` off on ONE viewer
(its instance keymap, so other napari viewers and the napari plugin keep them).
:func:`live_keys` lists what each key does now: the window's actions, then the napari keys
that still reach the canvas (viewer and layer keymaps, less those the window's actions take).
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass

from qtpy.QtGui import QKeySequence


@dataclass(frozen=True)
class Shortcut:
    keys: tuple[str, ...]  # Qt portable texts ("Ctrl+Y"); () = no key
    tip: str  # what the action does, one sentence
    icon: str = ""  # qtawesome icon name ("mdi6.redo")


SHORTCUTS: dict[str, Shortcut] = {
    "open_scan": Shortcut(("Ctrl+O",), "Open a NIfTI, NRRD, MetaImage or MGZ scan", "mdi6.folder-open"),
    "open_dicom": Shortcut(("Ctrl+Shift+O",), "Open a folder holding a DICOM series", "mdi6.folder-multiple-image"),
    "open_demo": Shortcut((), "Open the demo CT scan that comes with medsam-gui", "mdi6.play-circle-outline"),
    "open_labels": Shortcut(("Ctrl+L",), "Open a label map on the current scan (same grid)", "mdi6.file-import"),
    "save_labels": Shortcut(("Ctrl+S",), "Save the labels on the scan's grid", "mdi6.content-save"),
    "save_labels_as": Shortcut(("Ctrl+Alt+S",), "Save the labels in a file you choose", "mdi6.content-save-edit"),
    "import_descriptions": Shortcut((), "Read label names and colours from an ITK-SNAP file", "mdi6.tag-arrow-down"),
    "export_descriptions": Shortcut((), "Write label names and colours as an ITK-SNAP file", "mdi6.tag-arrow-up"),
    "save_session": Shortcut(("Ctrl+Shift+S",), "Save scan, labels and prompts as a session", "mdi6.content-save-all"),
    "open_session": Shortcut((), "Open a saved session", "mdi6.folder-open-outline"),
    "recover_sessions": Shortcut((), "Recover work that was not saved", "mdi6.history"),
    "quit": Shortcut(("Ctrl+Q",), "Close medsam-gui (asks about unsaved labels)", "mdi6.exit-to-app"),
    "undo": Shortcut(("Ctrl+Z",), "Undo the last label edit", "mdi6.undo"),
    "redo": Shortcut(("Ctrl+Y", "Ctrl+Shift+Z"), "Redo the label edit undone last", "mdi6.redo"),
    "add_label": Shortcut(("Ctrl+Shift+N",), "Add a new label", "mdi6.tag-plus"),
    "box_tool": Shortcut(("B",), "Box tool: draw a rectangle around a structure to segment it", "mdi6.rectangle-outline"),
    "recist_tool": Shortcut(("R",), "RECIST tool: draw a line along a lesion's long axis to segment it",
                            "mdi6.vector-line"),
    "select_tool": Shortcut(("S",), "Move or resize boxes and lines (each change segments again)", "mdi6.cursor-move"),
    "view_axial": Shortcut(("Ctrl+1",), "Show the axial view", "mdi6.axis-z-arrow"),
    "view_coronal": Shortcut(("Ctrl+2",), "Show the coronal view", "mdi6.axis-y-arrow"),
    "view_sagittal": Shortcut(("Ctrl+3",), "Show the sagittal view", "mdi6.axis-x-arrow"),
    "reset_view": Shortcut(("Ctrl+0",), "Fit the slice to the window", "mdi6.fit-to-screen"),
    "three_views": Shortcut(("Ctrl+4",), "Axial, coronal and sagittal views side by side, with a crosshair",
                            "mdi6.view-split-vertical"),
    "view_3d": Shortcut((), "Show the scan in 3D (dragging rotates the camera; choose again for 2D)",
                        "mdi6.cube-outline"),
    "load_medsam_weights": Shortcut((), "Choose or download the MedSAM weights", "mdi6.download"),
    "load_medsam2_weights": Shortcut((), "Choose or download the MedSAM2 weights", "mdi6.download"),
    "load_universeg_weights": Shortcut((), "Choose or download the UniverSeg weights", "mdi6.download"),
    "load_auto_weights": Shortcut((), "Choose or download the Hermes-R or Universal Model weights", "mdi6.download"),
    "save_prompts": Shortcut((), "Save the boxes, RECIST lines and propagation range (the batch input)",
                             "mdi6.content-save-outline"),
    "open_prompts": Shortcut((), "Open saved boxes, RECIST lines and propagation range on this scan",
                             "mdi6.folder-open-outline"),
    "export_measurements": Shortcut((), "Write the measurements table as CSV", "mdi6.file-export"),
    "keyboard_shortcuts": Shortcut(("F1",), "List every key of the app", "mdi6.keyboard"),
    "about": Shortcut((), "Version and intended use of medsam-gui", "mdi6.information-outline"),
}

# napari viewer keys the app turns off: they change the display in ways the app does not
# follow (3D, axis order, grid), look like other programs' keys (Ctrl+Y redo), delete layers,
# or open napari's own dialogs and console.
NAPARI_KEYS_OFF = (
    "Ctrl+Y",  # toggle 2D/3D (redo elsewhere; 3D is View > 3D view)
    "Ctrl+E",  # roll axes
    "Ctrl+T",  # transpose axes
    "Ctrl+Alt+T",  # rotate layers
    "Ctrl+G",  # grid of layers
    "Ctrl+Shift+T",  # theme
    "Ctrl+Shift+C",  # console
    "Ctrl+Alt+/",  # napari's shortcut preferences (Help > Keyboard shortcuts lists ours)
    "Ctrl+Delete",  # delete the selected layers
    "Ctrl+Backspace",
)


def shortcut(name: str) -> Shortcut:
    """The registry entry of action ``name`` (KeyError for an unknown name)."""
    return SHORTCUTS[name]


def key_text(keys) -> str:
    """``("Ctrl+Y", "Ctrl+Shift+Z")`` -> ``"Ctrl+Y, Ctrl+Shift+Z"`` in the platform's spelling."""
    return ", ".join(QKeySequence(k).toString(QKeySequence.SequenceFormat.NativeText) for k in keys)


def tooltip(tip: str, keys) -> str:
    """``tip`` followed by its keys in brackets (just ``tip`` without keys)."""
    return f"{tip} ({key_text(keys)})" if keys else tip


def _portable(key) -> str:
    """One spelling for napari's and Qt's key texts (Qt portable text)."""
    return QKeySequence(str(key)).toString(QKeySequence.SequenceFormat.PortableText)


def key_turned_off(_viewer) -> None:
    """What a napari key that medsam-gui turns off does: nothing (the key counts as handled).
    (napari's blocker value ``...`` breaks its own auto-repeat check, so a function it is.)"""


def block_napari_keys(viewer, keys=NAPARI_KEYS_OFF) -> None:
    """Turn the napari ``keys`` off on ``viewer`` only (its instance keymap shadows them)."""
    for key in keys:
        viewer.bind_key(key, key_turned_off, overwrite=True)


def _describe(func) -> str:
    name = getattr(func, "__name__", "") or type(func).__name__
    return name.replace("_", " ").strip().capitalize()


def _keymap_rows(keymaps, where: str, taken: set[str]) -> list[tuple[str, str, str]]:
    rows = []
    for key, func in ChainMap(*keymaps).items():
        text = _portable(key)
        if getattr(func, "__func__", func) is key_turned_off or key is ... or text in taken:
            continue
        rows.append((text, _describe(func), where))
    return rows


def _class_keymaps(obj_type) -> list[dict]:
    return [cls.__dict__["class_keymap"] for cls in obj_type.__mro__ if "class_keymap" in cls.__dict__]


def live_keys(window) -> list[tuple[str, str, str]]:
    """(key, what it does, where) for every key of ``window`` now, the window's actions first.

    napari's keys come from the viewer's keymaps and those of the layer types on it (image,
    labels, shapes at least); a key one of the window's actions takes never reaches napari
    and is left out, as are the keys :func:`block_napari_keys` turned off.
    """
    from napari.layers import Image, Labels, Shapes

    rows = []
    taken: set[str] = set()
    for act in window.actions.values():
        for seq in act.shortcuts():
            text = seq.toString(QKeySequence.SequenceFormat.PortableText)
            taken.add(text)
            rows.append((text, act.text().replace("&", "").rstrip("…"), "medsam-gui"))
    viewer = window.viewer
    rows += _keymap_rows([viewer.keymap, *_class_keymaps(type(viewer))], "viewer", taken)
    layer_types = {Image, Labels, Shapes} | {type(layer) for layer in viewer.layers}
    for layer_type in sorted(layer_types, key=lambda t: t.__name__):
        where = f"{layer_type.__name__.lower()} layer"
        rows += _keymap_rows(_class_keymaps(layer_type), where, taken)
    return rows
