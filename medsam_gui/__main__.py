import sys

from medsam_gui.cli import main

sys.exit(main())
