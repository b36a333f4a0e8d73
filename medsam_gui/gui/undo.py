"""Undo/redo for the labels layer limited by memory, not by a step count.

napari's :class:`napari.layers.Labels` keeps its undo and redo history in two
``collections.deque(maxlen=Labels._history_limit)`` (100 steps): step 101 silently drops the
oldest edit. :func:`apply_history_budget` turns that limit into a *memory budget* on one layer
instance (napari itself is not patched):

- the layer's ``_undo_history`` / ``_redo_history`` become :class:`HistoryDeque` objects
  (deques without a length limit that keep the byte count of what they hold);
- after every append to the undo history the oldest undo steps are dropped while the
  undo + redo history together hold more than ``budget_bytes`` (the newest step is always
  kept, even when it alone is larger than the budget);
- the layer's ``_reset_history`` (napari calls it when the data are replaced; the controller
  calls it after ``set_volume`` / ``set_labels``) is wrapped on the instance so the new, empty
  history is budgeted again;
- ``layer._history_limit`` is set on the instance to ``sys.maxsize`` so that a plain deque
  napari might create elsewhere has no step limit either.

Every kind of label edit lands in this one history: brush / eraser / fill strokes (napari's
``_MaskedPaintAtom``), ``Controller.write_slice_mask`` (``data_setitem`` 3-tuples: index arrays,
old values, new values), ``Controller.edit_group`` (one step of many atoms: 3D propagation,
UniverSeg acceptances). The size of a step is the sum of the ``nbytes`` of the numpy arrays in
its atoms plus :data:`ATOM_OVERHEAD_BYTES` per atom.

Public API::

    apply_history_budget(layer, budget_bytes) -> HistoryBudget   (idempotent; re-apply freely)
    history_budget(layer) -> HistoryBudget | None
    history_nbytes(layer) -> int              (undo + redo bytes)
    step_nbytes(step) -> int
    HistoryBudget: .budget_bytes, .dropped_steps, .dropped_bytes, .nbytes, .n_undo, .n_redo
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any, Iterable

import numpy as np

DEFAULT_BUDGET_BYTES = 1 << 30  # 1 GiB
ATOM_OVERHEAD_BYTES = 200
_ATTR = "_medsam_history_budget"


def _part_nbytes(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (tuple, list)):
        return sum(_part_nbytes(o) for o in obj)
    return 0


def _atom_nbytes(atom: Any) -> int:
    if isinstance(atom, tuple):  # data_setitem: (indices, old values, new values)
        return ATOM_OVERHEAD_BYTES + _part_nbytes(atom)
    # napari's _MaskedPaintAtom (slice_key, mask, old_values, new_value) or anything else
    n = ATOM_OVERHEAD_BYTES
    for name in ("mask", "old_values", "new_value", "slice_key"):
        n += _part_nbytes(getattr(atom, name, None))
    return n


def step_nbytes(step: Iterable[Any]) -> int:
    """Bytes held by one history step (a list of atoms)."""
    try:
        return sum(_atom_nbytes(a) for a in step)
    except TypeError:
        return _atom_nbytes(step)


class HistoryDeque(deque):
    """A deque of history steps that knows how many bytes it holds (``nbytes``).

    Only the methods napari uses on its history (``append``, ``pop``, ``popleft``, ``clear``)
    keep the count exact; ``owner`` (a :class:`HistoryBudget`) is told after each append.
    """

    def __init__(self, iterable: Iterable[Any] = (), owner: "HistoryBudget | None" = None) -> None:
        super().__init__()
        self.nbytes = 0
        self.owner = owner
        for item in iterable:
            deque.append(self, item)
            self.nbytes += step_nbytes(item)

    def append(self, item) -> None:  # noqa: D401 - deque API
        deque.append(self, item)
        self.nbytes += step_nbytes(item)
        if self.owner is not None:
            self.owner._appended(self)

    def pop(self):
        item = deque.pop(self)
        self.nbytes = max(0, self.nbytes - step_nbytes(item))
        return item

    def popleft(self):
        item = deque.popleft(self)
        self.nbytes = max(0, self.nbytes - step_nbytes(item))
        return item

    def clear(self) -> None:
        deque.clear(self)
        self.nbytes = 0

    def __reduce__(self):  # copy/pickle as a plain deque of the same items
        return (deque, (list(self),))


class HistoryBudget:
    """The memory budget of one Labels layer's undo/redo history (see module docs)."""

    def __init__(self, layer, budget_bytes: int) -> None:
        self.layer = layer
        self.budget_bytes = int(budget_bytes)
        self.dropped_steps = 0
        self.dropped_bytes = 0

    # -- state ----------------------------------------------------------------------------
    @property
    def undo(self) -> deque:
        return self.layer._undo_history

    @property
    def redo(self) -> deque:
        return self.layer._redo_history

    @property
    def nbytes(self) -> int:
        return sum(getattr(d, "nbytes", None) if isinstance(d, HistoryDeque) else
                   sum(step_nbytes(s) for s in d) for d in (self.undo, self.redo))

    @property
    def n_undo(self) -> int:
        return len(self.undo)

    @property
    def n_redo(self) -> int:
        return len(self.redo)

    # -- installing -----------------------------------------------------------------------
    def install(self) -> None:
        """Make the layer's current histories budgeted deques (keeping their steps)."""
        layer = self.layer
        for attr in ("_undo_history", "_redo_history"):
            d = getattr(layer, attr, None)
            if isinstance(d, HistoryDeque) and d.owner is self:
                continue
            setattr(layer, attr, HistoryDeque(d if d is not None else (), owner=self))
        self.trim()

    def trim(self) -> None:
        """Drop the oldest undo steps while the history exceeds the budget (keeps the newest)."""
        undo = self.undo
        if not isinstance(undo, HistoryDeque):
            return
        redo_bytes = self.redo.nbytes if isinstance(self.redo, HistoryDeque) else 0
        while len(undo) > 1 and undo.nbytes + redo_bytes > self.budget_bytes:
            before = undo.nbytes
            undo.popleft()
            self.dropped_steps += 1
            self.dropped_bytes += before - undo.nbytes

    def _appended(self, d: HistoryDeque) -> None:
        if d is self.undo:
            self.trim()


def history_budget(layer) -> HistoryBudget | None:
    """The budget applied to ``layer`` by :func:`apply_history_budget`, or None."""
    return getattr(layer, _ATTR, None)


def apply_history_budget(layer, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> HistoryBudget:
    """Give ``layer`` (a napari Labels layer) unlimited undo steps within ``budget_bytes``.

    Idempotent: calling it again only changes the budget (and trims to it). Existing undo and
    redo steps are kept. Returns the layer's :class:`HistoryBudget`.
    """
    if budget_bytes <= 0:
        raise ValueError(f"the undo memory budget must be positive, got {budget_bytes}")
    budget = history_budget(layer)
    if budget is None:
        budget = HistoryBudget(layer, budget_bytes)
        setattr(layer, _ATTR, budget)
        layer._history_limit = sys.maxsize  # instance attribute shadows napari's class constant
        original_reset = type(layer)._reset_history

        def _reset_history(event=None, _layer=layer, _budget=budget):
            original_reset(_layer, event)
            _budget.install()

        layer._reset_history = _reset_history
    budget.budget_bytes = int(budget_bytes)
    budget.install()
    return budget


def history_nbytes(layer) -> int:
    """Bytes held by ``layer``'s undo + redo history."""
    budget = history_budget(layer)
    if budget is not None:
        return budget.nbytes
    return sum(step_nbytes(s) for d in (layer._undo_history, layer._redo_history) for s in d)
