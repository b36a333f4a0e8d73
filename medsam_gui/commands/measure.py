"""``medsam-gui measure SCAN LABELS [--csv OUT] [--names FILE]``: volumes and RECIST diameters.

Loads the scan and the label map (which must lie on the scan's grid), measures every label
value > 0 with :func:`medsam_gui.core.measurements.measure_labels` and prints a table:
label, name, volume (mL), voxels, slices (first..last array z index), long axis (mm) and
short axis (mm) on the slice where the label is largest. ``--csv OUT`` also saves all columns
of :data:`medsam_gui.core.measurements.CSV_COLUMNS`. Names come from ``--names`` (an
ITK-SNAP label description file) or ``<labels stem>.label`` beside LABELS when present.
Every path is checked before the scan is read. Loads no Qt and no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import validation


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "measure",
        help="measure each label of a label map: volume (mL), slice range, RECIST long/short axis (mm)",
        description=(
            "Measure each label of a label map on its scan: volume in mL (voxel count x voxel volume), "
            "slice range, and the RECIST long axis and perpendicular short axis (mm) on the slice "
            "where the label is largest."
        ),
    )
    p.add_argument("scan", help="scan file (NIfTI, NRRD, MHA/MHD, MGZ) or DICOM folder")
    p.add_argument("labels", help="label map on the scan's grid")
    p.add_argument("--csv", metavar="OUT", help="also save the measurements as CSV")
    p.add_argument("--names", metavar="FILE",
                   help="ITK-SNAP label description file with label names (default: <labels stem>.label if present)")
    p.add_argument("--series", metavar="UID", help="DICOM series to open when the folder holds several")
    p.set_defaults(func=run)
    return p


def format_table(measurements) -> str:
    header = ("label", "name", "volume mL", "voxels", "slices", "long axis mm", "short axis mm")
    rows = [header]
    for m in measurements:
        rows.append((
            str(m.value), m.name, f"{m.volume_ml:.3f}", str(m.voxels),
            f"{m.slice_range[0]}..{m.slice_range[1]}", f"{m.long_axis_mm:.1f}", f"{m.short_axis_mm:.1f}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    left = {1}
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _label_table(args):
    from ..io import read_label_description
    from ..io.writers import label_description_path

    if args.names:
        return read_label_description(args.names)
    beside = label_description_path(args.labels)
    if beside.is_file():
        return read_label_description(beside)
    return None


def run(args: argparse.Namespace) -> int:
    from ..core.measurements import measure_labels, to_csv
    from ..errors import ExportError
    from ..io import load_labels, load_volume

    scan = validation.check_input(args.scan, "the scan")
    labels_path = validation.check_input(args.labels, "the label map")
    if args.names:
        validation.check_input(args.names, "--names")
    if args.csv:
        validation.check_output(args.csv, overwrite=True, what="--csv", suffixes=(".csv",),
                                inputs=[scan, labels_path])
    volume = load_volume(scan, series_uid=args.series)
    labels = load_labels(labels_path, like=volume)
    table = _label_table(args)
    measurements = measure_labels(labels, volume.spacing, table)
    if not measurements:
        print(f"{args.labels}: no labels (every voxel is 0)")
    else:
        print(format_table(measurements))
    if args.csv:
        out = Path(args.csv)
        try:
            to_csv(measurements, out)
        except OSError as exc:
            raise ExportError(f"could not write {out}: {exc.strerror or exc}. Choose another file or folder.") from exc
        print(f"saved {out}")
    return 0
