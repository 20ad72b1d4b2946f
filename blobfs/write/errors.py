"""Errors of the write side (pack, pack-project, unpack).

Input problems reuse ``blobfs.errors.InputError`` (CLI exit code 2), and so does an output path
that cannot be used (exists without ``--force``, its folder missing); a failure while writing
the output (full disk, permission denied on the destination) is a ``WriteFailedError`` (exit 1).
"""
from __future__ import annotations

import errno
import os

from blobfs.errors import BlobfsError, InputError


class OutputExistsError(InputError):
    """The destination exists and ``--force`` was not given."""


class OutputPathError(InputError):
    """The output path cannot name an output (its folder is missing or no folder): a usage
    error, found before anything is read, not an output that failed to be written."""


class WriteFailedError(BlobfsError):
    """Writing the output failed; nothing was left under the final name."""


class InterruptedAfterPublish(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) after the outputs were renamed into place: they are whole and
    final. ``str()`` names them, and the rest of a replaced tree whose deletion was cut short."""


def input_failed(path: str | os.PathLike[str], e: OSError, during: str = "") -> InputError:
    """One-line error for an input file that could not be read (vanished, unreadable)."""
    what = e.strerror or type(e).__name__
    if isinstance(e, FileNotFoundError) and during:
        what = f"vanished {during}"
    elif e.errno == errno.ESPIPE and during:  # swapped for a FIFO after it was listed
        what = f"changed {during} (no longer a regular file)"
    return InputError(f"{os.fspath(path)}: {what}")


def output_failed(path: str | os.PathLike[str], e: OSError) -> WriteFailedError:
    """One-line error for an output that could not be written (full disk, permissions)."""
    return WriteFailedError(f"{os.fspath(path)}: {e.strerror or e}; nothing written")
