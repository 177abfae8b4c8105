"""``python -m monocon_edge``: the same command line as ``monocon-edge``."""
from .cli import main

main()
