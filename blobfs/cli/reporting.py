"""How the commands that write something end on a failure: one line on stderr, and the
documented exit code (130 interrupted, 2 bad input or refused output, 1 output not written)."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import click

from blobfs.errors import BlobfsError, InputError, one_line
from blobfs.write.atomic import interrupt_guard
from blobfs.write.errors import InterruptedAfterPublish


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP: one line saying what was left, exit 130 (instead of click's
    "Aborted!" and exit 1, or dying without cleanup on SIGTERM)."""
    try:
        with interrupt_guard():
            yield
    except KeyboardInterrupt as e:
        state = str(e) if isinstance(e, InterruptedAfterPublish) else "no output written"
        # The newline ends a progress bar or a ^C echoed on the terminal's line.
        click.echo(f"\nblobfs: interrupted; {one_line(state)}", err=True)
        sys.exit(130)


@contextlib.contextmanager
def reporting() -> Iterator[None]:
    """``interrupts()``, and one line with exit 2 for bad input, 1 for an output not written."""
    try:
        with interrupts():
            yield
    except InputError as e:
        click.echo(f"blobfs: {one_line(str(e))}", err=True)
        sys.exit(2)
    except BlobfsError as e:
        click.echo(f"blobfs: {one_line(str(e))}", err=True)
        sys.exit(1)
