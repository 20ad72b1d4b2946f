"""Reads and ``Project.close()``: every read after close raises the API's ``ValueError``."""
from __future__ import annotations

from pathlib import Path

import pytest

import blobfs


def test_every_read_after_close_raises_value_error(blob_project: Path) -> None:
    """Not only tar items: img/ files, annotations and meta.json are read by path, so nothing
    but the project's own state can refuse them once it is closed."""
    p = blobfs.open_project(blob_project)
    ds1 = next(d for d in p.datasets if d.relpath == "ds1")
    disk = ds1.items.find("photo_a.png")
    assert disk >= 0 and not ds1.items.is_blob(disk)
    ann = p.open("ds1/ann/img_001.png.json")
    meta = p.open("meta.json")
    at_end = p.open("ds2/img/scan 01.png")
    at_end.read()
    # An iterator left where only img/ files of ds1 remain: ds1's tar items come first.
    it = p.iter_bytes()
    for _ in range(len(ds1.items) - 2):
        next(it)
    p.close()
    for read in (lambda: ds1.items.read(disk), ann.read, meta.read, at_end.read,
                 lambda: next(it), lambda: ann.readinto(bytearray(8))):
        with pytest.raises(ValueError, match="closed project"):
            read()
