"""A UniverSeg run in the viewer without Qt: what to segment, the batches, and the proposal
waiting for Accept / Reject.

Slices are taken along ``axis`` of (z, y, x) arrays (the GUI passes display-order arrays).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.support_set import SupportSet, labeled_slices
from . import incontext as ic


@dataclass
class LabelPlan:
    """One label of a run: ``targets`` to segment, ``protected`` = its labeled slices (never written)."""

    value: int
    targets: list[int]
    protected: list[int]


def labels_present(labels: np.ndarray) -> list[int]:
    """Label values (>= 1) drawn anywhere in ``labels`` (sorted)."""
    data = np.asarray(labels)
    if data.size == 0:
        return []
    counts = np.bincount(data.reshape(-1).astype(np.intp, copy=False))
    return [int(v) for v in np.flatnonzero(counts) if v > 0]


def plan_labels(labels: np.ndarray, values: Sequence[int], axis: int,
                z_range: tuple[int, int] | None) -> list[LabelPlan]:
    """A :class:`LabelPlan` per value of ``values`` that has something to segment: the range
    from its first to its last labeled slice, extended to ``z_range`` (inclusive), minus its
    labeled slices (:func:`~medsam_gui.models.incontext.plan_targets`)."""
    n = int(np.shape(labels)[axis])
    plans = []
    for v in values:
        prot = labeled_slices(labels, int(v), axis)
        targets = ic.plan_targets(n, prot, z_range=z_range)
        if targets:
            plans.append(LabelPlan(int(v), targets, prot))
    return plans


def used_positions(n: int, support_size: int, ensemble: int, device: str = "auto") -> set[int]:
    """Positions (0..n-1) of a support list of ``n`` examples that a run uses: every subset of
    :func:`~medsam_gui.models.incontext.choose_support_subsets`; ``support_size`` 0: the
    setting for ``device`` (:func:`~medsam_gui.models.incontext.default_support_size`)."""
    if n <= 0:
        return set()
    S = support_size if support_size > 0 else ic.default_support_size(device)
    return set().union(*map(set, ic.choose_support_subsets(range(n), S, ensemble)))


def iter_plans(volume: np.ndarray, labels: np.ndarray | None, plans: Sequence[LabelPlan], *,
               support: SupportSet | None, cancel: Callable[[], bool], **kwargs) -> Iterator[tuple]:
    """Run the plans one label after the other; yields ``(label value, BatchDone, done, total)``
    with ``done``/``total`` counted over all labels and returns "cancelled" or "done".

    ``support``: used for every label (None: each label's own labeled slices of ``labels``);
    ``kwargs``: the other keywords of :func:`~medsam_gui.models.incontext.iter_segment_rest`."""
    grand = sum(len(p.targets) for p in plans)
    offset = 0
    for p in plans:
        for ev in ic.iter_segment_rest(volume, labels, p.value, support=support, targets=p.targets,
                                       cancel=cancel, **kwargs):
            yield (p.value, ev, offset + ev.done, grand)
        offset += len(p.targets)
        if cancel():
            return "cancelled"
    return "done"


class Proposal:
    """A UniverSeg result waiting for Accept / Reject.

    ``results``: {label value: InContextResult} along ``axis``; ``unchecked``: slices the user
    left out (all are kept by default); ``complete``: the run finished (False while it runs or
    after Cancel); ``cancelled``: stopped by Cancel; ``volume``: the Volume it belongs to.
    """

    def __init__(self, volume, axis: int, results: dict, slice_shape: tuple[int, int]) -> None:
        self.volume = volume
        self.axis = int(axis)
        self.results = results
        self.slice_shape = tuple(slice_shape)
        self.unchecked: set[int] = set()
        self.complete = False
        self.cancelled = False
        self._counts: dict[int, list[tuple[int, int]]] = {}  # slice -> [(label, pixels)]

    @classmethod
    def from_plans(cls, volume, axis: int, plans: Sequence[LabelPlan], slice_shape: tuple[int, int]) -> "Proposal":
        """An empty proposal for ``plans`` (slices arrive with :meth:`add_batch`)."""
        results = {p.value: ic.InContextResult(label_value=p.value, axis=axis, slice_shape=tuple(slice_shape),
                                               targets=list(p.targets), support_indices=list(p.protected))
                   for p in plans}
        return cls(volume, axis, results, slice_shape)

    @property
    def indices(self) -> list[int]:
        """Slices with a result (sorted)."""
        return sorted(set().union(*(r.probabilities for r in self.results.values()))) if self.results else []

    @property
    def planned(self) -> list[int]:
        """Every target slice of the run (sorted)."""
        return sorted(set().union(*(r.targets for r in self.results.values()))) if self.results else []

    def add_batch(self, value: int, batch: "ic.BatchDone") -> None:
        """Store a finished batch of label ``value`` (and forget those slices' cached counts)."""
        res = self.results[value]
        for i, p in zip(batch.indices, batch.probabilities):
            res.probabilities[int(i)] = p
            self._counts.pop(int(i), None)

    def finish(self, how: str) -> None:
        """The run ended: ``how`` is "done" or "cancelled"."""
        self.complete = how == "done"
        self.cancelled = how == "cancelled"
        for r in self.results.values():
            r.cancelled = len(r.probabilities) < len(r.targets)

    def combined(self, index: int) -> np.ndarray:
        """(rows, cols) int64 label values proposed on slice ``index`` (0 = none)."""
        return ic.MultiResult(self.results, axis=self.axis).combined(index)

    def checked(self) -> list[int]:
        """Slices with a result that the user keeps."""
        return [i for i in self.indices if i not in self.unchecked]

    def counts(self, index: int, combined: np.ndarray | None = None) -> list[tuple[int, int]]:
        """[(label value, proposed pixels)] on slice ``index``, cached until new results arrive
        for it (the list shows every slice after every batch). ``combined``: the slice's
        :meth:`combined` when the caller has it."""
        c = self._counts.get(int(index))
        if c is None:
            comb = self.combined(index) if combined is None else combined
            c = [(int(v), int(np.count_nonzero(comb == v))) for v in self.results]
            self._counts[int(index)] = c
        return c

    def writes(self, index: int, current: np.ndarray) -> tuple[list[tuple[int, np.ndarray]], bool]:
        """What Accept writes on slice ``index`` given its ``current`` labels (rows, cols):
        ``([(label value, bool mask)], skipped)``; a label already drawn on the slice is the
        user's and is skipped (``skipped`` True)."""
        comb = self.combined(index)
        out, skipped = [], False
        for v in (int(x) for x in np.unique(comb) if x > 0):
            if np.any(current == v):
                skipped = True
            else:
                out.append((v, comb == v))
        return out, skipped
