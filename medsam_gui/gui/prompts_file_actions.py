"""File > "Save prompts…" / "Open prompts…": the MedSAM panel's prompts (boxes, RECIST lines) and
its "Propagate in 3D" range as a prompts file (:mod:`medsam_gui.core.prompts_file`), the input
of ``medsam-gui batch`` (task=boxes).

The entries go through the panel's registered state provider (``medsam_prompts``: the same
state sessions save, vertices in the scan's own voxel indices), so they need no access to the
panel itself. Opening checks that the file was drawn on the open scan's grid.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ..core.prompts_file import from_panel_state, read_prompts_file, write_prompts_file
from ..errors import MedsamGuiError
from . import dialogs
from .medsam_panel import STATE_NAME
from .session_files import parent_widget

PROMPTS_FILTER = "medsam-gui prompts (*.json);;All files (*)"
SUFFIX = ".prompts.json"


def ask_save_path(parent, suggested: str) -> str | None:
    path, _ = QFileDialog.getSaveFileName(parent, "Save prompts", suggested, PROMPTS_FILTER)
    if not path:
        return None
    if not path.lower().endswith(".json"):
        path += SUFFIX
    dialogs.remember_dir(path)
    return path


def ask_open_path(parent) -> str | None:
    return dialogs.ask_open_file(parent, "Open prompts", PROMPTS_FILTER)


def _suggested(controller) -> str:
    vol = controller.volume
    name = vol.name or (Path(vol.path).name if vol.path else "scan")
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return str(Path(dialogs._last_dir()) / f"{name}{SUFFIX}")


def save_prompts(controller, path: str | Path | None = None) -> Path | None:
    """Write the MedSAM panel's prompts and range to ``path`` (asked when None); returns the
    path written, None when cancelled or refused (the error is shown)."""
    if controller.volume is None:
        controller.show_error("There is no scan open, so there are no prompts to save.")
        return None
    get_state, _ = controller.state_providers[STATE_NAME]
    try:
        pf = from_panel_state(controller.volume, get_state())
        if path is None:
            path = ask_save_path(parent_widget(controller), _suggested(controller))
            if not path:
                return None
        written = write_prompts_file(path, pf)
    except MedsamGuiError as exc:
        controller.show_error(exc, title="Could not save the prompts")
        return None
    controller.status(f"Saved {len(pf.prompts)} prompt(s) to {written}", 8000)
    return written


def open_prompts(controller, path: str | Path | None = None) -> bool:
    """Replace the MedSAM panel's prompts and range by those of a prompts file (asked when
    None) drawn on the open scan; True when done (nothing is segmented yet)."""
    if controller.volume is None:
        controller.show_error("Open the scan the prompts were drawn on first.")
        return False
    if path is None:
        path = ask_open_path(parent_widget(controller))
        if not path:
            return False
    _, set_state = controller.state_providers[STATE_NAME]
    try:
        pf = read_prompts_file(path)
        pf.check_grid(controller.volume, str(path))
    except MedsamGuiError as exc:
        controller.show_error(exc, title="Could not open the prompts")
        return False
    set_state(pf.panel_state())
    controller.notify_state_changed()
    controller.status(f"Opened {len(pf.prompts)} prompt(s) from {path}", 8000)
    return True


def install(controller) -> None:
    """Add the File menu entries (after "Open session…" when the session entries exist). Needs
    the MedSAM panel installed first (its state provider)."""
    window = controller.window
    if window is None:
        return
    after = "recover_sessions" if "recover_sessions" in window.actions else None
    window.add_action("file", "save_prompts", "Save prompts…", lambda: save_prompts(controller), after=after,
                      separator_before=True,
                      tip="Save the MedSAM boxes, RECIST lines and propagation range (input of medsam-gui batch)")
    window.add_action("file", "open_prompts", "Open prompts…", lambda: open_prompts(controller), after="save_prompts",
                      tip="Load MedSAM prompts saved on this scan")
