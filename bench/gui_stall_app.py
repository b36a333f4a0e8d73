"""GUI responsiveness in the real app: GUI-thread stalls while MedSAM embeds and UniverSeg runs.

``bench/gui_stall.py`` measures the worker threads alone under a bare Qt event loop. This
script builds the real window instead: the napari viewer, the MedSAM and UniverSeg panels and the
lung CT. It then measures, with a 5 ms QTimer heartbeat on the GUI thread:

- idle: the heartbeat with nothing running (the baseline of this machine and run);
- MedSAM: the background embedding of the slice on screen (int8, the CPU fast path), from
  ``set_engine`` until the embedding is done;
- UniverSeg: "Segment the rest" on the lung CT (support: 16 labeled slices, S = 16, 32
  targets). The first second is reported apart from the rest of the run: the click adds the
  proposal layer to napari and the canvas then compiles its shaders, a one-off cost per layer
  (the proposal layer is reused by later runs while a proposal is shown). The rest of the
  run is the steady state: one batch per target, each painted into the proposal layer, the
  progress bars and the proposal list. The script also gives the GUI-thread time per batch
  (``_on_batch``).

Random weights: MedSAM ViT-B seed 0 (or ``--checkpoint``), UniverSeg seed 1234. Timings do not
depend on them. Run under a display, e.g. ``xvfb-run -a python3 bench/gui_stall_app.py``.
The app's GUI memory settings are used (no huge pages).
"""

from __future__ import annotations

import argparse
import os
import time

import _common as C
import numpy as np


class Heartbeat:
    """A 5 ms QTimer on the GUI thread; ``gaps()`` -> (timestamps, gap ms) since ``start``."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.stamps: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(lambda: self.stamps.append(time.perf_counter()))

    def start(self):
        self.stamps = [time.perf_counter()]
        self.timer.start()

    def stop(self):
        self.timer.stop()
        self.stamps.append(time.perf_counter())

    def stall(self, t_from: float = -np.inf, t_to: float = np.inf) -> tuple[float, float, int]:
        """(longest stall ms = longest gap - 5 ms, p99 gap ms, beats) for gaps ending in [t_from, t_to]."""
        st = np.asarray(self.stamps)
        gaps = np.diff(st) * 1e3
        sel = (st[1:] >= t_from) & (st[1:] <= t_to)
        g = gaps[sel]
        if g.size == 0:
            return 0.0, 0.0, 0
        return float(max(g.max() - 5.0, 0.0)), float(np.percentile(g, 99)), int(g.size)


def spin(app, until, timeout: float):
    end = time.perf_counter() + timeout
    while not until():
        if time.perf_counter() > end:
            raise TimeoutError("the task did not finish in time")
        app.processEvents()
        time.sleep(0.001)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("MEDSAM_GUI_HUGE_PAGES", "0")  # the GUI app's memory settings
    torch = C.setup_torch(args.threads)
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from medsam_gui.app import build_app
    from medsam_gui.gui import dialogs, medsam_panel, universeg_panel
    from medsam_gui.gui.embedding_service import EmbeddingService
    from medsam_gui.models.embedding_cache import EmbeddingCache
    from medsam_gui.models.medsam import MedSAMEngine
    from medsam_gui.models.universeg import universeg_v1

    dialogs.ask_unsaved = lambda parent, what: "discard"  # noqa: ARG005 - no modal dialogs here
    print(f"# GUI-thread stall in the real app\nmachine: {C.machine()}\n")
    win = build_app(show=True, install_panels=False)
    win.qt_window.resize(1400, 900)
    c = win.controller
    c.open_scan(C.LUNG_CT, confirm=False)
    c.wait_idle(60)
    for _ in range(20):
        app.processEvents()
    hb = Heartbeat()
    rows = []

    # idle baseline
    hb.start()
    t_end = time.perf_counter() + 2.0
    spin(app, lambda: time.perf_counter() > t_end, 10)
    hb.stop()
    rows.append(["idle (baseline)", "2.0", *_fmt(hb.stall())])

    # MedSAM: background embedding of the slice on screen
    sd, what = C.checkpoint_state_dict(args.checkpoint)
    engine = MedSAMEngine(sd, device="cpu", precision="int8")
    engine._fast_encoder()  # the one-off int8 build (bench/gui_stall.py measures it)
    service = EmbeddingService(EmbeddingCache(disk_bytes=0), neighbours=0, prefetch_all=False, background=True)
    mpanel = medsam_panel.install(c, service=service)
    done = []
    service.done.connect(lambda i, s: done.append((i, s)))
    hb.start()
    t0 = time.perf_counter()
    mpanel.set_engine(engine)
    spin(app, lambda: bool(done), 600)
    hb.stop()
    rows.append(["MedSAM: embed the slice on screen (int8)", f"{time.perf_counter() - t0:.1f}", *_fmt(hb.stall())])

    # UniverSeg: segment the rest
    upanel = universeg_panel.install(c, medsam=mpanel)
    torch.manual_seed(1234)
    upanel.set_model(universeg_v1())
    upanel.support_size_spin.setValue(16)
    upanel.batch_spin.setValue(0)
    upanel.device_combo.setCurrentText("cpu")
    vol = c.display_volume()
    labels = np.zeros(vol.shape, np.uint16)
    n = vol.shape[0]
    support = list(range(0, n, 3))[:16]
    for z in support:
        labels[z][vol[z] > 300] = 1  # bone: present on every slice
    c.set_labels(labels)
    c.set_active_label(1)
    upanel._range_user_set = False
    upanel.refresh_support()
    c.set_current_slice(0, support[0])  # a labeled slice on screen: batches are painted off screen
    # let the app settle: the Measurements panel measures the new labels and adds its "RECIST
    # diameters" layer (a one-off napari layer creation, not part of the UniverSeg run)
    t_end = time.perf_counter() + 6.0
    spin(app, lambda: time.perf_counter() > t_end, 30)
    batch_ms = []
    real_on_batch = upanel._on_batch

    def timed(payload):
        t = time.perf_counter()
        real_on_batch(payload)
        batch_ms.append((time.perf_counter() - t) * 1e3)

    upanel._on_batch = timed
    hb.start()
    t0 = time.perf_counter()
    upanel.segment_button.click()
    t_click = time.perf_counter()
    spin(app, lambda: not upanel.running, 900)
    hb.stop()
    t_total = time.perf_counter() - t0
    n_done = len(upanel.proposal_slices())
    settle = t0 + 1.0
    rows.append([f"UniverSeg: the click (adds the proposal layer; {(t_click - t0) * 1e3:.0f} ms) "
                 "and the layer's first draws, first 1 s", "1.0", *_fmt(hb.stall(t0, settle))])
    rows.append([f"UniverSeg: the rest of the run ({n_done} slices, S=16)", f"{t_total - 1.0:.1f}",
                 *_fmt(hb.stall(settle))])
    print(f"weights: MedSAM {what}; UniverSeg random (seed 1234)\n")
    print(C.table(["GUI-thread work", "task s", "longest stall ms", "p99 beat gap ms", "beats"], rows))
    if batch_ms:
        print(f"\nUniverSeg, GUI-thread time per batch (_on_batch): p50 {np.median(batch_ms):.1f} ms, "
              f"max {max(batch_ms):.1f} ms over {len(batch_ms)} batches")
    print(f"load average at the end: {C.load()}")
    win.close(force=True)  # Controller.shutdown: the panels' shutdown hooks


def _fmt(t):
    stall, p99, n = t
    return [f"{stall:.1f}", f"{p99:.1f}", n]


if __name__ == "__main__":
    main()
