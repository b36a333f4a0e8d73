"""The MedSAM dock's box-engine choice (mixed into ``gui.medsam_panel.MedSAMPanel``): MedSAM
ViT-B or LiteMedSAM, an :class:`~medsam_gui.gui.engine_loader.EngineLoader` for each, the
default of ``models.box_engines`` (LiteMedSAM on a machine without CUDA when installed), and
switching engines while a scan is open.
"""

from __future__ import annotations

from ..errors import MedsamGuiError
from ..models.box_engines import BOX_ENGINES, default_box_engine
from .engine_loader import LOADERS


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class PanelEngineChoiceMixin:
    """Needs the panel's ``controller``, ``settings``, ``model_box``, ``model_label``, ``service``,
    ``segmentation``, ``engine_name``, ``_engine``, ``_save``, ``_dialog_parent`` and ``set_engine``."""

    def _make_loaders(self) -> dict:
        options = lambda: (self.model_box.device, self.model_box.precision)  # noqa: E731
        loaders = {name: cls(self.controller, self._dialog_parent, options, parent=self) for name, cls in LOADERS.items()}
        for loader in loaders.values():
            loader.loading.connect(lambda name, ld=loader: self._on_loading(ld, name))
            loader.loaded.connect(lambda engine, ld=loader: self._on_loaded(ld, engine))
            loader.failed.connect(lambda ld=loader: self._on_loaded(ld, None))
        return loaders

    @property
    def loader(self):
        """The EngineLoader of the chosen engine."""
        return self.loaders[self.engine_name]

    def _initial_engine(self) -> str:
        saved = str(self.settings["engine"])
        if saved in BOX_ENGINES:
            return saved
        from ..models import weights as manager

        return default_box_engine(cuda=_cuda_available, installed=lambda name: manager.resolve(name) is not None)

    def choose_engine(self, name: str) -> None:
        """Use box engine ``name`` ("medsam" or "litemedsam"): the other is unloaded and this one
        loaded when a scan is open (the weights dialog opens when it is not installed)."""
        if name not in BOX_ENGINES:
            raise MedsamGuiError(f"unknown engine {name!r}; choose one of {', '.join(BOX_ENGINES)}")
        if self.model_box.engine != name:
            self.model_box.show_engine(name)
            self._save("engine", name)
        if name == self.engine_name and (self._engine is not None or self.loader.busy):
            return
        self.engine_name = name
        self.service.apply_settings(**self.model_box.embed_settings())
        if self._engine is not None:
            self.set_engine(None)
        if self.controller.volume is not None and self.segmentation.segmenter is None:
            self.loader.ensure()

    def _on_loading(self, loader, file_name: str) -> None:
        if loader is self.loader:
            self.model_label.setText(f"Loading {loader.TITLE} from {file_name}…")

    def _on_loaded(self, loader, engine) -> None:
        if loader is not self.loader:  # the user chose the other engine meanwhile
            return
        if engine is None:
            self.model_label.setText(f"{loader.TITLE}: weights not loaded")
        else:
            self.set_engine(engine)
