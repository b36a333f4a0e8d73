"""Hermes-R on the CPU: one 128^3 window and the demo CT end to end, with peak memory.

    python3 bench/hermes.py [--threads 2] [--checkpoint hermes_r.pth] [--golden PATH] [--skip-window]

1. One 128^3 window (the demo CT's first sliding window, 13 BCV tasks + the null token): the
   straightforward eager forward (contiguous float32 under ``torch.no_grad``, as the official
   inference runs it) against the same network in ``channels_last_3d`` under
   ``torch.inference_mode``, in the same run; seconds, ratio, max |logit difference|.
2. The demo CT (tests/data/totalsegmentator_example_ct) with the 13 BCV structures through the
   steps of ``HermesSegmenter.segment`` (prepare, sliding window, back to the scan grid), each
   timed, and the full check against the official golden file (../shared/golden): all 13 masks
   on the 1.5 mm grid (mismatches must be borderline voxels), liver probabilities, mean
   probability per channel.

Without ``--checkpoint`` the golden-rule weights (crc32-randn-v1, seed 2024) are rebuilt from
tests/golden/hermes_seed2024_crop.pt: timings are the real model's, masks are noise (they test
the arithmetic). Peak RSS is sampled from /proc/self/statm every 20 ms.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _common import ROOT, machine, setup_torch

sys.path.insert(0, str(ROOT / "tests"))

SHARED_GOLDEN = ROOT.parent / "shared" / "golden" / "hermes_seed2024.pt"


class PeakRss:
    """Peak resident memory (MiB) while the block runs."""

    def __enter__(self):
        self.peak, self._run = 0, True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while self._run:
            with open("/proc/self/statm") as fh:
                self.peak = max(self.peak, int(fh.read().split()[1]) * page / 2**20)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._run = False
        self._thread.join()


def network(checkpoint: str | None):
    from medsam_gui.models.hermes.network import build_hermes_r, hermes_r

    if checkpoint:
        return hermes_r(checkpoint), f"checkpoint {checkpoint}"
    import hermes_helpers as H

    net = build_hermes_r()
    net.load_state_dict(H.state_dict(), strict=True)
    return net.eval(), "golden-rule weights (seed 2024)"


def bench_window(torch, net, volume, tgt, mod) -> None:
    x = torch.from_numpy(np.ascontiguousarray(volume[:128, :128, :128]))[None, None]
    with PeakRss() as mem_a, torch.no_grad():
        t0 = time.perf_counter()
        base, _ = net(x, tgt, mod)
        t_base = time.perf_counter() - t0
    net_cl = net.to(memory_format=torch.channels_last_3d)
    with PeakRss() as mem_b, torch.inference_mode():
        t0 = time.perf_counter()
        ours, _ = net_cl(x.contiguous(memory_format=torch.channels_last_3d), tgt, mod)
        t_ours = time.perf_counter() - t0
    net.to(memory_format=torch.contiguous_format)
    print("\n| one 128^3 window, 14 tokens | seconds | peak RSS MiB |\n|---|---|---|")
    print(f"| eager float32 (baseline) | {t_base:.1f} | {mem_a.peak:.0f} |")
    print(f"| channels_last_3d, inference_mode | {t_ours:.1f} | {mem_b.peak:.0f} |")
    print(f"ratio baseline/channels_last {t_base / t_ours:.2f}; max |logit diff| "
          f"{(base - ours).abs().max().item():.2e}")


def compare_with_golden(golden: Path, prepared, centred: np.ndarray) -> None:
    """The official sliding window's masks / probabilities (full golden file) against ours."""
    import torch

    if not golden.exists():
        print(f"(no {golden}: the golden comparison is skipped)")
        return
    g = torch.load(golden, weights_only=True)
    (z0, z1), (y0, y1), (x0, x1) = g["sw_store_region"].tolist()
    ours = centred[:, z0:z1, y0:y1, x0:x1]
    shape = g["sw_masks_shape"].tolist()
    gold = np.unpackbits(g["sw_masks_packbits"].numpy(), count=math.prod(shape)).reshape(shape).astype(bool)
    wrong = (ours[:13] >= 0) != gold
    border = np.abs(ours[:13]) < 1e-3
    print(f"masks vs the official sliding window (1.5 mm grid, 13 x {gold[0].size} voxels): {int(wrong.sum())} "
          f"differ, {int((wrong & ~border).sum())} of them with |p - 0.5| >= 1e-3; golden borderline "
          f"(1e-4) voxels {int(g['sw_borderline_1e-4'].sum())}")
    liver = int(g["sw_prob_channels"][0])
    print(f"liver probability max |diff| {np.abs(ours[liver] + 0.5 - g['sw_probs_f16'][0].float().numpy()).max():.2e} "
          f"(tolerance 1e-3); mean probability per channel max |diff| "
          f"{np.abs(ours.reshape(14, -1).mean(1, dtype=np.float64) + 0.5 - g['sw_prob_mean_all'].numpy()).max():.2e} "
          f"(tolerance 1e-5)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint")
    ap.add_argument("--golden", default=str(SHARED_GOLDEN))
    ap.add_argument("--skip-window", action="store_true", help="only the end-to-end run")
    args = ap.parse_args()
    torch = setup_torch(args.threads)
    import hermes_helpers as H
    from medsam_gui.io.readers import load_volume
    from medsam_gui.models.hermes.catalogue import STRUCTURES
    from medsam_gui.models.hermes.preprocess import prepare, to_source_grid
    from medsam_gui.models.hermes.sliding_window import sliding_window

    print(machine())
    with PeakRss() as mem_load:
        net, what = network(args.checkpoint)
    print(f"weights: {what}; model load peak RSS {mem_load.peak:.0f} MiB")
    ct = load_volume(H.CT)
    bcv = [s for s in STRUCTURES if s.key.endswith("_bcv")]
    tgt = torch.tensor([[s.index for s in bcv] + [-1]])
    if not args.skip_window:
        bench_window(torch, net, prepare(ct, "CT").volume, tgt, torch.tensor([[0]]))

    # the steps of HermesSegmenter.segment, timed one by one, so the 1.5 mm result can be checked
    windows = []
    with PeakRss() as mem:
        t0 = time.perf_counter()
        prepared = prepare(ct, "CT")
        t1 = time.perf_counter()
        with torch.no_grad():
            centred = sliding_window(lambda x: net(x, tgt, torch.tensor([[0]]))[0], prepared.volume, tgt.shape[1],
                                     progress=lambda d, t: windows.append(time.perf_counter()))
        t2 = time.perf_counter()
        inner = tuple(slice(b, n - a) for (b, a), n in zip(prepared.pad, prepared.volume.shape))
        masks = [to_source_grid(centred[(c, *inner)] >= 0, prepared, ct) for c in range(len(bcv))]
        t3 = time.perf_counter()
    print(f"\ndemo CT {ct.shape} (z,y,x) -> {prepared.volume.shape} at 1.5 mm, {len(bcv)} structures: "
          f"{t3 - t0:.1f} s end to end (prepare {t1 - t0:.1f} s, {len(windows)} windows "
          f"{t2 - t1:.1f} s = {(t2 - t1) / max(1, len(windows)):.1f} s each, back to the scan grid "
          f"{t3 - t2:.1f} s); peak RSS {mem.peak:.0f} MiB; foreground fraction {np.mean(masks):.3f}")
    compare_with_golden(Path(args.golden), prepared, centred)


if __name__ == "__main__":
    main()
