"""Reading a project's JSON files (``meta.json``, ``ann/*.json``) in bounded memory.

They come with the project, from strangers: a sparse 3 GB annotation is a few bytes on disk
and was read whole (then decoded to a str of the same size) by ``verify`` and ``preview``.
Real annotations are kilobytes to a few megabytes (a bitmap label is base64 PNG); 64 MiB is
far above any the SDK writes and keeps ``json.loads`` (a few times the text) bounded.
"""
from __future__ import annotations

import json
import os

from blobfs.format.regular import open_regular

MAX_JSON_BYTES = 64 << 20


class JsonTooLarge(ValueError):
    """A JSON file larger than ``MAX_JSON_BYTES`` (not read)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"too large to read ({size} bytes, at most {MAX_JSON_BYTES >> 20} MiB)")


def load_json(path: str | os.PathLike) -> object:
    """The parsed JSON at ``path``. Raises ``OSError`` (cannot read; a FIFO or device is "not a
    regular file", never opened blocking), ``JsonTooLarge``, ``ValueError`` (not JSON, not
    UTF-8) or ``RecursionError`` (nested deeper than json's decoder can recurse)."""
    with open(open_regular(os.fspath(path)), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_JSON_BYTES:
            raise JsonTooLarge(size)
        raw = f.read(MAX_JSON_BYTES + 1)  # the file may grow after the fstat
    if len(raw) > MAX_JSON_BYTES:
        raise JsonTooLarge(len(raw))
    return json.loads(raw)
