"""``python -m monocon_edge.cli`` (as torchrun launches it): the same command line as ``monocon-edge``."""
import sys

from .commands import main

sys.exit(main())
