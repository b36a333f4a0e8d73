"""LiteMedSAM on the CPU: encoder per slice (official-style fp32 forward vs our fast path) next to
MedSAM ViT-B's reference encoder (fp32, one slice), and box -> mask decode times, in one run.

Data: the lung CT (tests/data/lung_ct, CT 40/400 window as the reference), lesion slices.
Weights: random (seed 0) in the official layouts (timings are those of the real models; pass
``--checkpoint lite_medsam.pth`` to use the real LiteMedSAM weights).

- "fp32": ``LiteMedSAMEngine(precision="fp32")``: the official computation (exact INTER_AREA
  preprocessing, the TinyViT modules as the official code runs them), one slice per forward;
- "fast": ``precision="fast"`` (folded batch norms, channels-last convolutions, one-channel
  first layer, in-place biased attention), one slice per forward, then ``--batch`` slices per
  forward; agreement with fp32 (max |difference| of the embeddings, Dice of the masks);
- "bf16": ``precision="bf16"``, the same fast path in bfloat16 through oneDNN's bf16 kernels
  (what "auto" picks on CPUs with bf16 units); relative L2 error of the embeddings, mask Dice;
- MedSAM ViT-B ``MedSAMEngine(precision="fp32")`` on one slice (skimage resize to 1024 + SAM
  ViT-B encoder) for scale;
- decode: box -> bool mask (prompt encoder + mask decoder + crop/resize/sigmoid), p50/p90 ms
  over ``--boxes`` boxes jittered around the lesion's box: segment-anything's decoder ("fp32"),
  MedSAM's FastDecoder in float32 ("fast") and with its image-token products in the "bf16"
  engine's ``decoder_dtype()`` (bfloat16 on CPUs with bf16 units), interleaved, on the engine's
  CPU thread as in the app.

The fp32, fast and bf16 paths run interleaved (fp32, fast, bf16, fp32, ...), so all see the same
machine load; medians (and minima) of the wall time are reported, and the median CPU seconds
of the process per slice (``time.process_time``: with 2 threads ~2x the wall time on an idle
machine), which shared cores disturb less than wall time.

    python3 bench/litemedsam.py                    # ~1-2 min on 2 shared cores
    python3 bench/litemedsam.py --slices 6 --boxes 40 --no-medsam
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as C
import numpy as np


def _timed_cpu(fn, *args):
    """(wall s, process CPU s, result)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=5, help="lesion slices asked for per path (default 5; repeats dropped)")
    ap.add_argument("--batch", type=int, default=2, help="slices per forward for the batched fast run (default 2)")
    ap.add_argument("--boxes", type=int, default=30, help="boxes decoded (default 30)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", help="lite_medsam.pth (default: random weights, seed 0)")
    ap.add_argument("--no-medsam", action="store_true", help="skip the MedSAM ViT-B reference slice")
    args = ap.parse_args()

    torch = C.setup_torch(args.threads)
    from medsam_gui.models.agreement import dice
    from medsam_gui.models.cpu_worker import cpu_worker
    from medsam_gui.models.litemedsam import LiteMedSAMEngine, build_litemedsam, load_litemedsam_state_dict

    print(C.machine())
    def random_weights():
        torch.manual_seed(0)
        return {k: v.detach().clone() for k, v in build_litemedsam().state_dict().items()}

    # weights made on the engines' CPU thread (tensor work here would give this thread an OpenMP
    # pool of its own, which slows that thread's kernels: models/cpu_worker.py)
    if args.checkpoint:
        sd, what = cpu_worker().call(lambda: load_litemedsam_state_dict(args.checkpoint)), f"checkpoint {args.checkpoint}"
    else:
        sd, what = cpu_worker().call(random_weights), "random LiteMedSAM weights (seed 0)"
    print(f"weights: {what}")
    u8, label = C.lung_ct()
    zs = C.tumour_slices(label, args.slices)
    slices = [np.ascontiguousarray(u8[z]) for z in zs]
    hw = slices[0].shape
    ref = LiteMedSAMEngine(sd, device="cpu", precision="fp32")
    fast = LiteMedSAMEngine(sd, device="cpu", precision="fast")
    bf16 = LiteMedSAMEngine(sd, device="cpu", precision="bf16")
    t_build, _ = C.timed(lambda: fast._fast_encoder())
    ref.embed(slices[:1])
    fast.embed(slices[:1])  # warm-up (allocator, kernels)
    bf16.embed(slices[:1])

    t_ref, t_fast, c_ref, c_fast, e_ref, e_fast = [], [], [], [], [], []
    t_bf, c_bf, e_bf = [], [], []
    load0 = C.load()
    for s in slices:
        dt, dc, e = _timed_cpu(ref.embed, [s])
        t_ref.append(dt)
        c_ref.append(dc)
        e_ref.append(e)
        dt, dc, e = _timed_cpu(fast.embed, [s], 1)
        t_fast.append(dt)
        c_fast.append(dc)
        e_fast.append(e)
        dt, dc, e = _timed_cpu(bf16.embed, [s], 1)
        t_bf.append(dt)
        c_bf.append(dc)
        e_bf.append(e)
    dt_batch, dc_batch, e_batch = _timed_cpu(fast.embed, slices, args.batch)
    load1 = C.load()
    e_ref = torch.cat(e_ref)
    e_fast = torch.cat(e_fast)
    e_bf = torch.cat(e_bf)
    rel_bf = float((e_bf - e_ref).norm() / e_ref.norm())
    err = float((e_fast - e_ref).abs().max())
    err_b = float((e_batch - e_ref).abs().max())

    medsam_s = None
    if not args.no_medsam:
        from medsam_gui.models.medsam import MedSAMEngine

        vsd, _ = cpu_worker().call(lambda: C.checkpoint_state_dict(None))
        med = MedSAMEngine(vsd, device="cpu", precision="fp32")
        medsam_s, medsam_c, _ = _timed_cpu(med.embed_slice, slices[0])
        del med, vsd

    # decode: boxes jittered around the lesion's box on the first slice
    rng = np.random.default_rng(0)
    x0, y0, x1, y1 = C.bbox(label[zs[0]])
    boxes = [(x0 + rng.integers(-4, 5), y0 + rng.integers(-4, 5), x1 + rng.integers(-4, 5), y1 + rng.integers(-4, 5))
             for _ in range(args.boxes)]
    emb = e_ref[:1]
    ref.decode(emb, boxes[0], hw)
    for eng in (fast, bf16):
        eng.decode(e_fast[1:2], boxes[0], hw)  # warm-up on another embedding
    t = time.perf_counter()
    fast.prepare_decoder(emb)
    prep_ms = (time.perf_counter() - t) * 1000
    bf16.prepare_decoder(emb)
    dec_ms, fdec_ms, bdec_ms = [], [], []
    for b in boxes:  # interleaved: segment-anything's decoder (fp32), FastDecoder float32, bf16 products
        for eng, times in ((ref, dec_ms), (fast, fdec_ms), (bf16, bdec_ms)):
            t = time.perf_counter()
            eng.decode(emb, b, hw)
            times.append((time.perf_counter() - t) * 1000)
    m_ref = ref.decode(e_ref[:1], boxes[0], hw)
    m_fast = fast.decode(e_fast[:1], boxes[0], hw)
    d = dice(m_ref, m_fast)
    n_sl = min(3, len(slices))
    d_bf = [dice(ref.decode(e_ref[i:i + 1], b, hw), bf16.decode(e_bf[i:i + 1], b, hw))
            for i in range(n_sl) for b in boxes[:3]]

    med_ref, med_fast = statistics.median(t_ref), statistics.median(t_fast)
    cpu_ref, cpu_fast = statistics.median(c_ref), statistics.median(c_fast)
    med_bf, cpu_bf = statistics.median(t_bf), statistics.median(c_bf)
    n = len(slices)
    rows = [
        ["LiteMedSAM fp32 (official computation), 1 slice/forward", f"{med_ref:.2f}", f"{min(t_ref):.2f}",
         f"{cpu_ref:.2f}", "1.00x / 1.00x", "-"],
        ["LiteMedSAM fast, 1 slice/forward", f"{med_fast:.2f}", f"{min(t_fast):.2f}", f"{cpu_fast:.2f}",
         f"{med_ref / med_fast:.2f}x / {cpu_ref / cpu_fast:.2f}x", f"{err:.1e}"],
        [f"LiteMedSAM fast, {args.batch} slices/forward", f"{dt_batch / n:.2f}", "-", f"{dc_batch / n:.2f}",
         f"{med_ref * n / dt_batch:.2f}x / {cpu_ref * n / dc_batch:.2f}x", f"{err_b:.1e}"],
        ["LiteMedSAM bf16 (CPU bf16 kernels), 1 slice/forward", f"{med_bf:.2f}", f"{min(t_bf):.2f}", f"{cpu_bf:.2f}",
         f"{med_ref / med_bf:.2f}x / {cpu_ref / cpu_bf:.2f}x", f"rel. L2 {rel_bf:.1e}"],
    ]
    if medsam_s is not None:
        rows.append(["MedSAM ViT-B fp32 reference (1 slice, for scale)", f"{medsam_s:.2f}", "-", f"{medsam_c:.2f}",
                     f"{med_ref / medsam_s:.3f}x / {cpu_ref / medsam_c:.3f}x", "-"])
    print(f"\nencoder, {len(slices)} lesion slices of {hw[0]}x{hw[1]} (preprocessing included), "
          f"load {load0} -> {load1}; fast-path build {t_build * 1000:.0f} ms")
    print(C.table(["path", "wall s/slice (median)", "min", "CPU s/slice", "speed vs fp32 (wall / CPU)",
                   "max |emb - fp32|"], rows))
    print(f"\nper-slice fp32 s: {', '.join(f'{v:.2f}' for v in t_ref)}; fast s: {', '.join(f'{v:.2f}' for v in t_fast)}")
    print(f"masks from fp32 vs fast embeddings: Dice {d:.4f} (foreground {m_ref.mean():.3f} / {m_fast.mean():.3f})")
    print(f"masks from fp32 vs bf16 ({len(d_bf)} boxes on {n_sl} slices): Dice min {min(d_bf):.4f}, "
          f"mean {statistics.mean(d_bf):.4f}; bf16 speed-up over fast: {med_fast / med_bf:.2f}x wall")
    if medsam_s is not None:
        print(f"MedSAM ViT-B reference / LiteMedSAM: fast {medsam_s / med_fast:.1f}x, bf16 {medsam_s / med_bf:.1f}x")
    print(f"\ndecode box -> mask ({len(dec_ms)} boxes, {hw[0]}x{hw[1]}), load {C.load()}:")
    print(C.table(["decoder", "p50 ms", "p90 ms"], [
        ["segment-anything's (fp32)", f"{C.pct(dec_ms, 50):.1f}", f"{C.pct(dec_ms, 90):.1f}"],
        [f"FastDecoder float32 (\"fast\"; prepare {prep_ms:.0f} ms once per slice)", f"{C.pct(fdec_ms, 50):.1f}",
         f"{C.pct(fdec_ms, 90):.1f}"],
        [f"FastDecoder, products in {str(bf16.decoder_dtype()).replace('torch.', '')} (\"bf16\")",
         f"{C.pct(bdec_ms, 50):.1f}", f"{C.pct(bdec_ms, 90):.1f}"]]))


if __name__ == "__main__":
    main()
