"""Background work waits at its pause points while interactive work (a box decode) runs."""

import threading
import time

import numpy as np

from medsam_gui.core.measurements import measure_labels
from medsam_gui.interactive import interactive_work, pause_point


def test_pause_point_waits_for_interactive_work_and_no_longer():
    assert not pause_point()  # nothing in flight: no wait
    released = []
    with interactive_work():
        assert pause_point(timeout_s=0.0)  # in flight: a pause point waits (here not at all)
        waiter = threading.Thread(target=lambda: released.append((pause_point(), time.perf_counter())))
        waiter.start()
        time.sleep(0.2)
        assert not released  # still waiting
        end = time.perf_counter()
    waiter.join(2)
    assert released and released[0][0] and released[0][1] >= end
    assert not pause_point()


def test_pause_point_gives_up_after_its_timeout():
    with interactive_work(), interactive_work():  # nested marks
        t = time.perf_counter()
        assert pause_point(timeout_s=0.1)
        assert 0.09 <= time.perf_counter() - t < 1.0
    assert not pause_point()


def test_measuring_pauses_between_steps_with_the_same_result(monkeypatch):
    from medsam_gui.core import measurements

    rng = np.random.default_rng(3)
    labels = np.zeros((4, 96, 96), np.uint8)
    labels[1:3, 10:80, 12:70] = rng.random((2, 70, 58)) < 0.6  # ragged: many short-axis lines
    labels[2, 40:50, 40:50] = 2
    plain = measure_labels(labels, (0.7, 0.8, 2.0))
    monkeypatch.setattr(measurements, "CHORD_BLOCK", 7)  # many blocks: the first longest chord still wins
    calls = []
    paused = measure_labels(labels, (0.7, 0.8, 2.0), pause=lambda: calls.append(1))
    assert len(calls) > 100  # per slice and per block of short-axis lines
    assert [(m.value, m.voxels, m.long_axis_mm, m.short_axis_mm, m.short_axis_endpoints) for m in paused] == \
        [(m.value, m.voxels, m.long_axis_mm, m.short_axis_mm, m.short_axis_endpoints) for m in plain]
