"""3D propagation of the lung CT lesion end to end, the reference path against ours.

From one key box (the tumour's box on its largest slice) core.propagation.propagate follows the
lesion up and down; every slice it visits is embedded (reference: fp32 per slice; ours: the
fast precision) and decoded. ``--radius`` limits the slices around the key slice (default 1,
i.e. 3 slices: each reference encoder pass costs 10-50 s on 2 busy cores); ``--radius 0``
propagates without limits. Prints the wall time, seconds per slice, the slices reached and the
Dice between the two 3D results.

    python3 bench/propagation.py [--radius 3] [--precision int8] [--checkpoint medsam_vit_b.pth]
"""

from __future__ import annotations

import argparse
import time

import _common as C
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--radius", type=int, default=1)
    ap.add_argument("--precision", default=None, help="ours (default int8 on CPU, bf16 on CUDA)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch = C.setup_torch(args.threads)
    from medsam_gui.core.propagation import propagate
    from medsam_gui.models.agreement import dice
    from medsam_gui.models.fast_decoder import FastDecoder
    from medsam_gui.models.medsam import MedSAMEngine

    sd, what = C.checkpoint_state_dict(args.checkpoint)
    u8, label = C.lung_ct()
    z = C.tumour_slices(label, 1)[0]
    key = {z: C.bbox(label[z])}
    limits = None if args.radius <= 0 else (max(0, z - args.radius), min(u8.shape[0] - 1, z + args.radius))
    print(f"# Propagation benchmark\nmachine: {C.machine()}\nweights: {what}; key slice {z}, limits {limits}\n")
    rows, vols = [], {}
    for name in ("reference", "ours"):
        eng = MedSAMEngine(sd, device=args.device, precision="fp32" if name == "reference" else (
            args.precision or ("bf16" if torch.cuda.is_available() and args.device != "cpu" else "int8")))
        dec = FastDecoder(eng) if name == "ours" else None
        embs = {}
        enc_t = []

        def segment(i, box, embs=embs, eng=eng, dec=dec, enc_t=enc_t):
            if i not in embs:
                t = time.perf_counter()
                embs[i] = eng.embed_slice(np.ascontiguousarray(u8[i]))
                enc_t.append(time.perf_counter() - t)
            if dec is not None:
                return dec.decode(embs[i].half(), box, u8[i].shape)
            return eng.decode(embs[i], box, u8[i].shape)

        out = np.zeros(u8.shape, bool)
        t0 = time.perf_counter()
        if name == "ours":
            eng._fast_encoder()  # one-off build, excluded from the per-slice figure below
        t_build = time.perf_counter() - t0
        for r in propagate(u8.shape, key, segment, limits=limits):
            out[r.index] = r.mask
        total = time.perf_counter() - t0
        vols[name] = out
        n = len(embs)
        rows.append([f"{name} ({eng.precision})", n, f"{total:.1f}", f"{t_build:.1f}", f"{(total - t_build) / max(n, 1):.2f}",
                     int(out.sum())])
    ratio = float(rows[0][4]) / max(float(rows[1][4]), 1e-9)
    print(C.table(["path", "slices", "total s", "build s", "s/slice", "voxels"], rows))
    print(f"\nspeed-up per slice: {ratio:.2f}x; 3D Dice ours vs reference: {dice(vols['ours'], vols['reference']):.4f}")
    print(f"load average at the end: {C.load()}")


if __name__ == "__main__":
    main()
