"""ITK-SNAP label description files (``.label`` / ``.txt``).

Format: lines starting with ``#`` are comments; every other non-blank line is

    IDX  -R-  -G-  -B-  -A--  VIS MSH  "LABEL"

with IDX the label value, R, G, B integers 0..255, A (opacity) a float 0..1, VIS and MSH
0/1 (visible in slices / in the 3D mesh), and the name in double quotes. Value 0 ("Clear",
the background) is not kept in the :class:`LabelTable`; it is written back as ITK-SNAP does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.labels import LabelInfo, LabelTable, LabelTableError
from ..errors import ScanReadError

HEADER = "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL"
CLEAR_LINE = '    0     0    0    0  0.00  0   0    "Clear"'

_LINE = re.compile(
    r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s+(\d+)\s+(\d+)\s+\"(.*)\"\s*$"
)


def _format_line(value: int, rgb: tuple[int, int, int], alpha: float, vis: bool, msh: bool, name: str) -> str:
    r, g, b = rgb
    name = name.replace('"', "'")
    return f'{value:5d} {r:5d} {g:4d} {b:4d} {alpha:5.2f} {int(vis):2d} {int(msh):3d}    "{name}"'


def parse_label_description(text: str, source: str = "label description") -> LabelTable:
    """Parse the text of an ITK-SNAP label description into a LabelTable (value 0 skipped)."""
    table = LabelTable()
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ScanReadError(
                f"{source}, line {lineno}: not an ITK-SNAP label line "
                f'(expected: IDX R G B A VIS MSH "NAME"): {stripped[:80]!r}'
            )
        value, r, g, b = (int(m.group(i)) for i in range(1, 5))
        try:
            alpha = float(m.group(5))
        except ValueError:
            raise ScanReadError(f"{source}, line {lineno}: bad opacity {m.group(5)!r}.") from None
        vis, msh = int(m.group(6)) != 0, int(m.group(7)) != 0
        if value == 0:
            continue
        if any(c > 255 for c in (r, g, b)) or not 0.0 <= alpha <= 1.0:
            raise ScanReadError(f"{source}, line {lineno}: colour must be 0..255 and opacity 0..1.")
        try:
            table.add(LabelInfo(value, m.group(8), (r / 255.0, g / 255.0, b / 255.0, alpha), vis, msh))
        except LabelTableError as exc:
            raise ScanReadError(f"{source}, line {lineno}: {exc}") from None
    return table


def format_label_description(table: LabelTable) -> str:
    """The ITK-SNAP text (``\\n`` line ends) for a table: header, the 0 "Clear" line, one line per label."""
    lines = [HEADER, CLEAR_LINE]
    for info in table:
        lines.append(_format_line(info.value, info.color_255, info.color[3], info.visible,
                                  info.mesh_visible, info.name))
    return "\n".join(lines) + "\n"


def read_label_description(path: str | os.PathLike) -> LabelTable:
    """Read an ITK-SNAP label description file. Raises ScanReadError if missing or malformed."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ScanReadError(f"Cannot read the label description {p}: {exc.strerror or exc}.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return parse_label_description(text, str(p))


def write_label_description(path: str | os.PathLike, table: LabelTable, *, newline: str = "\n") -> Path:
    """Write ``table`` as an ITK-SNAP label description (atomically; UTF-8). Returns the path.

    ``newline="\\r\\n"`` writes Windows line ends. Raises ExportError when it cannot be written.
    """
    p = Path(path)
    text = format_label_description(table)
    if newline != "\n":
        text = text.replace("\n", newline)
    from ..core.atomic import atomic_write_bytes

    atomic_write_bytes(p, text.encode("utf-8"))
    return p
