"""MedSAM2 on this machine: per-slice encoder, one propagation step (memory attention +
decoder + memory encoder, encoder excluded), and a crop of the lung CT end to end (box on
the lesion's largest slice, forward + backward passes, union, largest component), with the
peak memory of the process.

Without ``--checkpoint`` the golden rule weights (crc32-randn-v1, seed 2024, object-score
bias +1 as in tests/golden) are used: timings are the real model's, masks are noise.

    python3 bench/medsam2.py [--slices 30] [--threads 2] [--checkpoint MedSAM2_latest.pt]
"""

from __future__ import annotations

import argparse
import math
import time
import zlib

import _common as C
import numpy as np


def rule_state_dict(torch):
    from medsam_gui.models.medsam2.engine import expected_shapes

    sd = {}
    for key, shape in expected_shapes().items():
        g = torch.Generator().manual_seed((2024 * 1000003 + zlib.crc32(key.encode())) % 2**63)
        last = key.rsplit(".", 1)[-1]
        if len(shape) <= 1:
            t = (1.0 if last == "weight" else 0.0) + torch.randn(shape, generator=g) * 0.1
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        sd[key] = t
    sd["sam_mask_decoder.pred_obj_score_head.layers.2.bias"] += 1.0
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slices", type=int, default=30, help="slices handed to the model end to end")
    ap.add_argument("--encoder-slices", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="propagation steps timed alone")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch = C.setup_torch(args.threads)
    from medsam_gui.io import load_volume
    from medsam_gui.models.medsam2.engine import MedSAM2Engine
    from medsam_gui.models.medsam2.preprocessing import slice_to_input, window_to_uint8
    from medsam_gui.models.medsam2.propagator import FeatureCache, VolumePropagator

    print(C.machine())
    with C.PeakRSS() as rss_load:
        t_load, eng = C.timed(MedSAM2Engine, args.checkpoint or rule_state_dict(torch), device=args.device)
    print(f"weights: {args.checkpoint or 'golden rule weights (seed 2024)'}; engine built in {t_load:.1f} s, "
          f"RSS {rss_load.peak:.0f} MiB")
    hu = np.asarray(load_volume(C.LUNG_CT).array)
    label = np.asarray(load_volume(C.LUNG_LABEL).array) > 0
    u8 = window_to_uint8(hu, (-1500, 0))
    key = int(np.argmax(label.sum(axis=(1, 2))))
    box = C.bbox(label[key])
    nz = u8.shape[0]
    n = min(args.slices, nz)
    z0 = max(0, min(key - n // 2, nz - n))
    z1 = z0 + n - 1
    model = eng.model

    enc = []
    for z in range(key, key + args.encoder_slices):
        x = slice_to_input(u8[z]).unsqueeze(0)
        enc.append(C.timed(model.encode_image, x)[0])
    print(f"encoder (1 slice, 512x512): {np.median(enc):.2f} s median of {len(enc)} ({', '.join(f'{v:.2f}' for v in enc)})")

    cache = FeatureCache(None)
    k = 0  # key first: every step is a forward step, the memory grows by one frame each time
    p = VolumePropagator(model, args.steps + 1, lambda i: slice_to_input(u8[key - k + i]), u8.shape[1:], cache=cache)
    for i in range(args.steps + 1):
        p.features(i)  # encoder outside the timed steps
    step_times = []
    with torch.inference_mode():
        p.add_box(k, box)
        frames = p.propagate()
        next(frames)  # the key slice (its memory is encoded here)
        while True:
            t = time.perf_counter()
            fo = next(frames, None)
            if fo is None:
                break
            step_times.append(time.perf_counter() - t)
    print(f"propagation step without encoder: {np.median(step_times):.2f} s median of {len(step_times)} "
          f"({', '.join(f'{v:.2f}' for v in step_times)}; memory of 1..{min(len(step_times), 6)} frames + pointers)")

    eng.clear_cache()
    with C.PeakRSS() as rss:
        t = time.perf_counter()
        job = eng.segmentation(hu, key, box, window=(-1500, 0), z_range=(z0, z1))
        first = None
        for upd in job:
            if first is None:
                first = time.perf_counter() - t
        wall = time.perf_counter() - t
    enc_s = job.timings["encode_s"]
    print(f"end to end, {n} slices (z {z0}..{z1}, key {key}): {wall:.1f} s ({wall / n:.2f} s/slice; "
          f"{job.timings['steps']} slice results, {len(enc_s)} encoder passes, {sum(enc_s):.1f} s in the encoder), "
          f"first slice shown after {first:.1f} s; lesion mask {int(job.result.sum())} voxels on "
          f"{int(job.result.any(axis=(1, 2)).sum())} slices")
    print(f"peak RSS during the run: {rss.peak:.0f} MiB (process), load average now {C.load()}")


if __name__ == "__main__":
    main()
