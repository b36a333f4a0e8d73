"""``medsam-gui info SCAN [--json] [--series UID] [--component N]``: describe a scan.

Prints size (x, y, z), spacing, origin, direction, dtype, intensity range, guessed modality,
orientation code (e.g. "LPS") and whether the scan is oblique. ``--json`` prints the
:func:`medsam_gui.io.volume_info` dictionary instead. Loads no Qt and no torch.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="describe a scan (size, spacing, orientation, intensity range, modality)",
        description="Describe a scan: grid geometry, data type, intensity range, guessed modality, orientation.",
    )
    p.add_argument("scan", help="scan file (NIfTI, NRRD, MHA/MHD, MGZ) or DICOM folder")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.add_argument("--series", metavar="UID", help="DICOM series to open when the folder holds several")
    p.add_argument("--component", type=int, metavar="N",
                   help="volume / channel to open from a 4D or multi-channel image (0-based)")
    p.set_defaults(func=run)
    return p


def _fmt(values, digits: int = 6) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


def format_info(info: dict) -> str:
    d = info["direction"]
    rows = [_fmt(d[0:3], 4), _fmt(d[3:6], 4), _fmt(d[6:9], 4)]
    x, y, z = info["size_xyz"]
    lines = [
        f"scan:         {info['path']}",
        f"format:       {info.get('format') or '?'}",
        f"size (x,y,z): {x} x {y} x {z}",
        f"spacing:      {_fmt(info['spacing'])} mm",
        f"origin:       {_fmt(info['origin'])} mm (LPS)",
        f"direction:    {rows[0]} {rows[1]} {rows[2]}",
        f"dtype:        {info['dtype']}",
        f"range:        {info['min']} .. {info['max']}",
        f"modality:     {info['modality']} (guessed)",
        f"orientation:  {info['orientation']}{' (oblique)' if info['oblique'] else ''}",
        f"oblique:      {'yes' if info['oblique'] else 'no'}",
    ]
    if info.get("series_uid"):
        lines.append(f"series:       {info['series_uid']} {info.get('series_description') or ''}".rstrip())
    notices = list(info.get("notices") or [])
    if info.get("nonfinite_replaced") and not any("NaN" in n or "Inf" in n for n in notices):
        notices.append(f"{info['nonfinite_replaced']} NaN/Inf voxels replaced by the minimum")
    for notice in notices:
        lines.append(f"note:         {notice}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..io import load_volume, volume_info

    volume = load_volume(args.scan, series_uid=args.series, component=args.component)
    info = volume_info(volume)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
    return 0
