"""Exceptions shared by every layer.

Every error a user can cause (bad input, unreadable files, usage) is a ``BlobfsError`` whose
``str()`` is one line naming the file and the problem; the CLI prints it without a traceback.
"""
from __future__ import annotations


class BlobfsError(Exception):
    """Base class: one line, names the file and the problem."""


class InputError(BlobfsError):
    """Input that cannot be read or is refused as a whole (CLI exit code 2)."""


class OffsetsError(InputError):
    """An offsets pickle that is refused as a whole (forbidden global, bomb, not a pickle)."""


class TarFormatError(InputError):
    """A tar whose headers cannot be parsed, or a member blobfs refuses to serve (sparse)."""


class ProjectError(InputError):
    """A source that is not a blob project, dataset or tar."""


class ReadError(BlobfsError, OSError):
    """Bytes the index promises that the file no longer holds (a tar truncated or replaced
    while open). Also an ``OSError`` with errno ``EIO``, which the mount answers the reader."""


def one_line(text: str) -> str:
    """``text`` with control, separator and unpaired-surrogate characters escaped (``\\n``,
    ``\\x1b``): a name on disk may hold any of them, and a problem printed must stay one line
    and must not drive the terminal it is printed on."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
