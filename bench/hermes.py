"""Hermes-R on the CPU: one 128^3 window and the demo CT end to end, with peak memory.

    python3 bench/hermes.py [--threads 2] [--checkpoint hermes_r.pth] [--golden PATH] [--skip-window]

1. One 128^3 window (the demo CT's first sliding window, 13 BCV tasks + the null token): the
   straightforward eager forward (the official structure: concatenation before each up stage,
   every skip kept to the end) against ``HermesUNet.forward`` (no concatenation, skips freed as
   used), same modules and weights, same run; seconds, ratio, peak RSS, max |logit difference|.
   (``channels_last_3d`` was tried: ~10-20 % slower and more memory on this CPU.)
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


def eager_forward(torch, net, x, tgt, mod):
    """The straightforward eager forward (the official structure: torch.cat before each up
    stage, every skip kept to the end) over the same modules; logits only."""
    import torch.nn.functional as F

    def up(stage, low, skip):
        low = F.interpolate(low, size=skip.shape[2:], mode="trilinear", align_corners=True)
        return stage.conv(torch.cat([skip, low], dim=1))

    n = tgt.shape[1]
    x1 = net.inc(x)
    x2 = net.down1(x1)
    x3, p2 = net.prior_init_fuse_2(net.down2(x2), tgt, mod)
    x4, p3 = net.prior_init_fuse_3(net.down3(x3), tgt, mod)
    x5, p4 = net.prior_init_fuse_4(net.down4(x4), tgt, mod)
    out, p5 = net.prior_fuse_5(up(net.up1, x5, x4), tgt, mod)
    out, p6 = net.prior_fuse_6(up(net.up2, out, x3), tgt, mod)
    out = up(net.up4, up(net.up3, out, x2), x1)
    return net.out(out, [p[:, :n] for p in (p2, p3, p4, p5, p6)])


def bench_window(torch, net, volume, tgt, mod) -> None:
    x = torch.from_numpy(np.ascontiguousarray(volume[:128, :128, :128]))[None, None]
    with PeakRss() as mem_a, torch.no_grad():
        t0 = time.perf_counter()
        base = eager_forward(torch, net, x, tgt, mod)
        t_base = time.perf_counter() - t0
    with PeakRss() as mem_b, torch.no_grad():
        t0 = time.perf_counter()
        ours, _ = net(x, tgt, mod)
        t_ours = time.perf_counter() - t0
    print("\n| one 128^3 window, 14 tokens | seconds | peak RSS MiB |\n|---|---|---|")
    print(f"| straightforward eager forward (baseline) | {t_base:.1f} | {mem_a.peak:.0f} |")
    print(f"| ours (HermesUNet.forward) | {t_ours:.1f} | {mem_b.peak:.0f} |")
    print(f"time ratio baseline/ours {t_base / t_ours:.2f}; max |logit diff| {(base - ours).abs().max().item():.2e}")


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
