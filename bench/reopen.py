"""Reopening an already-embedded scan: time until the first box can be answered.

Stage 1 (setup, not timed): the lesion slice of the lung CT is embedded once and stored in an
EmbeddingCache on disk (a temporary folder), the weights saved to a file.
Stage 2 (timed, fresh objects as after a restart): read the scan, window it, fingerprint it,
load the MedSAM weights file, open the disk cache, fetch the embedding, decode the tumour box.
Compared in the same run with the same steps without a cache (the reference encoder runs).

    python3 bench/reopen.py [--precision int8|fp32] [--checkpoint medsam_vit_b.pth]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", help="precision of the cached embedding (default fp32)")
    args = ap.parse_args()
    torch = C.setup_torch(args.threads)
    from medsam_gui.core.intensity import default_bounds, volume_to_uint8
    from medsam_gui.io import load_volume
    from medsam_gui.models.embedding_cache import EmbeddingCache, embedding_key
    from medsam_gui.models.medsam import MedSAMEngine

    tmp = Path(tempfile.mkdtemp(prefix="medsam_bench_reopen_"))
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        sd, _ = C.checkpoint_state_dict(None)
        ckpt = tmp / "medsam_vit_b.pth"
        torch.save(sd, ckpt)
        del sd
    print(f"# Reopen benchmark\nmachine: {C.machine()}\nweights file: {ckpt}\n")
    _, label = C.lung_ct()
    z = C.tumour_slices(label, 1)[0]
    box = C.bbox(label[z])

    def open_scan(stages):
        t = time.perf_counter()
        vol = load_volume(C.LUNG_CT)
        stages["read scan"] = time.perf_counter() - t
        t = time.perf_counter()
        bounds = default_bounds(vol.array, "CT")
        v8 = volume_to_uint8(vol.array, "CT", bounds)
        fp = vol.fingerprint()
        stages["window + fingerprint"] = time.perf_counter() - t
        t = time.perf_counter()
        eng = MedSAMEngine(ckpt, device="cpu", precision=args.precision)
        stages["load weights"] = time.perf_counter() - t
        return v8, bounds, fp, eng

    # setup
    v8, bounds, fp, eng = open_scan({})
    key = embedding_key(fp, 0, z, bounds, eng.checkpoint_id, eng.precision)
    EmbeddingCache(disk_dir=tmp / "emb").put(key, eng.embed_slice(np.ascontiguousarray(v8[z])))
    del eng

    rows = []
    for cached in (True, False):
        stages = {}
        t0 = time.perf_counter()
        v8, bounds, fp, eng = open_scan(stages)
        t = time.perf_counter()
        if cached:
            cache = EmbeddingCache(disk_dir=tmp / "emb")
            emb = cache.get(embedding_key(fp, 0, z, bounds, eng.checkpoint_id, eng.precision))
            assert emb is not None, "cache miss"
            stages["disk cache get"] = time.perf_counter() - t
        else:
            emb = eng.embed_slice(np.ascontiguousarray(v8[z]))
            stages["encoder"] = time.perf_counter() - t
        t = time.perf_counter()
        mask = eng.decode(emb, box, v8[z].shape)
        stages["decode box"] = time.perf_counter() - t
        total = time.perf_counter() - t0
        rows.append(["disk cache" if cached else "no cache (encoder runs)", f"{total:.2f}",
                     ", ".join(f"{k} {v:.2f}" for k, v in stages.items()), f"{mask.mean():.4f}"])
        del eng
    print(C.table(["reopen", "to first mask s", "stages (s)", "mask foreground"], rows))
    print(f"\nload average at the end: {C.load()}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
