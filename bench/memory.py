"""Memory of a whole annotation session on the CPU: a 512x512x300 CT within 4 GB of RAM (issue 6).

One process runs the real app like a user's session - main window, MedSAM, Measurements and
UniverSeg docks, autosave - and records its resident memory at each stage: a background thread
samples ``/proc/self/statm`` every 50 ms (peak per stage and overall), ``ru_maxrss`` is the
kernel's own lifetime peak. Each stage ends when the background work it started is over (the
Measurements panel's refresh, autosave, MedSAM input preparation); ``--no-settle`` goes on at
once instead, so the transients of consecutive stages overlap as when a user works quickly.
Stages (all through the GUI's own code paths):

  a. start the main window (``app.build_app`` + ``install_excepthook`` + ``show``, as
     ``medsam-gui`` does; row a1) and open the scan with File > Open scan... (the file picker
     answered with the scan; the app's loader runs in its background worker; row a2);
  b. Models > Load MedSAM weights... > Choose file... with a random SAM ViT-B saved as a plain
     state dict like the official ``medsam_vit_b.pth`` (validated by the model manager, then
     loaded by the MedSAM panel's worker with the panel's default device/precision: auto = the
     "fast" float32 encoder on the CPU). "Embed slices in the background" is unticked first so
     no encoder pass runs in this stage;
  c. the slider goes to the lesion's largest slice and "Embed slices in the background" is
     ticked with ``neighbours`` = ceil((N - 1) / 2): the panel's embedding service embeds that
     slice and its neighbours until N are done (``--embed``), then it is unticked again (the
     pass in flight finishes);
  d. Box tool: a rectangle around the lesion (its label's bounding box + 3 px) drawn with napari's
     mouse press/move/release callbacks on the prompts layer (what a drag on the canvas calls);
     the mask is painted into the labels layer by the panel (``slice_painted``);
  e. Propagate in 3D over lesion slice +- ``--radius`` (the panel's From/To spin boxes and its
     button; the whole run is one undo step);
  f. UniverSeg: Models > Load UniverSeg weights... > Choose file... with random weights
     (``universeg_v1(None).state_dict()`` saved with ``torch.save``), the range (From/To) set so
     that ``--targets`` unlabeled slices are targets, "Segment the rest" with the labeled slices
     as support at the default S (spin box "auto": 16 on the CPU; fewer when fewer slices are
     labeled), then Accept (one undo step);
  g. File > Save labels as... (the save dialog answered with a temporary .nii.gz): the
     controller's export on the scan's source grid;
  h. File > Quit (the close filter finds the labels saved; the window's close runs
     ``Controller.shutdown``: the panels' shutdown hooks, background threads joined).

The scan and weights are prepared in a child process (this script with ``--prepare DIR``), so
their construction never counts against the session: the real lung CT
``tests/data/lung_ct/lung1_image.nrrd`` (512x512x48 int16) reflected along z (0..47, 47..0,
0..47, ...) to 300 slices with the same spacing/origin/direction, written with SimpleITK to a
temporary ``.nii.gz``; its lesion label tiled the same way (also written; only used to place the
box: the child reports the first tiled slice of largest lesion area and its bounding box). All
temporary files (scan, weights, settings, autosave, embedding disk cache, export:
``MEDSAM_GUI_HOME`` points into the temporary folder) are removed at the end.

Needs a display: run it under Xvfb (napari's canvas needs OpenGL, which Qt's offscreen platform
does not give it):

    xvfb-run -a python3 bench/memory.py [--embed 6] [--radius 2] [--targets 40] [--threads 2]
                                        [--no-settle] [--trace]

~3-5 min on 2 busy cores with the defaults (each encoder pass 8-25 s). ``--trace`` (diagnosis,
~2x slower) adds tracemalloc: numpy buffers alive per stage and the largest allocations
near the RSS peak (torch tensors are invisible to it). Exit status 1 when the peak is over
the 4096 MiB budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as C
import numpy as np

BUDGET_MIB = 4096
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 2**20


# ----------------------------------------------------------------------------- child: data
def prepare(out: Path, n_slices: int) -> dict:
    """Write scan.nii.gz, label.nii.gz, medsam_vit_b.pth, universeg_v1.pt into ``out``; return
    the lesion placement {slice (source z of the tiled scan), box (x0, y0, x1, y1) source voxels}."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(2)
    img = sitk.ReadImage(str(C.LUNG_CT))
    lab = sitk.ReadImage(str(C.LUNG_LABEL))
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) int16
    larr = sitk.GetArrayFromImage(lab)
    nz = arr.shape[0]
    period = np.concatenate([np.arange(nz), np.arange(nz)[::-1]])  # reflect: 0..47, 47..0
    zmap = period[np.arange(n_slices) % len(period)]
    for a, ref, name in ((arr, img, "scan.nii.gz"), (larr, lab, "label.nii.gz")):
        tiled = sitk.GetImageFromArray(np.ascontiguousarray(a[zmap]))
        tiled.SetSpacing(ref.GetSpacing())
        tiled.SetOrigin(ref.GetOrigin())
        tiled.SetDirection(ref.GetDirection())
        sitk.WriteImage(tiled, str(out / name), useCompression=True)
        del tiled
    tiled_label = larr[zmap] > 0
    area = tiled_label.sum(axis=(1, 2))
    z = int(np.argmax(area))  # first slice of largest area
    x0, y0, x1, y1 = C.bbox(tiled_label[z])
    lesion_z = [int(v) for v in np.flatnonzero(area)]

    sd, what = C.checkpoint_state_dict(None)
    torch.save(sd, out / "medsam_vit_b.pth")
    del sd
    from medsam_gui.models.universeg import universeg_v1

    torch.manual_seed(1234)
    torch.save(universeg_v1(None).state_dict(), out / "universeg_v1_nf64_ss64_STA.pt")
    return {"slice": z, "box": [x0, y0, x1, y1], "area": int(area[z]), "lesion_slices": len(lesion_z),
            "shape": list(arr[zmap].shape), "medsam": what}


# ----------------------------------------------------------------------------- RSS sampler
def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / MiB


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class Sampler:
    """Samples RSS every ``period`` s in a daemon thread; per-stage and overall peaks (MiB).

    ``trace``: tracemalloc runs (numpy's array buffers are reported to it; torch's are not) and
    a snapshot is taken each time the RSS climbs 64 MiB above the last snapshot's level, so
    ``peak_snapshot`` shows which Python allocations were alive near the overall peak."""

    def __init__(self, period: float = 0.05, trace: bool = False) -> None:
        self.period = period
        self.trace = trace
        self.peak_snapshot = None
        self.peak_snapshot_rss = 0.0
        self.peak_snapshot_stage = ""
        self.stage_name = ""
        self.peak = rss_mib()
        self.stage_peak = self.peak
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            r = rss_mib()
            self.samples += 1
            if r > self.peak:
                self.peak = r
                if self.trace and r > self.peak_snapshot_rss + 64:
                    import tracemalloc

                    self.peak_snapshot = tracemalloc.take_snapshot()
                    self.peak_snapshot_rss = r
                    self.peak_snapshot_stage = self.stage_name
            if r > self.stage_peak:
                self.stage_peak = r

    def new_stage(self) -> None:
        self.stage_peak = rss_mib()

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


# ----------------------------------------------------------------------------- GUI helpers
def pump(app, seconds: float = 0.0) -> None:
    end = time.monotonic() + seconds
    while True:
        app.processEvents()
        if time.monotonic() >= end:
            return
        time.sleep(0.005)


def wait_until(app, cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        app.processEvents()
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for: {what}")
        time.sleep(0.01)
    app.processEvents()


def drag(layer, p0_data, p1_data, steps: int = 4) -> None:
    """Press at p0, drag to p1, release (layer data coordinates (slice, row, col)) through
    napari's mouse callbacks - what a mouse drag on the canvas calls."""
    from medsam_gui.gui.scripting import drag_on_layer

    drag_on_layer(layer, p0_data, p1_data, steps=steps)


def tensor_bytes(tensors) -> int:
    seen, n = set(), 0
    for t in tensors:
        try:
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            n += t.untyped_storage().nbytes()
        except Exception:  # noqa: BLE001 - quantised / odd tensors
            continue
    return n


# ----------------------------------------------------------------------------- the session
def run(args, tmp: Path, place: dict) -> int:
    os.environ.setdefault("MEDSAM_GUI_HUGE_PAGES", "0")  # memory settings of the GUI app
    torch = C.setup_torch(args.threads)
    from napari.qt import get_qapp

    from medsam_gui.app import build_app, install_excepthook
    from medsam_gui.gui import dialogs

    print(f"machine: {C.machine()}")
    print(f"scan: {place['shape'][2]}x{place['shape'][1]}x{place['shape'][0]} int16 (lung1 reflected along z), "
          f"lesion on {place['lesion_slices']} slices, box on source slice {place['slice']}; "
          f"MedSAM: {place['medsam']}")
    if args.trace:
        import tracemalloc

        tracemalloc.start(8)
    sampler = Sampler(0.05, trace=args.trace)
    sampler.stage_name = "a1"
    traced_rows: list[list] = []
    rows: list[list] = []
    notes: list[str] = []
    t_all = time.perf_counter()
    state = {"t": time.perf_counter(), "rss": rss_mib()}

    def settle(timeout: float = 120.0) -> None:
        """Wait until the work a stage started in the background is over: workers, the MedSAM
        input preparation, the Measurements panel's refresh (debounced 400 ms after a label
        edit) and autosave (a snapshot at most every 3 s)."""
        mp = window.panels.measurements
        auto = window.panels.session.autosave
        svc = window.panels.medsam.service

        def idle() -> bool:
            try:
                if c.busy or (mp is not None and (mp._running or mp._timer.isActive())):
                    return False
                if svc is not None and svc.predictor.preparing:
                    return False  # the MedSAM input (uint8 volume) is being prepared
                if auto is not None:
                    st = auto.stats  # a property
                    st = st() if callable(st) else st
                    if st["pending"] or st["writing"] or st["dirty"]:
                        return False
            except RuntimeError:  # Qt objects deleted: the window is closed
                return True
            return True

        pump(app, 0.6)
        try:
            wait_until(app, idle, timeout, "background work (measurements, autosave) to finish")
        except TimeoutError as exc:
            notes.append(str(exc))

    def stage(name: str, extra: str = "") -> None:
        if c is not None and not args.no_settle:
            settle()
        now = time.perf_counter()
        r = rss_mib()
        rows.append([name, f"{now - state['t']:.1f}", f"{r:.0f}", f"{r - state['rss']:+.0f}",
                     f"{max(sampler.stage_peak, r):.0f}", f"{max(sampler.peak, r):.0f}", f"{maxrss_mib():.0f}", extra])
        print(f"  {name}: {now - state['t']:.1f} s, RSS {r:.0f} MiB (stage peak {sampler.stage_peak:.0f}) {extra}",
              flush=True)
        state["t"], state["rss"] = now, r
        if args.trace:
            import tracemalloc

            cur, pk = tracemalloc.get_traced_memory()
            traced_rows.append([name, f"{cur / MiB:.0f}", f"{pk / MiB:.0f}"])
            tracemalloc.reset_peak()
        sampler.new_stage()
        order = ["a1", "a2", "b", "c", "d", "e", "f", "g", "h", ""]
        key = name.split(".")[0]
        sampler.stage_name = order[order.index(key) + 1] if key in order else ""

    rows.append(["start (python + torch imported)", "-", f"{state['rss']:.0f}", "", "", f"{sampler.peak:.0f}",
                 f"{maxrss_mib():.0f}", ""])

    # (a) ------------------------------------------------------------------ window + scan
    scan = tmp / "scan.nii.gz"
    c = None
    app = get_qapp()
    app.setApplicationName("medsam-gui")
    window = build_app(show=True)
    install_excepthook(window.controller)
    window.show()
    c = window.controller
    pump(app, 0.5)
    stage("a1. main window (no scan)")
    orig_open = dialogs.ask_open_file
    dialogs.ask_open_file = lambda *a, **k: str(scan)
    try:
        window.actions["open_scan"].trigger()
    finally:
        dialogs.ask_open_file = orig_open
    wait_until(app, lambda: c.volume is not None and not c.busy, 300, "the scan to open")
    pump(app, 0.5)
    vol = c.volume
    stage("a2. open scan", f"{vol.shape} {vol.array.dtype}")

    # (b) ------------------------------------------------------------------ MedSAM weights
    panel = window.panels.medsam
    panel.background_check.setChecked(False)
    window.actions["load_medsam_weights"].trigger()
    dlg = panel.weights_dialog
    dlg.choose_file(tmp / "medsam_vit_b.pth")  # what "Choose file..." does with the picked file
    wait_until(app, lambda: panel.engine is not None, 600, "MedSAM to load")
    eng = panel.engine
    stage("b. load MedSAM weights", f"{eng.device} {eng.precision}")

    # (c) ------------------------------------------------------------------ background embedding
    o = c.orientation
    sz = int(place["slice"])
    x0, y0, x1, y1 = place["box"]
    m = 3
    d0 = o.index_to_display([sz, max(y0 - m, 0), max(x0 - m, 0)])
    d1 = o.index_to_display([sz, min(y1 + m, vol.shape[1] - 1), min(x1 + m, vol.shape[2] - 1)])
    k = int(round(d0[0]))
    c.set_view("axial")
    c.set_current_slice(0, k)
    pump(app, 0.2)
    svc = panel.service
    n_embed = max(1, int(args.embed))
    panel.neighbours_spin.setValue(int(math.ceil((n_embed - 1) / 2)))
    panel.background_check.setChecked(True)
    wait_until(app, lambda: len(svc.embed_seconds) >= n_embed, 60 * n_embed + 120, f"{n_embed} embeddings")
    panel.background_check.setChecked(False)
    wait_until(app, lambda: svc.scheduler is None or svc.scheduler.wait_idle(0), 300, "the pass in flight")
    pump(app, 0.2)
    secs = [s for _i, s in svc.embed_seconds]
    stage("c. background embedding", f"{len(secs)} slices embedded (--embed {n_embed}), {np.mean(secs):.1f} s/slice")

    # (d) ------------------------------------------------------------------ box -> mask
    c.set_active_label(1)
    panel.activate_box_tool()
    layer = panel.prompts_layer
    painted = []
    panel.slice_painted.connect(lambda a, i: painted.append((a, i)))
    drag(layer, (k, min(d0[1], d1[1]), min(d0[2], d1[2])), (k, max(d0[1], d1[1]), max(d0[2], d1[2])))
    wait_until(app, lambda: bool(painted), 600, "the box's mask")
    n_vox = int(np.count_nonzero(np.take(c.display_labels(), k, axis=0) == 1))
    t = panel.timings[-1]
    stage("d. box -> mask", f"slice {k}: {n_vox} px, decode {t['decode_ms']:.0f} ms")

    # (e) ------------------------------------------------------------------ 3D propagation
    r = int(args.radius)
    n = int(c.display_labels().shape[0])
    panel.propagation_box.from_spin.setValue(max(0, k - r))
    panel.propagation_box.to_spin.setValue(min(n - 1, k + r))
    finished = []
    panel.propagation_finished.connect(lambda s: finished.append(s))
    panel.propagation_box.propagate_button.click()
    wait_until(app, lambda: bool(finished), 120 * (2 * r + 1) + 120, "the propagation")
    stage("e. propagate 3D", f"{finished[-1]}: {len(panel.last_propagation)} slices")

    # (f) ------------------------------------------------------------------ UniverSeg
    up = window.panels.universeg
    window.actions["load_universeg_weights"].trigger()
    udlg = up.weights_dialog
    udlg.choose_file(tmp / "universeg_v1_nf64_ss64_STA.pt")
    wait_until(app, lambda: up.model is not None, 300, "UniverSeg to load")
    up.refresh_support()
    pump(app, 0.3)
    labeled = up.labeled()
    if not labeled:
        raise RuntimeError("no labeled slice to use as UniverSeg support (the box gave an empty mask)")
    want = int(args.targets)
    lo = max(0, labeled[0] - want // 2)
    hi = lo
    while hi < n - 1 and len([i for i in range(min(lo, labeled[0]), max(hi, labeled[-1]) + 1)
                              if i not in labeled]) < want:
        hi += 1
    up.set_range(lo, hi)
    targets = up.planned_targets()
    done_how = []
    up.run_finished.connect(lambda how: done_how.append(how))
    up.segment_button.click()
    wait_until(app, lambda: not up.running and bool(done_how), 60 * len(targets) + 300, "UniverSeg")
    run_info = dict(up.last_run)
    up.accept_button.click()
    pump(app, 0.3)
    stage("f. UniverSeg + accept", f"{done_how[-1]}: {len(targets)} targets, support {len(labeled)} slices "
                                   f"(S = min(16, {len(labeled)})), {run_info.get('seconds') or 0:.0f} s")

    # sizes of what the session holds (before closing)
    sizes = object_sizes(c, panel, up, torch)

    # (g) ------------------------------------------------------------------ export
    out = tmp / "export" / "labels.nii.gz"
    out.parent.mkdir()
    orig_save = dialogs.ask_save_file
    dialogs.ask_save_file = lambda *a, **kw: str(out)
    try:
        window.actions["save_labels_as"].trigger()
    finally:
        dialogs.ask_save_file = orig_save
    wait_until(app, lambda: not c.busy, 300, "the export")
    import SimpleITK as sitk

    rd = sitk.ImageFileReader()
    rd.SetFileName(str(out))
    rd.ReadImageInformation()
    stage("g. export labels (NIfTI)", f"{out.name} {rd.GetSize()} {out.stat().st_size / MiB:.1f} MiB")

    # (h) ------------------------------------------------------------------ close
    window.actions["quit"].trigger()
    pump(app, 1.0)
    try:
        still_open = window.qt_window.isVisible()
    except RuntimeError:  # napari deleted the Qt window: closed
        still_open = False
    if still_open:
        notes.append("File > Quit left the window open; closed with window.close(force=True)")
        window.close(force=True)
    c.shutdown()  # what aboutToQuit calls (done already when the window closed)
    pump(app, 0.5)
    stage("h. close")
    sampler.stop()
    total = time.perf_counter() - t_all

    peak = max(sampler.peak, maxrss_mib())
    print("\n# Memory of a 512x512x300 CT session on the CPU (one process, the real app)\n")
    print(C.table(["stage", "s", "RSS end MiB", "delta MiB", "stage peak MiB", "peak so far MiB", "ru_maxrss MiB",
                   "what"], rows))
    print(f"\npeak RSS: sampled {sampler.peak:.0f} MiB ({sampler.samples} samples at 50 ms), "
          f"ru_maxrss {maxrss_mib():.0f} MiB; total {total:.0f} s")
    verdict = "PASS" if peak <= BUDGET_MIB else "FAIL"
    print(f"budget: {peak:.0f} MiB of {BUDGET_MIB} MiB -> {verdict}"
          f"{' (stages overlapping: --no-settle)' if args.no_settle else ' (each stage waited for its background work)'}")
    print("\n# What the session held before export\n")
    print(C.table(["object", "MiB", "note"], sizes))
    for nline in notes:
        print(f"note: {nline}")
    if args.trace:
        print("\n# tracemalloc (numpy and Python objects; torch tensors are not seen)\n")
        print(C.table(["stage", "traced at end MiB", "traced peak in stage MiB"], traced_rows))
        print_snapshot(sampler)
    print(f"\nload average at the end: {C.load()}")
    return 0 if verdict == "PASS" else 1


def print_snapshot(sampler, top: int = 12) -> None:
    """The largest live allocations (grouped by traceback) in the snapshot taken nearest to the
    overall RSS peak, with the frames inside medsam_gui / napari / numpy shown."""
    snap = sampler.peak_snapshot
    if snap is None:
        return
    print(f"\n# allocations alive at RSS {sampler.peak_snapshot_rss:.0f} MiB (stage {sampler.peak_snapshot_stage})\n")
    stats = snap.statistics("traceback")
    total = sum(st.size for st in stats)
    print(f"traced total {total / MiB:.0f} MiB in {len(stats)} tracebacks; largest:")
    for st in stats[:top]:
        frames = [f for f in st.traceback if "medsam_gui" in f.filename or "napari" in f.filename
                  or "bench" in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-4:])) or \
            f"{Path(st.traceback[-1].filename).name}:{st.traceback[-1].lineno}"
        print(f"  {st.size / MiB:7.1f} MiB  {st.count:6d} blocks  {where}")


def object_sizes(c, panel, up, torch) -> list[list]:
    from medsam_gui.gui import undo as undo_mod

    rows = []
    vol = c.volume
    rows.append(["scan array (volume.array)", f"{vol.array.nbytes / MiB:.0f}", f"{vol.array.dtype} {vol.shape}"])
    rows.append(["MedSAM input uint8 volume", "0", "not kept: each slice is windowed when it is embedded"])
    lab = np.asarray(c.display_labels())
    rows.append(["labels layer", f"{lab.nbytes / MiB:.0f}", f"{lab.dtype}"])
    try:
        hb = undo_mod.history_nbytes(c.labels_layer)
        rows.append(["undo/redo history", f"{hb / MiB:.1f}", "budget 1024 MiB"])
    except Exception as exc:  # noqa: BLE001
        rows.append(["undo/redo history", "?", str(exc)[:60]])
    st = panel.service.cache.stats()
    rows.append(["embedding cache (memory level)", f"{st.memory_bytes / MiB:.0f}",
                 f"{st.memory_items} slices float16, budget {panel.service.cache.memory_budget / MiB:.0f} MiB"])
    memo = list(getattr(panel.service, "_memo", {}).values())
    rows.append(["embedding fp32 memo", f"{tensor_bytes(memo) / MiB:.0f}", f"{len(memo)} slices float32 (max 16)"])
    eng = panel.engine
    if eng is not None:
        ps = list(eng.model.parameters()) + list(eng.model.buffers())
        rows.append(["MedSAM model tensors", f"{tensor_bytes(ps) / MiB:.0f}", f"{eng.precision}"])
        fe = getattr(eng, "_fast_enc", None)
        if fe is not None:
            extra = []
            for v in vars(fe).values():
                if isinstance(v, dict):
                    extra += [t for t in v.values() if isinstance(t, torch.Tensor)]
            rows.append(["fast encoder extra tensors", f"{tensor_bytes(extra) / MiB:.0f}",
                         "cached rel-pos tensors etc. (shared weights not counted)"])
    if up.model is not None:
        rows.append(["UniverSeg model tensors", f"{tensor_bytes(list(up.model.parameters())) / MiB:.1f}", ""])
    return rows


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embed", type=int, default=6, help="slices embedded in the background (stage c)")
    ap.add_argument("--radius", type=int, default=2, help="3D propagation: lesion slice +- radius (stage e)")
    ap.add_argument("--targets", type=int, default=40, help="UniverSeg target slices (stage f)")
    ap.add_argument("--slices", type=int, default=300, help="slices of the tiled CT")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-settle", action="store_true",
                    help="start each stage at once, without waiting for the previous stage's background work "
                         "(measurements, autosave): transients overlap as when a user goes on quickly")
    ap.add_argument("--trace", action="store_true",
                    help="diagnosis: tracemalloc per stage and the largest allocations near the RSS peak (slower)")
    ap.add_argument("--prepare", help=argparse.SUPPRESS)  # child: write the inputs into this folder
    args = ap.parse_args()
    if args.prepare:
        print(json.dumps(prepare(Path(args.prepare), args.slices)))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="medsam_memory_"))
    try:
        t0 = time.perf_counter()
        env = dict(os.environ, MEDSAM_GUI_HOME=str(tmp / "home"))
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--prepare", str(tmp),
                              "--slices", str(args.slices)], env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            return 2
        place = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"inputs prepared in a child process in {time.perf_counter() - t0:.0f} s "
              f"(scan {(tmp / 'scan.nii.gz').stat().st_size / MiB:.0f} MiB .nii.gz)")
        os.environ["MEDSAM_GUI_HOME"] = str(tmp / "home")  # settings, autosave, disk cache: all temporary
        return run(args, tmp, place)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
