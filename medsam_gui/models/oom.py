"""Out-of-memory handling for the torch models: smaller batches, then the CPU, never a crash.

Issue 7's rule: when the GPU runs out of memory, retry with smaller batches, then on the CPU,
and tell the user; never crash. :class:`OomFallback` does this for any batched step:

- a step that raises an out-of-memory error (:func:`is_out_of_memory`: CUDA's
  ``torch.cuda.OutOfMemoryError``, MPS's ``RuntimeError("MPS backend out of memory ...")``,
  any RuntimeError whose message contains "out of memory") is retried on the same items after
  :func:`free_device_memory`, with the batch size halved, down to 1;
- when batch 1 still fails on a GPU, ``move_to_cpu()`` (the caller moves its model and
  tensors) is called and the work goes on on the CPU;
- each change is told through ``on_notice(message: str)`` ("The GPU ran out of memory:
  continuing with batches of 4" / "...: continuing on the CPU (slower)");
- out of memory at batch 1 on the CPU (nothing left to try) raises :class:`DeviceMemoryError`
  (a MedsamGuiError, chained to torch's error); every other exception propagates unchanged.

The code only looks at ``device.type``, so an out-of-memory error simulated on CPU tensors
(tests) takes the same paths as a real one. No Qt; torch is imported on first use.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import MedsamGuiError

log = logging.getLogger(__name__)

OOM_MARKER = "out of memory"


class DeviceMemoryError(MedsamGuiError):
    """Out of memory with nothing left to fall back to (one item at a time, on the CPU)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors: ``torch.cuda.OutOfMemoryError`` or a RuntimeError
    whose message contains "out of memory" (CUDA, "MPS backend out of memory", cuBLAS ...)."""
    import torch

    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and OOM_MARKER in str(exc).lower()


def free_device_memory(device=None) -> None:
    """Collect garbage and return cached blocks of ``device`` (torch.device or str) to the
    driver: ``torch.cuda.empty_cache()`` on CUDA, ``torch.mps.empty_cache()`` on MPS."""
    import torch

    gc.collect()
    dev_type = torch.device(device).type if device is not None else None
    if dev_type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif dev_type == "mps":
        mps = getattr(torch, "mps", None)
        backend = getattr(torch.backends, "mps", None)
        if mps is not None and hasattr(mps, "empty_cache") and backend is not None and backend.is_available():
            mps.empty_cache()


def _who(device) -> str:
    return "The CPU" if device.type == "cpu" else "The GPU"


class OomFallback:
    """Runs batched (or single) steps, shrinking batches on out-of-memory, then moving to the CPU.

    ``device``: the torch.device the work runs on, or a callable returning the current one
    (when another thread may move the model). ``batch_size``: the first batch size (>= 1).
    ``move_to_cpu()``: moves the caller's model/tensors to the CPU (None: no CPU fallback).
    ``on_notice(message)``: told of each change (may be None). ``cpu_batch_size``: the batch
    size to continue with on the CPU (default: keep the current one, 1 by then).
    After a run, ``batch_size`` is the size that worked and ``notices`` lists what was told.
    """

    def __init__(self, device, batch_size: int = 1, *, move_to_cpu: Callable[[], Any] | None = None,
                 on_notice: Callable[[str], Any] | None = None, cpu_batch_size: int | None = None) -> None:
        self._device = device
        self.batch_size = max(1, int(batch_size))
        self.move_to_cpu = move_to_cpu
        self.on_notice = on_notice
        self.cpu_batch_size = None if cpu_batch_size is None else max(1, int(cpu_batch_size))
        self.notices: list[str] = []

    @property
    def device(self):
        import torch

        dev = self._device() if callable(self._device) else self._device
        return torch.device(dev)

    def _notice(self, message: str) -> None:
        log.warning("%s", message)
        self.notices.append(message)
        if self.on_notice is not None:
            self.on_notice(message)

    def _check(self, exc: BaseException, dev_before, can_halve: bool) -> None:
        """Called inside ``except``: re-raise what cannot be handled."""
        if not is_out_of_memory(exc):
            raise exc
        if can_halve and self.batch_size > 1:
            return
        if self.device.type != dev_before.type:  # another thread already moved the work
            return
        if dev_before.type != "cpu" and self.move_to_cpu is not None:
            return
        raise DeviceMemoryError(
            f"{_who(dev_before)} ran out of memory even one item at a time. Close other programs "
            "(or other models) that use its memory and try again, or choose the CPU as the device."
        ) from exc

    def _recover(self, dev_before, can_halve: bool) -> None:
        """Called after ``except`` (so the failed step's tensors are released)."""
        free_device_memory(dev_before)
        if self.device.type != dev_before.type:
            return
        if can_halve and self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            self._notice(f"{_who(dev_before)} ran out of memory: continuing with batches of {self.batch_size}")
            return
        self.move_to_cpu()
        free_device_memory(dev_before)
        if self.cpu_batch_size is not None:
            self.batch_size = self.cpu_batch_size
        self._notice(f"{_who(dev_before)} ran out of memory: continuing on the CPU (slower)")

    def run(self, n: int, run_batch: Callable[[int, int, int], Any], *,
            span: Callable[[int], int] | None = None) -> Iterator[tuple[int, int, Any]]:
        """Yield ``(start, stop, run_batch(start, stop, batch_size))`` over items ``[0, n)`` in
        order; each range holds ``span(batch_size)`` items (default ``batch_size``). A range
        that runs out of memory is run again (smaller batches, or on the CPU); results of ranges
        already yielded are kept."""
        start = 0
        while start < n:
            width = max(1, int(span(self.batch_size)) if span is not None else self.batch_size)
            stop = min(n, start + width)
            dev_before = self.device
            try:
                result = run_batch(start, stop, self.batch_size)
            except Exception as exc:  # noqa: BLE001 - re-raised by _check unless out of memory
                self._check(exc, dev_before, can_halve=True)
            else:
                yield start, stop, result
                start = stop
                continue
            self._recover(dev_before, can_halve=True)

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()``; on out-of-memory on a GPU: free memory, move to the CPU and call it again."""
        while True:
            dev_before = self.device
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - re-raised by _check unless out of memory
                self._check(exc, dev_before, can_halve=False)
            self._recover(dev_before, can_halve=False)
