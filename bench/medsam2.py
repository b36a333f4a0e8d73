"""MedSAM2 on this machine: per-slice encoder, one propagation step (memory attention +
decoder + memory encoder, encoder excluded), and a crop of the lung CT end to end (box on
the lesion's largest slice, forward + backward passes, union, largest component), with the
peak memory of the process. In the same run, the baseline: the slice-by-slice method (core
propagation: each slice re-prompted with a box grown from the previous mask) with LiteMedSAM's
fast path over the same z-range, and MedSAM ViT-B's per-slice encoder time for scale (its full
run is that time times the slices visited; ``--vit-b-slices 0`` skips it).

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
    ap.add_argument("--vit-b-slices", type=int, default=1, help="MedSAM ViT-B encoder passes timed (0: none)")
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
    baseline(torch, hu, label, key, box, (z0, z1), job.result, args.vit_b_slices, wall)


def baseline(torch, hu, label, key, box, z_range, medsam2_mask, vit_b_slices, medsam2_wall):
    """The slice-by-slice method on the same lesion and z-range (LiteMedSAM fast path, random
    weights seed 0), and MedSAM ViT-B's encoder per slice."""
    from medsam_gui.core.intensity import volume_to_uint8
    from medsam_gui.core.propagation import propagate
    from medsam_gui.models.agreement import dice
    from medsam_gui.models.litemedsam import LiteMedSAMEngine, build_litemedsam
    from medsam_gui.models.medsam import MedSAMEngine

    u8 = volume_to_uint8(hu, "CT", (-160.0, 240.0))
    torch.manual_seed(0)
    lite = LiteMedSAMEngine({k: v.detach().clone() for k, v in build_litemedsam().state_dict().items()},
                            device="cpu", precision="fast")
    lite.embed([np.ascontiguousarray(u8[key])])  # build + warm-up, excluded
    out = np.zeros(u8.shape, bool)
    embs = {}

    def segment(i, b):
        if i not in embs:
            embs[i] = lite.embed([np.ascontiguousarray(u8[i])])[0]
        return lite.decode(embs[i], b, u8[i].shape)

    t = time.perf_counter()
    for r in propagate(u8.shape, {key: box}, segment, limits=z_range):
        out[r.index] = r.mask
    wall = time.perf_counter() - t
    print(f"baseline, slice by slice with LiteMedSAM (fast path, random weights): {wall:.1f} s for "
          f"{len(embs)} slices visited ({wall / max(len(embs), 1):.2f} s/slice); MedSAM2 end to end took "
          f"{medsam2_wall:.1f} s ({medsam2_wall / max(wall, 1e-9):.2f}x the baseline); "
          f"3D Dice between the two (noise weights, for orientation only): {dice(out, medsam2_mask):.3f}")
    if vit_b_slices:
        sd, _ = C.checkpoint_state_dict(None)
        vit = MedSAMEngine(sd, device="cpu", precision="fp32")
        times = [C.timed(vit.embed_slice, np.ascontiguousarray(u8[key + i]))[0] for i in range(vit_b_slices)]
        per = float(np.median(times))
        print(f"baseline, MedSAM ViT-B (fp32, the reference path): encoder {per:.2f} s/slice, so about "
              f"{per * len(embs):.0f} s for the {len(embs)} slices the slice-by-slice method visits")


if __name__ == "__main__":
    main()
