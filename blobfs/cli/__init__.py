"""Command-line interface (click). Thin: arguments in, text out."""
from __future__ import annotations


def main() -> None:  # replaced by the click group in blobfs/cli/main.py
    from blobfs.cli.main import cli

    cli()
