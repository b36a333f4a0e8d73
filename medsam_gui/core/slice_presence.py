"""Which slices of a label map hold a label value, kept current one edited slice at a time.

Finding the labeled slices of a 512 x 512 x 300 map scans all of it (tens of ms); after a box
or a propagation step only one slice changed, and looking at that slice is enough. No Qt.
"""

from __future__ import annotations

import numpy as np

from .orientation import plane


class SlicePresence:
    """Per (axis, value): whether each slice along ``axis`` holds ``value``.

    Tell it about edits with :meth:`changed` (one slice, or None: anything); :meth:`slices`
    answers from what it knows, looking again only at the slices edited since (or at the whole
    map after an unknown edit, or when given another array)."""

    def __init__(self) -> None:
        self._array_id: int | None = None
        self._rows: dict[tuple[int, int], np.ndarray] = {}
        self._edited: set[tuple[int, int]] = set()

    def changed(self, edited: tuple[int, int] | None = None) -> None:
        """Slice ``edited`` = (axis, index) was rewritten; None: the map changed anywhere."""
        if edited is None:
            self._rows.clear()
            self._edited.clear()
        else:
            self._edited.add((int(edited[0]), int(edited[1])))

    def slices(self, labels: np.ndarray, value: int, axis: int) -> list[int]:
        """Indices along ``axis`` of the slices of ``labels`` where ``value`` is drawn."""
        if id(labels) != self._array_id:
            self._array_id = id(labels)
            self.changed(None)
        self._catch_up(labels)
        key = (int(axis), int(value))
        row = self._rows.get(key)
        if row is None or len(row) != labels.shape[key[0]]:
            other = tuple(a for a in range(labels.ndim) if a != key[0])
            row = self._rows[key] = np.any(labels == key[1], axis=other)
        return np.flatnonzero(row).tolist()

    def _catch_up(self, labels: np.ndarray) -> None:
        edited, self._edited = self._edited, set()
        for key in list(self._rows):
            axis, value = key
            for e_axis, index in edited:
                if e_axis != axis:  # an edit across these slices: look at them all again
                    del self._rows[key]
                    break
                self._rows[key][index] = bool(np.any(plane(labels, index, axis) == value))
