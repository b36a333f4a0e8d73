"""LiteMedSAM in the real app on a 512x512x300 CT (issue 13's session targets), in one run:

- the whole scan embedded in the background (LiteMedSAM's default: slice on screen first, then
  outward) while a 5 ms QTimer heartbeat measures the longest GUI-thread stall; the idle
  heartbeat of the same run is the baseline;
- box -> mask shown: p50/p90 of the panel's own timings (decode, paint, total) over ``--boxes``
  boxes jittered around the lesion, drawn once the scan is embedded, ``--pause`` s apart (the
  app idles meanwhile, as while a user draws the next box; default 0.5 s) and then back to back
  (each box as soon as the previous mask is painted: the decode shares the CPU with the
  previous mask's drawing, measuring and autosave);
- box -> mask shown for boxes drawn with the mouse (``--drawn`` boxes, ``--pause`` s apart):
  napari's own mouse callbacks get a press, ``--moves`` moves 16 ms apart with Qt's event loop
  running between them (the app decodes the box being drawn ahead), then the release
  ``--hold`` s after the last move; timed from the release, as the scripted boxes;
- a 30-slice lesion propagated end to end through ``medsam_gui.api.propagate`` (fresh cache:
  every slice embedded, then decoded);
- peak RSS of the process over the whole session;
- CPU seconds per embedded slice, of the whole process and of the GUI thread (Linux);
- baseline: MedSAM ViT-B's reference encoder on one slice of the same scan (the time the same
  background embedding would take with it is 300 x that).

The scan is the lung CT tiled to ``--slices`` slices (bench/memory.py's ``prepare``, run in a child
process so that building its inputs - a ViT-B checkpoint among them - never counts against the
session's memory). ``--propagate 0`` skips the propagation, ``--no-baseline`` the ViT-B
baseline (both run after the session's peak RSS is taken). Random
LiteMedSAM weights (seed 0) unless ``--checkpoint``; timings do not depend on them. Precision
``--precision`` (default "auto", as the app: bf16 on CPUs with bf16 units, else "fast"). Run under a
display: ``xvfb-run -a python3 bench/litemedsam_app.py [--slices 300]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as C
import numpy as np
from gui_stall_app import Heartbeat


def mouse(layer, kind: str, data_point) -> None:
    """One napari mouse event of ``kind`` (press, move, release) at a data point of ``layer``,
    through napari's mouse callbacks (the layer's own and the app's), axial view."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils import interactions

    event = read_only_mouse_event(type=f"mouse_{kind}", is_dragging=kind == "move",
                                  position=tuple(layer.data_to_world(data_point)), dims_displayed=[1, 2])
    getattr(interactions, f"mouse_{kind}_callbacks")(layer, event)


def draw_box(app, panel, z: int, box, moves: int, hold: float) -> None:
    """Draw ``box`` (x0, y0, x1, y1) on display slice ``z`` with the box tool: press at its first
    corner, ``moves`` moves 16 ms apart ending on the second, release ``hold`` s later."""
    panel.activate_box_tool()
    layer = panel.prompts_layer
    x0, y0, x1, y1 = box
    mouse(layer, "press", (z, y0, x0))
    for t in np.linspace(0.0, 1.0, moves + 1)[1:]:
        mouse(layer, "move", (z, y0 + t * (y1 - y0), x0 + t * (x1 - x0)))
        t_next = time.perf_counter() + 0.016
        spin(app, lambda: time.perf_counter() >= t_next, 10)
    t_release = time.perf_counter() + hold
    spin(app, lambda: time.perf_counter() >= t_release, 10)
    mouse(layer, "release", (z, y1, x1))


def spin(app, until, timeout: float) -> None:
    """Run Qt's own event loop (idle between events, as in the app) until ``until()`` is true,
    checked every 20 ms; TimeoutError after ``timeout`` s."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop, end = QEventLoop(), time.perf_counter() + timeout
    check = QTimer()
    check.setInterval(20)
    check.timeout.connect(lambda: loop.quit() if until() or time.perf_counter() > end else None)
    check.start()
    if not until():
        loop.exec()
    check.stop()
    if not until():
        raise TimeoutError("the task did not finish in time")


def thread_cpu_seconds(native_id: int) -> float:
    """CPU seconds (user + system) of one thread of this process (Linux /proc)."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare_in_child(tmp: Path, n_slices: int) -> dict:
    """bench/memory.py's ``prepare`` (the tiled scan, its label, weights files) in a child process:
    the memory it leaves behind (~0.5 GiB of heap) is not the session's. Returns its placement."""
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("memory.py")), "--prepare", str(tmp),
                          "--slices", str(n_slices)], env=dict(os.environ), capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"preparing the inputs failed (exit status {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def lite_state_dict(torch, checkpoint):
    """The weights, made on the engines' CPU thread as the app loads them (tensor work on the GUI
    thread would give it an OpenMP pool of its own, which slows the engine's thread)."""
    from medsam_gui.models.cpu_worker import cpu_worker
    from medsam_gui.models.litemedsam import build_litemedsam, load_litemedsam_state_dict

    if checkpoint:
        return cpu_worker().call(lambda: load_litemedsam_state_dict(checkpoint)), f"checkpoint {checkpoint}"

    def random_weights():
        torch.manual_seed(0)
        return {k: v.detach().clone() for k, v in build_litemedsam().state_dict().items()}

    return cpu_worker().call(random_weights), "random (seed 0)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--boxes", type=int, default=20)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between boxes (a user drawing the next one)")
    ap.add_argument("--drawn", type=int, default=20, help="boxes drawn with the mouse (0: none)")
    ap.add_argument("--moves", type=int, default=12, help="mouse moves per drawn box, 16 ms apart")
    ap.add_argument("--hold", type=float, default=0.05, help="seconds from the last move to the release")
    ap.add_argument("--propagate", type=int, default=30, help="slices of the propagated lesion")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", help="LiteMedSAM's precision (default auto, as the app)")
    ap.add_argument("--no-baseline", action="store_true", help="skip MedSAM ViT-B's one-slice baseline")
    args = ap.parse_args()
    os.environ.setdefault("MEDSAM_GUI_HUGE_PAGES", "0")  # the GUI app's memory settings
    torch = C.setup_torch(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-lite-"))
    os.environ["MEDSAM_GUI_HOME"] = str(tmp / "home")
    place = prepare_in_child(tmp, args.slices)
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from medsam_gui.app import build_app
    from medsam_gui.gui import dialogs
    from medsam_gui.models.litemedsam import LiteMedSAMEngine

    dialogs.ask_unsaved = lambda parent, what: "discard"  # noqa: ARG005 - no modal dialogs here
    print(f"# LiteMedSAM in the real app, {place['shape']} CT\nmachine: {C.machine()}\n")
    stages = []  # (stage, RSS at its end, peak RSS so far) in MiB

    def stage(name: str) -> None:
        stages.append([name, f"{rss._rss():.0f}", f"{rss.peak:.0f}"])

    with C.PeakRSS() as rss:
        stage("start (inputs prepared in a child process)")
        win = build_app(show=True)
        win.qt_window.resize(1400, 900)
        c, panel = win.controller, win.panels.medsam
        stage("main window")
        c.open_scan(tmp / "scan.nii.gz", confirm=False)
        c.wait_idle(120)
        stage("scan open")
        hb = Heartbeat()
        hb.start()
        t_end = time.perf_counter() + 2.0
        spin(app, lambda: time.perf_counter() > t_end, 10)
        hb.stop()
        idle = hb.stall()
        sd, what = lite_state_dict(torch, args.checkpoint)
        engine = LiteMedSAMEngine(sd, device="cpu", precision=args.precision)
        engine.embed([np.zeros((512, 512), np.uint8)])  # one-off build of the fast path, excluded
        stage("LiteMedSAM built (one pass on the GUI thread)")
        z_src, (x0, y0, x1, y1) = place["slice"], place["box"]
        d0 = c.orientation.index_to_display([z_src, y0, x0])
        d1 = c.orientation.index_to_display([z_src, y1, x1])
        z = int(round(d0[0]))
        box = (min(d0[2], d1[2]), min(d0[1], d1[1]), max(d0[2], d1[2]), max(d0[1], d1[1]))
        c.set_current_slice(0, z)
        gui_tid = threading.get_native_id()
        gui_cpu0, cpu0 = thread_cpu_seconds(gui_tid), time.process_time()
        hb.start()
        t0 = time.perf_counter()
        panel.set_engine(engine)  # LiteMedSAM: the whole scan in the background
        n = c.volume.shape[0]
        spin(app, lambda: (p := panel.service.embedding_progress()) is not None and p.done == n, 3600)
        t_embed = time.perf_counter() - t0
        stage(f"whole scan embedded ({c.volume.shape[0]} slices)")
        hb.stop()
        gui_cpu, cpu = thread_cpu_seconds(gui_tid) - gui_cpu0, time.process_time() - cpu0
        stall = hb.stall()
        status = panel.embed_label.text().replace("\n", " | ")
        rng = np.random.default_rng(0)
        box_runs = {}
        for pause in (args.pause, 0.0):
            for _ in range(args.boxes):
                t_next = time.perf_counter() + pause
                spin(app, lambda: time.perf_counter() >= t_next, 10)
                jitter = rng.integers(-3, 4, 4)
                done = []
                panel.slice_painted.connect(lambda *a: done.append(a))
                panel.segment_box(0, z, tuple(float(v) for v in np.asarray(box) + jitter), 1)
                spin(app, lambda: bool(done), 60)
                panel.slice_painted.disconnect()
            box_runs[pause] = panel.timings[-args.boxes:]
        stage(f"{args.boxes} boxes -> masks, {args.pause:g} s apart, then back to back")
        for _ in range(args.drawn):
            t_next = time.perf_counter() + args.pause
            spin(app, lambda: time.perf_counter() >= t_next, 10)
            jitter = rng.integers(-3, 4, 4)
            done = []
            panel.slice_painted.connect(lambda *a: done.append(a))
            draw_box(app, panel, z, tuple(float(v) for v in np.asarray(box) + jitter), args.moves, args.hold)
            spin(app, lambda: bool(done), 60)
            panel.slice_painted.disconnect()
        drawn_run = panel.timings[-args.drawn:] if args.drawn else []
        ahead = sum(r["decode_ms"] == 0.0 for r in drawn_run)  # taken from the decode made while drawn
        session_peak = rss.peak
        win.close(force=True)

    rows = [["idle heartbeat (baseline)", "2.0", f"{idle[0]:.1f}", f"{idle[1]:.1f}"],
            [f"whole scan embedded in the background ({n} slices)", f"{t_embed:.1f}", f"{stall[0]:.1f}",
             f"{stall[1]:.1f}"]]
    print(f"weights: LiteMedSAM {what}; precision {engine.precision}\n")
    print(C.table(["GUI-thread work", "s", "longest stall ms", "p99 beat gap ms"], rows))
    print(f"\nembedding: {t_embed / n:.2f} s per slice; CPU per slice: {cpu / n:.2f} s for the process, "
          f"{gui_cpu / n * 1000:.0f} ms on the GUI thread; the dock said: {status}")
    for pause, t in box_runs.items():
        ms = {k: np.array([r[k] for r in t]) for k in ("decode_ms", "paint_ms", "total_ms")}
        print(f"box -> mask shown over {len(t)} boxes " + (f"{pause:g} s apart: " if pause else "back to back: ")
              + ", ".join(f"{k} p50 {np.median(v):.1f} / p90 {np.percentile(v, 90):.1f}" for k, v in ms.items()))
    if drawn_run:
        ms = {k: np.array([r[k] for r in drawn_run]) for k in ("decode_ms", "paint_ms", "total_ms")}
        print(f"box -> mask shown over {len(drawn_run)} boxes drawn with the mouse ({args.moves} moves, release "
              f"{args.hold * 1000:.0f} ms after the last; {ahead} taken from the decode made while drawn): "
              + ", ".join(f"{k} p50 {np.median(v):.1f} / p90 {np.percentile(v, 90):.1f}" for k, v in ms.items()))
    print(f"peak RSS of the session (app + {n}-slice scan + all embeddings): {session_peak:.0f} MiB\n")
    print(C.table(["stage", "RSS at its end MiB", "peak so far MiB"], stages))
    if args.propagate > 0:
        propagate_end_to_end(sd, args.propagate, args.precision)
    if not args.no_baseline:
        vit_b_baseline(tmp, z_src, n, t_embed)
    print(f"load average at the end: {C.load()}")
    shutil.rmtree(tmp, ignore_errors=True)


def propagate_end_to_end(sd, n_slices: int, precision: str) -> None:
    from medsam_gui import api
    from medsam_gui.models.litemedsam import LiteMedSAMEngine

    vol = api.load_volume(C.LUNG_CT)
    label = np.asarray(api.load_volume(C.LUNG_LABEL).array) > 0
    key = int(np.argmax(label.sum(axis=(1, 2))))
    z0 = max(0, key - n_slices // 2)
    z_range = (z0, min(vol.shape[0] - 1, z0 + n_slices - 1))
    engine = LiteMedSAMEngine(sd, device="cpu", precision=precision)
    engine.embed([np.zeros((512, 512), np.uint8)])  # build, excluded
    t = time.perf_counter()
    mask = api.propagate(vol, {key: C.bbox(label[key])}, z_range=z_range, engine=engine)
    wall = time.perf_counter() - t
    print(f"3D propagation end to end (api.propagate, z {z_range[0]}..{z_range[1]}, fresh cache): {wall:.1f} s, "
          f"{int(mask.any(axis=(1, 2)).sum())} slices with mask")


def vit_b_baseline(tmp: Path, z: int, n: int, t_embed: float) -> None:
    from medsam_gui.core.intensity import default_bounds, volume_to_uint8
    from medsam_gui.io import load_volume
    from medsam_gui.models.medsam import MedSAMEngine

    vol = load_volume(tmp / "scan.nii.gz")
    u8 = volume_to_uint8(vol.array[z:z + 1], "CT", default_bounds(vol.array, "CT"))
    sd, _ = C.checkpoint_state_dict(None)
    engine = MedSAMEngine(sd, device="cpu", precision="fp32")
    secs, _ = C.timed(engine.embed_slice, np.ascontiguousarray(u8[0]))
    print(f"baseline, MedSAM ViT-B reference encoder: {secs:.2f} s per slice -> {n} slices in about "
          f"{secs * n / 60:.0f} min ({secs * n / max(t_embed, 1e-9):.1f}x LiteMedSAM's background run)")


if __name__ == "__main__":
    main()
