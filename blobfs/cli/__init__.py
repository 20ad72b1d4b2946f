"""Command-line interface (click). Thin: arguments in, text out."""
from __future__ import annotations


def main() -> None:
    from blobfs.cli.main import main as _main

    _main()
