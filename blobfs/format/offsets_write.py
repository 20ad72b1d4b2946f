"""Write offsets pickles byte-identical to the SDK's ``save_blob_offsets_pkl`` (FORMAT.md §6 (1)).

The SDK pickles, per batch of 10,000, a list of ``supervisely.api.image_api.BlobImageInfo``
dataclass instances with Python's ``pickle`` protocol 4, appending pickle after pickle to one
file. Each batch's bytes come from :mod:`blobfs.format.offsets_encode`.
"""
from __future__ import annotations

import os
import tempfile
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from blobfs.format.offsets_encode import encode_batch

BATCH = 10_000  # supervisely.io.fs.OFFSETS_PKL_BATCH_SIZE
OFFSETS_SUFFIX = "_offsets.pkl"


def offsets_batches(entries: Iterable[tuple[str, int, int]]) -> Iterator[bytes]:
    """The file's bytes, one SDK batch (pickle) at a time."""
    it = iter(entries)
    while True:
        batch = list(islice(it, BATCH))
        if not batch:
            return
        names, starts, ends = zip(*batch)
        yield encode_batch(names, starts, ends)


def dumps_offsets(entries: Iterable[tuple[str, int, int]]) -> bytes:
    """The bytes ``save_blob_offsets_pkl`` writes for these (name, start, end) entries."""
    return b"".join(offsets_batches(entries))


def write_offsets(path: str | os.PathLike, entries: Iterable[tuple[str, int, int]]) -> None:
    """Write the offsets file atomically (temp file in the same folder, then os.replace).

    Batches are encoded and written one at a time, so huge inputs never exist as objects
    all at once.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for data in offsets_batches(entries):
                f.write(data)
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
