"""The decoder thread's boxes decoded ahead while drawn (their mask taken by the same real box;
dropped for a real box while queued; never reported; errors kept quiet) and a caller's brief
wait for its own box's mask."""

from __future__ import annotations

import threading
import time

import numpy as np

from medsam_gui.models.box_decoder_thread import BoxDecoderThread


class _Engine:
    """Decodes a box into a mask of its area; ``gate`` holds a decode until set."""

    def __init__(self, seconds: float = 0.0, fail: bool = False):
        self.seconds = seconds
        self.fail = fail
        self.boxes: list = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def decode(self, emb, box, hw):
        self.started.set()
        self.gate.wait(10)
        time.sleep(self.seconds)
        self.boxes.append(tuple(box))
        if self.fail:
            raise RuntimeError("decoder broke")
        m = np.zeros(hw, bool)
        x0, y0, x1, y1 = (int(v) for v in box)
        m[y0:y1, x0:x1] = True
        return m


class _Listener:
    def __init__(self):
        self.ready, self.failed = [], []

    def mask_ready(self, token, index, box, mask, ms, gen):
        self.ready.append((token, index, tuple(box), gen))

    def mask_failed(self, token, exc):
        self.failed.append((token, exc))

    def waiting(self, token, index):
        pass


class _Predictor:
    axis = 0

    def __init__(self, engine):
        self.engine = engine
        self.listener = _Listener()

    def key(self, index):
        return f"slice-{index}"

    def cached(self, index):
        return object()

    def slice_hw(self):
        return (64, 64)


def _decoder(engine):
    p = _Predictor(engine)
    return p, BoxDecoderThread(p)


def _stop(decoder):
    for thread in decoder.stop():
        thread.join(5)


def test_the_real_box_takes_the_mask_decoded_ahead():
    p, d = _decoder(_Engine(seconds=0.05))
    try:
        box = (10.0, 12.0, 30.0, 40.0)
        d.speculate(3, box, 0)
        assert p.engine.started.wait(5)
        gen = d.submit("pid", 3, box, 0)  # released while it is still decoded ahead
        got = d.wait_result("pid", gen, 5.0)
        assert got is not None and got[1] == 0.0  # taken, not decoded: 0 ms
        mask = got[0]
        assert mask[12:40, 10:30].all() and mask.sum() == 28 * 20
        assert p.engine.boxes == [box]  # decoded once
        assert [r[:3] for r in p.listener.ready] == [("pid", 3, box)]  # only the real box is reported
        # another slice, box, embedding or slice size: decoded
        d.submit("pid", 3, (10.0, 12.0, 30.0, 41.0), 0)
        d.submit("other", 4, box, 0)
        deadline = time.time() + 5
        while len(p.engine.boxes) < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert len(p.engine.boxes) == 3
        with d._cond:
            assert d._ahead_mask(3, box, "slice-3", (64, 64)) is mask
            assert d._ahead_mask(3, box, "other-window", (64, 64)) is None
            assert d._ahead_mask(3, box, "slice-3", (32, 64)) is None
    finally:
        _stop(d)


def test_a_real_box_goes_before_a_queued_one_and_failures_stay_quiet():
    engine = _Engine(fail=True)
    engine.gate.clear()
    p, d = _decoder(engine)
    try:
        first, second, real = (1.0, 1.0, 9.0, 9.0), (1.0, 1.0, 12.0, 12.0), (2.0, 2.0, 20.0, 20.0)
        d.speculate(5, first, 0)
        assert engine.started.wait(5)  # the first is being decoded (held by the gate)
        d.speculate(5, second, 0)  # queued
        d.submit("pid", 5, real, 0)  # drops the queued box being drawn
        engine.gate.set()
        deadline = time.time() + 5
        while len(engine.boxes) < 2 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert engine.boxes == [first, real]
        # the box decoded ahead failed quietly; the real one reports its failure
        assert [tok for tok, _exc in p.listener.failed] == ["pid"] and p.listener.ready == []
    finally:
        _stop(d)


def test_a_caller_waits_briefly_for_its_boxs_mask():
    p, d = _decoder(_Engine(seconds=0.01))
    try:
        box = (4.0, 6.0, 20.0, 30.0)
        gen = d.submit("pid", 2, box, 0)
        got = d.wait_result("pid", gen, 5.0)
        assert got is not None and got[0][6:30, 4:20].all() and got[0].sum() == 24 * 16
        assert d.wait_result("pid", gen, 0.0) is None  # taken once
        deadline = time.time() + 5
        while not p.listener.ready and time.time() < deadline:
            time.sleep(0.01)
        assert [r[:2] for r in p.listener.ready] == [("pid", 2)]  # the listener is told as well
        # too slow: None at the timeout (the listener reports it later); superseded: None at once
        p.engine.gate.clear()
        slow = d.submit("pid", 2, box, 0)
        t = time.perf_counter()
        assert d.wait_result("pid", slow, 0.05) is None and time.perf_counter() - t >= 0.045
        newer = d.submit("pid", 2, (4.0, 6.0, 21.0, 30.0), 0)
        t = time.perf_counter()
        assert d.wait_result("pid", slow, 1.0) is None and time.perf_counter() - t < 0.5
        p.engine.gate.set()
        assert d.wait_result("pid", newer, 5.0) is not None
    finally:
        _stop(d)


def test_a_failed_box_is_not_waited_for():
    p, d = _decoder(_Engine(fail=True))
    try:
        gen = d.submit("pid", 1, (1.0, 1.0, 5.0, 5.0), 0)
        t = time.perf_counter()
        assert d.wait_result("pid", gen, 2.0) is None and time.perf_counter() - t < 1.0
    finally:
        _stop(d)
