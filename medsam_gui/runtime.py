"""Process-level tuning done once at start-up (no Qt; does not import torch).

On the CPU torch allocates every tensor with the C library's malloc, which serves blocks larger
than its mmap threshold (<= 32 MiB) with a fresh ``mmap`` and returns them with ``munmap``. So
every large intermediate (a ViT-B MLP activation is 48 MiB, a UniverSeg support stream at
128 x 128 is 64 MiB and more) is new memory that the kernel faults in and zeroes 4 KiB page by
page, on every use. Measured on the 2-core machine (docs/benchmarks.md): 1.1-1.3 million page
faults and 3-3.5 s of kernel time per MedSAM encoder pass, a quarter of its wall time.

:func:`tune_memory` asks torch to back large tensors with transparent huge pages
(``THP_MEM_ALLOC_ENABLE=1``: 2 MiB-aligned blocks, ``madvise(MADV_HUGEPAGE)``), which cuts the
faults 40x (one per 2 MiB) without changing how much memory is held: peak RSS went down, not up.
Blocks up to 32 MiB are kept on the heap for reuse (glibc's mmap threshold fixed at its
maximum, see :func:`_fixed_mmap_threshold`).
(Turning off malloc's mmap instead removed the faults too, but peak RSS grew by 45 % through
heap fragmentation, so it is not used.) It has an effect where the kernel allows transparent
huge pages (``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise``, the
usual Linux default) and does nothing elsewhere. It must run before torch's first tensor
allocation; ``MEDSAM_GUI_MALLOC=system`` skips it, and an explicit ``THP_MEM_ALLOC_ENABLE`` in
the environment is left as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")
M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc's own adaptive rule pairs with it
_state: dict[str, object] = {"applied": None}


def thp_mode(path: Path = THP_SYSFS) -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), None if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def tune_memory(huge_pages: bool = True) -> bool:
    """Fewer page faults for torch's CPU tensors (Linux/glibc). Idempotent (first call wins).

    Always: glibc's mmap threshold fixed at 32 MiB (:func:`_fixed_mmap_threshold`).
    ``huge_pages``: also back tensors >= 2 MiB with transparent huge pages. Batch work (the CLI,
    benchmarks of throughput) uses them; the GUI does not: freeing and faulting huge pages takes
    the process's memory-map lock long enough to stall the GUI thread (longest stall 35-109 ms
    while encoding, against 10-46 ms without; bench/gui_stall.py).

    Returns True when huge pages will be used, False otherwise (not Linux, the kernel has THP off,
    ``huge_pages=False``, ``MEDSAM_GUI_MALLOC=system``, or ``THP_MEM_ALLOC_ENABLE=0`` set by the
    user).
    """
    if _state["applied"] is not None:
        return bool(_state["applied"])
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("MEDSAM_GUI_MALLOC", "").lower() != "system":
        if huge_pages and thp_mode() in ("always", "madvise"):
            current = os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
            ok = current.strip().lower() in ("1", "true", "yes", "on")
        _state["mmap_threshold"] = _fixed_mmap_threshold()
    _state["applied"] = ok
    return ok


def _fixed_mmap_threshold() -> bool:
    """glibc: serve blocks up to 32 MiB from the heap (reused, no page faults) at all times.

    With huge-page alignment a 4 MiB tensor asks malloc for ~6 MiB, which glibc's adaptive
    threshold often hands to a fresh ``mmap``: 1-7 ms of faults per such tensor in MedSAM's
    decoder. A fixed threshold keeps those on the heap; larger blocks still use ``mmap`` (on
    huge pages, returned to the kernel when freed). Measured: decoder 85 -> 75 ms (reference)
    and 31 -> 27 ms (ours), encoder unchanged.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # free memory at the top of the heap is kept (up to 64 MiB) instead of being given back
    # and faulted in again on the next allocation
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def trim_heap() -> bool:
    """Give the free pages inside the C heap back to the system (glibc ``malloc_trim(0)``, every
    arena); False where that is not available (not glibc).

    Why: with blocks up to 32 MiB kept on the heap, a thread that allocates large short-lived
    tensors slice after slice while small long-lived allocations land in the holes the freed
    ones leave (a hole then no longer fits the next, 64-byte-aligned, block of its size) grows
    its arena by several MiB a slice of memory that is free but resident (the app's embedding
    worker: +1.1 GiB over a 300-slice scan for 576 MiB of embeddings). Trimming keeps the
    address space but drops those pages from the resident set. Costs ~15 ms plus the page faults
    of re-used pages (a LiteMedSAM pass after a trim: ~5 % slower), so call it every few slices
    (:class:`HeapTrimmer`), not after each.
    """
    fn = _state.get("malloc_trim")
    if fn is None:
        fn = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                fn = libc.malloc_trim
                fn.argtypes = (ctypes.c_size_t,)
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                fn = False
        _state["malloc_trim"] = fn
    if not fn:
        return False
    fn(0)
    return True


class HeapTrimmer:
    """Calls :func:`trim_heap` on the first :meth:`tick` and then on every ``every``-th (ticks
    1, 1 + every, 1 + 2 every, ...; thread-safe enough: a lost count only delays a trim). For
    loops that allocate large tensors item after item: the first trim also returns what came
    before the loop (e.g. a checkpoint loaded and copied into a model)."""

    def __init__(self, every: int = 16) -> None:
        self.every = max(1, int(every))
        self.count = 0
        self.trims = 0

    def tick(self) -> bool:
        """Count one item; True when the heap was trimmed now."""
        self.count += 1
        if (self.count - 1) % self.every:
            return False
        if trim_heap():
            self.trims += 1
            return True
        return False


def memory_tuned() -> bool:
    """Whether :func:`tune_memory` applied its setting in this process."""
    return bool(_state["applied"])


BACKGROUND_NICE = 5  # CPU weight about 1/3 of the GUI thread's (Linux CFS)
# Linux CFS weights: nice 0 1024, 5 335, 10 110, 19 15. The engine's OpenMP team (nice 5) runs
# a box's decode on both cores; a thread of higher weight on one of them holds the whole team
# back (measured: a busy nice-0 thread made a 14 ms decode take 110-130 ms).
WRITER_NICE = 10  # autosave writes: about 1/3 of the engine's weight
IDLE_NICE = 19  # work nobody waits for (measurements): 1/20 of the engine's weight


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> bool:
    """Lower the calling thread's CPU priority by ``nice`` steps (Linux; threads it starts from
    now on, such as torch's OpenMP workers, inherit it). Background work then gives way to the
    GUI thread and to the box decoder at once, and runs at full speed when they are idle.
    Returns True when applied (False elsewhere or when the system refuses)."""
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(nice)))
    except OSError:
        return False
    return True


_PARKED: set[int] = set()  # idents of threads waiting for work (see parked)


@contextlib.contextmanager
def parked() -> Iterator[None]:
    """Mark the calling thread as waiting for work, outside any model code, while the block runs
    (a condition wait): a closing window need not wait for it (``is_parked``)."""
    ident = threading.get_ident()
    _PARKED.add(ident)
    try:
        yield
    finally:
        _PARKED.discard(ident)


def is_parked(thread: threading.Thread) -> bool:
    """Whether ``thread`` is inside :func:`parked` now."""
    return thread.ident in _PARKED


def single_threaded_torch() -> bool:
    """Run torch's CPU kernels on the calling thread alone, without an OpenMP pool of its own.

    For threads that only orchestrate model work (the embedding scheduler, the box decoder):
    libgomp keeps a pool per thread that ran a parallel kernel, and once pools hold more threads
    than there are CPUs it stops spinning between kernels, which slows the engine's own thread
    (:mod:`medsam_gui.models.cpu_worker`) by 1.3-4x per kernel. Other threads keep their
    setting. Returns True when torch now uses one thread here."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.get_num_threads()  # torch's per-thread set-up first: it would undo the limit later
    threadpool_limits(limits=1, user_api="openmp")
    return torch.get_num_threads() == 1

