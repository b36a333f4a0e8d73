"""The prompts file: MedSAM prompts drawn on one scan, saved as versioned JSON.

The app writes it (File > Save prompts…), reads it back (File > Open prompts…), and
``medsam-gui batch`` applies it (``task=boxes``). Layout (version 1)::

    {"format": "medsam-gui-prompts", "version": 1,
     "scan": {"size_xyz": [X, Y, Z], "spacing": [sx, sy, sz], "origin": [ox, oy, oz],
              "direction": [9 floats], "fingerprint": "..." (optional), "name": "..." (optional)},
     "prompts": [{"kind": "box" | "recist", "label": 1, "vertices_zyx": [[z, y, x], ...]}, ...],
     "propagation": {"axis": 0, "first": 3, "last": 20}   (optional; null or absent: 2D only)}

Vertices are (z, y, x) voxel indices of the scan's own array (not the display order): a "box"
is the rectangle's corners (4 vertices) on one slice, a "recist" the long-axis line's two ends.
``propagation`` is the MedSAM panel's "Propagate in 3D" range: the scan array ``axis`` and its
slice indices ``first`` <= ``last`` (inclusive); the key slices are the slices holding prompts.
Grids are compared with :meth:`Volume.same_grid` (tolerance 1e-4) before prompts are applied.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedsamGuiError
from .atomic import atomic_write_json
from .prompts import Prompt
from .volume import Volume

FORMAT = "medsam-gui-prompts"
VERSION = 1
GRID_TOLERANCE = 1e-4


class PromptsFileError(MedsamGuiError):
    """A prompts file is missing, malformed, from a newer version, or drawn on another scan grid."""


@dataclass(frozen=True)
class ScanGrid:
    """The grid the prompts were drawn on: size (x, y, z), spacing, origin (x, y, z) and the
    9-value direction, as in :class:`~medsam_gui.core.volume.Volume`."""

    size_xyz: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    fingerprint: str | None = None
    name: str = ""

    @classmethod
    def of(cls, volume: Volume) -> "ScanGrid":
        return cls(tuple(int(v) for v in volume.size_xyz), tuple(float(v) for v in volume.spacing),
                   tuple(float(v) for v in volume.origin), tuple(float(v) for v in volume.direction),
                   volume.fingerprint(), volume.name)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        x, y, z = self.size_xyz
        return z, y, x


@dataclass(frozen=True)
class Propagation:
    """The 3D propagation range: scan array ``axis`` and slices ``first``..``last`` (inclusive)."""

    axis: int
    first: int
    last: int


@dataclass(frozen=True)
class PromptsFile:
    """A read prompts file: the grid, the prompts (vertices (N, 3) float64 in the scan's (z, y, x)
    voxel indices) and the optional propagation range."""

    scan: ScanGrid
    prompts: tuple[Prompt, ...]
    propagation: Propagation | None

    def labels(self) -> list[int]:
        return sorted({p.label for p in self.prompts})

    def key_slices(self, axis: int = 0) -> list[int]:
        """Indices along ``axis`` of the slices holding prompts flat along that axis."""
        return sorted({int(round(float(p.vertices[0, axis]))) for p in self.prompts
                       if np.ptp(p.vertices[:, axis]) < 1e-3})

    def check_grid(self, volume: Volume, source: str = "the prompts file") -> None:
        """PromptsFileError unless ``volume`` lies on the grid the prompts were drawn on."""
        g = self.scan
        if volume.same_grid(shape_zyx=g.shape_zyx, spacing=g.spacing, origin=g.origin, direction=g.direction,
                            tol=GRID_TOLERANCE):
            return
        raise PromptsFileError(
            f"{source} was drawn on another scan grid (size x,y,z {list(g.size_xyz)}, spacing "
            f"{_fmt(g.spacing)}, origin {_fmt(g.origin)}); this scan has size {list(volume.size_xyz)}, spacing "
            f"{_fmt(volume.spacing)}, origin {_fmt(volume.origin)}. Open the scan the prompts were drawn on, "
            "or draw them again on this scan.")

    def panel_state(self) -> dict:
        """The MedSAM panel's saved state (``MedSAMPanel.set_state``): shapes and range."""
        state: dict[str, Any] = {"shapes": [{"kind": p.kind, "label": p.label, "vertices_zyx": p.vertices.copy()}
                                            for p in self.prompts]}
        if self.propagation is not None:
            state.update(range_axis=self.propagation.axis, range_first=self.propagation.first,
                         range_last=self.propagation.last)
        return state


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def from_panel_state(volume: Volume, state: dict) -> PromptsFile:
    """A PromptsFile of the MedSAM panel's saved state (``{"shapes": [...], "range_axis",
    "range_first", "range_last"}``) for the scan ``volume``. PromptsFileError when it holds no
    prompt."""
    prompts = tuple(Prompt(str(s["kind"]), int(s["label"]), np.asarray(s["vertices_zyx"], dtype=np.float64))
                    for s in state.get("shapes") or [])
    if not prompts:
        raise PromptsFileError("There are no prompts to save: draw a box or a RECIST line first.")
    prop = None
    if "range_axis" in state:
        prop = Propagation(int(state["range_axis"]), int(state["range_first"]), int(state["range_last"]))
    return PromptsFile(ScanGrid.of(volume), prompts, prop)


def to_document(pf: PromptsFile) -> dict:
    """The JSON document (plain dicts and lists) of ``pf``."""
    g = pf.scan
    scan: dict[str, Any] = {"size_xyz": list(g.size_xyz), "spacing": list(g.spacing), "origin": list(g.origin),
                            "direction": list(g.direction)}
    if g.fingerprint:
        scan["fingerprint"] = g.fingerprint
    if g.name:
        scan["name"] = g.name
    prop = None if pf.propagation is None else {"axis": pf.propagation.axis, "first": pf.propagation.first,
                                                "last": pf.propagation.last}
    return {"format": FORMAT, "version": VERSION, "scan": scan,
            "prompts": [{"kind": p.kind, "label": p.label, "vertices_zyx": p.vertices.tolist()} for p in pf.prompts],
            "propagation": prop}


def write_prompts_file(path: str | os.PathLike, pf: PromptsFile) -> Path:
    """Write ``pf`` to ``path`` as JSON, atomically (ExportError when the folder refuses)."""
    return atomic_write_json(path, to_document(pf))


def _numbers(value, n: int, what: str, cast=float) -> tuple:
    if not isinstance(value, list) or len(value) != n:
        raise ValueError(f"{what} must be a list of {n} numbers")
    out = tuple(cast(v) for v in value)
    if not all(np.isfinite(out)):
        raise ValueError(f"{what} must be finite")
    return out


def _parse_grid(d: dict) -> ScanGrid:
    if not isinstance(d, dict):
        raise ValueError('"scan" must be an object')
    size = _numbers(d.get("size_xyz"), 3, "scan.size_xyz", int)
    if min(size) < 1:
        raise ValueError("scan.size_xyz must be positive")
    return ScanGrid(size, _numbers(d.get("spacing"), 3, "scan.spacing"), _numbers(d.get("origin"), 3, "scan.origin"),
                    _numbers(d.get("direction"), 9, "scan.direction"), d.get("fingerprint") or None,
                    str(d.get("name") or ""))


def _parse_prompt(i: int, d: dict, shape_zyx) -> Prompt:
    if not isinstance(d, dict):
        raise ValueError(f"prompt {i} must be an object")
    try:
        p = Prompt(str(d["kind"]), int(d["label"]), np.asarray(d["vertices_zyx"], dtype=np.float64))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"prompt {i} is malformed ({exc})") from None
    if p.label < 1:
        raise ValueError(f"prompt {i} has label {p.label}; labels start at 1")
    if p.kind == "box" and len(p.vertices) != 4 or p.kind == "recist" and len(p.vertices) != 2:
        raise ValueError(f"prompt {i}: a {p.kind} has {4 if p.kind == 'box' else 2} vertices, found {len(p.vertices)}")
    hi = np.asarray(shape_zyx, dtype=float) - 0.5
    if (p.vertices < -0.5).any() or (p.vertices > hi).any():
        raise ValueError(f"prompt {i} lies outside the scan (z,y,x shape {list(shape_zyx)})")
    return p


def _parse_propagation(d, shape_zyx) -> Propagation | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ValueError('"propagation" must be an object or null')
    try:
        prop = Propagation(int(d["axis"]), int(d["first"]), int(d["last"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"propagation needs integer axis, first and last ({exc})") from None
    if prop.axis not in (0, 1, 2):
        raise ValueError(f"propagation.axis must be 0, 1 or 2, found {prop.axis}")
    n = shape_zyx[prop.axis]
    if not 0 <= prop.first <= prop.last < n:
        raise ValueError(f"propagation range {prop.first}..{prop.last} is not within slices 0..{n - 1}")
    return prop


def parse_document(doc: Any, source: str = "prompts file") -> PromptsFile:
    """The PromptsFile of a JSON document; PromptsFileError naming ``source`` and the problem."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PromptsFileError(f"{source} is not a medsam-gui prompts file (no \"format\": \"{FORMAT}\").")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise PromptsFileError(f"{source}: invalid prompts file version {version!r}.")
    if version > VERSION:
        raise PromptsFileError(f"{source} was written by a newer medsam-gui (prompts format {version}, this version "
                               f"reads up to {VERSION}); update medsam-gui.")
    try:
        grid = _parse_grid(doc.get("scan"))
        raw = doc.get("prompts")
        if not isinstance(raw, list) or not raw:
            raise ValueError('"prompts" must be a non-empty list')
        prompts = tuple(_parse_prompt(i, d, grid.shape_zyx) for i, d in enumerate(raw))
        prop = _parse_propagation(doc.get("propagation"), grid.shape_zyx)
    except ValueError as exc:
        raise PromptsFileError(f"{source}: {exc}. Save the prompts again from the app.") from None
    return PromptsFile(grid, prompts, prop)


def read_prompts_file(path: str | os.PathLike) -> PromptsFile:
    """Read and validate a prompts file; PromptsFileError says what is wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptsFileError(f"Prompts file not found: {p}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsFileError(f"Cannot read the prompts file {p}: {getattr(exc, 'strerror', None) or exc}.") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptsFileError(f"{p} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    return parse_document(doc, str(p))
