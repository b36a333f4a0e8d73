"""Dock layout helpers: a section that folds away (:class:`CollapsibleSection`), the scroll area
for a dock's settings (:class:`SettingsScroll`) and :func:`dock_body`, which keeps a dock's
primary actions in a fixed strip outside that scroll area, so they are visible however short
the dock is."""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from .. import config


class CollapsibleSection(QWidget):
    """A titled section whose body folds away behind a header button (an arrow and the title).

    Put the section's widgets in ``body_layout`` (a QVBoxLayout). ``settings_key``: remember
    whether it is open in the settings (``config``) under that key. Signal ``toggled(bool)``.
    """

    toggled = Signal(bool)

    def __init__(self, title: str, *, expanded: bool = False, settings_key: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings_key = settings_key
        if settings_key is not None:
            expanded = bool(config.get_setting(settings_key, expanded))
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.header.setAutoRaise(True)
        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(8, 0, 0, 0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.header)
        layout.addWidget(self.body)
        self.header.toggled.connect(self._on_toggled)
        self.header.setChecked(expanded)
        self._show(expanded)

    @property
    def expanded(self) -> bool:
        return self.header.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        self.header.setChecked(bool(expanded))

    def _show(self, expanded: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.header.setToolTip(("Hide" if expanded else "Show") + f" {self.header.text().lower()}")
        self.body.setVisible(expanded)

    def _on_toggled(self, expanded: bool) -> None:
        self._show(expanded)
        if self._settings_key is not None:
            config.try_set_setting(self._settings_key, bool(expanded))
        self.toggled.emit(bool(expanded))


class SettingsScroll(QScrollArea):
    """The scroll area of a dock's settings: resizes its widget to its width, never scrolls
    sideways, no frame. The main window does not wrap a panel holding one in another."""

    def __init__(self, widget: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(widget)

    def minimumSizeHint(self):  # noqa: N802 - Qt naming
        """As wide as the settings need (measured now: fonts and style sheets change it), so
        the dock never cuts them off at the right; any height from 60 px."""
        hint = super().minimumSizeHint()
        widget = self.widget()
        if widget is not None:
            hint.setWidth(widget.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width() + 4)
        hint.setHeight(60)
        return hint


def dock_body(panel: QWidget, actions: QWidget, settings: QWidget, *, actions_on_top: bool = True) -> SettingsScroll:
    """Lay ``panel`` out as a fixed ``actions`` strip (top, or bottom) and ``settings`` in a
    :class:`SettingsScroll` taking the rest of the height; returns that scroll area."""
    scroll = SettingsScroll(settings)
    layout = QVBoxLayout(panel)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.setSpacing(4)
    actions.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
    widgets = (actions, scroll) if actions_on_top else (scroll, actions)
    for w in widgets:
        layout.addWidget(w, 1 if w is scroll else 0)
    return scroll
