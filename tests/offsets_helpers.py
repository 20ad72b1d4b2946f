"""Shared helpers for the offsets tests: SDK-way entries of a tar, hand-made pickles, and the
offsets file as ``pickle`` itself writes it (the oracle for blobfs's own encoder)."""
from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import tarfile
import types
from itertools import islice
from pathlib import Path

CLS = b"\x8c\x19supervisely.api.image_api\x94\x8c\rBlobImageInfo\x94\x93\x94"


def sdk_entries(tar_path: Path) -> list[tuple[str, int, int]]:
    """What save_blob_offsets_pkl lists: regular members, archive order, basename."""
    with tarfile.open(tar_path) as tar:
        return [(os.path.basename(m.name), m.offset_data, m.offset_data + m.size)
                for m in tar.getmembers() if m.isfile()]


def su(s: str) -> bytes:
    """SHORT_BINUNICODE / BINUNICODE."""
    b = s.encode("utf-8", "surrogatepass")
    return (b"\x8c" + bytes([len(b)]) if len(b) < 256 else b"X" + struct.pack("<I", len(b))) + b


def pint(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def obj(name_op: bytes, start_op: bytes, end_op: bytes, cls: bytes = b"h\x03") -> bytes:
    """One BlobImageInfo the SDK way but with arbitrary operand bytes (no memo for keys)."""
    return (cls + b")\x81}(" + su("name") + name_op + su("offset_start") + start_op
            + su("offset_end") + end_op + b"ub")


def pickle_of(entries_ops: list[bytes]) -> bytes:
    """PROTO 4, a list of objects built with GLOBAL; no frames, no memo."""
    g = b"csupervisely.api.image_api\nBlobImageInfo\n"
    body = b"".join(obj(*ops, cls=g) for ops in entries_ops)
    return b"\x80\x04](" + body + b"e."


def frame(body: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body)) + body


class _BlobImageInfo:
    """Stand-in for ``supervisely.api.image_api.BlobImageInfo`` (a plain dataclass): same
    qualified name and the same instance ``__dict__`` order (name, offset_start, offset_end)."""

    def __init__(self, name: str, offset_start: int, offset_end: int) -> None:
        self.name = name
        self.offset_start = offset_start
        self.offset_end = offset_end


_BlobImageInfo.__module__ = "supervisely.api.image_api"
_BlobImageInfo.__qualname__ = _BlobImageInfo.__name__ = "BlobImageInfo"
_MODULES = ("supervisely", "supervisely.api", "supervisely.api.image_api")


def pickle_offsets(entries: list[tuple[str, int, int]]) -> bytes:
    """What the SDK's save_blob_offsets_pkl writes, made the SDK's way: ``pickle.dump`` of a
    list of BlobImageInfo per batch of 10,000, protocol 4. pickle checks that the class is
    importable, so stand-in modules sit in ``sys.modules`` for the dump."""
    added = [m for m in _MODULES if m not in sys.modules]
    for m in added:
        sys.modules[m] = types.ModuleType(m)
    mod = sys.modules["supervisely.api.image_api"]
    old = getattr(mod, "BlobImageInfo", None)
    mod.BlobImageInfo = _BlobImageInfo
    try:
        out = io.BytesIO()
        it = iter(entries)
        while batch := [_BlobImageInfo(n, s, e) for n, s, e in islice(it, 10_000)]:
            pickle.dump(batch, out, protocol=4)
        return out.getvalue()
    finally:
        if old is None:
            del mod.BlobImageInfo
        else:
            mod.BlobImageInfo = old
        for m in reversed(added):
            sys.modules.pop(m, None)
