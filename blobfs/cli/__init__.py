"""Command-line interface (click). Thin: arguments in, text out."""
from __future__ import annotations

import sys


def main() -> None:
    try:
        from blobfs.cli.main import main as _main
    except KeyboardInterrupt:  # while click loads: the same one line as later (blobfs.cli.main)
        sys.stderr.write("\nblobfs: interrupted\n")
        sys.exit(130)
    _main()
