"""Command-line interface (click). Thin: arguments in, text out."""
from __future__ import annotations

import sys

from blobfs.signals import forget_caught_interrupt


def main() -> None:
    try:
        from blobfs.cli.main import main as _main
    except KeyboardInterrupt:  # while click loads: the same one line as later (blobfs.cli.main)
        # The newline ends a ^C echoed on a terminal, as in blobfs.cli.main.end_interrupted.
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "blobfs: interrupted\n")
        forget_caught_interrupt()  # it may have landed in a dataclass being made
        sys.exit(130)
    _main()
