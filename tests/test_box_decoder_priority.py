"""The box decoder thread keeps its creator's CPU priority: boxes never wait behind the
background embedding (which runs at a lower priority) even when the background thread asks
for the first warm-up."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from medsam_gui.models.box_decoder_thread import BoxDecoderThread
from medsam_gui.runtime import lower_thread_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")


class _Engine:
    def __init__(self):
        self.seen = []
        self.done = threading.Event()

    def prepare_decoder(self, emb):
        self.seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        self.done.set()
        return True


class _Predictor:
    def __init__(self):
        self.engine = _Engine()

    def cached(self, index):
        return object()


def test_warm_up_asked_by_a_background_thread_runs_at_the_creators_priority():
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    predictor = _Predictor()
    decoder = BoxDecoderThread(predictor)
    background_priority = []

    def background():  # like the embedding scheduler's worker, then its on_done hook
        lower_thread_priority()
        background_priority.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        decoder.warm(7, delay=0.0)

    t = threading.Thread(target=background)
    t.start()
    t.join()
    try:
        assert predictor.engine.done.wait(10)
    finally:
        for thread in decoder.stop():
            thread.join(5)
    assert background_priority[0] > mine
    assert predictor.engine.seen == [mine] and decoder.prepared == [7]
