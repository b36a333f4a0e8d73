"""The run and review widgets of the model docks (Auto-segment, UniverSeg): the run's progress
bar, the proposal's summary line and its list of check-box items."""

from __future__ import annotations

from qtpy.QtWidgets import QLabel, QListWidget, QProgressBar


def progress_bar() -> QProgressBar:
    """A progress bar, hidden until a run starts."""
    bar = QProgressBar()
    bar.setVisible(False)
    return bar


def proposal_label() -> QLabel:
    """The proposal's summary, word-wrapped; "No proposal." until a run proposes."""
    label = QLabel("No proposal.")
    label.setWordWrap(True)
    return label


def proposal_list(tip: str = "") -> QListWidget:
    """The proposal's items (check boxes), at least 100 px high; ``tip``: its tooltip."""
    lst = QListWidget()
    lst.setMinimumHeight(100)
    if tip:
        lst.setToolTip(tip)
    return lst
