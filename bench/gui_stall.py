"""GUI responsiveness: the longest GUI-thread stall while MedSAM encodes or UniverSeg runs.

A Qt event loop (QCoreApplication, no window needed) runs a 5 ms QTimer heartbeat on the main
thread - the GUI thread - while a worker thread runs, in turn: the reference MedSAM encoder
path (skimage resize + fp32 encoder), ours (int8 fast path), and UniverSeg (8 targets, S=16).
The stall is the longest gap between heartbeats minus the 5 ms period; any Python code that
holds the GIL for long in the worker shows up here.

    python3 bench/gui_stall.py [--checkpoint medsam_vit_b.pth]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import _common as C
import numpy as np


def measure(app, work) -> tuple[float, float, int]:
    """(max stall ms, p99 gap ms, beats) while ``work()`` runs in a thread."""
    from PyQt6.QtCore import QTimer

    beats = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    done = threading.Event()
    err = []

    def run():
        try:
            work()
        except BaseException as exc:  # noqa: BLE001
            err.append(exc)
        finally:
            done.set()

    timer.start()
    th = threading.Thread(target=run, daemon=True)
    t_start = time.perf_counter()
    beats.append(t_start)
    th.start()
    while not done.is_set():
        app.processEvents()
        time.sleep(0.0005)
    timer.stop()
    beats.append(time.perf_counter())
    if err:
        raise err[0]
    gaps = np.diff(beats) * 1e3
    return float(max(gaps.max() - 5.0, 0.0)), float(np.percentile(gaps, 99)), len(beats)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("MEDSAM_GUI_HUGE_PAGES", "0")  # memory settings of the GUI app
    torch = C.setup_torch(args.threads)
    from PyQt6.QtCore import QCoreApplication

    from medsam_gui.models import incontext as ic
    from medsam_gui.models.medsam import MedSAMEngine
    from medsam_gui.core.support_set import SupportSet
    from medsam_gui.models.universeg import universeg_v1

    app = QCoreApplication.instance() or QCoreApplication([])
    sd, what = C.checkpoint_state_dict(args.checkpoint)
    u8, label = C.lung_ct()
    s = np.ascontiguousarray(u8[C.tumour_slices(label, 1)[0]])
    ref = MedSAMEngine(sd, device="cpu", precision="fp32")
    fast = MedSAMEngine(sd, device="cpu", precision="int8")
    print(f"# GUI-thread stall benchmark\nmachine: {C.machine()}\nweights: {what}\n")
    rows = []
    for name, work in (("MedSAM reference encode (skimage + fp32)", lambda: ref.embed_slice(s)),
                       ("MedSAM ours: int8 build (once per engine)", lambda: fast._fast_encoder()),
                       ("MedSAM ours: int8 encode", lambda: fast.embed_slice(s))):
        t0 = time.perf_counter()
        stall, p99, n = measure(app, work)
        rows.append([name, f"{time.perf_counter() - t0:.1f}", f"{stall:.1f}", f"{p99:.1f}", n])
    torch.manual_seed(1234)
    model = universeg_v1()
    vol = u8.astype(np.float32)
    sup = SupportSet.from_slices(np.stack([vol[i] for i in range(0, 48, 3)]),
                                 np.stack([(u8[i] > 200) | label[i] for i in range(0, 48, 3)]), (0.0, 255.0))
    t0 = time.perf_counter()
    stall, p99, n = measure(app, lambda: ic.segment_rest(vol, None, 1, model=model, bounds=(0.0, 255.0), support=sup,
                                                         support_size=16, targets=list(range(8)), device="cpu"))
    rows.append(["UniverSeg 8 targets, S=16", f"{time.perf_counter() - t0:.1f}", f"{stall:.1f}", f"{p99:.1f}", n])
    print(C.table(["worker task", "task s", "longest stall ms", "p99 beat gap ms", "beats"], rows))
    print(f"\nload average at the end: {C.load()}")


if __name__ == "__main__":
    main()
