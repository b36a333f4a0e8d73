"""Loading a box-prompt engine's weights for the MedSAM dock: find them with the model manager,
build the engine off the GUI thread (``controller.run_worker``), and open the weights dialog
when there are none or they cannot be used. :class:`EngineLoader` loads MedSAM ViT-B,
:class:`LiteMedSAMLoader` LiteMedSAM; ``LOADERS`` maps the engine names of
``models.box_engines`` to them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QWidget

from ..errors import CheckpointError

MODEL_NAME = "medsam_vit_b"


class EngineLoader(QObject):
    """``options()`` gives the (device, precision) to load with. Signals: ``loading(str)`` (file
    name), ``loaded(engine)``, ``failed()``. ``dialog``: the last weights dialog (or None);
    ``busy``: a load is running.

    Subclasses load another model: override ``MODEL_NAME`` / ``TITLE`` (dialog and messages),
    :meth:`installed_weights` and :meth:`build` (see ``gui.medsam2_run.MedSAM2Loader``)."""

    MODEL_NAME = MODEL_NAME
    TITLE = "MedSAM"
    ENGINE = "medsam"

    loading = Signal(str)
    loaded = Signal(object)
    failed = Signal()

    def __init__(self, controller, dialog_parent: Callable[[], QWidget], options: Callable[[], tuple[str, str]],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.dialog_parent = dialog_parent
        self.dialog = None
        self._handle = None
        self.options = options

    @property
    def busy(self) -> bool:
        return self._handle is not None and not self._handle.finished

    @classmethod
    def installed_weights(cls) -> Path | None:
        from ..models import weights as manager

        return manager.resolve(cls.MODEL_NAME)

    def ensure(self, reason: str = "") -> None:
        """Start loading the installed weights, or ask for them when there are none."""
        if self.busy:
            return
        path = self.installed_weights()
        if path is None:
            self.show_dialog(reason or f"No {self.TITLE} weights were found on this computer.")
        else:
            self.load(path)

    def load(self, path: str | Path | None = None):
        """Load MedSAM from ``path`` (default: the model manager's file) off the GUI thread with
        ``options()``; returns the WorkerHandle (None when there are no weights)."""
        path = Path(path) if path is not None else self.installed_weights()
        if path is None:
            self.show_dialog(f"No {self.TITLE} weights were found on this computer.")
            return None
        device, precision = self.options()
        self.loading.emit(path.name)
        build = self.build

        def work():
            return build(path, device, precision)

        def failed(exc):
            self.failed.emit()
            if isinstance(exc, CheckpointError):
                self.show_dialog(f"The {self.TITLE} weights could not be used: {exc}")
            else:
                self.controller.show_error(exc, title=f"Could not load {self.TITLE}")

        self._handle = self.controller.run_worker(
            work, on_done=self.loaded.emit, on_error=failed, description=f"Loading {self.TITLE} ({path.name})…",
            cancellable=False)
        return self._handle

    @staticmethod
    def build(path: Path, device: str, precision: str):
        """The engine on ``path`` (runs on the worker thread)."""
        from ..models.medsam import MedSAMEngine

        return MedSAMEngine(path, device=device, precision=precision)

    def show_dialog(self, reason: str = ""):
        """Open the weights dialog (non-blocking); accepted weights are loaded at once."""
        from .weights_dialog import WeightsDialog

        if self.dialog is not None:
            try:
                if self.dialog.isVisible():
                    self.dialog.raise_()
                    return self.dialog
            except RuntimeError:  # the dialog was deleted
                pass
        dlg = WeightsDialog(self.dialog_parent(), self.MODEL_NAME, reason)
        dlg.weights_ready.connect(lambda p: self.load(p))
        self.dialog = dlg
        dlg.open()
        return dlg


class LiteMedSAMLoader(EngineLoader):
    """:class:`EngineLoader` for LiteMedSAM (weights dialog of ``litemedsam``)."""

    MODEL_NAME = "litemedsam"
    TITLE = "LiteMedSAM"
    ENGINE = "litemedsam"

    @staticmethod
    def build(path: Path, device: str, precision: str):
        from ..models.litemedsam import LiteMedSAMEngine

        return LiteMedSAMEngine(path, device=device, precision=precision)


LOADERS = {loader.ENGINE: loader for loader in (EngineLoader, LiteMedSAMLoader)}
