"""Memory of a long session stays bounded (issue 13: a 512x512x300 CT with LiteMedSAM in 2.5 GB).

- the embedding worker: resident memory grows by the cache's budget and the float32 memo, not
  by ~2x that through C-heap fragmentation (a child process, as the GUI tunes malloc);
- cached embeddings live in page-backed memory that eviction gives back; disk re-reads too;
- label maps: no whole-map temporaries when measuring, counting or snapshotting them
  (``core.sparse_labels``), with results equal to the whole-map computation;
- the scheduler's ``on_idle`` hook and ``runtime.HeapTrimmer``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from medsam_gui.models.embedding_cache import EmbeddingCache, embedding_key, page_backed_empty

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
LINUX = sys.platform.startswith("linux")


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def _key(i: int) -> str:
    return embedding_key("vol", 0, i, (-160.0, 240.0), "ck")


# ------------------------------------------------------------------ the embedding worker
CHILD = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    from medsam_gui.runtime import tune_memory
    tune_memory(huge_pages=False)  # as the GUI: blocks up to 32 MiB are served from the heap
    import torch
    torch.set_num_threads(1)
    from medsam_gui.core.volume import Volume
    from medsam_gui.models.embedding_cache import EmbeddingCache, embedding_key
    from medsam_gui.models.volume_predictor import VolumePredictor

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    class Engine:  # an encoder that answers at once: (1, 256, 64, 64) float32, like LiteMedSAM
        name = "fake"; input_size = 1024; embedding_shape = (256, 64, 64); embedding_dtype = "float32"
        on_notice = None
        def cache_key(self, fp, axis, index, bounds):
            return embedding_key(fp, axis, index, bounds, "fake", engine="fake")
        def embed(self, slices, batch_size=None, stop=None):
            return torch.randn(len(list(slices)), 256, 64, 64)
        def prepare_decoder(self, emb):
            return False

    n, budget = int(sys.argv[1]), int(sys.argv[2])
    pred = VolumePredictor(Engine(), EmbeddingCache(memory_bytes=budget << 20, disk_bytes=0), prefetch_all=True)
    pred.set_volume(Volume(np.zeros((n, 16, 16), np.int16), modality="CT"), bounds=(-160, 240))
    r0 = rss()
    peak, stop = [r0], threading.Event()
    def sample():
        while not stop.wait(0.002):
            peak[0] = max(peak[0], rss())
    threading.Thread(target=sample, daemon=True).start()
    pred.set_focus(0)
    time.sleep(0.2)
    pred.scheduler.wait_idle(60)
    time.sleep(0.3)  # the idle hook
    stop.set()
    print(len(pred.scheduler.computed), rss() - r0, peak[0] - r0, flush=True)
    pred.shutdown()
""")


@pytest.mark.skipif(not LINUX, reason="resident memory from /proc; glibc's heap")
def test_embedding_worker_holds_the_cache_budget_not_twice_it(tmp_path):
    """96 slices embedded in the background with a 192 MiB cache: the process grows by the
    cache (192 MiB) + the float32 memo (16 x 4 MiB), and between two heap trims by at most 16
    x 4 MiB more. Before: 2 MiB of pinned free heap per cached slice (+419 MiB, and +1.1 GiB
    for a 300-slice scan in the app)."""
    script = tmp_path / "worker.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, str(script), "96", "192"], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    computed, end, peak = (float(v) for v in res.stdout.split())
    assert computed == 96
    memo = 16 * 4
    assert end <= 192 + memo + 32, f"+{end:.0f} MiB after embedding 96 slices"
    assert peak <= 192 + memo + 16 * 4 + 32, f"peak +{peak:.0f} MiB while embedding 96 slices"


# ------------------------------------------------------------------ the embedding cache
EVICT_CHILD = textwrap.dedent("""
    import os, torch
    from medsam_gui.models.embedding_cache import EmbeddingCache, embedding_key

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)

    key = lambda i: embedding_key("vol", 0, i, (-160.0, 240.0), "ck")
    cache = EmbeddingCache(memory_bytes=64 << 20, disk_bytes=0)  # 32 slices
    emb = torch.randn(1, 256, 64, 64)
    r0 = rss()
    for i in range(32):
        cache.put(key(i), emb)
    full = rss()
    for i in range(32, 96):  # 64 more: each evicts one, the total stays at the budget
        cache.put(key(i), emb)
    steady = rss()
    cache.clear()
    print(full - r0, steady - r0, rss() - r0)
""")


@pytest.mark.skipif(not LINUX, reason="resident memory from /proc")
def test_evicted_and_cleared_embeddings_give_their_memory_back(tmp_path):
    """In a fresh process (other tests' freed memory would blur the figures): 32 float16
    embeddings are resident (64 MiB), evictions keep the total at the budget, and a clear
    unmaps them at once."""
    script = tmp_path / "evict.py"
    script.write_text(EVICT_CHILD)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    full, steady, cleared = (float(v) for v in res.stdout.split())
    assert full >= 56  # 32 x 2 MiB float16, resident
    assert steady <= 64 + 12
    assert cleared <= full - 56  # unmapped at once, no heap left holding it


def test_cached_embeddings_are_page_backed_float16_copies():
    cache = EmbeddingCache(memory_bytes=8 * MIB, disk_bytes=0)
    src = torch.randn(1, 256, 64, 64)
    cache.put(_key(0), src)
    got = cache.get(_key(0))
    assert got.dtype == torch.float16 and got.shape == (1, 256, 64, 64) and got.is_contiguous()
    assert got.data_ptr() % 4096 == 0  # a mapping of its own
    torch.testing.assert_close(got, src.half())
    src.zero_()  # a copy, not a view of the encoder's output
    assert got.abs().sum() > 0
    arr = page_backed_empty((3, 5), np.float32)
    arr[:] = 7
    assert arr.flags.writeable and arr.flags.c_contiguous and float(arr.sum()) == 105.0


def test_disk_reads_are_exact_and_bad_files_are_misses(tmp_path):
    cache = EmbeddingCache(memory_bytes=2 * MIB, disk_bytes=64 * MIB, disk_dir=tmp_path)  # 1 slice in memory
    embs = [torch.randn(1, 256, 64, 64) for _ in range(3)]
    for i, e in enumerate(embs):
        cache.put(_key(i), e)
    got = cache.get(_key(0))  # from disk
    assert cache.stats().disk_hits == 1
    assert torch.equal(got, embs[0].half()) and got.data_ptr() % 4096 == 0
    path = tmp_path / f"{_key(1)}.npy"
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    assert cache.get(_key(1)) is None and not path.exists()
    assert cache.stats().corrupt_deleted == 1
    np.save(tmp_path / f"{_key(5)}.npy", np.zeros((1, 256, 64, 64), np.float32))  # wrong dtype
    assert cache.get(_key(5)) is None


# ------------------------------------------------------------------ label maps
def _views(a):
    """The array and views of it as the display orientation makes them (flips, transposes)."""
    return [a, a[::-1], a[:, ::-1, ::-1], a.transpose(2, 1, 0), a.transpose(0, 2, 1)[::-1]]


def test_nonzero_box_and_copy_labelled_match_numpy_on_any_view():
    from medsam_gui.core.sparse_labels import copy_labelled, nonzero_box

    rng = np.random.default_rng(0)
    a = np.zeros((9, 20, 31), np.uint16)
    a[3:6, 4:11, 17:30] = rng.integers(0, 3, (3, 7, 13))
    a[7, 2, 5] = 9
    for v in _views(a):
        nz = np.nonzero(v)
        want = tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)
        assert nonzero_box(v) == want
        c = copy_labelled(v)
        assert c.flags.c_contiguous and c.dtype == v.dtype and np.array_equal(c, v)
    assert nonzero_box(np.zeros((4, 5, 6), np.uint8)) is None
    assert np.array_equal(copy_labelled(np.zeros((4, 5, 6), np.uint8)), np.zeros((4, 5, 6), np.uint8))


@pytest.mark.skipif(not LINUX, reason="resident memory from /proc")
def test_snapshot_of_a_large_sparse_map_touches_only_its_labelled_box():
    from medsam_gui.core.sparse_labels import copy_labelled

    lab = np.zeros((300, 512, 512), np.uint16)  # 150 MiB of untouched zero pages
    lab[140:150, 200:260, 300:380] = 2
    r0 = _rss_mib()
    snap = copy_labelled(lab.transpose(0, 2, 1)[::-1])
    assert _rss_mib() - r0 < 16  # np.array(...) would be +150 MiB
    assert int(snap.sum()) == 2 * 10 * 60 * 80


def test_measure_labels_crop_equals_whole_map_without_whole_map_temporaries():
    import SimpleITK as sitk

    from medsam_gui.core.measurements import measure_labels
    from medsam_gui.core.session_labels import label_counts
    from medsam_gui.core.sparse_labels import nonzero_box

    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(ROOT / "tests/data/lung_ct/lung1_label.nrrd")))
    lesion = (lesion > 0).astype(np.uint16)
    big = np.zeros((120, 512, 512), np.uint16)  # 60 MiB
    big[40:40 + lesion.shape[0]] = lesion
    big[100:103, 10:20, 30:35] = 7
    spacing = (0.98, 0.98, 3.0)
    tracemalloc.start()
    try:
        whole = measure_labels(big, spacing)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        counts = label_counts(big)
        peak_counts = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB, f"measure_labels allocated {peak / MIB:.0f} MiB at once"
    assert peak_counts < 40 * MIB, f"voxel counts allocated {peak_counts / MIB:.0f} MiB at once"
    assert counts == {1: int(lesion.sum()), 7: 150}
    assert [m.value for m in whole] == [1, 7]
    assert whole[0].voxels == int(lesion.sum()) and whole[1].slice_range == (100, 102)
    # the same on the labelled box handed over with its origin (the Measurements dock's snapshot)
    box = nonzero_box(big)
    crop = measure_labels(np.array(big[box]), spacing, origin_zyx=tuple(b.start for b in box))
    assert crop == whole
    # and on the lesion alone, shifted back by hand
    (alone,) = measure_labels(lesion, spacing)
    assert alone.slice_range == (whole[0].slice_range[0] - 40, whole[0].slice_range[1] - 40)
    assert alone.long_axis_mm == whole[0].long_axis_mm and alone.long_axis_endpoints == whole[0].long_axis_endpoints


# ------------------------------------------------------------------ idle hook, heap trims
def test_scheduler_calls_on_idle_once_per_busy_spell():
    from medsam_gui.models.scheduler import EmbeddingScheduler

    idle, done = [], []
    lock_free = []

    def on_idle():
        lock_free.append(s._cond.acquire(blocking=False))  # not called with the lock held
        if lock_free[-1]:
            s._cond.release()
        idle.append(len(done))

    s = EmbeddingScheduler(lambda i: torch.zeros(1, 256, 64, 64), _key, 6, EmbeddingCache(disk_bytes=0),
                           focus=None, on_done=lambda i, sec: done.append(i), on_idle=on_idle)
    try:
        time.sleep(0.2)
        assert idle == []  # nothing computed yet: no idle call
        s.set_focus(2)  # neighbours=3 by default: all 6 slices
        end = time.monotonic() + 10
        while not idle and time.monotonic() < end:
            time.sleep(0.01)
        assert idle == [6] and lock_free == [True]
        fut = s.request(5)  # cached: no work, no new idle call
        assert fut.result(5) is not None
        time.sleep(0.2)
        assert idle == [6]
    finally:
        s.stop()


def test_heap_trimmer_trims_on_the_first_item_then_every_nth():
    from medsam_gui import runtime

    calls = []
    t = runtime.HeapTrimmer(every=3)
    orig = runtime.trim_heap
    runtime.trim_heap = lambda: calls.append(1) or True
    try:
        got = [t.tick() for _ in range(7)]
    finally:
        runtime.trim_heap = orig
    assert got == [True, False, False, True, False, False, True] and len(calls) == 3 and t.trims == 3
    if LINUX:
        assert runtime.trim_heap() is True  # glibc here


def test_engine_input_is_windowed_per_slice_bit_for_bit():
    """The predictor keeps no uint8 copy of the scan; each slice it embeds equals that slice of
    ``volume_to_uint8`` of the whole scan in display order (CT and MR, every axis)."""
    from medsam_gui.core.intensity import mr_auto_bounds, volume_to_uint8
    from medsam_gui.core.orientation import DisplayOrientation
    from medsam_gui.core.volume import Volume
    from medsam_gui.models.volume_predictor import VolumePredictor

    rng = np.random.default_rng(3)
    arr = rng.integers(-1200, 1500, (7, 24, 19)).astype(np.int16)
    arr[2, 3:9, 4:8] = 0
    orient = DisplayOrientation((0, 2, 1), (True, False, True))
    for modality, bounds in (("CT", (-160.0, 240.0)), ("MR", None)):
        vol = Volume(arr, modality=modality)
        full = orient.to_display(volume_to_uint8(arr, modality, bounds or mr_auto_bounds(arr)))
        pred = VolumePredictor(cache=EmbeddingCache(disk_bytes=0), background=False)
        try:
            for axis in range(3):
                pred.set_volume(vol, bounds=bounds, orientation=orient, axis=axis)
                for i in range(full.shape[axis]):
                    assert np.array_equal(pred.slice_uint8(i), np.take(full, i, axis=axis))
            assert np.array_equal(pred.input_uint8, full)
        finally:
            pred.shutdown()


def test_a_slice_of_the_engine_input_does_not_copy_the_scan():
    """Each embedded slice is windowed from a view of the scan: no whole-scan temporary (np.take
    on the flipped display view copied all of it, for every slice)."""
    from medsam_gui.core.orientation import DisplayOrientation
    from medsam_gui.core.volume import Volume
    from medsam_gui.models.volume_predictor import VolumePredictor

    arr = np.random.default_rng(1).integers(-1000, 1000, (100, 256, 256)).astype(np.int16)  # 12.5 MiB
    pred = VolumePredictor(cache=EmbeddingCache(disk_bytes=0), background=False)
    try:
        for axis in range(3):
            pred.set_volume(Volume(arr, modality="CT"), bounds=(-160.0, 240.0),
                            orientation=DisplayOrientation((0, 1, 2), (False, True, True)), axis=axis)
            pred.slice_uint8(3)
            tracemalloc.start()
            try:
                pred.slice_uint8(7)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 3 * MIB, f"axis {axis}: {peak / MIB:.1f} MiB allocated for one slice"
    finally:
        pred.shutdown()


def test_plane_is_np_take_without_the_copy():
    from medsam_gui.core.orientation import plane

    a = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    for v in _views(a):
        for axis in range(3):
            for i in (0, v.shape[axis] - 1):
                p = plane(v, i, axis)
                assert np.array_equal(p, np.take(v, i, axis=axis)) and np.shares_memory(p, a)
    assert np.array_equal(plane(a, -1, -1), np.take(a, -1, axis=-1))
