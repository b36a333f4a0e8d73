"""Never lose work: autosave, crash recovery, session files and memory-budgeted undo.

:func:`install` (called by :func:`medsam_gui.app.build_app`) creates the
:class:`SessionManager` of a controller:

- **Autosave** (:class:`medsam_gui.core.autosave.AutosaveManager`) into this app instance's
  slot under ``config.sessions_dir()`` (the user data folder, never beside the scan). After
  a change (label edits of any kind, the label table, the display window, a newly opened
  scan, ``controller.state_changed`` from a panel) a snapshot is taken on the GUI thread at
  most every :data:`AUTOSAVE_INTERVAL_S` s (a copy of the source-order labels plus small plain
  data; a QTimer calls ``poll()`` every :data:`POLL_MS` ms for changes made in between) and
  written by the autosave thread. Write failures (disk full ...) show a status-bar message and
  a permanent red notice, are retried every interval, and never touch the annotation.
  The controller's shutdown (a clean window close or quit) deletes the slot; a crash leaves
  it for recovery.
- **Crash recovery** (:mod:`.recovery_dialog`): at start, slots of instances that crashed are
  offered (scan, time and labelled voxels; Restore / Discard / Later) and also under
  File > Recover unsaved work…. Restoring opens the scan (asking for its new location when it
  moved; another scan is refused), and puts back labels, label table, window, view and the
  panels' state. The crashed slot is deleted once this instance has autosaved the restored
  work. Restored labels count as unsaved (quitting asks).
- **Session files** (:mod:`.session_files`, menu entries in :mod:`.session_menu`): File >
  Save session… (Ctrl+Shift+S) / Open session… write and read one ``NAME.medsamsession``
  folder (:func:`medsam_gui.core.session.save_session`).
- **Undo within a memory budget**: the labels layer keeps unlimited undo steps until their
  memory exceeds the setting ``undo_memory_budget_mb`` (default 1024 MiB); the oldest are
  dropped first (:mod:`medsam_gui.gui.undo`). Re-applied whenever the scan changes.

State of panels
---------------
Panels call ``controller.register_state_provider(name, get_state, set_state)`` and
``controller.notify_state_changed()`` after their state changed; the manager reads
``controller.state_providers`` for every snapshot.

``get_state() -> dict`` returns the panel's state for the current scan: str keys; values
JSON-able (dict/list/str/int/float/bool/None) and numpy arrays anywhere inside (stored
compressed, :mod:`.state_codec`; they come back as numpy arrays with the same dtype and
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
bar, and the rest of the session is still saved / restored. State of a provider that is not
registered when a session is restored is kept and saved again unchanged.

Public API::

    install(controller, *, offer=True) -> SessionManager
    SessionManager.snapshot() -> Session; .apply(session, volume); .shutdown(clean=True)
    session_files.save_session_as(manager, path=None) / open_session(manager, path) /
        restore_session(manager, path_or_slot)                    -> WorkerHandle | None
    recovery_dialog.offer_recovery(manager, items=None) -> RecoveryDialog | None (not blocking)
    recovery_dialog.recoverable(manager) -> list[RecoverableSession]
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QLabel

from .. import config
from ..core import autosave as _autosave
from ..core.autosave_slots import discard as discard_slot
from ..core.labels import LabelTable
from ..core.session import ScanRef, Session, read_session_summary
from ..core.sparse_labels import copy_labelled
from ..errors import MedsamGuiError, SessionError
from . import recovery_dialog
from .session_menu import install_menu
from .state_codec import decode_state, encode_state
from .undo import DEFAULT_BUDGET_BYTES, apply_history_budget

log = logging.getLogger(__name__)

AUTOSAVE_INTERVAL_S = 3.0  # <= 5 s: with the 1-s poll, a crash loses at most ~10 s of work
POLL_MS = 1000
UNDO_BUDGET_SETTING = "undo_memory_budget_mb"


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
        controller.state_changed.connect(self.changed)
        self.notice = QLabel("")
        self.notice.setStyleSheet(
            "QLabel { background: #b00020; color: white; padding: 1px 6px; border-radius: 3px; }")
        self.notice.setVisible(False)
        if controller.window is not None:
            controller.window.qt_window.statusBar().addPermanentWidget(self.notice)
        controller.add_shutdown_hook(self.shutdown)
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
        for name, (get_state, _set) in list(self.controller.state_providers.items()):
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
                    pr = encode_state(dict(pr), f"{name}.prompts")
                    prompts.update(pr)
                    entry["prompt_keys"] = list(pr)
                entry["state"] = encode_state(state, name)
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
        # only the labelled box is copied (the rest stays untouched zero pages): ~10 ms and a few
        # MiB instead of a 150 MiB memcpy for a 512 x 512 x 300 scan
        labels = copy_labelled(c.source_labels())
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
                    discard_slot(slot)
                except SessionError as err:
                    log.warning("could not discard recovered slot %s: %s", slot, err)

    # -- lifecycle ----------------------------------------------------------------------------
    def shutdown(self, clean: bool = True) -> None:
        """Stop autosaving; ``clean`` deletes this instance's slot (nothing to recover)."""
        if self._closed:
            return
        self._closed = True
        self.timer.stop()
        self.autosave.close(clean=clean)

    # -- restore ------------------------------------------------------------------------------
    def _set_provider_state(self, name: str, entry: dict) -> None:
        provider = self.controller.state_providers.get(name)
        if provider is None:
            self._orphan_states[name] = entry
            return
        try:
            state = decode_state(entry.get("state", {}))
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


def install(controller, *, offer: bool = True) -> SessionManager:
    """Set up autosave, recovery, the session menu entries and the undo budget.

    With ``offer``, crashed runs' autosaves are offered right after start (from the event
    loop, :func:`~.recovery_dialog.offer_recovery`).
    """
    mgr = SessionManager(controller)
    if controller.window is not None:
        install_menu(mgr, controller.window)
    if offer:
        try:
            items = recovery_dialog.recoverable(mgr)
        except Exception:  # recovery must never stop the app from starting
            log.exception("listing recoverable sessions failed")
            items = []
        if items:
            QTimer.singleShot(0, lambda: recovery_dialog.offer_recovery(mgr, items))
    return mgr
