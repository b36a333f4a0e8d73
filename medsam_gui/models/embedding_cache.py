"""Cache of MedSAM image embeddings, in memory (LRU, byte budget) and on disk (size cap).

A cache key is a fingerprint string made by :func:`embedding_key` from everything the
embedding depends on: the scan's content/grid fingerprint (``Volume.fingerprint()``), the
slice axis and index, the intensity window bounds, the checkpoint id (sha256 of the weights
file) and the precision. A different scan, window or checkpoint gives a different key, so a
stale embedding is never used.

Embeddings are (1, 256, 64, 64) tensors kept as float16 (2 MiB each); :meth:`EmbeddingCache.get`
returns that float16 tensor (MedSAMEngine.decode casts to float32). On disk, one ``<key>.npy``
per embedding (float16, written atomically) in ``config.embeddings_dir()``; unreadable files
are deleted and count as misses; the folder is kept under its cap by deleting the least
recently used files (by mtime, which a hit refreshes). All methods are thread-safe.

Memory: each float16 embedding the cache keeps lives in its own anonymous memory mapping
(:func:`page_backed_empty`), not on the C heap. The app serves blocks up to 32 MiB from the heap
(``runtime.tune_memory``), and the embedding worker allocates each embedding as a 4 MiB float32
tensor next to its 2 MiB float16 copy: the long-lived 2 MiB copies were carved out of the 4 MiB
holes the freed float32 tensors left, so every cached slice also pinned 2 MiB of heap that no
later allocation could use (a 300-slice scan: 512 MiB cached, 1.1 GiB resident). A mapping of
its own holds exactly its pages and goes back to the system when the entry is evicted
(:func:`page_backed_copy`).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024  # 256 slices
DEFAULT_DISK_BYTES = 4 * 1024 * 1024 * 1024
_KEY_RE = re.compile(r"^[0-9a-f]{16,128}$")


def embedding_key(
    volume_fingerprint: str,
    axis: int,
    index: int,
    bounds: Sequence[float],
    checkpoint_id: str,
    precision: str = "fp32",
    *,
    engine: str = "medsam",
) -> str:
    """The cache key (64 hex chars) of one slice's embedding.

    ``bounds`` are the intensity window (lo, hi) used by volume_to_uint8 (rounded to 1e-4);
    ``engine`` is the engine's name (the same slice embedded by another engine has another key).
    """
    lo, hi = (float(b) for b in bounds)
    text = "|".join(
        [
            "medsam-embedding-v1",
            str(volume_fingerprint),
            f"axis={int(axis)}",
            f"index={int(index)}",
            f"bounds={lo:.4f},{hi:.4f}",
            f"ckpt={checkpoint_id}",
            f"precision={precision}",
        ]
        + ([] if engine == "medsam" else [f"engine={engine}"])
    )
    return hashlib.sha256(text.encode()).hexdigest()


def page_backed_empty(shape: Sequence[int], dtype=np.float16) -> np.ndarray:
    """An uninitialised C-contiguous array in an anonymous memory mapping of its own (page
    aligned, zero-filled by the system; unmapped when the array and every view of it are gone).

    For large arrays that are kept a long time among short-lived allocations of other sizes:
    they never fragment the C heap (see the module docstring). Costs one ``mmap`` and the page
    faults of first use (~0.3 ms for 2 MiB)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if n == 0:
        return np.empty(shape, dt)
    anonymous = getattr(mmap, "MAP_ANONYMOUS", getattr(mmap, "MAP_ANON", 0))
    if hasattr(mmap, "MAP_PRIVATE") and anonymous:  # POSIX (Python's default there is shared)
        buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | anonymous)
    else:  # Windows: anonymous memory backed by the paging file
        buf = mmap.mmap(-1, n)
    return np.frombuffer(buf, dtype=dt).reshape(tuple(int(s) for s in shape))


def page_backed_copy(tensor, dtype=None):
    """A contiguous CPU torch copy of ``tensor`` (cast to numpy ``dtype`` when given) in
    page-backed memory (:func:`page_backed_empty`): for tensors kept among short-lived ones."""
    import torch

    t = torch.as_tensor(tensor).detach()
    try:
        np_dtype = np.dtype(dtype) if dtype is not None else torch.empty(0, dtype=t.dtype).numpy().dtype
    except TypeError:  # no numpy twin (bfloat16): an ordinary copy
        return t.to("cpu", copy=True).contiguous()
    out = torch.from_numpy(page_backed_empty(tuple(t.shape), np_dtype))
    out.copy_(t)  # casts and moves to the CPU in one step
    return out


def _read_npy(path: Path) -> np.ndarray:
    """A (1, 256, 64, 64)-like float16 ``.npy`` file read into a page-backed array
    (:func:`page_backed_empty`); ValueError when the file is not such an array or is short."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype != np.float16 or len(shape) != 4 or fortran:
            raise ValueError(f"unexpected array {dtype} {shape}")
        arr = page_backed_empty(shape, np.float16)
        view = memoryview(arr.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            n = fh.readinto(view[got:])
            if not n:
                raise ValueError(f"{path.name} is truncated ({got} of {len(view)} bytes)")
            got += n
        if fh.read(1):
            raise ValueError(f"{path.name} has trailing data")
    return arr


@dataclass
class CacheStats:
    hits: int = 0  # memory or disk
    disk_hits: int = 0
    misses: int = 0
    memory_bytes: int = 0
    memory_items: int = 0
    disk_bytes: int = 0
    disk_items: int = 0
    corrupt_deleted: int = 0


class EmbeddingCache:
    """Thread-safe two-level embedding cache.

    ``memory_bytes``: in-memory budget (LRU eviction); ``disk_bytes``: on-disk cap, 0 turns
    the disk level off; ``disk_dir``: default ``config.embeddings_dir()`` (resolved lazily).
    """

    def __init__(
        self,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        disk_bytes: int = DEFAULT_DISK_BYTES,
        disk_dir: str | os.PathLike | None = None,
    ) -> None:
        self.memory_budget = int(memory_bytes)
        self.disk_budget = int(disk_bytes)
        self._disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._mem: "OrderedDict[str, object]" = OrderedDict()
        self._mem_bytes = 0
        self._lock = threading.RLock()
        self._stats = CacheStats()
        self._dir_made = False
        self._disk_total: int | None = None  # bytes on disk, counted once then kept up to date

    # ------------------------------------------------------------ helpers
    @property
    def disk_dir(self) -> Path | None:
        if self.disk_budget <= 0:
            return None
        if self._disk_dir is None:
            from .. import config

            self._disk_dir = config.embeddings_dir()
        if not self._dir_made:
            self._disk_dir.mkdir(parents=True, exist_ok=True)
            self._dir_made = True
        return self._disk_dir

    @staticmethod
    def _check_key(key: str) -> str:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"embedding cache keys are hex fingerprints (see embedding_key), got {key!r}")
        return key

    @staticmethod
    def _to_half(tensor):
        """A float16 CPU copy of ``tensor`` in page-backed memory (:func:`page_backed_empty`)."""
        return page_backed_copy(tensor, np.float16)

    def _path(self, key: str) -> Path | None:
        d = self.disk_dir
        return None if d is None else d / f"{key}.npy"

    def _mem_put(self, key: str, t) -> None:
        nbytes = t.numel() * t.element_size()
        if key in self._mem:
            old = self._mem.pop(key)
            self._mem_bytes -= old.numel() * old.element_size()
        if nbytes > self.memory_budget:
            return
        self._mem[key] = t
        self._mem_bytes += nbytes
        while self._mem_bytes > self.memory_budget and self._mem:
            _, ev = self._mem.popitem(last=False)
            self._mem_bytes -= ev.numel() * ev.element_size()

    # ------------------------------------------------------------ public API
    def contains(self, key: str) -> bool:
        """True if ``key`` is in memory or on disk (does not count as a hit or miss)."""
        self._check_key(key)
        with self._lock:
            if key in self._mem:
                return True
            p = self._path(key)
            return p is not None and p.is_file()

    __contains__ = contains

    def get(self, key: str):
        """The cached embedding (1, 256, 64, 64) float16 CPU tensor, or None."""
        import torch

        self._check_key(key)
        with self._lock:
            t = self._mem.get(key)
            if t is not None:
                self._mem.move_to_end(key)
                self._stats.hits += 1
                return t
            p = self._path(key)
            if p is not None and p.is_file():
                try:
                    t = torch.from_numpy(_read_npy(p))
                except Exception:
                    self._stats.corrupt_deleted += 1
                    self._disk_total = None
                    try:
                        p.unlink()
                    except OSError:
                        pass
                else:
                    try:
                        os.utime(p)  # LRU by mtime
                    except OSError:
                        pass
                    self._mem_put(key, t)
                    self._stats.hits += 1
                    self._stats.disk_hits += 1
                    return t
            self._stats.misses += 1
            return None

    def put(self, key: str, tensor) -> None:
        """Store an embedding (any float tensor/array, kept as float16) in memory and on disk."""
        self._check_key(key)
        t = self._to_half(tensor)
        with self._lock:
            self._mem_put(key, t)
            p = self._path(key)
        if p is not None:
            added = self._write_disk(p, t.numpy())
            self._enforce_disk_cap(added)

    def _write_disk(self, path: Path, arr: np.ndarray) -> int:
        """Write ``arr`` atomically; returns the bytes the folder grew by (0 on failure)."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".tmp", dir=path.parent)
        except OSError:
            return 0  # disk cache is best effort (read-only / full disk)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            size = os.stat(tmp).st_size
            try:
                size -= path.stat().st_size  # replacing an older copy
            except OSError:
                pass
            os.replace(tmp, path)
            return size
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return 0

    def _disk_entries(self) -> list[tuple[float, int, Path]]:
        d = self.disk_dir
        if d is None:
            return []
        out = []
        for p in d.glob("*.npy"):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return out

    def _enforce_disk_cap(self, added: int) -> None:
        """Keep the folder under its cap. Its size is counted once, then kept up to date; the
        folder is listed again only when it goes over the cap (oldest files deleted first)."""
        with self._lock:
            if self._disk_total is not None:
                self._disk_total += added
                if self._disk_total <= self.disk_budget:
                    return
            entries = sorted(self._disk_entries())
            total = sum(size for _, size, _ in entries)
            for _, size, p in entries:
                if total <= self.disk_budget:
                    break
                try:
                    p.unlink()
                    total -= size
                except OSError:
                    pass
            self._disk_total = total

    def discard(self, key: str) -> None:
        """Forget one key (memory and disk)."""
        self._check_key(key)
        with self._lock:
            t = self._mem.pop(key, None)
            if t is not None:
                self._mem_bytes -= t.numel() * t.element_size()
            p = self._path(key)
            if p is not None:
                self._disk_total = None
                try:
                    p.unlink()
                except OSError:
                    pass

    def clear(self, *, disk: bool = True) -> None:
        with self._lock:
            self._mem.clear()
            self._mem_bytes = 0
            if disk:
                self._disk_total = None
                for _, _, p in self._disk_entries():
                    try:
                        p.unlink()
                    except OSError:
                        pass

    def stats(self) -> CacheStats:
        """Counters (hits, disk_hits, misses, corrupt_deleted) and current sizes."""
        with self._lock:
            entries = self._disk_entries()
            s = CacheStats(**vars(self._stats))
            s.memory_bytes = self._mem_bytes
            s.memory_items = len(self._mem)
            s.disk_bytes = sum(size for _, size, _ in entries)
            s.disk_items = len(entries)
            return s
