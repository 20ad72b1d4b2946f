"""One blob: a tar plus its SDK offsets file, written together in one streaming pass.

Shared by ``pack`` and ``pack-project``. The offsets are emitted in batches of
``OFFSETS_BATCH`` entries as the members are written; since the SDK's
``save_blob_offsets_pkl`` also dumps one independent pickle per 10,000 members in archive
order (FORMAT.md §4), the concatenation is byte-identical to what it would write for our tar,
and memory stays flat however many members there are.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

from blobfs.errors import InputError
from blobfs.format.offsets_write import dumps_offsets
from blobfs.write.errors import output_failed
from blobfs.write.tarwriter import BLOCK, RECORD, TarWriter, build_segment, member_header

#: FORMAT.md §4: save_blob_offsets_pkl's batch size.
OFFSETS_BATCH = 10_000
#: Members per segment (one unit of work for a worker thread; also the progress step).
CHUNK = 500
#: Worker threads building segments, and segments built ahead of the writer (memory bound:
#: about (WINDOW + WORKERS) segments of at most a few MiB each).
WORKERS = 2
WINDOW = 4
PROGRESS_EVERY = CHUNK

Progress = Callable[[int], None]


#: A file to store: (tar member name — its base name is the item name —, path relative to the
#: root folder, size seen when listed or None). Plain tuples: 300k of them must stay cheap.
Member = tuple[str, str, "int | None"]


def member_span(member: str, size: int) -> int:
    """Bytes a member occupies in the tar (headers + padded data): to plan tar sizes."""
    return len(member_header(member, size, 0)) + size + (-size % BLOCK)


def tar_size(spans: int) -> int:
    """Final tar size given the summed member spans (end blocks + record padding)."""
    end = spans + 2 * BLOCK
    return end + (-end % RECORD)


def _write_all(fd: int, data: bytes, label: str | os.PathLike[str]) -> None:
    mv = memoryview(data)
    try:
        while mv:
            mv = mv[os.write(fd, mv):]
    except OSError as e:
        raise output_failed(label, e) from None


def write_blob(members: Iterable[Member], root: str, tar_fd: int, tar_label: Path,
               offsets_fd: int, offsets_label: Path, *, mtime: int | None = None,
               progress: Progress | None = None) -> tuple[int, int]:
    """Write ``members`` (in the given order) as a tar to ``tar_fd`` and their offsets to
    ``offsets_fd``; member paths are relative to ``root``. Returns (member count, tar size)."""
    writer = TarWriter(tar_fd, os.fspath(tar_label), mtime=mtime)
    batch: list[tuple[str, int, int]] = []
    count = 0

    def consume(chunk: list[Member], future: Future) -> None:
        nonlocal batch, count
        pieces, entries = future.result()
        base = writer.write_segment(pieces)
        for (_member, rel, size), (name, start, end) in zip(chunk, entries):
            if size is not None and end - start != size:
                raise InputError(f"{os.path.join(root, rel)}: changed size while packing")
            batch.append((name, base + start, base + end))
        count += len(entries)
        if len(batch) >= OFFSETS_BATCH:
            _write_all(offsets_fd, dumps_offsets(batch[:OFFSETS_BATCH]), offsets_label)
            del batch[:OFFSETS_BATCH]
        if progress is not None:
            progress(len(entries))

    it = iter(members)
    pending: deque[tuple[list[Member], Future]] = deque()
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="blobfs-pack")
    try:
        while chunk := list(islice(it, CHUNK)):
            pending.append((chunk, pool.submit(build_segment, chunk, root, mtime)))
            if len(pending) > WINDOW:
                consume(*pending.popleft())
        while pending:
            consume(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if batch:
        _write_all(offsets_fd, dumps_offsets(batch), offsets_label)
    return count, writer.finish()
