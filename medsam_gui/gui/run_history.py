"""ONE undo step for a long model run whose slices are written as they arrive.

A 3D propagation runs for minutes. Its slices are written to the labels layer one by one
(``Controller.write_slice_mask``), so ``labels_changed`` — autosave, measurements, the
UniverSeg support list — follows the run as it goes, while the undo history keeps ONE step
for the whole run:

- each write lands in napari's history as its own step (inside ``Controller.edit_group``);
  :meth:`RunHistory.write` takes it off the top again and merges its atoms into the run's step,
  which is put back on top of the undo history (the run is the newest edit);
- edits the user makes meanwhile (brush strokes, other tools) stay their own steps, below the
  run's: undoing the run leaves them, undoing them leaves the run. Voxels a user edit changed
  after the run had written them belong to that edit: they are taken out of the run's step;
- a write is refused (``False``) while a brush stroke is in progress (napari groups a stroke's
  atoms until the mouse is released): the caller keeps the slice and writes it later;
- when the user undoes the run while it is still going, the next slices start a new step.

Napari history internals used: ``Labels._undo_history`` (a deque of steps, each a list of
atoms: ``(indices, old values, new values)`` tuples or napari's masked paint atoms with
``slice_key`` / ``mask``) and ``Labels._block_history`` (True during a stroke).
"""

from __future__ import annotations

import numpy as np


def _flat_voxels(atom, shape) -> np.ndarray:
    """Flat indices (into an array of ``shape``) of the voxels one history atom changed."""
    key = getattr(atom, "slice_key", None)
    if key is not None:  # napari's masked paint atom: a bounding box and a mask inside it
        starts = [s.start or 0 for s in key]
        stops = [s.stop if s.stop is not None else n for s, n in zip(key, shape)]
        mask = atom.mask if atom.mask is not None else np.ones([b - a for a, b in zip(starts, stops)], bool)
        coords = [c + a for c, a in zip(np.nonzero(mask), starts)]
        return np.ravel_multi_index(coords, shape)
    indices = atom[0]
    return np.ravel_multi_index(tuple(np.asarray(i) for i in indices), shape)


def _without(step: list, touched: np.ndarray, shape) -> list:
    """``step``'s ``(indices, old, new)`` atoms minus the voxels in ``touched`` (flat indices)."""
    out = []
    for indices, old, new in step:
        keep = ~np.isin(np.ravel_multi_index(tuple(indices), shape), touched)
        if not keep.any():
            continue
        new = new[keep] if isinstance(new, np.ndarray) and new.ndim else new
        out.append((tuple(np.asarray(i)[keep] for i in indices), np.asarray(old)[keep], new))
    return out


class RunHistory:
    """The undo step of one model run on ``controller``'s labels layer (see the module docs).

    ``write(axis, index, mask2d, label, overwrite_other=False) -> int | None``: write one display
    slice like ``Controller.write_slice_mask`` as part of the run's step; None (nothing written)
    while a brush stroke is in progress. ``steps_written``: slices written so far.
    """

    def __init__(self, controller) -> None:
        self.controller = controller
        self._step: list | None = None
        self.steps_written = 0

    @property
    def stroke_in_progress(self) -> bool:
        layer = self.controller.labels_layer
        return layer is not None and bool(layer._block_history)

    def write(self, axis: int, index: int, mask2d: np.ndarray, label: int, *,
              overwrite_other: bool = False) -> int | None:
        c = self.controller
        if self.stroke_in_progress:
            return None
        layer = c.labels_layer
        undo = layer._undo_history
        top = undo[-1] if undo else None
        with c.edit_group():
            changed = c.write_slice_mask(axis, index, mask2d, label, overwrite_other=overwrite_other)
        self.steps_written += 1
        if not undo or undo[-1] is top:
            return changed  # nothing changed on that slice
        atoms = undo.pop()
        self._merge(undo, atoms, layer.data.shape)
        return changed

    def _merge(self, undo, atoms: list, shape) -> None:
        step = self._step
        pos = next((i for i in range(len(undo) - 1, -1, -1) if undo[i] is step), None) if step is not None else None
        if pos is None:  # first write, or the run so far was undone / dropped by the undo budget
            merged = list(atoms)
        else:
            tail = [undo.pop() for _ in range(len(undo) - 1 - pos)][::-1]
            undo.pop()
            if tail:
                touched = np.unique(np.concatenate([_flat_voxels(a, shape) for t in tail for a in t]))
                step = _without(step, touched, shape)
            for t in tail:
                undo.append(t)
            merged = step + list(atoms)
        undo.append(merged)
        self._step = merged
