"""MedSAM image encoder: the reference path against ours, in the same run, on the lung CT.

Reference path: MedSAMEngine(precision="fp32"): skimage order-3 resize on the CPU, the
segment-anything ViT-B encoder in float32, one slice at a time. Ours: the default fast path for
the device (CPU: "int8" = int8 Linear layers + SDPA attention + matrix-product resize; CUDA:
"bf16" = batched slices, GPU preprocessing, bf16 autocast, pinned memory and copy/compute
overlap). Prints seconds per slice, slices per second, the ratio, peak RAM / GPU memory, and the
agreement of ours with the reference: embedding cosine / relative error, and the Dice of the
masks decoded from both for the tumour's box (with each mask's foreground fraction).

    python3 bench/encoder.py                     # CPU, 2 lesion slices (~3-5 min on 2 cores)
    python3 bench/encoder.py --slices 5 --variants   # + the SDPA-only fp32 variant
    python3 bench/encoder.py --device cuda --cuda-slices 512 --checkpoint medsam_vit_b.pth
"""

from __future__ import annotations

import argparse
import time

import _common as C
import numpy as np


def _sync(torch, dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_device(dev_name, sd, u8, label, args, out_rows, q_rows, mem_rows):
    import torch

    from medsam_gui.models.agreement import cosine_and_relerr, dice
    from medsam_gui.models.medsam import MedSAMEngine

    zs = C.tumour_slices(label, args.slices)
    slices = [np.ascontiguousarray(u8[z]) for z in zs]
    ref = MedSAMEngine(sd, device=dev_name, precision="fp32")
    dev = ref.device
    ours_prec = args.precision or ("bf16" if dev.type == "cuda" else "int8")
    fast = MedSAMEngine(sd, device=dev_name, precision=ours_prec)
    # warm-up / one-off build costs (int8 quantisation, CUDA kernels), reported separately
    t_build, _ = C.timed(lambda: fast._fast_encoder())
    if dev.type == "cuda":
        ref.embed_slice(slices[0]); fast.embed(slices[:1]); _sync(torch, dev)
        torch.cuda.reset_peak_memory_stats(dev)

    # reference, one slice at a time
    ref_embs, ref_times = [], []
    with C.PeakRSS() as m_ref:
        for s in slices:
            t0 = time.perf_counter()
            ref_embs.append(ref.embed_slice(s))
            _sync(torch, dev)
            ref_times.append(time.perf_counter() - t0)
    gpu_ref = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None

    # ours: the same slices (CPU); on CUDA a long batched run for throughput
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with C.PeakRSS() as m_fast:
        t0 = time.perf_counter()
        fast_embs = fast.embed(slices)
        _sync(torch, dev)
        t_fast = (time.perf_counter() - t0) / len(slices)
    gpu_fast = None
    thr_note = ""
    if dev.type == "cuda":
        many = [np.ascontiguousarray(u8[i % u8.shape[0]]) for i in range(args.cuda_slices)]
        t0 = time.perf_counter()
        fast.embed(many, batch_size=args.batch)
        _sync(torch, dev)
        t_fast = (time.perf_counter() - t0) / len(many)
        gpu_fast = torch.cuda.max_memory_allocated(dev) / 2**20
        thr_note = f" ({len(many)} slices, batch {args.batch})"
    t_ref = float(np.median(ref_times))
    out_rows.append([dev.type, "reference fp32 (skimage + SAM encoder)", f"{t_ref:.3f}", f"{1 / t_ref:.2f}", "1.00x", "-"])
    out_rows.append([dev.type, f"ours {ours_prec}{thr_note}", f"{t_fast:.3f}", f"{1 / t_fast:.2f}",
                     f"{t_ref / t_fast:.2f}x", f"{t_build:.1f}"])
    mem_rows.append([dev.type, "reference", f"{m_ref.peak:.0f}", "-" if gpu_ref is None else f"{gpu_ref:.0f}"])
    mem_rows.append([dev.type, f"ours {ours_prec}", f"{m_fast.peak:.0f}", "-" if gpu_fast is None else f"{gpu_fast:.0f}"])

    for z, s, a, b in zip(zs, slices, ref_embs, fast_embs):
        cos, rel = cosine_and_relerr(b, a)
        box = C.bbox(label[z])
        m_a = ref.decode(a, box, s.shape)
        m_b = ref.decode(b[None], box, s.shape)
        q_rows.append([dev.type, ours_prec, z, box, f"{cos:.5f}", f"{rel:.4f}", f"{dice(m_b, m_a):.4f}",
                       f"{m_a.mean():.4f}/{m_b.mean():.4f}"])

    if args.bf16_check and dev.type == "cpu":
        # the CUDA default's numerics (bf16 autocast, fast encoder, GPU preprocessing code),
        # emulated on the CPU: slow here (no native bf16), but the agreement is what matters
        from medsam_gui.models.fast_encoder import FastImageEncoder
        from medsam_gui.models.medsam_transforms import preprocess_batch

        sdpa = FastImageEncoder(ref.model.image_encoder, quantize=False)
        x = preprocess_batch(torch.from_numpy(slices[0])[None], "spline")
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            t_v, e_v = C.timed(sdpa, x)
        e_v = e_v.float().half().float()
        cos, rel = cosine_and_relerr(e_v, ref_embs[0])
        box = C.bbox(label[zs[0]])
        m_a = ref.decode(ref_embs[0], box, slices[0].shape)
        m_b = ref.decode(e_v, box, slices[0].shape)
        q_rows.append(["cpu (bf16 emulated)", "bf16 (CUDA default)", zs[0], box, f"{cos:.5f}", f"{rel:.4f}",
                       f"{dice(m_b, m_a):.4f}", f"{m_a.mean():.4f}/{m_b.mean():.4f}"])

    if args.variants and dev.type == "cpu":
        from medsam_gui.models.fast_encoder import FastImageEncoder
        from medsam_gui.models.medsam_transforms import preprocess_fast

        sdpa = FastImageEncoder(ref.model.image_encoder, quantize=False)
        x = preprocess_fast(slices[0])
        with torch.inference_mode():
            t_v, e_v = C.timed(sdpa, x)
        cos, rel = cosine_and_relerr(e_v, ref_embs[0])
        out_rows.append(["cpu", "variant: fp32 + SDPA attention + matrix resize", f"{t_v:.3f}", f"{1 / t_v:.2f}",
                         f"{t_ref / t_v:.2f}x", "-"])
        q_rows.append(["cpu", "fp32+SDPA", zs[0], "-", f"{cos:.7f}", f"{rel:.2e}", "-", "-"])


def preprocessing_rows(u8, n=3):
    import torch

    from medsam_gui.models.medsam_transforms import preprocess_batch, resize_to_1024_fast, resize_to_1024_uint8

    rows = []
    zs = np.linspace(0, u8.shape[0] - 1, n).round().astype(int)
    t_ref, t_fast, ndiff = [], [], 0
    for z in zs:
        s = np.ascontiguousarray(u8[z])
        a = C.timed(resize_to_1024_uint8, s)
        b = C.timed(resize_to_1024_fast, s)
        t_ref.append(a[0]); t_fast.append(b[0])
        ndiff += int((a[1] != b[1]).sum())
    rows.append(["skimage resize (reference)", f"{np.median(t_ref) * 1000:.0f}", "1.00x", "-"])
    rows.append(["matrix resize, numpy float64 (CPU fast path)", f"{np.median(t_fast) * 1000:.0f}",
                 f"{np.median(t_ref) / np.median(t_fast):.1f}x", f"{ndiff} px of {len(zs)}x1024^2"])
    batch = torch.from_numpy(np.ascontiguousarray(u8[zs]))
    t_b, _ = C.timed(preprocess_batch, batch, "spline")
    rows.append([f"preprocess_batch spline, torch CPU, batch {len(zs)} (GPU code)",
                 f"{t_b / len(zs) * 1000:.0f}", f"{np.median(t_ref) / (t_b / len(zs)):.1f}x", "see tests"])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="MedSAM weights (default: random ViT-B, seed 0)")
    ap.add_argument("--slices", type=int, default=2, help="lesion slices timed on each path (default 2)")
    ap.add_argument("--device", default="all", help="cpu, cuda or all (default: cpu, and cuda if present)")
    ap.add_argument("--precision", help="our precision (default: int8 on CPU, bf16 on CUDA)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="CUDA batch size")
    ap.add_argument("--cuda-slices", type=int, default=384, help="slices in the CUDA throughput run")
    ap.add_argument("--variants", action="store_true", help="also time fp32 + SDPA (CPU)")
    ap.add_argument("--bf16-check", action="store_true",
                    help="agreement of the CUDA default (bf16 autocast) emulated on the CPU (slow)")
    args = ap.parse_args()
    torch = C.setup_torch(args.threads)
    sd, what = C.checkpoint_state_dict(args.checkpoint)
    u8, label = C.lung_ct()
    print(f"# MedSAM encoder benchmark\nmachine: {C.machine()}\nweights: {what}; scan: lung CT {u8.shape} (z, y, x)\n")
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows, q_rows, mem_rows = [], [], []
    for d in devices:
        run_device(d, sd, u8, label, args, rows, q_rows, mem_rows)
    print("## Encoder (preprocessing included), per slice\n")
    print(C.table(["device", "path", "s/slice", "slices/s", "speed-up", "one-off build s"], rows))
    print("\n## Agreement of ours with the reference (tumour box on each slice)\n")
    print(C.table(["device", "ours", "z", "box x0,y0,x1,y1", "cosine", "rel. error", "mask Dice",
                   "foreground ref/ours"], q_rows))
    print("\n## Peak memory during the encoder runs (MiB; RSS includes both engines' weights)\n")
    print(C.table(["device", "path", "peak RSS", "peak GPU allocated"], mem_rows))
    print("\n## Preprocessing (resize to 1024), CPU, per slice\n")
    print(C.table(["method", "ms/slice", "speed-up", "pixels differing from reference"], preprocessing_rows(u8)))
    print(f"\nload average at the end: {C.load()}")


if __name__ == "__main__":
    main()
