"""One blob: a tar plus its SDK offsets file.

Every member's offset follows from the names and sizes alone (``tarwriter.member_span``), so
the layout — and with it the whole offsets file — is computed before any image is read. The
tar is then filled in chunks of ``CHUNK`` members by forked worker processes
writing with ``pwrite`` at their chunk's offset (each with its own GIL: per-file Python work is
what limits a pack of 300k small files), while the parent writes the offsets and drives the
progress bar. Small inputs are written in-process.

The offsets are emitted in batches of 10,000 entries in archive order — exactly the batches
the SDK's ``save_blob_offsets_pkl`` dumps (FORMAT.md §4) — so the file is byte-identical to
what it would write for this tar (encoded by ``blobfs.format.offsets_encode``, 5x faster than pickling).

Workers, failures and interrupts: ``blobfs.write.workers``.
"""
from __future__ import annotations

import os
from array import array
from pathlib import Path
from typing import Callable, Iterator, Sequence

from blobfs.errors import InputError
from blobfs.write.errors import output_failed
from blobfs.format.offsets_encode import encode_batch
from blobfs.format.offsets_write import BATCH
from blobfs.write.tarwriter import (BLOCK, BUFFER, MTIME_MAX, MTIME_RANGE, NO_MTIME, OCTAL_LIMIT,
                                    fill_span, flat_chunks, header_length, write_trailer)
from blobfs.write.workers import run_chunks

#: A file to store: (tar member name — its base name is the item name —, path relative to the
#: root folder, size when listed, mtime in seconds when listed or None to fstat it).
#: Plain tuples: 300k of them must stay cheap.
Member = tuple[str, str, int, "int | None"]
Progress = Callable[[int], None]

#: Members per unit of work.
CHUNK = 1000


def layout(members: Sequence[Member]) -> tuple[array, array, int]:
    """(offset of each member's first header byte, offset of its data, end of the last
    member)."""
    starts = array("q")
    data = array("q")
    pos = 0
    for member, _rel, size, _mtime in members:
        starts.append(pos)
        if size < OCTAL_LIMIT and len(member) <= 100 and member.isascii():
            pos += BLOCK
        else:
            pos += header_length(member, size)
        data.append(pos)
        pos += size + (-size % BLOCK)
    return starts, data, pos


def _offsets(members: Sequence[Member], data: array) -> Iterator[bytes]:
    """The offsets file, one SDK batch at a time."""
    for lo in range(0, len(members), BATCH):
        batch = members[lo : lo + BATCH]
        begins = data[lo : lo + BATCH]
        yield encode_batch([m[0].rpartition("/")[2] for m in batch], begins,
                           [b + m[2] for b, m in zip(begins, batch)])


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
               progress: Progress | None = None, jobs: int | None = None) -> tuple[int, int, int]:
    """Write ``members`` (in the given order) as a tar to ``tar_fd`` and their offsets to
    ``offsets_fd``; member paths are relative to ``root``. Returns (member count, tar size,
    members whose own mtime a tar header cannot hold: stored clamped, see
    ``tarwriter.clamped_note``). An ``mtime`` for all that no header can hold is refused."""
    if mtime is not None and not 0 <= mtime <= MTIME_MAX:
        raise InputError(f"mtime {mtime}: out of range ({MTIME_RANGE})")
    starts, data_starts, end = layout(members)
    label = os.fspath(tar_label)
    n = len(members)

    bufs: dict[int, bytearray] = {}
    turn = os.pipe()   # see tarwriter.fill_span: one writer at a time, the others sleep
    os.write(turn[1], b".")
    # What the workers read, flattened before the fork: one bytes object per chunk of paths
    # (and of member names when they differ) and arrays of sizes and mtimes. A forked child
    # that touches a parent's Python object writes its refcount and so copies its page: with
    # 300k member tuples and strings that was ~50k page faults per pack.
    rels = flat_chunks([m[1] for m in members], CHUNK)
    names = rels if all(m[0] == m[1] for m in members) else flat_chunks(
        [m[0] for m in members], CHUNK)
    sizes = array("q", [m[2] for m in members])
    mtimes = array("q", [NO_MTIME if m[3] is None else m[3] for m in members])

    def fill(span: tuple[int, int]) -> tuple[int, int]:
        lo, hi = span
        # One buffer per process, reused for all its chunks: fresh memory costs page faults
        # (and, in a VM with free page reporting, host faults) on every first touch.
        buf = bufs.get(os.getpid())
        if buf is None:
            buf = bufs[os.getpid()] = bytearray(BUFFER + BLOCK)
        paths = rels[lo // CHUNK].split(b"\0")
        clamped = fill_span(names[lo // CHUNK].split(b"\0") if names is not rels else paths,
                            paths, sizes[lo:hi], mtimes[lo:hi], starts[lo], root, tar_fd, label,
                            mtime, buf, turn)
        return hi - lo, clamped  # the second count, summed over the workers

    def offsets() -> None:  # the layout fixes them: written while the workers fill the tar
        for data in _offsets(members, data_starts):
            write_all(offsets_fd, data, offsets_label)

    chunks = [(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]
    try:
        _n, clamped = run_chunks(chunks, fill, label, progress=progress, parent_work=offsets,
                                 jobs=jobs)
    finally:
        os.close(turn[0])
        os.close(turn[1])
    return n, write_trailer(tar_fd, label, end), clamped

