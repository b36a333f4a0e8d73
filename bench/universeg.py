"""UniverSeg on the CPU/GPU: seconds per target slice at S = 8, 16, 32, 64, and a whole scan.

Reference: the UniverSeg v1 network evaluated block by block as published
(``UniverSeg.forward_reference``: every (target, support) pair through every conv, golden-exact).
Ours: ``UniverSeg.forward_fast`` (the app's default): the same function rewritten exactly -
target-independent level-1 support terms computed once per support set, only the support mean
where the decoder's last block needs no more, strided max-pool - see the comments in
medsam_gui/models/universeg.py. Both through incontext.segment_rest with its default batching,
in the same run. Prints the largest logit difference between the two. Random weights (seed
1234) unless --checkpoint; timings do not depend on the weights. Targets/support: lung CT
slices windowed 40/400, resized to 128 x 128.

    python3 bench/universeg.py                 # ~3-5 min on 2 cores
    python3 bench/universeg.py --sizes 16 --targets 8
    MEDSAM_GUI_MALLOC=system python3 bench/universeg.py   # without the app's malloc tuning
"""

from __future__ import annotations

import argparse

import _common as C
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--targets", type=int, default=4, help="target slices per S (default 4)")
    ap.add_argument("--sizes", default="8,16,32,64")
    ap.add_argument("--whole-scan-S", type=int, default=16, help="S for the whole-scan run (0: skip)")
    ap.add_argument("--whole-scan-reference", action="store_true",
                    help="also run the whole scan on the reference path (slow)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch = C.setup_torch(args.threads)
    from medsam_gui.core.support_set import SupportSet
    from medsam_gui.models import incontext as ic
    from medsam_gui.models.universeg import universeg_v1

    torch.manual_seed(1234)
    model = universeg_v1(args.checkpoint)
    dev = torch.device(args.device)
    u8, label = C.lung_ct()
    vol = u8.astype(np.float32)
    print(f"# UniverSeg benchmark\nmachine: {C.machine()}\nscan: lung CT {u8.shape}\n")
    n = u8.shape[0]

    def support_for(S):
        sup_idx = list(np.linspace(0, n - 1, S).round().astype(int) % n)
        images = np.stack([vol[i] for i in sup_idx])
        masks = np.stack([label[i] | (u8[i] > 200) for i in sup_idx])  # non-empty masks
        return SupportSet.from_slices(images, masks, (0.0, 255.0), indices=list(range(S)))

    def run(fast, S, support, targets):
        model.fast = fast
        return C.timed(ic.segment_rest, vol, None, 1, model=model, bounds=(0.0, 255.0), support=support,
                       support_size=S, targets=targets, device=dev)

    rows = []
    for S in [int(s) for s in args.sizes.split(",")]:
        support = support_for(S)
        tg = list(range(args.targets))
        times = {}
        for fast in (False, True):
            run(fast, S, support, tg[:1])  # warm-up
            times[fast], out = run(fast, S, support, tg)
            if not fast:
                ref_out = out
        diff = max(float(np.abs(out.probabilities[i].astype(np.float32)
                                - ref_out.probabilities[i].astype(np.float32)).max()) for i in tg)
        for fast in (False, True):
            t = times[fast]
            rows.append([S, "ours (forward_fast)" if fast else "reference", len(tg), f"{t / len(tg):.3f}",
                         f"{t / len(tg) * 48:.1f}", f"{times[False] / t:.2f}x",
                         f"{diff:.1e}" if fast else "-"])
    print(C.table(["S", "path", "targets", "s/target", "est. 48 slices s", "speed-up", "max |prob diff|"], rows))
    if args.whole_scan_S:
        S = args.whole_scan_S
        support = support_for(S)
        for fast in ((False, True) if args.whole_scan_reference else (True,)):
            with C.PeakRSS() as mem:
                t, _ = run(fast, S, support, list(range(n)))
            print(f"\nwhole scan, {'ours' if fast else 'reference'}: {n} target slices at S={S}: {t:.1f} s "
                  f"({t / n:.3f} s/target), peak RSS {mem.peak:.0f} MiB")
    print(f"load average at the end: {C.load()}")


if __name__ == "__main__":
    main()
