"""Never lose work: autosave, crash recovery, session files and memory-budgeted undo.

Installed by :func:`medsam_gui.app.build_app` (``install(controller)``). It adds

- **Autosave** (:class:`medsam_gui.core.autosave.AutosaveManager`) into this app instance's
  slot under ``config.sessions_dir()`` (the user data folder, never beside the scan). After
  a change (label edits of any kind, the label table, the display window, a newly opened
  scan, state of registered panels) a snapshot is taken on the GUI thread at most every
  :data:`AUTOSAVE_INTERVAL_S` s (a copy of the source-order labels plus small plain data; a
  QTimer calls ``poll()`` every :data:`POLL_MS` ms for changes made in between) and written by
  the autosave thread. Write failures (disk full ...) show a status-bar message and a
  permanent red notice, are retried every interval, and never touch the annotation.
  A clean window close deletes the slot; a crash leaves it for recovery.
- **Crash recovery**: at start, slots of instances that crashed are offered (a dialog listing
  scan, time and labelled voxels; Restore / Discard / Later) and also under
  File > Recover unsaved work…. Restoring opens the scan (asking for its new location when it
  moved; another scan is refused), and puts back labels, label table, window, view and the
  registered panels' state. The crashed slot is deleted once this instance has autosaved the
  restored work. Restored labels count as unsaved (quitting asks).
- **Session files**: File > Save session… (Ctrl+Shift+S) / Open session… write and read one
  ``NAME.medsamsession`` folder (:func:`medsam_gui.core.session.save_session`). "Save labels
  as…" is Ctrl+Alt+S.
- **Undo within a memory budget**: the labels layer keeps unlimited undo steps until their
  memory exceeds the setting ``undo_memory_budget_mb`` (default 1024 MiB); the oldest are
  dropped first (:mod:`medsam_gui.gui.undo`). Re-applied whenever the scan changes.

State of other panels (the hook)
--------------------------------
::

    register_state_provider(controller, name, get_state, set_state)
    mark_dirty(controller)        # call after your panel's state changed

``get_state() -> dict`` returns the panel's state for the current scan: str keys; values
JSON-able (dict/list/str/int/float/bool/None) and numpy arrays anywhere inside (stored
compressed, base64, in ``session.json``; come back as numpy arrays with the same dtype and
shape; tuples come back as lists). Two top-level keys are stored in the session's dedicated
places instead:

- ``"support_sets"``: ``{label value (int >= 1): {array name: numpy array}}`` (convention:
  ``images`` float32 (S, H, W) in 0..1, ``labels`` uint8 (S, H, W)); written as
  ``support_<label>.npz`` files, given back as the same dict (int keys);
- ``"prompts"``: a JSON dict (convention ``{"boxes": [{"label", "axis", "slice",
  "box": [x0, y0, x1, y1]}], "recist": [...]}``, display slice pixel coordinates) merged
  into ``Session.prompts``; given back with the keys this provider wrote.

A crashed run is offered for recovery when it left labelled voxels, prompts, support sets or
a provider state with some non-empty list / dict / array at its top level (a state of plain
settings alone is not worth a question).

``set_state(state)`` receives that dict after the scan and labels are restored (it is called
after ``volume_changed``, so clearing state on a new scan is fine). ``get_state`` is called
on the GUI thread for every snapshot, so keep it cheap (copies of small arrays); its result
is not kept by reference. Either may raise: the error is logged and shown in the status
bar, and the rest of the session is still saved / restored. Registering may happen before
or after :func:`install` (panels are installed first). State of a provider that is not
registered when a session is restored is kept and saved again unchanged.

Public API::

    install(controller) -> SessionManager
    manager_for(controller) -> SessionManager | None
    register_state_provider(controller, name, get_state, set_state) -> None
    unregister_state_provider(controller, name) -> None
    mark_dirty(controller) -> None
    current_session(controller) -> Session
    save_session_as(controller, path=None) -> WorkerHandle | None
    open_session(controller, path) -> WorkerHandle | None
    restore_session(controller, path_or_slot) -> WorkerHandle | None
    offer_recovery(controller, items=None) -> RecoveryDialog | None   (not blocking)
    recoverable(controller) -> list[RecoverableSession]
    # dialogs (module level, so tests replace them with monkeypatch):
    ask_recovery(parent, items, on_choice) -> dialog; on_choice("restore"|"discard"|"later", item)
    ask_scan_location(parent, session, message) -> str | None
    ask_save_session_path(parent, suggested) -> str | None
    ask_open_session_path(parent) -> str | None
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import weakref
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtGui import QAction, QKeySequence
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import config
from ..core import autosave as _autosave
from ..core.labels import LabelTable
from ..core.session import (
    SESSION_JSON,
    SESSION_SUFFIX,
    ScanChangedError,
    ScanMissingError,
    ScanRef,
    Session,
    load_session,
    open_session_scan,
    read_session_summary,
    relocate_scan,
    save_session,
)
from ..errors import MedsamGuiError, SessionError
from . import dialogs
from .undo import DEFAULT_BUDGET_BYTES, apply_history_budget

log = logging.getLogger(__name__)

AUTOSAVE_INTERVAL_S = 3.0  # <= 5 s: with the 1-s poll, a crash loses at most ~10 s of work
POLL_MS = 1000
UNDO_BUDGET_SETTING = "undo_memory_budget_mb"
SESSION_FILTER = "medsam-gui sessions (*.medsamsession)"
_PROVIDERS_ATTR = "_medsam_state_providers"
_MANAGER_ATTR = "_medsam_session_manager"
_ARRAY_TAG = "__ndarray__"


# ------------------------------------------------------------------------------------------
# panel state providers
# ------------------------------------------------------------------------------------------
def _providers(controller) -> dict[str, tuple[Callable[[], dict], Callable[[dict], None]]]:
    reg = getattr(controller, _PROVIDERS_ATTR, None)
    if reg is None:
        reg = {}
        setattr(controller, _PROVIDERS_ATTR, reg)
    return reg


def register_state_provider(controller, name: str, get_state: Callable[[], dict],
                            set_state: Callable[[dict], None]) -> None:
    """Have ``name``'s state saved in autosaves and sessions and restored with them (see the
    module docs for what ``get_state`` may return). Re-registering a name replaces it."""
    if not isinstance(name, str) or not name:
        raise ValueError("a state provider needs a non-empty name")
    if not callable(get_state) or not callable(set_state):
        raise TypeError("get_state and set_state must be callables")
    _providers(controller)[name] = (get_state, set_state)
    mgr = manager_for(controller)
    if mgr is not None:
        mgr.provider_registered(name)


def unregister_state_provider(controller, name: str) -> None:
    _providers(controller).pop(name, None)


def mark_dirty(controller) -> None:
    """Tell autosave that something changed (panels call this after their state changed).
    Does nothing before :func:`install` or without a scan."""
    mgr = manager_for(controller)
    if mgr is not None:
        mgr.changed()


def manager_for(controller) -> "SessionManager | None":
    return getattr(controller, _MANAGER_ATTR, None)


def _encode(obj: Any, where: str) -> Any:
    """JSON-ready copy of ``obj``: numpy arrays become tagged, zlib-compressed base64."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.kind not in "biuf":
            raise TypeError(f"{where}: array of dtype {obj.dtype} cannot be saved (numbers only)")
        arr = np.ascontiguousarray(obj)
        return {_ARRAY_TAG: {"dtype": arr.dtype.str, "shape": list(arr.shape),
                             "zlib_b64": base64.b64encode(zlib.compress(arr.tobytes(), 1)).decode("ascii")}}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be strings, got {k!r}")
            out[k] = _encode(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be saved in a session")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_TAG} and isinstance(obj[_ARRAY_TAG], dict):
            spec = obj[_ARRAY_TAG]
            dtype = np.dtype(spec["dtype"])
            if dtype.hasobject or dtype.kind not in "biuf":
                raise SessionError(f"A saved panel array has the unsupported dtype {dtype}.")
            raw = zlib.decompress(base64.b64decode(spec["zlib_b64"]))
            return np.frombuffer(raw, dtype=dtype).reshape([int(s) for s in spec["shape"]]).copy()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------
# dialogs (module level: tests replace them)
# ------------------------------------------------------------------------------------------
def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "unknown time"


def _fmt_voxels(counts: dict[int, int]) -> str:
    total = sum(counts.values())
    if not counts:
        return "0"
    parts = "; ".join(f"label {k}: {v:,}" for k, v in sorted(counts.items()))
    return f"{total:,} ({parts})"


class RecoveryDialog(QDialog):
    """Lists unsaved work of crashed runs; buttons Restore / Discard / Later.

    After ``exec()``: ``choice`` ("restore" | "discard" | "later") and ``selected()`` (the
    chosen :class:`~medsam_gui.core.autosave.RecoverableSession`).
    """

    COLUMNS = ("Scan", "Autosaved at", "Labelled voxels", "Scan location")

    def __init__(self, parent: QWidget | None, items) -> None:
        super().__init__(parent)
        self.items = list(items)
        self.choice = "later"
        self.setWindowTitle("Recover unsaved work")
        layout = QVBoxLayout(self)
        n = len(self.items)
        layout.addWidget(QLabel(
            f"medsam-gui did not close normally last time. {'This work was' if n == 1 else f'{n} sets of work were'} "
            "autosaved and can be restored:"))
        self.table = QTableWidget(n, len(self.COLUMNS), self)
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        for row, cells in enumerate(self.rows()):
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        if n:
            self.table.selectRow(0)
        self.table.doubleClicked.connect(lambda *_: self._done("restore"))
        layout.addWidget(self.table)
        buttons = QHBoxLayout()
        self.restore_button = QPushButton("Restore")
        self.discard_button = QPushButton("Discard")
        self.later_button = QPushButton("Later")
        self.restore_button.setToolTip("Open the scan and put the autosaved work back")
        self.discard_button.setToolTip("Delete this autosave for good")
        self.later_button.setToolTip("Keep it; it is offered again next time (File > Recover unsaved work…)")
        self.restore_button.setDefault(True)
        self.restore_button.clicked.connect(lambda: self._done("restore"))
        self.discard_button.clicked.connect(lambda: self._done("discard"))
        self.later_button.clicked.connect(lambda: self._done("later"))
        buttons.addStretch(1)
        for b in (self.restore_button, self.discard_button, self.later_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.resize(760, 260)

    def rows(self) -> list[list[str]]:
        """The table's text: scan name, autosave time, labelled voxels, scan path."""
        return [[it.scan_name or it.name or "(unnamed scan)", _fmt_time(it.saved_at),
                 _fmt_voxels(it.label_voxels), it.scan_path or ""] for it in self.items]

    def selected(self):
        rows = self.table.selectionModel().selectedRows()
        if not rows or not self.items:
            return self.items[0] if self.items else None
        return self.items[rows[0].row()]

    def _done(self, choice: str) -> None:
        self.choice = choice
        self.accept()

    def reject(self) -> None:  # Esc / window close = Later
        self.choice = "later"
        super().reject()


def ask_recovery(parent: QWidget | None, items, on_choice: Callable[[str, Any], None]) -> RecoveryDialog:
    """Show :class:`RecoveryDialog` without blocking (window-modal ``open()``); when a button
    is pressed ``on_choice(choice, item)`` is called. Returns the dialog."""
    dlg = RecoveryDialog(parent, items)
    dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
    dlg.finished.connect(lambda _code, d=dlg: on_choice(d.choice, d.selected()))
    dlg.open()
    return dlg


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


# ------------------------------------------------------------------------------------------
# the manager
# ------------------------------------------------------------------------------------------
class _CloseWatcher(QObject):
    """Sees the main window close (a Close event followed by the window hiding)."""

    def __init__(self, qt_window, on_closed: Callable[[], None]) -> None:
        super().__init__(qt_window)
        self._on_closed = on_closed
        self._closing = False
        self._window = qt_window

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt naming
        if obj is self._window:
            etype = event.type()
            if etype == QEvent.Type.Close:
                self._closing = True
                QTimer.singleShot(0, self._after_close)
            elif etype == QEvent.Type.Hide and self._closing:
                self._closing = False
                self._on_closed()
        return False

    def _after_close(self) -> None:
        if self._closing:
            self._closing = False
            try:
                hidden = not self._window.isVisible()
            except RuntimeError:  # the window is already deleted
                hidden = True
            if hidden:  # a window closed while never shown (no Hide event)
                self._on_closed()
            # else: the close was refused (unsaved labels, Cancel)


class SessionManager(QObject):
    """Autosave, recovery, session files and undo budget for one controller (see module docs).

    Attributes: ``controller``, ``autosave`` (AutosaveManager), ``timer`` (QTimer driving
    ``poll``), ``notice`` (status-bar QLabel shown while autosave fails), ``session_path``
    (last session saved/opened), ``undo_budget_bytes``, ``last_restore_error``,
    ``recovery_dialog`` (the open recovery offer or None), ``recovery_choices`` (answers so far).
    """

    _autosave_error = Signal(object)
    _autosave_saved = Signal(object)
    _fingerprint_ready = Signal(object)

    def __init__(self, controller, *, interval_s: float | None = None, root=None) -> None:
        super().__init__(controller)
        self.controller = controller
        self._closed = False
        self._suppress = False
        self._restoring = False
        self._scan_refs: "weakref.WeakKeyDictionary[Any, ScanRef]" = weakref.WeakKeyDictionary()
        self._created = time.time()
        self._name = ""
        self._orphan_states: dict[str, dict] = {}
        self._restore_seq = 0
        self._pending_discard: tuple[int, Path] | None = None
        self._error_shown = False
        self.session_path: Path | None = None
        self.last_restore_error: str | None = None
        self.recovery_dialog = None
        self.recovery_choices: list[str] = []
        self.undo_budget_bytes = _budget_setting()

        self._autosave_error.connect(self._on_autosave_error)
        self._autosave_saved.connect(self._on_autosave_saved)
        self._fingerprint_ready.connect(self._on_fingerprint_ready)
        self.autosave = _autosave.AutosaveManager(
            root, AUTOSAVE_INTERVAL_S if interval_s is None else interval_s,
            on_error=self._autosave_error.emit, on_saved=self._autosave_saved.emit)
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.timer.start()

        controller.labels_changed.connect(self.changed)
        controller.label_table_changed.connect(self.changed)
        controller.window_changed.connect(self._on_window_changed)
        controller.volume_changed.connect(self._on_volume_changed)
        self.notice = QLabel("")
        self.notice.setStyleSheet(
            "QLabel { background: #b00020; color: white; padding: 1px 6px; border-radius: 3px; }")
        self.notice.setVisible(False)
        window = controller.window
        self._watcher = None
        if window is not None:
            window.qt_window.statusBar().addPermanentWidget(self.notice)
            self._watcher = _CloseWatcher(window.qt_window, lambda: self.shutdown(clean=True))
            window.qt_window.installEventFilter(self._watcher)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._on_about_to_quit)
        if controller.labels_layer is not None:
            self._apply_undo_budget()
        if controller.volume is not None:
            self._on_volume_changed(controller.volume)

    # -- change tracking --------------------------------------------------------------------
    def changed(self, *args) -> None:
        """Something the user did changed: schedule an autosave."""
        if self._closed or self._suppress or self._restoring or self.controller.volume is None:
            return
        self.autosave.mark_dirty(self.snapshot)

    def _on_window_changed(self, lo: float = 0.0, hi: float = 0.0) -> None:
        self.changed()

    def poll(self) -> None:
        if not self._closed:
            self.autosave.poll()

    def _on_volume_changed(self, volume) -> None:
        self._apply_undo_budget()
        if self._restoring:
            return
        self._created = time.time()
        self._name = ""
        self._orphan_states = {}
        self.session_path = None
        # set_volume emits labels/table/window signals right after this one: they describe
        # the opened files, not work; the scan itself is recorded once its fingerprint is known
        self._suppress = True
        QTimer.singleShot(0, self._end_suppress)
        if volume is None:
            return
        if "_fingerprint" in (getattr(volume, "meta", None) or {}):
            QTimer.singleShot(0, lambda v=volume: self._on_fingerprint_ready(v))
            return

        def work(v=volume, sig=self._fingerprint_ready):
            try:
                v.fingerprint()
            except Exception:  # pragma: no cover - computed again (and reported) on snapshot
                log.exception("fingerprint failed")
            try:
                sig.emit(v)
            except RuntimeError:  # the manager is gone
                pass

        threading.Thread(target=work, name="medsam-fingerprint", daemon=True).start()

    def _end_suppress(self) -> None:
        self._suppress = False

    def _on_fingerprint_ready(self, volume) -> None:
        if volume is self.controller.volume and not self._restoring:
            self.changed()

    def provider_registered(self, name: str) -> None:
        state = self._orphan_states.pop(name, None)
        if state is not None:
            self._set_provider_state(name, state)

    # -- undo budget ------------------------------------------------------------------------
    def _apply_undo_budget(self) -> None:
        layer = self.controller.labels_layer
        if layer is not None:
            apply_history_budget(layer, self.undo_budget_bytes)

    def set_undo_budget(self, nbytes: int, *, remember: bool = False) -> None:
        """Change the undo memory budget (bytes); ``remember`` stores it in the settings."""
        self.undo_budget_bytes = int(nbytes)
        self._apply_undo_budget()
        if remember:
            config.set_setting(UNDO_BUDGET_SETTING, max(1, int(round(nbytes / 2**20))))

    # -- snapshots ----------------------------------------------------------------------------
    def _scan_ref(self, volume) -> ScanRef:
        ref = self._scan_refs.get(volume)
        if ref is None:
            ref = ScanRef.from_volume(volume)
            self._scan_refs[volume] = ref
        return ref

    def provider_states(self) -> tuple[dict, dict, dict]:
        """(prompts, support_sets, extra["providers"]) from the registered providers."""
        prompts: dict[str, Any] = {}
        support: dict[int, dict[str, np.ndarray]] = {}
        out: dict[str, Any] = {}
        for name, state in self._orphan_states.items():
            entry = dict(state)
            out[name] = entry
        for name, (get_state, _set) in list(_providers(self.controller).items()):
            try:
                state = get_state()
                if state is None:
                    continue
                if not isinstance(state, dict):
                    raise TypeError(f"get_state returned {type(state).__name__}, not a dict")
                state = dict(state)
                entry: dict[str, Any] = {}
                sup = state.pop("support_sets", None)
                if sup is not None:
                    labels = []
                    for value, arrays in dict(sup).items():
                        v = int(value)
                        support[v] = {str(n): np.array(a, copy=True) for n, a in dict(arrays).items()}
                        labels.append(v)
                    entry["support_labels"] = sorted(labels)
                pr = state.pop("prompts", None)
                if pr is not None:
                    pr = _encode(dict(pr), f"{name}.prompts")
                    prompts.update(pr)
                    entry["prompt_keys"] = list(pr)
                entry["state"] = _encode(state, name)
                out[name] = entry
            except Exception as exc:
                log.exception("state provider %s failed", name)
                self.controller.status(f"The {name} panel's state could not be saved: {exc}", 10000)
        return prompts, support, out

    def snapshot(self) -> Session:
        """The current work as a Session with copied arrays (GUI thread; ~a memcpy of the labels)."""
        c = self.controller
        volume = c.volume
        if volume is None:
            raise SessionError("No scan is open, so there is no session to save.")
        labels = np.array(c.source_labels(), copy=True, order="C")
        prompts, support, providers = self.provider_states()
        view: dict[str, Any] = {}
        try:
            axis = int(c.view_axis)
            view = {"view": c.view, "axis": axis, "slice": int(c.current_slice(axis))}
        except Exception:  # view state is a convenience
            pass
        extra = {"providers": providers,
                 "gui": {"restore_seq": self._restore_seq, "active_label": int(c.active_label),
                         "labels_path": str(c.labels_path) if c.labels_path else None}}
        scan = self._scan_ref(volume)
        return Session(scan=scan, labels=labels, label_table=c.label_table.to_dict(), prompts=prompts,
                       window=c.window_bounds, support_sets=support, view=view,
                       name=self._name or scan.name or "session", created=self._created, extra=extra)

    # -- autosave callbacks (GUI thread) -----------------------------------------------------
    def _on_autosave_error(self, exc) -> None:
        msg = str(exc) if isinstance(exc, MedsamGuiError) else f"{type(exc).__name__}: {exc}"
        autosave = getattr(self, "autosave", None)
        if autosave is None or autosave.slot is None:  # the slot itself could not be made
            text = f"{msg} Save your work with File > Save session… or Save labels."
            label = "Autosave off"
        else:
            text = f"Autosave failed: {msg} Your work is still open; retrying every {autosave.interval_s:g} s."
            label = "Autosave failing"
        if not hasattr(self, "notice"):  # reported while starting: show it once the bar exists
            QTimer.singleShot(0, lambda e=exc: self._on_autosave_error(e))
            return
        self.notice.setText(label)
        self.notice.setToolTip(text)
        self.notice.setVisible(True)
        self.controller.status(text, 15000)
        self._error_shown = True

    def _on_autosave_saved(self, path) -> None:
        if self._error_shown:
            self._error_shown = False
            self.notice.setVisible(False)
            self.controller.status("Autosave works again; your work is saved.", 5000)
        pending = self._pending_discard
        if pending is not None and path is not None:
            seq, slot = pending
            try:
                gui = read_session_summary(path).get("extra", {}).get("gui", {})
                saved_seq = int(gui.get("restore_seq", -1))
            except (SessionError, TypeError, ValueError, AttributeError):
                saved_seq = -1
            if saved_seq >= seq:
                self._pending_discard = None
                try:
                    _autosave.discard(slot)
                except SessionError as err:
                    log.warning("could not discard recovered slot %s: %s", slot, err)

    # -- lifecycle ----------------------------------------------------------------------------
    def _on_about_to_quit(self) -> None:
        self.shutdown(clean=True)

    def shutdown(self, clean: bool = True) -> None:
        """Stop autosaving; ``clean`` deletes this instance's slot (nothing to recover)."""
        if self._closed:
            return
        self._closed = True
        self.timer.stop()
        self.autosave.close(clean=clean)

    # -- restore ------------------------------------------------------------------------------
    def _set_provider_state(self, name: str, entry: dict) -> None:
        provider = _providers(self.controller).get(name)
        if provider is None:
            self._orphan_states[name] = entry
            return
        try:
            state = _decode(entry.get("state", {}))
            if not isinstance(state, dict):
                state = {}
            if "support_sets" in entry:
                state["support_sets"] = entry["support_sets"]
            if "prompts" in entry:
                state["prompts"] = entry["prompts"]
            provider[1](state)
        except Exception as exc:
            log.exception("state provider %s failed to restore", name)
            self.controller.status(f"The {name} panel's state could not be restored: {exc}", 15000)

    def apply(self, session: Session, volume, *, recovered_slot: Path | None = None) -> None:
        """Show ``volume`` with the session's labels, table, window, view and panel states."""
        c = self.controller
        table = None
        if session.label_table:
            try:
                table = LabelTable.from_dict(session.label_table)
            except MedsamGuiError as exc:
                c.status(f"The session's label names could not be read ({exc}); default names are used.", 10000)
        self._restoring = True
        try:
            c.set_volume(volume, session.labels, label_table=table, bounds=session.window)
            gui = session.extra.get("gui", {}) if isinstance(session.extra, dict) else {}
            try:
                view = session.view or {}
                if view.get("view") in ("axial", "coronal", "sagittal"):
                    c.set_view(view["view"])
                if isinstance(view.get("axis"), int) and isinstance(view.get("slice"), int):
                    c.set_current_slice(int(view["axis"]), int(view["slice"]))
                if isinstance(gui.get("active_label"), int) and gui["active_label"] > 0:
                    c.set_active_label(int(gui["active_label"]))
            except Exception:  # a view that does not fit is not worth failing for
                log.exception("could not restore the view")
            self._created = session.created or time.time()
            self._name = session.name
            self._orphan_states = {}
            providers = session.extra.get("providers", {}) if isinstance(session.extra, dict) else {}
            for name, entry in (providers or {}).items():
                if not isinstance(entry, dict):
                    continue
                entry = dict(entry)
                if "support_labels" in entry:
                    entry["support_sets"] = {int(v): session.support_sets[int(v)]
                                             for v in entry["support_labels"] if int(v) in session.support_sets}
                if "prompt_keys" in entry:
                    entry["prompts"] = {k: session.prompts[k] for k in entry["prompt_keys"] if k in session.prompts}
                self._set_provider_state(str(name), entry)
        finally:
            self._restoring = False
        self._restore_seq += 1
        if recovered_slot is not None:
            c.mark_labels_unsaved()  # recovered labels are in no file yet: quitting asks
            self._pending_discard = (self._restore_seq, Path(recovered_slot))
        self._suppress = False
        self.changed()


def _budget_setting() -> int:
    mb = config.get_setting(UNDO_BUDGET_SETTING)
    try:
        mb = float(mb)
        if mb > 0:
            return int(mb * 2**20)
    except (TypeError, ValueError):
        pass
    return DEFAULT_BUDGET_BYTES


# ------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------
def _require_manager(controller) -> SessionManager:
    mgr = manager_for(controller)
    if mgr is None:
        mgr = install(controller)
    return mgr


def current_session(controller) -> Session:
    """The current work as a :class:`Session` (arrays copied). SessionError without a scan."""
    return _require_manager(controller).snapshot()


def _parent(controller):
    return controller.window.qt_window if controller.window is not None else None


def _suggested_session_path(controller) -> str:
    mgr = manager_for(controller)
    if mgr is not None and mgr.session_path is not None:
        return str(mgr.session_path)
    vol = controller.volume
    name = "session"
    folder = Path(dialogs._last_dir())
    if vol is not None:
        name = vol.name or (Path(vol.path).name if vol.path else "session")
        for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
    return str(folder / f"{name}{SESSION_SUFFIX}")


def save_session_as(controller, path: str | Path | None = None):
    """Save the current work as ``path`` (a ``.medsamsession`` folder; asked when None).

    The snapshot is taken now; writing happens off the GUI thread. Returns the WorkerHandle
    (None when there is no scan or the user cancelled). Errors are shown; nothing is lost.
    """
    mgr = _require_manager(controller)
    if controller.volume is None:
        controller.show_error("There is no scan open, so there is no session to save.")
        return None
    if path is None:
        path = ask_save_session_path(_parent(controller), _suggested_session_path(controller))
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


def restore_session(controller, path_or_slot):
    """Open a session (``.medsamsession`` folder, an autosave slot folder, or a
    :class:`~medsam_gui.core.autosave.RecoverableSession`) with no dialog in between, unless
    the scan moved (then :func:`ask_scan_location` asks for it; another scan is refused with
    a message). Loading runs off the GUI thread; returns the WorkerHandle (None if cancelled).
    A recovered slot is deleted once this instance has autosaved the restored work.
    """
    mgr = _require_manager(controller)
    if isinstance(path_or_slot, _autosave.RecoverableSession):
        item = path_or_slot
        slot: Path | None = Path(item.slot)
        load = item.load
        label = item.scan_name or item.name
        source: Path | None = None
    else:
        folder = _resolve_session_folder(Path(path_or_slot).expanduser())
        source = folder
        slot = None
        if folder.parent.name.startswith(_autosave.SLOT_PREFIX):
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
            _locate_and_apply(controller, mgr, result["session"], result["message"], slot, failed, source)
            return
        _finish(controller, mgr, result["session"], result["volume"], slot, source)

    return controller.run_worker(work, on_done=done, on_error=failed, description=f"Opening session {label}…")


def _finish(controller, mgr: SessionManager, session: Session, volume, slot: Path | None,
            source: Path | None = None) -> None:
    mgr.apply(session, volume, recovered_slot=slot)
    if slot is None and source is not None and source.name.endswith(SESSION_SUFFIX):
        mgr.session_path = source
    n = sum(session.label_voxel_counts().values())
    where = "recovered" if slot is not None else "opened"
    controller.status(f"Session {where}: {session.scan.name or 'scan'}, {n:,} labelled voxels.", 8000)


def _locate_and_apply(controller, mgr: SessionManager, session: Session, message: str,
                      slot: Path | None, failed: Callable, source: Path | None = None) -> None:
    new_path = ask_scan_location(_parent(controller), session, message)
    if not new_path:
        mgr.last_restore_error = message
        controller.status("Restoring cancelled: the scan was not located.", 8000)
        return

    def work():
        from .. import io as mio

        return relocate_scan(session, new_path, mio.load_volume)

    def done(result):
        new_session, volume = result
        _finish(controller, mgr, new_session, volume, slot, source)

    controller.run_worker(work, on_done=done, on_error=failed, description=f"Opening {Path(new_path).name}…")


def open_session(controller, path):
    """Open a saved session (app.py's ``--session`` and File > Open session…)."""
    path = Path(path).expanduser()
    if not path.exists():
        controller.show_error(SessionError(f"The session {path} does not exist. Check the path."))
        return None
    return restore_session(controller, path)


def _has_content(state: Any) -> bool:
    """Some top-level value is a non-empty list / dict / array (settings alone are no work)."""
    return isinstance(state, dict) and any(isinstance(v, (list, dict)) and v for v in state.values())


def _worth_offering(item) -> bool:
    """A crashed slot holds work worth a question: labelled voxels, prompts, support sets or
    panel state with content (see :func:`_has_content`)."""
    if item.label_voxels:
        return True
    try:
        doc = read_session_summary(item.session_path)
    except SessionError:
        return True
    extra = doc.get("extra") if isinstance(doc.get("extra"), dict) else {}
    providers = extra.get("providers") if isinstance(extra.get("providers"), dict) else {}
    return bool(_has_content(doc.get("prompts")) or doc.get("support_sets")
                or any(isinstance(e, dict) and _has_content(e.get("state")) for e in providers.values()))


def recoverable(controller) -> list:
    """Crashed runs' autosaves worth restoring (newest first); empty ones are deleted."""
    mgr = _require_manager(controller)
    items = []
    for item in mgr.autosave.recoverable():
        if _worth_offering(item):
            items.append(item)
        else:
            try:
                _autosave.discard(item)
            except SessionError:
                pass
    return items


def offer_recovery(controller, items=None):
    """Offer crashed runs' autosaves (:func:`ask_recovery`, not blocking). Restore opens the
    chosen one, Discard deletes it (and offers the rest), Later keeps them all for the next
    start. Returns the dialog (also ``manager.recovery_dialog``), or None when there is
    nothing to offer."""
    mgr = _require_manager(controller)
    if items is None:
        items = recoverable(controller)
    items = [i for i in items if Path(i.slot).exists()]
    if not items:
        return None

    def chosen(choice: str, item) -> None:
        mgr.recovery_dialog = None
        mgr.recovery_choices.append(choice)
        if item is None or choice not in ("restore", "discard"):
            controller.status("Unsaved work from an earlier run is kept: File > Recover unsaved work….", 8000)
            return
        if choice == "discard":
            try:
                _autosave.discard(item)
                controller.status(f"Discarded the autosave of {item.scan_name or item.name}.", 5000)
            except SessionError as exc:
                controller.show_error(exc)
            rest = [i for i in items if i is not item]
            if rest:
                QTimer.singleShot(0, lambda: offer_recovery(controller, rest))
            return
        restore_session(controller, item)

    mgr.recovery_dialog = ask_recovery(_parent(controller), items, chosen)
    return mgr.recovery_dialog


# ------------------------------------------------------------------------------------------
# install
# ------------------------------------------------------------------------------------------
def _file_menu(window, anchor: str = "save_labels_as") -> QMenu | None:
    act = window.actions.get(anchor)
    if act is None:
        return None
    for obj in act.associatedObjects():
        if isinstance(obj, QMenu):
            return obj
    return None


def _install_menu(controller) -> None:
    window = controller.window
    if window is None or not hasattr(window, "actions"):
        return
    menu = _file_menu(window)
    if menu is None:
        return
    parent = window.qt_window

    def make(name, text, slot, shortcut=None, tip=""):
        act = QAction(text, parent)
        if shortcut:
            act.setShortcut(QKeySequence(shortcut))
        if tip:
            act.setStatusTip(tip)
            act.setToolTip(tip)
        act.triggered.connect(lambda _checked=False: slot())
        window.actions[name] = act
        return act

    def do_open():
        path = ask_open_session_path(parent)
        if path:
            open_session(controller, path)

    def do_recover():
        if offer_recovery(controller) is None:
            controller.status("There is no unsaved work from an earlier run to recover.", 5000)

    acts = [
        make("save_session", "Save session…", lambda: save_session_as(controller), "Ctrl+Shift+S",
             "Save scan reference, labels, names, window and tool state as one .medsamsession folder"),
        make("open_session", "Open session…", do_open, None, "Open a .medsamsession folder"),
        make("recover_sessions", "Recover unsaved work…", do_recover, None,
             "Restore work autosaved by a medsam-gui that did not close normally"),
    ]
    # after the label-saving entries (before the separator that follows them)
    actions = menu.actions()
    before = None
    save_as = window.actions.get("save_labels_as")
    if save_as in actions:
        i = actions.index(save_as)
        before = actions[i + 1] if i + 1 < len(actions) else None
    sep = QAction(parent)
    sep.setSeparator(True)
    for act in [sep] + acts:
        if before is not None:
            menu.insertAction(before, act)
        else:
            menu.addAction(act)


def install(controller, *, offer: bool = True) -> SessionManager:
    """Set up autosave, recovery, session menu entries and the undo budget (idempotent).

    With ``offer``, crashed runs' autosaves are offered right after start (from the event
    loop, :func:`offer_recovery`).
    """
    mgr = manager_for(controller)
    if mgr is not None:
        return mgr
    mgr = SessionManager(controller)
    setattr(controller, _MANAGER_ATTR, mgr)
    _install_menu(controller)
    if offer:
        try:
            items = recoverable(controller)
        except Exception:  # recovery must never stop the app from starting
            log.exception("listing recoverable sessions failed")
            items = []
        if items:
            QTimer.singleShot(0, lambda: offer_recovery(controller, items))
    return mgr
