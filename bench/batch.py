"""Cohort batches on Dask (``medsam-gui batch``): cases per minute with 1 and 2 local workers, and
the model loading a worker saves against one process per case.

    python3 bench/batch.py [--cases 8] [--workers 1,2] [--checkpoint lite_medsam.pth]

The cohort is the three MSD hippocampus MR scans repeated: each case is a LiteMedSAM box on two
axial slices (a box and a RECIST line, no propagation), so the figure is dominated by what a
batch adds around the model (start-up, scan reading, outputs). Without ``--checkpoint`` the
golden random-weight LiteMedSAM (tests/litemedsam_helpers.py) is used: timings are the real
model's. "One process per case" is measured as a fresh ``python3`` that imports medsam-gui and
loads the model, once, times the number of cases.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, ROOT, load, machine, table

sys.path.insert(0, str(ROOT / "tests"))


def cohort(folder: Path, n: int) -> Path:
    from medsam_gui.core.prompts import Box, Prompt, box_corners
    from medsam_gui.core.prompts_file import PromptsFile, ScanGrid, write_prompts_file
    from medsam_gui.io import load_volume

    rows = []
    for i in range(n):
        scan = DATA / "msd_hippocampus" / f"hippocampus_{('001', '003', '367')[i % 3]}_image.nii.gz"
        vol = load_volume(scan)
        z = vol.shape[0] // 2
        prompts = (Prompt("box", 1, box_corners(0, z - 2, Box(6, 20, 30, 40))),
                   Prompt("recist", 2, np.array([[z + 3, 20, 10], [z + 3, 30, 24]], float)))
        write_prompts_file(folder / f"c{i}.json", PromptsFile(ScanGrid.of(vol), prompts, None))
        rows.append(f"{scan},boxes,c{i}.json,litemedsam,,c{i}")
    path = folder / "cohort.csv"
    path.write_text("scan,task,input,engine,label,out\n" + "\n".join(rows) + "\n")
    return path


def process_per_case(checkpoint: Path) -> float:
    """Seconds for a fresh interpreter to import medsam-gui and load LiteMedSAM (what one process
    per case pays for every case)."""
    code = ("import time; t = time.perf_counter(); from medsam_gui import api; "
            f"api.load_engine('litemedsam', {str(checkpoint)!r}, device='cpu'); print(time.perf_counter() - t)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--checkpoint", help="lite_medsam.pth (default: the golden random weights)")
    args = ap.parse_args()
    from litemedsam_helpers import golden_checkpoint

    from medsam_gui import api

    checkpoint = Path(args.checkpoint) if args.checkpoint else golden_checkpoint()
    print(machine())
    print(f"load before: {load()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        manifest = cohort(Path(tmp), args.cases)
        fresh = process_per_case(checkpoint)
        for n in (int(v) for v in args.workers.split(",")):
            t0 = time.perf_counter()
            summary = api.run_batch(manifest, Path(tmp) / f"out{n}", workers=n,
                                    checkpoints={"litemedsam": str(checkpoint)}, quiet=True)
            wall = time.perf_counter() - t0
            assert summary.ok == args.cases, [r["message"] for r in summary.rows if r["status"] != "ok"]
            loads = [float(r["load_s"]) for r in summary.rows if float(r["load_s"]) > 0]
            case_s = np.median([float(r["seconds"]) for r in summary.rows])
            saved = args.cases * fresh - len(loads) * (np.mean(loads) if loads else 0.0)
            rows.append([n, args.cases, f"{wall:.1f}", f"{args.cases / wall * 60:.1f}", f"{case_s:.2f}",
                         f"{len(loads)} x {np.mean(loads):.2f}", f"{args.cases} x {fresh:.2f}", f"{saved:.1f}"])
    print(table(["workers", "cases", "wall s (cluster start incl.)", "cases/min", "median s/case",
                 "model loads (s)", "one process per case: start+load (s)", "load time saved (s)"], rows))
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
