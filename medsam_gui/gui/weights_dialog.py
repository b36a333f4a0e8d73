"""The "MedSAM weights" dialog: explains where the weights come from, downloads them (with a
progress bar, cancellable, off the GUI thread) or lets the user choose a file they already
have (validated off the GUI thread; a wrong file shows the CheckpointError message and the
user can try again). A model with a licence (``KnownModel.licence``) shows it, and Download stays
disabled until the user ticks "I accept" (remembered: ``weights.accept_licence``). The choice is remembered by the model manager
(:mod:`medsam_gui.models.weights`, settings key ``"weights"``).

``ask_weights_file`` is a module-level function so tests replace it with ``monkeypatch``.
The dialog is not blocking: open it with ``dialog.open()`` (window-modal) and listen to
``weights_ready(Path)``; ``exec()`` works too.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDialog,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import config
from ..errors import MedsamGuiError
from . import dialogs

WEIGHTS_FILTER = "PyTorch weights (*.pth *.pt *.bin *.ckpt);;All files (*)"


class DownloadCancelled(MedsamGuiError):
    """The user cancelled the download (no file was kept)."""


def ask_weights_file(parent: QWidget | None, title: str = "Choose model weights") -> str | None:
    """File picker for a weights file; returns the path or None."""
    start = config.get_setting("last_dir")
    path, _ = QFileDialog.getOpenFileName(parent, title, start if isinstance(start, str) else "", WEIGHTS_FILTER)
    return path or None


def _human_mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1024 * 1024):.0f} MiB"


class WeightsDialog(QDialog):
    """Get MedSAM (or another known model's) weights.

    Signals: ``weights_ready(object)`` with the Path of usable, validated weights;
    ``failed(str)`` with the message of a failed attempt (the dialog stays open).
    Attributes: ``path`` (Path | None, set on success), ``error_label``, ``progress``,
    ``download_button``, ``choose_button``, ``cancel_download_button``, ``close_button``,
    ``licence_label`` / ``licence_check`` (None without a licence), ``busy`` (a download or
    validation runs).
    """

    weights_ready = Signal(object)
    failed = Signal(str)
    _progress_sig = Signal(object, object)
    _finished_sig = Signal(object, object)  # (path | None, exception | None)

    def __init__(self, parent: QWidget | None = None, model_name: str = "medsam_vit_b", reason: str = "") -> None:
        super().__init__(parent)
        from ..models import weights as manager

        self._manager = manager
        self.model = manager.get_model(model_name)
        self.path: Path | None = None
        self.busy = False
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.setWindowTitle(f"{self.model.title} weights")
        self.setMinimumWidth(520)

        m = self.model
        current = manager.resolve(m.name)
        url = manager.model_url(m.name)
        lines = []
        if reason:
            lines.append(f"<p><b>{html.escape(reason)}</b></p>")
        lines.append(
            f"<p>{html.escape(m.title)} needs its weights file <code>{html.escape(m.filename)}</code> "
            f"(about {m.approx_mib} MiB). It is published by the model's authors: "
            f"{html.escape(m.source)}.</p>"
            f"<p>Download it here (from <a style='color: {dialogs.link_color(self).name()}' "
            f"href='{html.escape(url)}'>{html.escape(url)}</a>, checked "
            f"{'by MD5' if m.md5 else 'by SHA-256' if m.sha256 else 'by loading it'}), or choose the file if "
            f"you already have it. Files are only read as plain weights, never executed.</p>"
        )
        if current is not None:
            lines.append(f"<p>Now in use: <code>{html.escape(str(current))}</code></p>")
        self.info_label = QLabel("".join(lines))
        self.info_label.setWordWrap(True)
        self.info_label.setTextFormat(Qt.TextFormat.RichText)
        self.info_label.setOpenExternalLinks(True)
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)

        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("QLabel { color: #e04040; }")
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setVisible(False)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel_download_button = QPushButton("Cancel download")
        self.cancel_download_button.setVisible(False)
        self.cancel_download_button.clicked.connect(self.cancel_download)

        self.licence_label = self.licence_check = None
        licence_box = None
        if m.licence is not None:
            licence_box = QGroupBox("Licence of the weights")
            box = QVBoxLayout(licence_box)
            link = f" <a href='{html.escape(m.licence_url)}'>{html.escape(m.licence_url)}</a>" if m.licence_url else ""
            self.licence_label = QLabel(f"<p>{html.escape(m.licence)}{link}</p>")
            self.licence_label.setWordWrap(True)
            self.licence_label.setTextFormat(Qt.TextFormat.RichText)
            self.licence_label.setOpenExternalLinks(True)
            self.licence_check = QCheckBox("I accept these terms")
            self.licence_check.setChecked(manager.licence_accepted(m.name))
            self.licence_check.toggled.connect(lambda _on: self._set_busy(self.busy, self.status_label.text()))
            box.addWidget(self.licence_label)
            box.addWidget(self.licence_check)

        self.download_button = QPushButton(f"Download ({m.approx_mib} MiB)")
        self.download_button.clicked.connect(lambda _=False: self.start_download())
        self.choose_button = QPushButton("Choose file…")
        self.choose_button.clicked.connect(lambda _=False: self.choose_file())
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.info_label)
        if licence_box is not None:
            layout.addWidget(licence_box)
        layout.addWidget(self.error_label)
        layout.addWidget(self.status_label)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_download_button)
        layout.addLayout(row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.choose_button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        layout.addLayout(buttons)

        self._progress_sig.connect(self._on_progress)
        self._finished_sig.connect(self._on_finished)
        self._set_busy(False)

    # ------------------------------------------------------------------ state
    def _set_busy(self, busy: bool, text: str = "") -> None:
        self.busy = busy
        accepted = self.licence_check is None or self.licence_check.isChecked()
        self.download_button.setEnabled(not busy and accepted)
        self.download_button.setToolTip("" if accepted else "Accept the licence above first.")
        self.choose_button.setEnabled(not busy)
        self.status_label.setText(text)
        self.progress.setVisible(busy)
        if busy:
            self.progress.setRange(0, 0)

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))
        self.adjustSize()  # grow to the wrapped text: the explanation above stays readable

    def _run(self, fn, text: str) -> None:
        self.show_error("")
        self._set_busy(True, text)

        def target():
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - shown in the dialog
                self._finished_sig.emit(None, exc)
            else:
                self._finished_sig.emit(result, None)

        self._thread = threading.Thread(target=target, name="medsam-weights", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a running download/validation thread ends (tests, scripts)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

    # ------------------------------------------------------------------ choose a file
    def choose_file(self, path: str | Path | None = None) -> None:
        """Use a weights file the user has: ``path`` or ask with a file picker. It is validated
        (loaded strictly) off the GUI thread and remembered by the model manager."""
        if self.busy:
            return
        if path is None:
            path = ask_weights_file(self, f"Choose {self.model.title} weights ({self.model.filename})")
            if not path:
                return
        src = Path(path).expanduser()
        try:
            config.set_setting("last_dir", str(src.parent))
        except OSError:
            pass
        name = self.model.name
        manager = self._manager
        self._run(lambda: manager.import_weights(name, src, copy=False), f"Checking {src.name}…")

    # ------------------------------------------------------------------ download
    def start_download(self, url: str | None = None) -> None:
        """Download the weights from the official source (or ``url``) off the GUI thread."""
        if self.busy:
            return
        name = self.model.name
        if self.licence_check is not None:
            if not self.licence_check.isChecked():
                self.show_error("Read the licence of the weights and tick \"I accept these terms\" to download them.")
                return
            self._manager.accept_licence(name)
        self._cancel.clear()
        manager = self._manager

        def progress(done: int, total) -> None:
            if self._cancel.is_set():
                raise DownloadCancelled("The download was cancelled; nothing was kept.")
            self._progress_sig.emit(done, total)

        self._run(lambda: manager.download(name, url=url, progress=progress), f"Downloading {self.model.filename}…")
        self.cancel_download_button.setVisible(True)

    def cancel_download(self) -> None:
        """Stop the download at its next block; the partial file is deleted."""
        self._cancel.set()
        self.status_label.setText("Cancelling…")

    def _on_progress(self, done, total) -> None:
        if not self.busy:
            return
        if total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(done, total) / total))
            self.status_label.setText(f"Downloading {self.model.filename}: {_human_mib(done)} of {_human_mib(total)}")
        else:
            self.progress.setRange(0, 0)
            self.status_label.setText(f"Downloading {self.model.filename}: {_human_mib(done)}")

    def _on_finished(self, path, exc) -> None:
        self._set_busy(False)
        self.cancel_download_button.setVisible(False)
        if exc is not None:
            if isinstance(exc, MedsamGuiError):
                message = str(exc)
            else:
                message = f"Unexpected error: {type(exc).__name__}: {exc}"
            self.show_error(message)
            if isinstance(exc, DownloadCancelled):
                self.status_label.setText("Download cancelled.")
            self.failed.emit(message)
            return
        self.path = Path(path)
        self.status_label.setText(f"Using {self.path}")
        self.weights_ready.emit(self.path)
        self.accept()

    def reject(self) -> None:
        if self.busy:
            self.cancel_download()
        super().reject()
