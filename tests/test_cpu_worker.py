"""The engines' one CPU thread: calls run there in order, urgent ones first and inside a running
call's pause points; errors reach the caller; orchestrating threads keep no OpenMP pool."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from medsam_gui.models.cpu_worker import CpuWorker
from medsam_gui.runtime import single_threaded_torch


def test_calls_run_on_the_worker_thread_and_errors_reach_the_caller():
    w = CpuWorker("test-cpu")
    names = [w.call(lambda: threading.current_thread().name) for _ in range(2)]
    assert names == ["test-cpu", "test-cpu"] and not w.on_thread()
    assert w.call(lambda: w.call(lambda: 7)) == 7  # a call made on the worker runs at once
    with pytest.raises(ZeroDivisionError):
        w.call(lambda: 1 / 0)
    assert w.call(lambda: "still serving") == "still serving"


def test_urgent_calls_go_first_and_are_served_at_pause_points():
    w = CpuWorker("test-cpu")
    order: list[str] = []
    started, release = threading.Event(), threading.Event()

    def long_pass():  # an encoder pass with pause points
        started.set()
        end = time.monotonic() + 10
        while not release.is_set() and time.monotonic() < end:
            w.serve_urgent()
            time.sleep(0.001)
        order.append("pass")

    runner = threading.Thread(target=lambda: w.call(long_pass))
    runner.start()
    assert started.wait(10)
    queued = threading.Thread(target=lambda: w.call(lambda: order.append("queued pass")))
    queued.start()
    time.sleep(0.05)
    w.call(lambda: order.append("box"), urgent=True)  # answered while the pass still runs
    assert order == ["box"] and runner.is_alive()
    release.set()
    runner.join(10)
    queued.join(10)
    assert order == ["box", "pass", "queued pass"]
    w.serve_urgent()  # off the worker thread: nothing to do, no error


def test_single_threaded_torch_is_per_thread():
    before = torch.get_num_threads()
    seen = {}

    def orchestrator():
        seen["applied"] = single_threaded_torch()
        seen["threads"] = torch.get_num_threads()

    t = threading.Thread(target=orchestrator)
    t.start()
    t.join(30)
    assert seen == {"applied": True, "threads": 1}
    assert torch.get_num_threads() == before  # this thread keeps its setting
