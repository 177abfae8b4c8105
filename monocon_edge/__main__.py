"""``python -m monocon_edge``: the same command line as ``monocon-edge``."""
import sys

from .cli import main

sys.exit(main())
