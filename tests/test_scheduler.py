"""Background embedding scheduler: order, re-prioritisation, requests, dedup, cancel, errors."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import torch

from medsam_gui.models.embedding_cache import EmbeddingCache, embedding_key
from medsam_gui.models.scheduler import EmbeddingScheduler, outward_order
from medsam_gui.runtime import BACKGROUND_NICE

import medsam_fixtures


class FakeEmbed:
    """Counts calls; each call sleeps ``delay`` and returns a tensor filled with the index."""

    def __init__(self, delay=0.01, fail=(), gate: threading.Event | None = None):
        self.delay = delay
        self.fail = set(fail)
        self.gate = gate
        self.calls: list[int] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def __call__(self, index):
        with self.lock:
            self.calls.append(index)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            time.sleep(self.delay)
            if index in self.fail:
                raise RuntimeError(f"encoder exploded on {index}")
            return torch.full((1, 256, 64, 64), float(index))
        finally:
            with self.lock:
                self.active -= 1


def key_fn(i):
    return embedding_key("vol", 0, i, (0, 1), "ck")


def _cache():
    return EmbeddingCache(memory_bytes=256 * 1024 * 1024, disk_bytes=0)


def test_outward_order():
    assert list(outward_order(5, 10, 2)) == [5, 6, 4, 7, 3]
    assert list(outward_order(0, 4)) == [0, 1, 2, 3]
    assert list(outward_order(9, 10, 3)) == [9, 8, 7, 6]
    assert list(outward_order(20, 10, 1)) == [9, 8]  # focus clamped


def test_focus_then_neighbours_outward_with_callbacks():
    fake = FakeEmbed()
    started, done = [], []
    s = EmbeddingScheduler(fake, key_fn, 20, _cache(), focus=10, neighbours=3,
                           on_started=started.append, on_done=lambda i, sec: done.append((i, sec)))
    try:
        assert s.wait_idle(10)
    finally:
        s.stop()
    assert fake.calls == [10, 11, 9, 12, 8, 13, 7]
    assert started == fake.calls and [i for i, _ in done] == fake.calls
    assert all(sec >= 0.01 for _, sec in done)
    assert fake.max_active == 1


def test_prefetch_all_covers_the_volume_without_repeats():
    fake = FakeEmbed(delay=0)
    s = EmbeddingScheduler(fake, key_fn, 9, _cache(), focus=7, neighbours=1, prefetch_all=True)
    try:
        assert s.wait_idle(10)
    finally:
        s.stop()
    assert fake.calls == [7, 8, 6, 5, 4, 3, 2, 1, 0]


def test_set_focus_reprioritises_after_the_current_slice():
    gate = threading.Event()
    fake = FakeEmbed(delay=0, gate=gate)
    s = EmbeddingScheduler(fake, key_fn, 40, _cache(), focus=2, neighbours=2)
    try:
        deadline = time.time() + 5
        while not fake.calls and time.time() < deadline:
            time.sleep(0.005)
        assert fake.calls == [2]  # slice 2 is being computed
        s.set_focus(30)
        gate.set()
        assert s.wait_idle(10)
    finally:
        s.stop()
    assert fake.calls[:6] == [2, 30, 31, 29, 32, 28]
    assert 3 not in fake.calls[:6]


def test_request_has_priority_dedups_and_uses_cache():
    gate = threading.Event()
    fake = FakeEmbed(delay=0, gate=gate)
    cache = _cache()
    cache.put(key_fn(33), torch.full((1, 256, 64, 64), 33.0))
    s = EmbeddingScheduler(fake, key_fn, 50, cache, focus=0, neighbours=5)
    try:
        while not fake.calls:
            time.sleep(0.005)
        f1 = s.request(20)
        f2 = s.request(20)  # same slice twice -> computed once
        f0 = s.request(0)  # the one in flight -> attached, not recomputed
        fc = s.request(33)  # cached -> answered at once, never computed
        assert fc.done() and float(fc.result()[0, 0, 0, 0]) == 33.0
        gate.set()
        r1, r2, r0 = f1.result(10), f2.result(10), f0.result(10)
        assert s.wait_idle(10)
    finally:
        s.stop()
    assert float(r1[0, 0, 0, 0]) == 20.0 and r1.dtype == torch.float16
    assert r2 is r1 and float(r0[0, 0, 0, 0]) == 0.0
    assert fake.calls[:2] == [0, 20]  # request jumps ahead of the neighbours
    assert fake.calls.count(20) == 1 and fake.calls.count(0) == 1 and 33 not in fake.calls
    assert sorted(fake.calls) == [0, 1, 2, 3, 4, 5, 20]


def test_cached_slices_are_skipped():
    cache = _cache()
    for i in (4, 5):
        cache.put(key_fn(i), torch.zeros(1, 256, 64, 64))
    fake = FakeEmbed(delay=0)
    s = EmbeddingScheduler(fake, key_fn, 10, cache, focus=5, neighbours=1)
    try:
        assert s.wait_idle(10)
    finally:
        s.stop()
    assert fake.calls == [6]


class CountingCache(EmbeddingCache):
    """A memory cache that counts look-ups."""

    def __init__(self):
        super().__init__(disk_bytes=0)
        self.lookups = 0

    def contains(self, key):
        self.lookups += 1
        return super().contains(key)


def test_progress_counts_cached_slices_without_cache_lookups():
    cache = CountingCache()
    for i in (0, 1, 9):  # e.g. on disk from an earlier session, far from the focus too
        cache.put(key_fn(i), torch.zeros(1, 256, 64, 64))
    gate = threading.Event()
    fake = FakeEmbed(delay=0, gate=gate)
    s = EmbeddingScheduler(fake, key_fn, 10, cache, focus=5, neighbours=1, prefetch_all=True)
    try:
        deadline = time.monotonic() + 10
        while s.running_index is None and time.monotonic() < deadline:
            time.sleep(0.005)
        before = cache.lookups
        assert s.progress() == (3, 7)  # 0, 1, 9 done; the other 7 planned
        assert cache.lookups == before  # progress reads the worker's own record
        gate.set()
        assert s.wait_idle(10)
        assert s.progress() == (10, 0)
    finally:
        gate.set()
        s.stop()
    assert sorted(fake.calls) == [2, 3, 4, 5, 6, 7, 8]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are a Linux feature")
def test_worker_runs_at_lower_cpu_priority_than_the_caller():
    seen = []

    def embed(index):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return torch.zeros(1, 256, 64, 64)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    s = EmbeddingScheduler(embed, key_fn, 3, _cache(), focus=1, neighbours=1)
    try:
        assert s.wait_idle(10)
    finally:
        s.stop()
    assert seen == [min(19, mine + BACKGROUND_NICE)] * 3
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_stop_cancels_pending_and_stops_between_slices():
    gate = threading.Event()
    fake = FakeEmbed(delay=0, gate=gate)
    s = EmbeddingScheduler(fake, key_fn, 100, _cache(), focus=50, neighbours=40)
    while not fake.calls:
        time.sleep(0.005)
    pending = s.request(3)
    s.stop(wait=False)
    gate.set()
    s.stop(wait=True, timeout=10)
    assert not s.running and s.cancelled
    assert pending.cancelled()
    assert fake.calls == [50]  # the slice in flight finished; nothing after it
    assert s.request(7).cancelled()


def test_errors_reach_listener_and_future_and_work_goes_on():
    fake = FakeEmbed(delay=0, fail={5})
    errors = []
    s = EmbeddingScheduler(fake, key_fn, 10, _cache(), focus=4, neighbours=2, on_error=errors.append)
    try:
        assert s.wait_idle(10)
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        assert errors[0].slice_index == 5 and s.errors[5] is errors[0]
        assert fake.calls == [4, 5, 3, 6, 2]  # 5 failed, the others were computed
        fut = s.request(5)  # an explicit request retries once, and fails again
        with pytest.raises(RuntimeError, match="exploded on 5"):
            fut.result(10)
        s.set_focus(4)
        assert s.wait_idle(10)
        assert fake.calls.count(5) == 2  # not retried by the focus loop
    finally:
        s.stop()


def test_bad_listener_does_not_kill_worker():
    fake = FakeEmbed(delay=0)

    def boom(*a):
        raise ValueError("listener bug")

    s = EmbeddingScheduler(fake, key_fn, 5, _cache(), focus=0, neighbours=4, on_done=boom)
    try:
        assert s.wait_idle(10)
    finally:
        s.stop()
    assert fake.calls == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_real_engine_in_background():
    """One real (random-weight) ViT-B encoder pass, run by the scheduler's worker thread."""
    eng = medsam_fixtures.engine()
    g = medsam_fixtures.hippocampus_golden()
    sl = g["volume_uint8_slice"]
    cache = EmbeddingCache(memory_bytes=64 * 1024 * 1024, disk_bytes=64 * 1024 * 1024)
    threads = []

    def embed_fn(i):
        threads.append(threading.current_thread().name)
        return medsam_fixtures.hippocampus_embedding()  # engine.embed_slice(sl), memoised for other tests

    done = []
    s = EmbeddingScheduler(embed_fn, key_fn, 1, cache, on_done=lambda i, sec: done.append(i))
    try:
        emb16 = s.request(0).result(timeout=300)
    finally:
        s.stop()
    emb = medsam_fixtures.hippocampus_embedding()
    assert emb.shape == (1, 256, 64, 64) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    assert emb16.dtype == torch.float16 and torch.equal(emb16, emb.half())
    assert threads == ["medsam-embedding-scheduler"] and done == [0]
    assert cache.contains(key_fn(0))
    hw = sl.shape
    m32 = eng.decode(emb, g["box_xyxy"], hw)
    m16 = eng.decode(emb16, g["box_xyxy"], hw)
    assert m32.shape == hw and (m32 != m16).mean() < 0.02


def test_background_slice_yields_to_a_request_and_is_done_later():
    """A background pass is abandoned at a stop point when a slice is requested: the request is
    answered first, the abandoned slice is queued again, nothing is reported as failed."""
    from medsam_gui.models.engine import EncoderInterrupted

    holder, calls, started = [], [], threading.Event()
    errors = []

    def embed(index):
        calls.append(index)
        if index == 0:
            started.set()
        for _ in range(200):  # 200 "encoder blocks" of 5 ms, a stop point before each
            if holder[0].should_yield():
                raise EncoderInterrupted("stopped")
            time.sleep(0.005)
        return torch.full((1, 256, 64, 64), float(index))

    s = EmbeddingScheduler(embed, key_fn, 6, _cache(), focus=0, neighbours=1, autostart=False,
                           on_error=errors.append)
    holder.append(s)
    s.start()
    try:
        assert started.wait(5)
        fut = s.request(5)
        assert float(fut.result(10)[0, 0, 0, 0]) == 5.0
        assert s.yielded == [0]
        assert s.wait_idle(20)
    finally:
        s.stop()
    assert calls[:3] == [0, 5, 0] and sorted(set(calls)) == [0, 1, 5]
    assert errors == [] and not s.errors
    assert s.progress() == (3, 0)


def test_requested_slice_never_yields():
    from medsam_gui.models.engine import EncoderInterrupted

    holder, gate = [], threading.Event()

    def embed(index):
        gate.wait(5)
        if holder[0].should_yield():
            raise EncoderInterrupted("stopped")
        return torch.full((1, 256, 64, 64), float(index))

    s = EmbeddingScheduler(embed, key_fn, 10, _cache(), focus=None, autostart=False)
    holder.append(s)
    s.start()
    try:
        first, second = s.request(3), s.request(7)  # 3 is in the encoder when 7 is asked for
        gate.set()
        assert float(first.result(10)[0, 0, 0, 0]) == 3.0 and float(second.result(10)[0, 0, 0, 0]) == 7.0
    finally:
        s.stop()
    assert s.yielded == []
