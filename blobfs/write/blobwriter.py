"""One blob: a tar plus its SDK offsets file.

Every member's offset follows from the names and sizes alone (``tarwriter.member_span``), so
the layout — and with it the whole offsets file — is computed before any image is read. The
tar is then filled in chunks of ``CHUNK`` members by forked worker processes
writing with ``pwrite`` at their chunk's offset (each with its own GIL: per-file Python work is
what limits a pack of 300k small files), while the parent writes the offsets and drives the
progress bar. Small inputs are written in-process.

The offsets are emitted in batches of 10,000 entries in archive order — exactly the batches
the SDK's ``save_blob_offsets_pkl`` dumps (FORMAT.md §4) — so the file is byte-identical to
what it would write for this tar.

Workers, failures and interrupts: ``blobfs.write.workers``.
"""
from __future__ import annotations

import os
from array import array
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Sequence

from blobfs.format.offsets_write import dumps_offsets
from blobfs.write.errors import output_failed
from blobfs.write.tarwriter import BLOCK, OCTAL_LIMIT, fill_span, header_length, write_trailer
from blobfs.write.workers import run_chunks

#: A file to store: (tar member name — its base name is the item name —, path relative to the
#: root folder, size when listed, mtime in seconds when listed or None to fstat it).
#: Plain tuples: 300k of them must stay cheap.
Member = tuple[str, str, int, "int | None"]
Progress = Callable[[int], None]

#: FORMAT.md §4: save_blob_offsets_pkl's batch size.
OFFSETS_BATCH = 10_000
#: Members per unit of work.
CHUNK = 1000


def layout(members: Sequence[Member]) -> tuple[array, int]:
    """(offset of each member's first header byte, end of the last member)."""
    starts = array("q")
    pos = 0
    for member, _rel, size, _mtime in members:
        starts.append(pos)
        if size < OCTAL_LIMIT and len(member) <= 100 and member.isascii():
            pos += BLOCK + size + (-size % BLOCK)
        else:
            pos += header_length(member, size) + size + (-size % BLOCK)
    return starts, pos


def _offsets(members: Sequence[Member], starts: array) -> Iterator[bytes]:
    """The offsets file, one SDK batch at a time."""
    it = iter(range(len(members)))
    while idx := list(islice(it, OFFSETS_BATCH)):
        batch = []
        for i in idx:
            member, _rel, size, _mtime = members[i]
            if size < OCTAL_LIMIT and len(member) <= 100 and member.isascii():
                start = starts[i] + BLOCK
            else:
                start = starts[i] + header_length(member, size)
            batch.append((member.rpartition("/")[2], start, start + size))
        yield dumps_offsets(batch)


def write_all(fd: int, data: bytes, label: str | os.PathLike[str]) -> None:
    """Write all of ``data`` (os.write may write less); a failure names ``label``."""
    mv = memoryview(data)
    try:
        while mv:
            mv = mv[os.write(fd, mv):]
    except OSError as e:
        raise output_failed(label, e) from None


def write_blob(members: Sequence[Member], root: str, tar_fd: int, tar_label: Path,
               offsets_fd: int, offsets_label: Path, *, mtime: int | None = None,
               progress: Progress | None = None) -> tuple[int, int]:
    """Write ``members`` (in the given order) as a tar to ``tar_fd`` and their offsets to
    ``offsets_fd``; member paths are relative to ``root``. Returns (member count, tar size)."""
    starts, end = layout(members)
    label = os.fspath(tar_label)
    n = len(members)

    def fill(span: tuple[int, int]) -> tuple[int, int]:
        lo, hi = span
        fill_span(members, lo, hi, starts[lo], root, tar_fd, label, mtime)
        return hi - lo, 0

    def offsets() -> None:  # the layout fixes them: written while the workers fill the tar
        for data in _offsets(members, starts):
            write_all(offsets_fd, data, offsets_label)

    chunks = [(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]
    run_chunks(chunks, fill, label, progress=progress, parent_work=offsets)
    return n, write_trailer(tar_fd, label, end)
