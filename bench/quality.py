"""Quality guard: masks and embeddings of the fast paths against the reference, on real slices.

For each real slice - the lung CT tumour (largest lesion slice), the hippocampus MR golden slice
with its label box, the liver (label 5) on the TotalSegmentator demo CT - the reference fp32
embedding and ours (``--precision``, default int8) are compared directly (cosine, relative L2
error) and through the masks the same fp32 decoder makes from each for the label's box (Dice,
with both masks' foreground fractions: random weights give noisy masks). Two encoder passes
per slice.

    python3 bench/quality.py [--precision int8] [--checkpoint medsam_vit_b.pth]
"""

from __future__ import annotations

import argparse

import _common as C
import numpy as np


def real_slices():
    from medsam_gui.core.intensity import default_bounds, volume_to_uint8
    from medsam_gui.io import load_volume

    out = []
    u8, label = C.lung_ct()
    z = C.tumour_slices(label, 1)[0]
    out.append(("lung CT tumour", z, np.ascontiguousarray(u8[z]), C.bbox(label[z])))
    g = np.load(C.ROOT / "tests" / "golden" / "medsam_hippocampus003_mr.npz")
    out.append(("hippocampus MR (golden)", int(g["slice_index"]), g["volume_uint8_slice"],
                tuple(int(v) for v in g["box_xyxy"])))
    d = C.DATA / "totalsegmentator_example_ct"
    vol = load_volume(d / "example_ct_sm.nii.gz")
    lab = np.asarray(load_volume(d / "example_seg.nii.gz").array) == 5
    v8 = volume_to_uint8(vol.array, "CT", default_bounds(vol.array, "CT"))
    z = int(np.argmax(lab.sum(axis=(1, 2))))
    out.append(("liver, demo CT", z, np.ascontiguousarray(v8[z]), C.bbox(lab[z])))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="int8")
    args = ap.parse_args()
    C.setup_torch(args.threads)
    from medsam_gui.models.agreement import cosine_and_relerr, dice
    from medsam_gui.models.medsam import MedSAMEngine

    sd, what = C.checkpoint_state_dict(args.checkpoint)
    ref = MedSAMEngine(sd, device="cpu", precision="fp32")
    fast = MedSAMEngine(sd, device="cpu", precision=args.precision)
    print(f"# Quality guard: {fast.precision} vs fp32\nmachine: {C.machine()}\nweights: {what}\n")
    rows = []
    for name, z, s, box in real_slices():
        a = ref.embed_slice(s)
        b = fast.embed_slice(s)
        cos, rel = cosine_and_relerr(b, a)
        m_a = ref.decode(a, box, s.shape)
        m_b = ref.decode(b, box, s.shape)
        rows.append([name, z, s.shape, box, f"{cos:.5f}", f"{rel:.4f}", f"{dice(m_b, m_a):.4f}",
                     f"{m_a.mean():.4f}/{m_b.mean():.4f}"])
    print(C.table(["slice", "index", "shape", "box", "cosine", "rel. error", "mask Dice", "foreground ref/ours"], rows))
    print(f"\nload average at the end: {C.load()}")


if __name__ == "__main__":
    main()
