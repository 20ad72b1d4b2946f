"""A cache of parsed offsets files, so a large dataset opens in a fraction of a second.

Parsing a 1,000,000-entry offsets file and hashing its names takes seconds; the result is a
handful of flat arrays, which load back with one ``read`` each. They are kept under
``$XDG_CACHE_HOME/blobfs`` (default ``~/.cache/blobfs``) — never beside the user's files — keyed
by the identity (path, size, mtime, ctime, inode) of the offsets file and of its tar, so any
change to either makes a new key. ``BLOBFS_CACHE=0`` turns the cache off. Small files are not
cached: parsing them is faster than a cache round trip.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from array import array
from pathlib import Path

from blobfs.format.entries import EntryTable

log = logging.getLogger(__name__)

VERSION = 2  # 2: problem lines stored without the offsets file's path
MIN_ENTRIES = 20_000
_MAGIC = b"blobfs-index\n"


def cache_dir() -> Path | None:
    if os.environ.get("BLOBFS_CACHE", "1") == "0":
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "blobfs"


def cache_key(*files: Path) -> str | None:
    parts: list[object] = [VERSION, sys.byteorder]
    try:
        for f in files:
            s = os.stat(f)
            parts += [os.path.realpath(f), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino]
    except OSError:
        return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


Hashed = tuple[array, array, set]


def load(key: str, tar_size: int) -> tuple[EntryTable, list[str], Hashed] | None:
    d = cache_dir()
    if d is None:
        return None
    try:
        with open(d / f"{key}.idx", "rb") as f:
            if f.readline() != _MAGIC:
                return None
            head = json.loads(f.readline())
            n, size = head["n"], head["table"]
            table = EntryTable()
            table.names = bytearray(f.read(head["names"]))
            for arr, count in ((table.name_ends, n), (table.starts, n), (table.ends, n)):
                arr.fromfile(f, count)
            crcs, slots = array("I"), array("i")
            crcs.fromfile(f, n)
            slots.fromfile(f, size)
    except (OSError, EOFError, ValueError, KeyError):
        return None
    # The cache is the user's own, but a torn or stale file must never widen a range.
    if n and (min(table.starts) < 0 or max(table.ends) > tar_size
              or not all(map(int.__le__, table.starts, table.ends))):
        return None
    return table, head["problems"], (crcs, slots, set(head["dead"]))


def store(key: str, table: EntryTable, problems: list[str], hashed: Hashed) -> None:
    d = cache_dir()
    if d is None or len(table) < MIN_ENTRIES:
        return
    crcs, slots, dead = hashed
    head = {"n": len(table), "names": len(table.names), "table": len(slots),
            "problems": problems, "dead": sorted(dead)}
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + json.dumps(head).encode() + b"\n" + bytes(table.names))
            for arr in (table.name_ends, table.starts, table.ends, crcs, slots):
                arr.tofile(f)
        os.replace(tmp, d / f"{key}.idx")
    except OSError as e:
        log.debug("index cache not written: %s", e)
