"""The batch report: ``DIR/report.csv`` (one row per case, in manifest order) and, with
``--report``, ``DIR/report.html`` (the QC thumbnails; click a column header to sort).

Columns (:data:`COLUMNS`): case, row (manifest line), scan, task, model, status (``ok``,
``failed``, ``skipped``), message, seconds, worker, load_s (model loading done by this case),
input_sha256 (``Case.input_checksum``), output_sha256 (the label map file), label_map, qc,
measurements (paths), volumes_ml (``value=mL`` pairs joined by ``;``).
"""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path

from ..core.atomic import atomic_write_bytes

COLUMNS = ("case", "row", "scan", "task", "model", "status", "message", "seconds", "worker", "load_s",
           "input_sha256", "output_sha256", "label_map", "qc", "measurements", "volumes_ml")
REPORT_CSV = "report.csv"
REPORT_HTML = "report.html"


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key in ("seconds", "load_s"):
        return f"{float(value):.3f}"
    if key == "volumes_ml" and isinstance(value, dict):
        return ";".join(f"{k}={v:.4f}" for k, v in sorted(value.items()))
    return str(value)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: int(r["row"])):
        writer.writerow({k: _cell(k, row.get(k)) for k in COLUMNS})
    return buf.getvalue()


def write_csv(out_dir: Path, rows: list[dict]) -> Path:
    """Write ``out_dir/report.csv`` atomically (rows sorted by manifest line)."""
    return atomic_write_bytes(Path(out_dir) / REPORT_CSV, csv_text(rows).encode("utf-8"))


def read_csv(out_dir: Path) -> dict[str, dict]:
    """The rows of an earlier ``out_dir/report.csv`` by case name ({} when there is none or it
    cannot be read: a resume then redoes every case)."""
    path = Path(out_dir) / REPORT_CSV
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return {r["case"]: r for r in csv.DictReader(fh) if r.get("case")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError):
        return {}


_SCRIPT = """
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
  const key = tr => tr.cells[col].dataset.sort ?? tr.cells[col].textContent;
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    const n = parseFloat(x) - parseFloat(y);
    return (isNaN(n) ? x.localeCompare(y) : n) * (up ? 1 : -1); }).forEach(tr => body.appendChild(tr));
}));
"""
_STYLE = ("body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
          "padding:4px;vertical-align:top}th{cursor:pointer;background:#eee}.failed{background:#fdd}"
          ".skipped{background:#eef}img{height:96px}")
_HTML_COLUMNS = ("case", "status", "task", "model", "seconds", "volumes_ml", "worker", "message")


def html_text(out_dir: Path, rows: list[dict]) -> str:
    """The report page: a summary line and one table row per case with its QC thumbnail
    (linked relative to ``out_dir``)."""
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "failed", "skipped")}
    head = "".join(f"<th>{c}</th>" for c in ("qc", *_HTML_COLUMNS))
    body = []
    for row in sorted(rows, key=lambda r: int(r["row"])):
        qc = row.get("qc") or ""
        rel = os.path.relpath(qc, out_dir) if qc and Path(qc).exists() else ""
        thumb = f'<a href="{html.escape(rel)}"><img src="{html.escape(rel)}" alt="QC"></a>' if rel else ""
        cells = "".join(f"<td>{html.escape(_cell(c, row.get(c)))}</td>" for c in _HTML_COLUMNS)
        status, case = html.escape(str(row.get("status"))), html.escape(str(row["case"]))
        body.append(f'<tr class="{status}"><td data-sort="{case}">{thumb}</td>{cells}</tr>')
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>medsam-gui batch report</title>"
            f"<style>{_STYLE}</style></head><body><h1>Batch report</h1><p>{len(rows)} cases: {summary}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<script>{_SCRIPT}</script></body></html>\n")


def write_html(out_dir: Path, rows: list[dict]) -> Path:
    """Write ``out_dir/report.html`` atomically."""
    return atomic_write_bytes(Path(out_dir) / REPORT_HTML, html_text(Path(out_dir), rows).encode("utf-8"))
