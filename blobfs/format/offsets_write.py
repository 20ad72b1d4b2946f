"""Write offsets pickles byte-identical to the SDK's ``save_blob_offsets_pkl`` (FORMAT.md §6 (1)).

The SDK pickles, per batch of 10,000, a list of ``supervisely.api.image_api.BlobImageInfo``
dataclass instances with Python's ``pickle`` protocol 4, appending pickle after pickle to one
file. We pickle instances of a stand-in class with the same ``__module__``/``__qualname__``
and the same instance ``__dict__`` order (name, offset_start, offset_end): pickle looks the
class up in ``sys.modules`` to check it is importable, so empty stand-in modules are put
there for the duration of a dump (under a lock) and removed afterwards. If the real SDK
module is already imported, its class is used and ``sys.modules`` is not touched.
"""
from __future__ import annotations

import io
import os
import pickle
import sys
import tempfile
import threading
import types
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

BATCH = 10_000  # supervisely.io.fs.OFFSETS_PKL_BATCH_SIZE
PROTOCOL = 4  # the SDK's (Python 3.8-3.13) default protocol
OFFSETS_SUFFIX = "_offsets.pkl"
_MODULES = ("supervisely", "supervisely.api", "supervisely.api.image_api")
_LOCK = threading.Lock()


class _BlobImageInfo:
    """Stand-in for ``supervisely.api.image_api.BlobImageInfo`` (a plain dataclass)."""

    def __init__(self, name: str, offset_start: int, offset_end: int) -> None:
        self.name = name
        self.offset_start = offset_start
        self.offset_end = offset_end


_BlobImageInfo.__module__ = "supervisely.api.image_api"
_BlobImageInfo.__qualname__ = _BlobImageInfo.__name__ = "BlobImageInfo"


@contextmanager
def _blob_class() -> Iterator[type]:
    """The class to pickle, importable as supervisely.api.image_api.BlobImageInfo."""
    with _LOCK:
        real = sys.modules.get("supervisely.api.image_api")
        if real is not None and hasattr(real, "BlobImageInfo"):
            yield real.BlobImageInfo
            return
        added = [m for m in _MODULES if m not in sys.modules]
        for m in added:
            sys.modules[m] = types.ModuleType(m)
        mod = sys.modules["supervisely.api.image_api"]
        had = hasattr(mod, "BlobImageInfo")
        old = getattr(mod, "BlobImageInfo", None)
        mod.BlobImageInfo = _BlobImageInfo
        try:
            yield _BlobImageInfo
        finally:
            if had:
                mod.BlobImageInfo = old
            else:
                del mod.BlobImageInfo
            for m in reversed(added):
                sys.modules.pop(m, None)


def _make(cls: type, name: str, start: int, end: int):
    if cls is _BlobImageInfo:
        return _BlobImageInfo(name, start, end)
    return cls(name=name, offset_start=start, offset_end=end)  # the real dataclass


def _dump_batches(out, entries: Iterable[tuple[str, int, int]]) -> None:
    it = iter(entries)
    with _blob_class() as cls:
        while True:
            batch = [_make(cls, n, s, e) for n, s, e in islice(it, BATCH)]
            if not batch:
                return
            pickle.dump(batch, out, protocol=PROTOCOL)


def dumps_offsets(entries: Iterable[tuple[str, int, int]]) -> bytes:
    """The bytes ``save_blob_offsets_pkl`` writes for these (name, start, end) entries."""
    out = io.BytesIO()
    _dump_batches(out, entries)
    return out.getvalue()


def write_offsets(path: str | os.PathLike, entries: Iterable[tuple[str, int, int]]) -> None:
    """Write the offsets file atomically (temp file in the same folder, then os.replace).

    Batches are pickled and written one at a time, so huge inputs never exist as objects
    all at once.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _dump_batches(f, entries)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def offsets_path_for_tar(tar_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """``<out_dir>/<tar stem>_offsets.pkl`` (FORMAT.md §2); out_dir defaults to the tar's folder."""
    tar = Path(tar_path)
    folder = Path(out_dir) if out_dir is not None else tar.parent
    return folder / (tar.stem + OFFSETS_SUFFIX)
