"""Exceptions shared by every layer.

Every error a user can cause (bad input, unreadable files, usage) is a ``BlobfsError`` whose
``str()`` is one line naming the file and the problem; the CLI prints it without a traceback.
"""
from __future__ import annotations

import re


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


def decode_why(e: BaseException) -> str:
    """``Type: message`` of an exception a decoder raised, without the ``<... object at 0x...>``
    reprs Pillow puts in its messages ("cannot identify image file <_io.BytesIO object at
    0x7f...>"): an address changes from run to run, so two reports of one source would differ,
    and it tells the user nothing."""
    text = re.sub(r" ?<[^<>]* object at 0x[0-9a-fA-F]+>", "", str(e))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
