"""Which slices a live (unpinned) UniverSeg support list holds, and the examples already built.

The live list follows the labels: the slices where the active label is drawn, minus those the
user removed (``excluded``), plus those added by hand (``added``, possibly without the label:
negative examples). Numpy-free bookkeeping; the examples are
:class:`~medsam_gui.core.support_set.SupportSlice` built by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

from .support_set import SupportSlice


class LiveSupport:
    """The live selection (slice indices along one axis) and a cache of built examples."""

    def __init__(self) -> None:
        self.excluded: set[int] = set()
        self.added: set[int] = set()
        self._cache: dict[Hashable, SupportSlice] = {}

    def reset(self) -> None:
        """Forget the user's removals and additions (new scan, label or view)."""
        self.excluded.clear()
        self.added.clear()

    def wanted(self, labeled: Iterable[int]) -> list[tuple[int, str]]:
        """``[(slice index, origin)]`` sorted: origin "labels" for a labeled slice, else "added"."""
        lab = {int(i) for i in labeled}
        return [(i, "labels" if i in lab else "added") for i in sorted((lab - self.excluded) | self.added)]

    def add(self, index: int) -> None:
        """Put slice ``index`` (back) in the list."""
        index = int(index)
        if index in self.excluded:
            self.excluded.discard(index)
        else:
            self.added.add(index)

    def remove(self, index: int) -> None:
        """Take slice ``index`` out of the list."""
        index = int(index)
        if index in self.added:
            self.added.discard(index)
        else:
            self.excluded.add(index)

    # -- built examples -------------------------------------------------------------------
    def cached(self, key: Hashable, build: Callable[[], SupportSlice]) -> SupportSlice:
        """The example stored under ``key`` (everything it depends on), built once."""
        item = self._cache.get(key)
        if item is None:
            item = self._cache[key] = build()
        return item

    def prune(self, live_keys: Iterable[Hashable], *, floor: int = 16) -> None:
        """Drop cached examples not in ``live_keys`` once the cache holds over 4x what is live."""
        live = set(live_keys)
        if len(self._cache) > 4 * max(floor, len(live)):
            self._cache = {k: v for k, v in self._cache.items() if k in live}

    def clear_cache(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        """Number of cached examples."""
        return len(self._cache)
