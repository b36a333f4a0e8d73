"""Box -> mask shown: prompt encoder + mask decoder + resize + paint into the labels array.

Reference: MedSAMEngine.decode (float32 embedding, the reference decoder call and
post-processing) then ``labels[z][mask] = value``. Ours: the same from the float16 cached
embedding with the dense positional encoding cached (:class:`FastDecoder`), painting only the
mask's bounding box. Both in the same run on the lung CT with boxes jittered around the tumour;
prints p50 / p95 ms and the stage split. The embedding is computed once (one encoder pass).
The napari redraw of the labels layer is not included (GUI; see bench/gui_stall.py).

    python3 bench/decoder.py [--boxes 60] [--checkpoint medsam_vit_b.pth]
"""

from __future__ import annotations

import argparse
import time

import _common as C
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--boxes", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="int8", help="precision of the embedding used (default int8)")
    args = ap.parse_args()
    C.setup_torch(args.threads)
    from medsam_gui.models.fast_encoder import FastDecoder, dice
    from medsam_gui.models.medsam import MedSAMEngine

    sd, what = C.checkpoint_state_dict(args.checkpoint)
    u8, label = C.lung_ct()
    z = C.tumour_slices(label, 1)[0]
    s = np.ascontiguousarray(u8[z])
    eng = MedSAMEngine(sd, device="cpu", precision="fp32")
    fast_eng = MedSAMEngine(sd, device="cpu", precision=args.precision)
    print(f"# Box -> mask benchmark\nmachine: {C.machine()}\nweights: {what}; slice z={z} {s.shape}\n")
    emb16 = fast_eng.embed(s).half()  # what the cache holds
    emb32 = emb16.float()
    x0, y0, x1, y1 = C.bbox(label[z])
    rng = np.random.default_rng(0)
    boxes = [(x0 + d[0], y0 + d[1], x1 + d[2], y1 + d[3]) for d in rng.integers(-6, 7, size=(args.boxes, 4))]
    labels = np.zeros(u8.shape, np.uint8)
    fd = FastDecoder(eng)
    for b in boxes[:3]:  # warm-up
        eng.decode(emb32, b, s.shape); fd.decode(emb16, b, s.shape)

    ref_t, ours_t, stages, dices = [], [], {"prompt+decoder": [], "resize+threshold": [], "paint": []}, []
    for b in boxes:
        t0 = time.perf_counter()
        m = eng.decode(emb32, b, s.shape)
        labels[z][m] = 1
        ref_t.append(time.perf_counter() - t0)
        labels[z] = 0
        t0 = time.perf_counter()
        logits = fd.decode_logits(emb16, b, s.shape)
        t1 = time.perf_counter()
        m2, (r0, r1, c0, c1) = fd.postprocess(logits, s.shape)
        t2 = time.perf_counter()
        view = labels[z, r0:r1, c0:c1]
        view[m2[r0:r1, c0:c1]] = 1
        t3 = time.perf_counter()
        ours_t.append(t3 - t0)
        stages["prompt+decoder"].append(t1 - t0)
        stages["resize+threshold"].append(t2 - t1)
        stages["paint"].append(t3 - t2)
        dices.append(dice(m2, m))
        labels[z] = 0
    rows = [["reference (fp32 embedding, engine.decode, full-slice paint)", f"{C.pct(ref_t, 50) * 1e3:.1f}",
             f"{C.pct(ref_t, 95) * 1e3:.1f}", "1.00x"],
            ["ours (fp16 cached embedding, FastDecoder, bbox paint)", f"{C.pct(ours_t, 50) * 1e3:.1f}",
             f"{C.pct(ours_t, 95) * 1e3:.1f}", f"{C.pct(ref_t, 50) / C.pct(ours_t, 50):.2f}x"]]
    print(C.table(["path", "p50 ms", "p95 ms", "speed-up (p50)"], rows))
    print()
    print(C.table(["our stage", "p50 ms", "p95 ms"],
                  [[k, f"{C.pct(v, 50) * 1e3:.2f}", f"{C.pct(v, 95) * 1e3:.2f}"] for k, v in stages.items()]))
    print(f"\nmask Dice ours vs reference over {len(boxes)} boxes: min {min(dices):.4f}, "
          f"mean {np.mean(dices):.4f}; foreground fraction {m.mean():.4f}")
    print(f"load average at the end: {C.load()}")


if __name__ == "__main__":
    main()
