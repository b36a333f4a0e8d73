"""Shared helpers for the bench/ scripts: data, checkpoints, timing, memory, tables.

Run any script from the repository root: ``python3 bench/<name>.py [--help]``.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = ROOT / "tests" / "data"
LUNG_CT = DATA / "lung_ct" / "lung1_image.nrrd"
LUNG_LABEL = DATA / "lung_ct" / "lung1_label.nrrd"


def setup_torch(threads: int | None):
    """Threads for torch, and the app's memory tuning (medsam_gui.runtime.tune_memory: large
    tensors on transparent huge pages), which applies to the reference path and ours alike;
    ``MEDSAM_GUI_MALLOC=system`` measures both without it."""
    from medsam_gui.runtime import tune_memory

    huge = os.environ.get("MEDSAM_GUI_HUGE_PAGES", "1") != "0"
    tuned = tune_memory(huge_pages=huge)
    print("memory: " + ("large tensors on transparent huge pages (as the CLI)" if tuned else
                        "no huge pages (as the GUI)" if os.environ.get("MEDSAM_GUI_MALLOC") != "system"
                        else "system default"))
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return torch


def machine() -> str:
    """One line describing this machine and its load (for docs/benchmarks.md)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {gpu}; load average {load()}")


def load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def checkpoint_state_dict(path: str | None):
    """The MedSAM weights: the file at ``path`` (validated), else random ViT-B weights with
    seed 0 (the same as tests/medsam_fixtures.py) - timings are identical, masks are noisy."""
    import torch

    if path:
        from medsam_gui.models.medsam import load_medsam_state_dict

        return load_medsam_state_dict(path), f"checkpoint {path}"
    from medsam_gui.models.sam_loader import build_sam_vit_b

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = build_sam_vit_b()
    torch.random.set_rng_state(state)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, "random ViT-B weights (seed 0)"


def lung_ct():
    """(uint8 volume (z, y, x) windowed like the reference (CT 40/400), label (z, y, x) bool)."""
    from medsam_gui.core.intensity import default_bounds, volume_to_uint8
    from medsam_gui.io import load_volume

    vol = load_volume(LUNG_CT)
    lab = load_volume(LUNG_LABEL)
    u8 = volume_to_uint8(vol.array, "CT", default_bounds(vol.array, "CT"))
    return u8, np.asarray(lab.array) > 0


def bbox(mask2d: np.ndarray):
    rows = np.flatnonzero(mask2d.any(1))
    cols = np.flatnonzero(mask2d.any(0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def tumour_slices(label: np.ndarray, n: int) -> list[int]:
    """``n`` slice indices spread over the lesion (largest-area slice first)."""
    z = np.flatnonzero(label.any(axis=(1, 2)))
    area = label.sum(axis=(1, 2))
    best = int(np.argmax(area))
    spread = [int(v) for v in np.linspace(z[0], z[-1], num=max(n, 2)).round()]
    out = [best] + [v for v in spread if v != best]
    return out[:n]


class PeakRSS:
    """Peak resident memory (MiB) of this process while the ``with`` block runs (sampled
    every 5 ms from /proc/self/statm, plus ru_maxrss as a floor on Linux)."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as fh:
                pages = int(fh.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _loop(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def table(headers, rows) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    lines = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)
