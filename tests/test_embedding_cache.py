"""Embedding cache: keys, LRU budget in memory, disk level, corruption, thread safety."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from medsam_gui import config
from medsam_gui.core.volume import Volume
from medsam_gui.models.embedding_cache import EmbeddingCache, embedding_key

MIB = 1024 * 1024


def _emb(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 256, 64, 64, generator=g)


def _key(i: int, **kw) -> str:
    args = dict(volume_fingerprint="vol", axis=0, index=i, bounds=(-160.0, 240.0), checkpoint_id="ck")
    args.update(kw)
    return embedding_key(**args)


def test_key_changes_with_every_input():
    vol = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    base = dict(volume_fingerprint=vol.fingerprint(), axis=0, index=1, bounds=(-160, 240), checkpoint_id="a" * 64)
    k = embedding_key(**base)
    assert len(k) == 64 and k == embedding_key(**base)
    other_vol = Volume(vol.array.copy(), spacing=(1.0, 1.0, 2.0))
    variants = [
        dict(volume_fingerprint=other_vol.fingerprint()),
        dict(axis=1),
        dict(index=0),
        dict(bounds=(-160, 250)),
        dict(checkpoint_id="b" * 64),
    ]
    keys = {embedding_key(**{**base, **v}) for v in variants}
    keys.add(embedding_key(**base, precision="bf16"))
    assert len(keys) == 6 and k not in keys


def test_memory_level_is_float16_lru_with_byte_budget():
    cache = EmbeddingCache(memory_bytes=5 * MIB, disk_bytes=0)  # room for 2 slices (2 MiB each)
    for i in range(3):
        cache.put(_key(i), _emb(i))
    st = cache.stats()
    assert st.memory_items == 2 and st.memory_bytes == 4 * MIB
    assert cache.get(_key(0)) is None  # evicted (oldest)
    got = cache.get(_key(1))
    assert got.dtype == torch.float16 and got.shape == (1, 256, 64, 64)
    torch.testing.assert_close(got.float(), _emb(1), atol=2e-3, rtol=1e-3)
    cache.put(_key(3), _emb(3))  # evicts 2 (1 was used more recently)
    assert cache.contains(_key(1)) and not cache.contains(_key(2))
    st = cache.stats()
    assert (st.hits, st.misses) == (1, 1)


def test_disk_level_survives_a_new_cache_and_lives_in_embeddings_dir():
    c1 = EmbeddingCache(memory_bytes=64 * MIB, disk_bytes=64 * MIB)
    c1.put(_key(7), _emb(7))
    files = list(config.embeddings_dir().glob("*.npy"))
    assert [f.name for f in files] == [f"{_key(7)}.npy"]
    assert not list(config.embeddings_dir().glob("*.tmp"))
    c2 = EmbeddingCache(memory_bytes=64 * MIB, disk_bytes=64 * MIB)
    assert c2.contains(_key(7))
    got = c2.get(_key(7))
    torch.testing.assert_close(got, c1.get(_key(7)), rtol=0, atol=0)
    assert c2.stats().disk_hits == 1
    assert c2.get(_key(8)) is None and c2.stats().misses == 1


def test_corrupt_disk_file_is_ignored_and_deleted():
    c = EmbeddingCache(memory_bytes=64 * MIB, disk_bytes=64 * MIB)
    c.put(_key(1), _emb(1))
    path = config.embeddings_dir() / f"{_key(1)}.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated
    fresh = EmbeddingCache(memory_bytes=64 * MIB, disk_bytes=64 * MIB)
    assert fresh.get(_key(1)) is None
    assert not path.exists()
    assert fresh.stats().corrupt_deleted == 1
    # garbage with the right name, and a pickled object array, also count as corrupt
    path.write_bytes(b"not an npy file")
    assert fresh.get(_key(1)) is None and not path.exists()


def test_disk_cap_evicts_least_recently_used_by_mtime():
    c = EmbeddingCache(memory_bytes=0, disk_bytes=int(2.5 * 2 * MIB))  # 2 files fit
    d = config.embeddings_dir()
    c.put(_key(0), _emb(0))
    c.put(_key(1), _emb(1))
    old = time.time() - 100
    os.utime(d / f"{_key(0)}.npy", (old, old))
    os.utime(d / f"{_key(1)}.npy", (old + 10, old + 10))
    assert c.get(_key(0)) is not None  # a hit refreshes key 0's mtime
    c.put(_key(2), _emb(2))
    names = {p.name for p in d.glob("*.npy")}
    assert names == {f"{_key(0)}.npy", f"{_key(2)}.npy"}
    assert c.stats().disk_bytes <= c.disk_budget


def test_disk_cap_holds_over_many_puts_and_counts_other_writers():
    """The folder's size is counted once and then kept up to date: the cap holds put after put,
    and files another cache (e.g. another session) wrote count too."""
    c = EmbeddingCache(memory_bytes=0, disk_bytes=int(3.5 * 2 * MIB))  # 3 files fit
    other = EmbeddingCache(memory_bytes=0, disk_bytes=64 * MIB)
    d = config.embeddings_dir()
    other.put(_key(100), _emb(100))
    other.put(_key(101), _emb(101))
    for i in range(6):
        c.put(_key(i), _emb(i))
        assert len(list(d.glob("*.npy"))) <= 3
    c.put(_key(5), _emb(5))  # the same key again: replaced, not counted twice
    assert c.stats().disk_bytes <= c.disk_budget and c.get(_key(5)) is not None
    c.discard(_key(5))
    c.put(_key(6), _emb(6))
    assert len(list(d.glob("*.npy"))) <= 3 and c.get(_key(6)) is not None


def test_rejects_non_fingerprint_keys():
    c = EmbeddingCache(disk_bytes=0)
    with pytest.raises(ValueError):
        c.put("../../etc/passwd", _emb(0))


def test_thread_safe_concurrent_put_get():
    c = EmbeddingCache(memory_bytes=8 * MIB, disk_bytes=0)
    embs = {i: _emb(i).half() for i in range(8)}
    errors = []

    def worker(offset):
        try:
            for r in range(30):
                i = (r + offset) % 8
                c.put(_key(i), embs[i])
                got = c.get(_key(i))
                if got is not None and not torch.equal(got, embs[i]):
                    errors.append(i)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    st = c.stats()
    assert st.memory_bytes <= 8 * MIB and st.memory_items == st.memory_bytes // (2 * MIB)
