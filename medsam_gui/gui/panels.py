"""The panels :func:`medsam_gui.app.build_app` creates, kept as ``MainWindow.panels``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Panels:
    """``session`` (:class:`~medsam_gui.gui.session.SessionManager`), ``medsam``
    (:class:`~medsam_gui.gui.medsam_panel.MedSAMPanel`), ``measurements`` (its
    :class:`~medsam_gui.gui.measurements_panel.MeasurementsPanel`), ``universeg``
    (:class:`~medsam_gui.gui.universeg_panel.UniversegPanel`) and ``auto``
    (:class:`~medsam_gui.gui.auto_panel.AutoPanel`); None when not installed."""

    session: Any = None
    medsam: Any = None
    measurements: Any = None
    universeg: Any = None
    auto: Any = None
