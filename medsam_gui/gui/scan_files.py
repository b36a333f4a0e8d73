"""Opening scans and label maps, saving labels, and the unsaved-labels check of
:class:`~medsam_gui.gui.controller.Controller`.

Every method here is a ``Controller`` method (this mixin only keeps controller.py short).
Loading runs off the GUI thread through ``Controller.run_worker``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .. import config
from ..core import intensity
from ..core.labels import LabelTable
from ..core.volume import Volume
from ..errors import MedsamGuiError
from . import dialogs
from .layers import labels_dtype_array
from .workers import WorkerHandle


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[:-7]
    return path.stem


RECENT_KEY = "recent_scans"  # settings key: scan files / DICOM folders opened, newest first
RECENT_MAX = 8


def recent_scans() -> list[Path]:
    """The scans opened last (newest first) that still exist, at most ``RECENT_MAX``."""
    stored = config.get_setting(RECENT_KEY, [])
    paths = [Path(p) for p in stored if isinstance(p, str)] if isinstance(stored, list) else []
    return [p for p in paths if p.exists()][:RECENT_MAX]


def remember_scan(path: str | Path) -> None:
    """Put ``path`` first in the recent scans (a settings file that cannot be written is skipped)."""
    text = str(Path(path).expanduser().resolve())
    kept = [str(p) for p in recent_scans() if str(p) != text]
    config.try_set_setting(RECENT_KEY, [text, *kept][:RECENT_MAX])


def description_beside(labels_path: str | Path) -> Path | None:
    """``<stem>.label`` (or ``.txt``) next to a label map, if it exists."""
    p = Path(labels_path)
    for suffix in (".label", ".txt"):
        cand = p.with_name(_stem(p) + suffix)
        if cand.is_file():
            return cand
    return None


class ScanFilesMixin:
    """Scan and label files of the controller (see controller.py for the API)."""

    def _labels_digest(self) -> str | None:
        if self._labels_layer is None:
            return None
        h = hashlib.blake2b(digest_size=16)
        data = np.ascontiguousarray(self._labels_layer.data)
        h.update(memoryview(data).cast("B"))
        h.update(repr(self._table.to_dict()).encode())
        return h.hexdigest()

    def mark_labels_unsaved(self) -> None:
        """Treat the current labels as not saved in any file (e.g. after a crash recovery):
        quitting or opening another scan asks first."""
        self._saved_digest = None

    def has_unsaved_labels(self) -> bool:
        """True when the labels (or their names/colours) changed since they were opened or saved."""
        if self._labels_layer is None:
            return False
        return self._labels_digest() != self._saved_digest

    def confirm_discard(self, what: str = "continue") -> bool:
        """Ask about unsaved labels; True when it is fine to drop them (saved or discarded)."""
        if not self.has_unsaved_labels():
            return True
        answer = dialogs.ask_unsaved(self._parent_widget(), what)
        if answer == "save":
            return self.save_labels() is not None
        return answer == "discard"

    # ------------------------------------------------------------------ opening
    def open_scan(self, path: str | Path, *, labels: str | Path | None = None, series_uid: str | None = None,
                  component: int | None = None, confirm: bool = True) -> WorkerHandle | None:
        """Load a scan file or DICOM folder off the GUI thread and show it.

        Several DICOM series -> a chooser dialog; a 4D / multi-channel scan -> a component
        chooser. Errors are shown and the current scan and labels stay as they are.
        Returns the worker handle, or None when the user cancelled.
        """
        if confirm and not self.confirm_discard("open another scan"):
            return None
        path = Path(path)
        if self._load_handle is not None and not self._load_handle.finished:
            self._load_handle.cancel()

        def work():
            from .. import io as mio

            try:
                volume = mio.load_volume(path, series_uid=series_uid, component=component)
            except MedsamGuiError as exc:
                if getattr(exc, "series", None):
                    return {"kind": "series", "series": exc.series}
                if getattr(exc, "n_components", None):
                    return {"kind": "component", "n": exc.n_components, "what": getattr(exc, "kind", "components")}
                raise
            bounds = intensity.default_bounds(volume.array, volume.modality)
            result = {"kind": "ok", "volume": volume, "bounds": bounds}
            if labels is not None:
                try:
                    result.update(self._read_labels_files(mio, labels, volume))
                except Exception as exc:  # the scan opens; the labels error is shown after
                    result["labels_error"] = exc
            return result

        def done(result):
            if result["kind"] == "series":
                uid = dialogs.choose_series(self._parent_widget(), str(path), result["series"])
                if uid:
                    self.open_scan(path, labels=labels, series_uid=uid, component=component, confirm=False)
                else:
                    self.status("Opening cancelled.")
                return
            if result["kind"] == "component":
                comp = dialogs.choose_component(self._parent_widget(), str(path), result["n"], result["what"])
                if comp is not None:
                    self.open_scan(path, labels=labels, series_uid=series_uid, component=comp, confirm=False)
                else:
                    self.status("Opening cancelled.")
                return
            remember_scan(path)  # before volume_changed: the start screen lists it
            self.set_volume(result["volume"], result.get("labels"), label_table=result.get("table"),
                            labels_path=labels if result.get("labels") is not None else None,
                            bounds=result["bounds"])
            if "labels_error" in result:
                self.show_error(result["labels_error"], title="Could not open the labels")

        self._load_handle = self.run_worker(work, on_done=done, description=f"Opening {path.name}…")
        return self._load_handle

    @staticmethod
    def _read_labels_files(mio, labels_path, volume: Volume) -> dict:
        """Worker side of opening labels: the map (z, y, x) and its table (description beside it)."""
        arr = mio.load_labels(labels_path, like=volume)
        arr = labels_dtype_array(arr)
        desc = description_beside(labels_path)
        table = mio.read_label_description(desc) if desc is not None else None
        return {"labels": arr, "table": table}

    def open_labels(self, path: str | Path, *, confirm: bool = True) -> WorkerHandle | None:
        """Load a label map onto the current scan (same grid) off the GUI thread.

        A label map on another grid shows GeometryMismatchError's message and leaves the
        current labels untouched. A ``<stem>.label`` file beside it supplies names/colours.
        """
        if self._volume is None:
            self.show_error("Open a scan before opening labels: a label map is shown on its scan.")
            return None
        if confirm and not self.confirm_discard("open other labels"):
            return None
        path = Path(path)
        volume = self._volume

        def work():
            from .. import io as mio

            return self._read_labels_files(mio, path, volume)

        def done(result):
            if self._volume is not volume:  # the scan changed meanwhile
                return
            self.set_labels(result["labels"], label_table=result["table"] or LabelTable(), labels_path=path)
            self.status(f"Opened labels {path.name} ({len(self._table)} labels).")

        return self.run_worker(work, on_done=done, description=f"Opening labels {path.name}…")

    # ------------------------------------------------------------------ saving
    def suggested_labels_path(self) -> Path:
        if self._labels_path is not None:
            return self._labels_path
        if self._volume is not None and self._volume.path:
            p = Path(self._volume.path)
            folder = p if p.is_dir() else p.parent
            return folder / f"{_stem(p) if not p.is_dir() else p.name}_labels.nii.gz"
        return Path.home() / "labels.nii.gz"

    def save_labels(self, path: str | Path | None = None, *, ask: bool = False) -> Path | None:
        """Write the labels on the scan's source grid (``io.save_labels(..., like=volume)``).

        ``path=None``: the current labels file, or ask for one the first time (or when ``ask``).
        Also writes ``<stem>.label`` with the names. Returns the path written, None if cancelled
        or failed (the error is shown).
        """
        if self._volume is None:
            self.show_error("There is no scan open, so there are no labels to save.")
            return None
        if path is None:
            if self._labels_path is None or ask:
                chosen = dialogs.ask_save_file(self._parent_widget(), "Save labels as",
                                               self.suggested_labels_path(), dialogs.LABELS_SAVE_FILTER)
                if not chosen:
                    return None
                path = chosen
            else:
                path = self._labels_path
        path = Path(path)
        try:
            from .. import io as mio

            arr = np.ascontiguousarray(self.source_labels())
            written = mio.save_labels(arr, self._volume, path, label_table=self._table, overwrite=True)
        except Exception as exc:
            self.show_error(exc, title="Could not save the labels")
            return None
        written = Path(written) if written else path
        self._labels_path = written
        self._saved_digest = self._labels_digest()
        self.status(f"Saved labels to {written}", 8000)
        return written
