"""What one case writes into the output folder DIR (every file atomically):

- ``DIR/<name>.nii.gz``: the label map on the scan's exact grid, and ``DIR/<name>.label`` its
  ITK-SNAP label description;
- ``DIR/measurements/<name>.csv``: per label the volume (mL), slice range and RECIST long/short
  axes (``core.measurements`` columns) plus ``prompt`` (box, recist, universeg, auto);
- ``DIR/qc/<name>.png``: the QC picture, one panel per label (its largest-area axial slice, the
  label's outline over the windowed scan) then one per key slice (the prompt drawn in white).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_write_bytes
from ..core.labels import LabelInfo, LabelTable, default_color
from ..core.volume import Volume
from .manifest import file_checksum

PANEL_MIN = 192  # panels smaller than this (pixels) are enlarged by a whole factor
GAP = 4
PROMPT_COLOR = (255, 255, 255)


@dataclass
class CaseLabels:
    """A case's result: ``labels`` (z, y, x) integer map on the scan's grid, ``names`` and
    ``kinds`` (how each value was made: "box", "recist", "universeg", "auto") by label value,
    and ``key_prompts``: (z, kind, points) with points (x, y) pixels on axial slice z (a box's
    two corners or a RECIST line's ends) for the QC picture."""

    labels: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)
    key_prompts: list[tuple[int, str, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True)
class CaseFiles:
    label_map: Path
    label_file: Path
    measurements: Path
    qc: Path


def case_files(out_dir: Path, name: str) -> CaseFiles:
    return CaseFiles(out_dir / f"{name}.nii.gz", out_dir / f"{name}.label",
                     out_dir / "measurements" / f"{name}.csv", out_dir / "qc" / f"{name}.png")


def label_table(result: CaseLabels) -> LabelTable:
    values = [int(v) for v in np.unique(result.labels) if v > 0] + list(result.names)
    return LabelTable(LabelInfo(v, result.names.get(v, f"label {v}"), default_color(v)) for v in sorted(set(values)))


def _measurements_csv(volume: Volume, result: CaseLabels, table: LabelTable) -> tuple[str, dict[int, float]]:
    from ..core.measurements import CSV_COLUMNS, measure_labels, to_rows

    found = measure_labels(result.labels, volume.spacing, table)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*CSV_COLUMNS, "prompt"], lineterminator="\n")
    writer.writeheader()
    for m, row in zip(found, to_rows(found)):
        writer.writerow({**row, "prompt": result.kinds.get(m.value, "")})
    return buf.getvalue(), {m.value: m.volume_ml for m in found}


def _gray(volume: Volume, z: int, bounds: tuple[float, float]) -> np.ndarray:
    lo, hi = bounds
    s = (volume.array[z].astype(np.float32) - lo) / max(hi - lo, 1e-6)
    return (np.clip(s, 0, 1) * 255).astype(np.uint8)


def scale_of(shape_yx: tuple[int, int]) -> int:
    """The whole enlargement factor of a slice of ``shape_yx`` in the QC picture."""
    return max(1, PANEL_MIN // max(shape_yx))


def outline(mask: np.ndarray) -> np.ndarray:
    """bool (h, w): the pixels of ``mask`` with a 4-neighbour outside it (or on the border)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def _enlarge(a: np.ndarray, s: int) -> np.ndarray:
    return np.repeat(np.repeat(a, s, axis=0), s, axis=1)


def label_panel(gray: np.ndarray, mask: np.ndarray, color_255) -> np.ndarray:
    """uint8 RGB (h*s, w*s, 3): ``gray`` enlarged by :func:`scale_of`, ``mask``'s outline in ``color_255``."""
    s = scale_of(gray.shape)
    rgb = np.repeat(_enlarge(gray, s)[..., None], 3, axis=2)
    rgb[outline(_enlarge(mask, s))] = color_255
    return rgb


def _prompt_panel(gray: np.ndarray, labels_2d: np.ndarray, kind: str, pts: np.ndarray) -> np.ndarray:
    rgb = np.repeat(_enlarge(gray, scale_of(gray.shape))[..., None], 3, axis=2)
    s = scale_of(gray.shape)
    for v in (int(v) for v in np.unique(labels_2d) if v > 0):
        rgb[outline(_enlarge(labels_2d == v, s))] = [round(c * 255) for c in default_color(v)[:3]]
    h, w = rgb.shape[:2]
    (x0, y0), (x1, y1) = (np.asarray(pts, dtype=float) * s + (s - 1) / 2).round().astype(int)
    if kind == "box":
        xa, xb, ya, yb = sorted((x0, x1)) + sorted((y0, y1))
        for y in (ya, yb):
            rgb[np.clip(y, 0, h - 1), np.clip(np.arange(xa, xb + 1), 0, w - 1)] = PROMPT_COLOR
        for x in (xa, xb):
            rgb[np.clip(np.arange(ya, yb + 1), 0, h - 1), np.clip(x, 0, w - 1)] = PROMPT_COLOR
    else:
        n = max(abs(x1 - x0), abs(y1 - y0)) + 1
        rgb[np.clip(np.linspace(y0, y1, n).round().astype(int), 0, h - 1),
            np.clip(np.linspace(x0, x1, n).round().astype(int), 0, w - 1)] = PROMPT_COLOR
    return rgb


def qc_picture(volume: Volume, result: CaseLabels) -> np.ndarray:
    """uint8 RGB picture: one panel per label value (its largest-area axial slice), then one
    per key prompt, side by side on black with a :data:`GAP` pixel gap."""
    from ..core.intensity import default_bounds

    bounds = default_bounds(volume.array, volume.modality)
    panels = []
    for v in (int(v) for v in np.unique(result.labels) if v > 0):
        mask = result.labels == v
        z = int(np.argmax(mask.sum(axis=(1, 2))))
        panels.append(label_panel(_gray(volume, z, bounds), mask[z], [round(c * 255) for c in default_color(v)[:3]]))
    for z, kind, pts in result.key_prompts:
        panels.append(_prompt_panel(_gray(volume, z, bounds), result.labels[z], kind, pts))
    if not panels:  # nothing found: the middle slice, so the picture still shows the scan
        panels.append(label_panel(_gray(volume, volume.shape[0] // 2, bounds),
                                  np.zeros(volume.shape[1:], bool), (0, 0, 0)))
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1)
    out = np.zeros((height, width, 3), np.uint8)
    x = 0
    for p in panels:
        out[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + GAP
    return out


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_case_outputs(out_dir: Path, name: str, volume: Volume, result: CaseLabels) -> dict:
    """Write the case's files (module docstring), each atomically, the label map last; returns
    ``{"label_map", "qc", "measurements": paths as str, "output_sha256": the label map's
    SHA-256, "volumes_ml": {value: mL}}``."""
    from ..io import save_labels

    files = case_files(out_dir, name)
    for folder in (files.measurements.parent, files.qc.parent):
        folder.mkdir(parents=True, exist_ok=True)
    table = label_table(result)
    text, volumes = _measurements_csv(volume, result, table)
    atomic_write_bytes(files.measurements, text.encode("utf-8"))
    atomic_write_bytes(files.qc, _png_bytes(qc_picture(volume, result)))
    save_labels(result.labels, volume, files.label_map, label_table=table, overwrite=True)
    return {"label_map": str(files.label_map), "qc": str(files.qc), "measurements": str(files.measurements),
            "output_sha256": file_checksum(files.label_map), "volumes_ml": volumes}
