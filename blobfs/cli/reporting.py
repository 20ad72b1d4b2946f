"""How the commands that write something end on a failure: one line on stderr, and the
documented exit code (130 interrupted, 2 bad input or refused output, 1 output not written)."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import click

from blobfs.cli.main import end_interrupted
from blobfs.errors import BlobfsError, InputError, one_line
from blobfs.write.atomic import commit_mark, interrupt_guard, published_since
from blobfs.write.errors import InterruptedAfterPublish


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP: one line saying what was left, exit 130 (the command group
    says only "interrupted"; this block knows whether its outputs are in place). An interrupt
    after the outputs were published (while the summary is printed) says they are."""
    mark = commit_mark()
    try:
        with interrupt_guard():
            yield
    except KeyboardInterrupt as e:
        if not isinstance(e, InterruptedAfterPublish):
            e = published_since(mark) or e
        end_interrupted(str(e) if isinstance(e, InterruptedAfterPublish) else "no output written")


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
