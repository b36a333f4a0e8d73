"""Start medsam-gui from a source checkout: ``python main.py [SCAN] [--demo]``."""

import sys

from medsam_gui.cli import main

if __name__ == "__main__":
    sys.exit(main())
