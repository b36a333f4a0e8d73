"""npe2 sample data: the demo CT bundled in resources/demo (see its README.txt for the licence)."""

from __future__ import annotations

from ..config import demo_scan_path
from .reader import LayerData, read_scan


def demo_ct() -> list[LayerData]:
    """The demo abdominal CT as an image layer (display order, mm), as the reader gives it."""
    return read_scan(demo_scan_path())
