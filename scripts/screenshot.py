"""Save a PNG of the whole medsam-gui window showing a scan (default: the bundled demo CT).

    xvfb-run -a -s "-screen 0 1600x1000x24" python3 scripts/screenshot.py --out demo.png
    python3 scripts/screenshot.py SCAN [--labels LABELS] [--view coronal] [--size 1600x1000] --out x.png
    python3 scripts/screenshot.py --three-views --out linked.png   (View > Three views)
    python3 scripts/screenshot.py --start-screen --out start.png   (no scan: the start screen)

Starts the app under the current DISPLAY, waits until the scan is loaded and drawn, grabs the
main window (QWidget.grab) and exits. Exit status 0 on success, 1 on a load error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", nargs="?", help="scan to open (default: the demo CT)")
    p.add_argument("--labels", help="label map to open on the scan")
    p.add_argument("--view", choices=("axial", "coronal", "sagittal"), default="axial")
    p.add_argument("--three-views", action="store_true",
                   help="show the three linked views (axial, coronal, sagittal) with the crosshair")
    p.add_argument("--start-screen", action="store_true", help="open no scan: the start screen")
    p.add_argument("--size", default="1600x1000", help="window size WxH (default 1600x1000)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for loading")
    args = p.parse_args(argv)

    from napari.qt import get_qapp
    from qtpy.QtWidgets import QApplication

    from medsam_gui.app import build_app

    app = get_qapp()
    window = build_app(scan=args.scan, labels=args.labels, demo=args.scan is None and not args.start_screen,
                       show=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    window.qt_window.resize(width, height)
    c = window.controller
    c.wait_idle(args.timeout)
    if c.volume is None and not args.start_screen:
        print(f"screenshot: the scan did not open: {c.last_error}", file=sys.stderr)
        window.close(force=True)
        return 1
    if args.view != "axial":
        c.set_view(args.view)
    if args.three_views:
        window.linked_views.set_enabled(True)
        window.cursor_readout.show_display_point(window.linked_views.point)  # as if the mouse were there
        app.processEvents()
    if c.volume is not None:
        window.viewer.reset_view()
    end = time.monotonic() + 1.0  # let the canvas draw
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.qt_window.grab().save(str(out)):
        print(f"screenshot: could not write {out}", file=sys.stderr)
        window.close(force=True)
        return 1
    print(f"wrote {out} ({width}x{height}); status: {window.status_text()}")
    window.close(force=True)
    QApplication.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
