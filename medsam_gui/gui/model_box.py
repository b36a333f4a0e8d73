"""The MedSAM dock's "Model" group: the engine (MedSAM ViT-B or LiteMedSAM), precision, device,
background embedding settings and the weights button. Settings are kept in the dock's settings
dict and saved through its callback; "Then all slices" is kept per engine (LiteMedSAM embeds
the whole scan by default).
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QPushButton, QSpinBox, QWidget

from ..models.box_engines import BOX_ENGINES
from ..models.device import PRECISION_CHOICES

PRECISION_TIP = ("auto: bfloat16 on a GPU; 'fast' on the CPU, or bf16 for LiteMedSAM on CPUs with bf16 units\n"
                 "fp32: the official inference, bit for bit\n"
                 "fast: the official float32 numbers, ~1.7x faster on a CPU\n"
                 "int8: MedSAM ~1.9x faster on a CPU, masks agree with fp32 (Dice >= 0.98)\n"
                 "bf16: GPUs; LiteMedSAM's encoder ~1.8x and box decoder ~1.2x faster on CPUs with bf16 units (masks: Dice >= 0.99)\n"
                 "fp16: GPUs")


PREFETCH_ALL_KEY = {"medsam": "prefetch_all", "litemedsam": "prefetch_all_lite"}


class ModelBox(QGroupBox):
    """Signals: ``engine_chosen(str)`` (an engine name of ``models.box_engines``),
    ``engine_settings_changed()`` (device or precision: reload the engine),
    ``embed_settings_changed()`` (see :meth:`embed_settings`). ``settings``: the dock's dict with
    keys engine, precision, device, background, neighbours, prefetch_all, prefetch_all_lite;
    ``save(key, value)`` stores one. ``engine``: the engine shown (``show_engine`` sets it
    without a signal)."""

    engine_chosen = Signal(str)
    engine_settings_changed = Signal()
    embed_settings_changed = Signal()

    def __init__(self, settings: dict, save: Callable[[str, object], None], engine: str,
                 parent: QWidget | None = None) -> None:
        super().__init__("Model", parent)
        s = settings
        self._settings = settings
        self._save = save
        ml = QFormLayout(self)
        self.engine_combo = QComboBox()
        for name, info in BOX_ENGINES.items():
            self.engine_combo.addItem(info.choice_text, name)
        self.engine_combo.setToolTip("MedSAM ViT-B: the most accurate masks; its encoder takes seconds per slice "
                                     "on a CPU.\nLiteMedSAM: about 16x faster on a CPU, 3-5 % lower Dice; it embeds "
                                     "the whole scan in the background.")
        ml.addRow("Engine", self.engine_combo)
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["auto", "fp32", "fast", "int8", "bf16", "fp16"])
        self.precision_combo.setCurrentText(str(s["precision"]) if s["precision"] in PRECISION_CHOICES else "auto")
        self.precision_combo.setToolTip(PRECISION_TIP)
        self.device_combo = QComboBox()
        self._saved_device = str(s["device"])
        self.fill_devices(gpu=False)
        ml.addRow("Precision", self.precision_combo)
        ml.addRow("Device", self.device_combo)
        self.background_check = QCheckBox("Embed slices in the background")
        self.background_check.setChecked(bool(s["background"]))
        self.neighbours_spin = QSpinBox()
        self.neighbours_spin.setRange(0, 50)
        self.neighbours_spin.setValue(int(s["neighbours"]))
        self.neighbours_spin.setToolTip("Slices on each side of the current slice embedded ahead")
        self.prefetch_all_check = QCheckBox("Then all slices")
        ml.addRow(self.background_check)
        ml.addRow("Neighbours", self.neighbours_spin)
        ml.addRow(self.prefetch_all_check)
        self.weights_button = QPushButton()
        ml.addRow(self.weights_button)
        self.show_engine(engine)
        self.engine_combo.currentIndexChanged.connect(self._on_engine_chosen)
        self.precision_combo.currentTextChanged.connect(self._on_engine_settings)
        self.device_combo.currentTextChanged.connect(self._on_engine_settings)
        self.background_check.toggled.connect(self._on_embed_settings)
        self.neighbours_spin.valueChanged.connect(self._on_embed_settings)
        self.prefetch_all_check.toggled.connect(self._on_embed_settings)

    @property
    def engine(self) -> str:
        return str(self.engine_combo.currentData())

    def show_engine(self, name: str) -> None:
        """Show engine ``name`` with its "Then all slices" setting (no signals)."""
        for w in (self.engine_combo, self.prefetch_all_check):
            w.blockSignals(True)
        self.engine_combo.setCurrentIndex(max(0, self.engine_combo.findData(name)))
        self.prefetch_all_check.setChecked(bool(self._settings[PREFETCH_ALL_KEY[self.engine]]))
        for w in (self.engine_combo, self.prefetch_all_check):
            w.blockSignals(False)
        self.weights_button.setText(f"Load {BOX_ENGINES[self.engine].title} weights…")

    def _on_engine_chosen(self, _index: int) -> None:
        self._save("engine", self.engine)
        self.show_engine(self.engine)
        self.engine_chosen.emit(self.engine)
        self.embed_settings_changed.emit()

    @property
    def device(self) -> str:
        return self.device_combo.currentText() or "auto"

    @property
    def precision(self) -> str:
        return self.precision_combo.currentText() or "fp32"

    def embed_settings(self) -> dict:
        """``neighbours``, ``prefetch_all``, ``background`` as EmbeddingService.apply_settings takes them."""
        return {"neighbours": self.neighbours_spin.value(), "prefetch_all": self.prefetch_all_check.isChecked(),
                "background": self.background_check.isChecked()}

    def fill_devices(self, gpu: bool) -> None:
        """auto / cpu, and cuda when ``gpu`` (a loaded engine's torch sees one) or it was chosen before."""
        choices = ["auto", "cpu"] + (["cuda"] if gpu or self._saved_device == "cuda" else [])
        current = self.device_combo.currentText() or self._saved_device
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItems(choices)
        self.device_combo.setCurrentText(current if current in choices else "auto")
        self.device_combo.blockSignals(False)

    def _on_engine_settings(self, _text=None) -> None:
        self._save("precision", self.precision_combo.currentText())
        self._save("device", self.device_combo.currentText())
        self._saved_device = self.device_combo.currentText()
        self.engine_settings_changed.emit()

    def _on_embed_settings(self, _v=None) -> None:
        for key, value in self.embed_settings().items():
            self._save(PREFETCH_ALL_KEY[self.engine] if key == "prefetch_all" else key, value)
        self.embed_settings_changed.emit()
