"""UniverSeg on the CPU/GPU: seconds per target slice at S = 8, 16, 32, 64, and a whole scan.

Reference: the UniverSeg v1 network (golden-exact) through incontext.segment_rest with its
default batching. Variants measured in the same run: channels_last weights and activations,
and the batch size. Random weights (seed 1234) unless --checkpoint; timings do not depend on
the weights. Targets/support: lung CT slices windowed 40/400, resized to 128 x 128.

    python3 bench/universeg.py                 # ~2-4 min on 2 cores
    python3 bench/universeg.py --targets 8 --whole-scan-S 16
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
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch = C.setup_torch(args.threads)
    from medsam_gui.models import incontext as ic
    from medsam_gui.models.universeg import universeg_v1

    torch.manual_seed(1234)
    model = universeg_v1(args.checkpoint)
    dev = torch.device(args.device)
    u8, label = C.lung_ct()
    vol = u8.astype(np.float32)
    print(f"# UniverSeg benchmark\nmachine: {C.machine()}\nscan: lung CT {u8.shape}\n")
    n = u8.shape[0]
    rows = []
    for S in [int(s) for s in args.sizes.split(",")]:
        sup_idx = list(np.linspace(0, n - 1, S).round().astype(int) % n)
        images = np.stack([vol[i] for i in sup_idx])
        masks = np.stack([label[i] | (u8[i] > 200) for i in sup_idx])  # non-empty masks
        support = ic.prepare_support(images, masks, (0.0, 255.0), indices=list(range(S)))
        tg = list(range(args.targets))
        for name, cl in (("reference", False), ("channels_last", True)):
            m = model.to(memory_format=torch.channels_last) if cl else model.to(memory_format=torch.contiguous_format)
            ic.segment_rest(vol, None, 1, model=m, bounds=(0.0, 255.0), support=support, support_size=S,
                            targets=tg[:1], device=dev)  # warm-up
            t, _ = C.timed(ic.segment_rest, vol, None, 1, model=m, bounds=(0.0, 255.0), support=support,
                           support_size=S, targets=tg, device=dev)
            rows.append([S, name, len(tg), f"{t / len(tg):.3f}", f"{t / len(tg) * 48:.1f}"])
        model.to(memory_format=torch.contiguous_format)
    print(C.table(["S", "path", "targets", "s/target", "est. 48 slices s"], rows))
    if args.whole_scan_S:
        S = args.whole_scan_S
        sup_idx = list(np.linspace(0, n - 1, S).round().astype(int))
        images = np.stack([vol[i] for i in sup_idx])
        masks = np.stack([label[i] | (u8[i] > 200) for i in sup_idx])
        support = ic.prepare_support(images, masks, (0.0, 255.0), indices=list(range(S)))
        with C.PeakRSS() as mem:
            t, _ = C.timed(ic.segment_rest, vol, None, 1, model=model, bounds=(0.0, 255.0), support=support,
                             support_size=S, targets=list(range(n)), device=dev)
        print(f"\nwhole scan: {n} target slices at S={S}: {t:.1f} s ({t / n:.3f} s/target), peak RSS {mem.peak:.0f} MiB")
    print(f"load average at the end: {C.load()}")


if __name__ == "__main__":
    main()
