"""One blob: a tar plus its SDK offsets file, written together in one streaming pass.

Shared by ``pack`` and ``pack-project``. The offsets are emitted in batches of
``OFFSETS_BATCH`` entries as the members are written; since the SDK's
``save_blob_offsets_pkl`` also dumps one independent pickle per 10,000 members in archive
order (FORMAT.md §4), the concatenation is byte-identical to what it would write for our tar,
and memory stays flat however many members there are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from blobfs.format.offsets_write import dumps_offsets
from blobfs.write.errors import output_failed
from blobfs.write.tarwriter import BLOCK, RECORD, TarWriter, member_header

#: FORMAT.md §4: save_blob_offsets_pkl's batch size.
OFFSETS_BATCH = 10_000
#: How often (in members) the progress callback is told.
PROGRESS_EVERY = 256

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Member:
    """A file to store: tar member name (its basename is the item name), source, size seen."""

    member: str
    path: str
    size: int | None = None

    @property
    def name(self) -> str:
        return self.member.rpartition("/")[2]


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


def write_blob(members: Iterable[Member], tar_fd: int, tar_label: Path,
               offsets_fd: int, offsets_label: Path, *, mtime: int | None = None,
               progress: Progress | None = None) -> tuple[int, int]:
    """Write ``members`` (in the given order) as a tar to ``tar_fd`` and their offsets to
    ``offsets_fd``. Returns (member count, tar size)."""
    writer = TarWriter(tar_fd, os.fspath(tar_label), mtime=mtime)
    batch: list[tuple[str, int, int]] = []
    count = 0
    pending = 0
    for m in members:
        start, end = writer.add_file(m.member, m.path, expect_size=m.size)
        batch.append((m.name, start, end))
        count += 1
        if len(batch) == OFFSETS_BATCH:
            _write_all(offsets_fd, dumps_offsets(batch), offsets_label)
            batch.clear()
        if progress is not None:
            pending += 1
            if pending == PROGRESS_EVERY:
                progress(pending)
                pending = 0
    if batch:
        _write_all(offsets_fd, dumps_offsets(batch), offsets_label)
    size = writer.finish()
    if progress is not None and pending:
        progress(pending)
    return count, size
