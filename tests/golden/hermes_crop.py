"""Cuts tests/golden/hermes_seed2024_crop.pt from the official golden file
../shared/golden/hermes_seed2024.pt (see tests/golden/hermes_README.md).

Run from the repository root: python3 tests/golden/hermes_crop.py [path/to/hermes_seed2024.pt]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

SOURCE = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/golden/hermes_seed2024.pt")
TARGET = Path(__file__).resolve().parent / "hermes_seed2024_crop.pt"
KEPT_CHANNELS = (5, 13)          # of net64_logits_channels (0, 5, 12, 13): liver and the null token
HU_SLICES = (28, 32)             # a z slab of prep_resampled_hu, for a readable diff


def main() -> None:
    g = torch.load(SOURCE, weights_only=True)
    out = {k: g[k] for k in g if k.startswith(("prep_", "weights_", "sw_")) and k not in
           ("prep_resampled_hu", "sw_masks_packbits", "sw_probs_f16", "sw_time_s")}
    for k in ("format", "official_commit", "model_hparams", "tgt_idx", "mod_idx", "task_table",
              "net64_crop_start", "net64_input", "net64_mod_out", "net64_logits_stats",
              "net64_classifier_weights"):
        out[k] = g[k]
    chans = g["net64_logits_channels"].tolist()
    out["net64_logits_channels"] = torch.tensor(KEPT_CHANNELS)
    out["net64_logits"] = g["net64_logits"][:, [chans.index(c) for c in KEPT_CHANNELS]].clone()

    hu = g["prep_resampled_hu"].numpy()
    out["prep_resampled_hu_sha256"] = hashlib.sha256(np.ascontiguousarray(hu).tobytes()).hexdigest()
    out["prep_resampled_hu_slab"] = torch.from_numpy(hu[slice(*HU_SLICES)].copy())
    out["prep_resampled_hu_slab_z"] = torch.tensor(HU_SLICES)

    out["crop_readme"] = (f"Cut from {SOURCE.name} by tests/golden/hermes_crop.py: net64 logits channels "
                          f"{KEPT_CHANNELS}, prep_resampled_hu z {HU_SLICES} + sha256 of the whole array, the "
                          f"sliding-window metadata (no masks or probabilities).")
    torch.save(out, TARGET)
    print(TARGET, TARGET.stat().st_size)


if __name__ == "__main__":
    main()
