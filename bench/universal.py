"""CLIP-Driven Universal Model on this machine: one 96^3 window and the demo CT end to end.

    python3 bench/universal.py [--threads 2] [--checkpoint CKPT --text-embedding TXT] [--skip-scan]

Without a checkpoint the golden weights (rule crc32-randn-v1, seed 2024, real text embedding)
are built, so the figures need no download (speed does not depend on the weight values).

- window: our forward (all 32 organs; and only the liver's head) against a straightforward
  baseline in the same run: the official head path (32 copies of the head input, one grouped
  convolution per layer) on the same backbone.
- scan: tests/data totalsegmentator_example_ct (122x101x30, 3 mm) through UniversalSegmenter
  (preprocess, 15 windows at overlap 0.5, post-processing, back to the scan grid), all 32
  structures; with ../shared/golden/universal_seed2024.pt present (golden weights only) the
  masks are compared with the official result on the original grid.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from _common import DATA, ROOT, PeakRSS, machine, setup_torch, table, timed

sys.path.insert(0, str(ROOT / "tests"))
CT = DATA / "totalsegmentator_example_ct" / "example_ct_sm.nii.gz"
SHARED_GOLDEN = ROOT.parent / "shared" / "golden" / "universal_seed2024.pt"


def build_model(args):
    import torch

    from medsam_gui.models.universal.network import UniversalModel, universal_model
    from universal_helpers import golden, golden_state

    if args.checkpoint:
        return universal_model(args.checkpoint, args.text_embedding), False
    model = UniversalModel()
    state = golden_state(model, 2024)
    state["organ_embedding"] = torch.from_numpy(golden()["organ_embedding_f16"]).float()
    model.load_state_dict(state, strict=True)
    return model.eval(), True


def official_heads(model, x):
    """Baseline: the official forward's head path (repeat + grouped conv3d), all 32 organs."""
    import torch
    import torch.nn.functional as F

    dec4, out = model.backbone(x)
    params = model.head_params(dec4, range(32))
    feats = model.precls_conv(out).repeat(32, 1, 1, 1, 1)
    n, _, d, h, w = feats.shape
    y = feats.reshape(1, -1, d, h, w)
    sizes = [64, 64, 8, 8, 8, 1]
    w1, w2, w3, b1, b2, b3 = torch.split(params, sizes, dim=1)
    layers = [(w1.reshape(n * 8, -1, 1, 1, 1), b1.reshape(-1)), (w2.reshape(n * 8, -1, 1, 1, 1), b2.reshape(-1)),
              (w3.reshape(n, -1, 1, 1, 1), b3.reshape(-1))]
    for i, (wt, bs) in enumerate(layers):
        y = F.conv3d(y, wt, bias=bs, groups=n)
        if i < 2:
            y = F.relu(y)
    return y.reshape(1, -1, d, h, w)


def bench_window(model, torch):
    from universal_helpers import golden

    g = golden()
    z0, z1 = (int(v) for v in g["sw_pad"][2])
    x = torch.from_numpy(np.pad(g["net_input_real"], ((0, 0), (0, 0), (z0, z1))))[None, None]
    rows, results = [], {}
    runs = (("baseline: official head path, 32 organs", lambda: official_heads(model, x)),
            ("ours: forward, 32 organs", lambda: model(x)),
            ("ours: liver head only", lambda: model.class_logits(x, [5])))
    with torch.no_grad():
        model(x)  # warm-up: first-call allocations and kernel selection
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    peaks: dict[str, float] = {}
    for _ in range(2):  # alternated, best of two
        for name, fn in runs:
            with torch.no_grad(), PeakRSS() as mem:
                seconds, results[name] = timed(fn)
            times[name].append(seconds)
            peaks[name] = max(peaks.get(name, 0.0), mem.peak)
    rows = [(name, f"{min(times[name]):.1f}", f"{peaks[name]:.0f}") for name, _ in runs]
    base, ours = results[runs[0][0]], results[runs[1][0]]
    liver = results[runs[2][0]]
    print(table(("96^3 window", "s", "peak RSS MiB"), rows))
    print(f"max |ours - baseline| = {(ours - base).abs().max().item():.2e}; liver-only vs full: "
          f"{(liver[0, 0] - ours[0, 5]).abs().max().item():.2e}; golden liver logits (every 2nd voxel): "
          f"{np.abs(ours[0, 5, ::2, ::2, ::2].numpy() - g['net_logits_3_s2']).max():.2e}")


def bench_scan(model, torch, golden_weights: bool):
    from medsam_gui.io.readers import load_volume
    from medsam_gui.models.universal.segmenter import UniversalSegmenter

    volume = load_volume(CT)
    segmenter = UniversalSegmenter(model)
    ticks = []
    with PeakRSS() as mem:
        seconds, masks = timed(segmenter.segment, volume, segmenter.structures,
                               progress=lambda d, t: ticks.append((d, t)))
    print(f"demo CT {volume.shape} (z,y,x), 32 structures, {ticks[-1][1]} windows: {seconds:.0f} s, "
          f"peak RSS {mem.peak:.0f} MiB")
    if not (golden_weights and SHARED_GOLDEN.exists()):
        return
    g = torch.load(SHARED_GOLDEN, weights_only=True)
    shape = g["orig_masks_shape"].tolist()
    orig = np.unpackbits(g["orig_masks_packed"].numpy(), count=math.prod(shape)).reshape(shape)
    rows = []
    for s in segmenter.structures:
        ours = masks[s.key].transpose(2, 1, 0).astype(bool)
        diff = int((ours != orig[s.index].astype(bool)).sum())
        rows.append((s.key, int(ours.sum()), int(orig[s.index].sum()), diff, f"{100 * diff / ours.size:.3f}"))
    print(table(("structure", "ours", "official", "differ", "% voxels"), rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint")
    parser.add_argument("--text-embedding")
    parser.add_argument("--skip-scan", action="store_true")
    args = parser.parse_args()
    torch = setup_torch(args.threads)
    print(machine())
    model, golden_weights = build_model(args)
    bench_window(model, torch)
    if not args.skip_scan:
        bench_scan(model, torch, golden_weights)


if __name__ == "__main__":
    main()
