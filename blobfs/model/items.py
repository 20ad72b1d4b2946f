"""The items of one dataset: a compact, immutable name → byte-range index.

A dataset's items come from several places (FORMAT.md §1): every entry of every offsets file
in the dataset folder (bytes in a tar) and every image file in ``img/`` (bytes on disk). This
module merges them under one deterministic rule and answers, per item, where its bytes live.

Layout (why it looks like this): at 1,000,000 items a dict of Python objects costs ~150 MiB;
here an item costs ~45 bytes — its UTF-8 name in one shared buffer, its range in two int64
arrays, its source in an int16 array — plus 8 bytes of lookup index (crc32 of the name sorted
with the item number; found with ``bisect`` in C, then confirmed by comparing the name).

Duplicate rule: sources are merged in a fixed order — offsets files sorted by file name, each
in file order, then ``img/`` files — and for a name that occurs more than once the *last*
occurrence wins (the SDK's ``get_blob_img_bytes`` also returns the last match). So an ``img/``
file shadows a blob entry of the same name. Each shadowed entry is reported once as a problem.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import operator
import os
from array import array
from itertools import chain
from pathlib import Path
from typing import Iterator, Sequence
from zlib import crc32

from blobfs.errors import ReadError
from blobfs.format.entries import EntryTable
from blobfs.model.blobsource import BlobSource
from blobfs.model.confine import opened_inside
from blobfs.model.namehash import hash_table

log = logging.getLogger(__name__)

#: ``src`` value of an item whose bytes are a file in the dataset's ``img/`` folder.
DISK = -1


class ItemIndex:
    """Immutable index of a dataset's items; item numbers are 0..len-1 in merge order."""

    __slots__ = ("_names", "_name_ends", "_starts", "_ends", "_src", "_crcs", "_table", "_mask",
                 "_dead", "_joined", "_closed", "_digest", "sources", "img_dir", "confine")

    def __init__(self, table: EntryTable, src: array, sources: Sequence[BlobSource],
                 img_dir: Path | None, hashed: tuple[array, array, set[int]] | None = None) -> None:
        self._names = bytes(table.names)
        self._name_ends = table.name_ends
        self._starts = table.starts
        self._ends = table.ends
        self._src = src
        self.sources = list(sources)
        self.img_dir = img_dir
        self._crcs, self._table, self._dead = hashed or hash_table(self._names, self._name_ends)
        self._mask = len(self._table) - 1
        self._joined: str | None = None
        self._closed = False  # set by close(): img/ items have no descriptor to say so
        self._digest: bytes | None = None
        #: The real project folder ``img/`` files must be read from (None: not checked), set
        #: by whoever opened the project: it was checked at open, and the file may change.
        self.confine: str | None = None

    # -- building -----------------------------------------------------------------------
    @classmethod
    def build(cls, parts: Sequence[tuple[EntryTable, int, str]], sources: Sequence[BlobSource],
              img_dir: Path | None = None, disk_files: Sequence[tuple[str, int]] = (),
              hashed: tuple[array, array, set[int]] | None = None,
              ) -> tuple["ItemIndex", list[str]]:
        """Merge ``parts`` (table, source number, label for messages) and ``disk_files``
        ((name, size) in ``img_dir``) by the duplicate rule; return the index and problems."""
        src = array("h")
        if len(parts) == 1 and not disk_files:
            merged = parts[0][0]  # the common case: nothing to merge, so nothing to copy
            src.extend(array("h", [parts[0][1]]) * len(merged))
        else:
            merged = EntryTable()
            for table, source, _label in parts:
                base = merged.name_ends[-1] if len(merged) else 0
                merged.names += table.names
                merged.name_ends.extend(array("Q", (e + base for e in table.name_ends)))
                merged.starts.extend(table.starts)
                merged.ends.extend(table.ends)
                src.extend(array("h", [source]) * len(table))
        for name, size in disk_files:
            merged.append(name.encode("utf-8"), 0, size)
            src.append(DISK)
        single = len(parts) == 1 and not disk_files
        index = cls(merged, src, sources, img_dir, hashed if single else None)
        dead = index._dead
        if not dead:
            return index, []
        problems = []
        for i in sorted(dead)[:100]:
            s = src[i]
            where = "img/" if s == DISK else sources[s].path.name
            problems.append(f"duplicate item {index.name(i)!r} (from {where}) is shadowed by a later one")
        if len(dead) > 100:
            problems.append(f"... and {len(dead) - 100} more duplicate items shadowed")
        keep = EntryTable()
        ksrc = array("h")
        for i in range(len(merged)):
            if i not in dead:
                keep.append(index.name_bytes(i), merged.starts[i], merged.ends[i])
                ksrc.append(src[i])
        return cls(keep, ksrc, sources, img_dir), problems

    @property
    def hashed(self) -> tuple[array, array, set[int]]:
        """The lookup structures, for the index cache (``blobfs.model.cache``)."""
        return self._crcs, self._table, self._dead

    def digest(self) -> bytes:
        """What the item numbers mean: a digest of every name, range and source number.

        A project pickled to another process is opened again there; this must match, or the
        sender's item numbers (a training job's index of names and labels) would read other
        images there. Item counts and tar sizes alone miss an offsets file rewritten in
        another order, or an ``img/`` file renamed. ~7 ms per 300,000 items, once (memoized:
        the index never changes)."""
        if self._digest is None:
            h = hashlib.sha256()
            for part in (self._names, self._name_ends, self._starts, self._ends, self._src):
                h.update(part)
            self._digest = h.digest()
        return self._digest

    # -- queries ------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of items; item numbers are 0 to len - 1."""
        return len(self._starts)

    def __repr__(self) -> str:
        return f"<blobfs item index: {len(self)} items>"

    def find(self, name: str) -> int:
        """Item number of ``name``, or -1."""
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError:
            return -1
        return self.find_bytes(raw)

    def find_bytes(self, raw: bytes) -> int:
        """Item number of the UTF-8 name ``raw``, or -1."""
        h = crc32(raw)
        table, crcs, mask = self._table, self._crcs, self._mask
        j = h & mask
        while True:
            i = table[j]
            if i < 0:
                return -1
            if crcs[i] == h:
                ends = self._name_ends
                if self._names[(ends[i - 1] if i else 0):ends[i]] == raw:
                    return i
            j = (j + 1) & mask

    def name_bytes(self, i: int) -> bytes:
        try:
            if i < 0:
                raise _negative(i)
            ends = self._name_ends
            return self._names[(ends[i - 1] if i else 0):ends[i]]
        except (IndexError, TypeError):
            raise self._bad_number(i) from None

    def name(self, i: int) -> str:
        """The file name of item ``i`` (``img/NAME`` in the view; its annotation is
        ``ann/NAME.json``)."""
        return self.name_bytes(i).decode("utf-8")

    @property
    def ascii_names(self) -> bool:
        """Whether every name is ASCII (no two can then be one after Unicode normalization)."""
        return self._names.isascii()

    def names(self) -> Iterator[str]:
        """Every item's name, in item order."""
        names, ends = self._names, self._name_ends
        lo = 0
        for hi in ends:
            yield names[lo:hi].decode("utf-8")
            lo = hi

    def size(self, i: int) -> int:
        """Bytes of item ``i``."""
        start, end = self.range(i)
        return end - start

    def is_blob(self, i: int) -> bool:
        """Whether item ``i``'s bytes are in a tar (else a file in ``img/``)."""
        return self.source(i) is not None

    def source(self, i: int) -> BlobSource | None:
        """The tar holding item ``i``, or None for a file in ``img/``."""
        try:
            if i < 0:
                raise _negative(i)
            s = self._src[i]
        except (IndexError, TypeError):
            raise self._bad_number(i) from None
        return None if s == DISK else self.sources[s]

    def range(self, i: int) -> tuple[int, int]:
        """[start, end) of item ``i``'s bytes in its tar (0, size for a file in ``img/``)."""
        try:
            if i < 0:
                raise _negative(i)
            return self._starts[i], self._ends[i]
        except (IndexError, TypeError):
            raise self._bad_number(i) from None

    def arrays(self) -> tuple[bytes, array, array, array, array]:
        """(UTF-8 names back to back, end of each name, start and end of each item's bytes,
        source number of each item or DISK) — read-only, for bulk copies (``blobfs unpack``)
        that must not pay a method call per item."""
        return self._names, self._name_ends, self._starts, self._ends, self._src

    def disk_path(self, i: int) -> Path:
        assert self.img_dir is not None and self._src[i] == DISK
        return self.img_dir / self.name(i)

    def read(self, i: int, size: int = -1, offset: int = 0) -> bytes:
        """Bytes of item ``i`` from ``offset`` (at most ``size``; -1 = to the end).

        Never reads outside the item's range; a tar that returns fewer bytes than the range
        promises, or was written over since it was opened (``BlobSource.check``), raises
        ``ReadError`` (an ``OSError``, EIO) rather than serving short or wrong data; a closed
        project raises ``ValueError``.
        """
        try:
            if i < 0:
                raise _negative(i)
            start, end = self._starts[i], self._ends[i]
        except (IndexError, TypeError):
            raise self._bad_number(i) from None
        if offset < 0:  # pread at start + offset would serve the bytes before the item
            raise ValueError(f"negative offset {offset}")
        length = end - start
        if offset >= length or size == 0:
            return b""
        want = length - offset if size < 0 else min(size, length - offset)
        s = self._src[i]
        if s == DISK:
            if self._closed:
                raise ValueError(f"{self.img_dir}: read from a closed project")
            # O_NONBLOCK: an img/ file replaced by a FIFO since the project was opened would
            # hold open(2) until some writer came (fifo(7)), and the mount's worker with it.
            path = self.disk_path(i)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                if self.confine is not None and not opened_inside(fd, path, self.confine):
                    raise self._led_out(i)
                # The item's size was fixed at open (the mount's stat shows it): a file since
                # written over with more bytes would read as the new bytes cut at the old size.
                now = os.fstat(fd).st_size
                if now != length:
                    raise self._resized(i, length, now)
                data = os.pread(fd, want, offset)
            finally:
                os.close(fd)
        else:
            src = self.sources[s]
            try:
                data = os.pread(src.fd, want, start + offset)  # holds the fd until it returns
            except OSError:
                if src.fd < 0:
                    raise src.closed_error() from None
                raise
            src.check()  # a tar written over in place: EIO, never its new bytes
        if len(data) != want:
            raise self._short_read(i, len(data), want, offset)
        return data

    def _bad_number(self, i: object) -> Exception:
        """Why ``i`` is no item number, said in the API's terms: the array lookups behind it
        said "array index out of range", or "'<' not supported" for a name passed as a number
        (the hot path checks nothing more; this runs once one of them has failed)."""
        try:
            n = operator.index(i)  # type: ignore[arg-type]
        except TypeError:
            hint = " (find(name) gives a name's item number)" if isinstance(i, (str, bytes)) else ""
            return TypeError(f"an item number is an int, not {type(i).__name__}{hint}")
        if n < 0:
            return _negative(n)
        n_items = len(self)
        has = f"{n_items} items (0 to {n_items - 1})" if n_items else "no items"
        return IndexError(f"item number {n} is out of range: the dataset has {has}")

    def close(self) -> None:
        """Refuse reads of ``img/`` items too (``Project.close`` closes the tars), so that
        every read after close raises ``ValueError``, not just those of tar items."""
        self._closed = True

    def _led_out(self, i: int) -> OSError:
        where = self.disk_path(i)
        log.error("%s: item %r is now a link leading out of the project: not read", where, self.name(i))
        return ReadError(errno.EIO, f"{where}: now a link leading out of the project (not read)")

    def _resized(self, i: int, was: int, now: int) -> OSError:
        where = self.disk_path(i)
        log.error("%s: item %r changed on disk since it was opened (size %d -> %d bytes)",
                  where, self.name(i), was, now)
        return ReadError(errno.EIO, f"{where}: changed on disk since it was opened "
                                    f"(size {was:,} -> {now:,} bytes)")

    def _short_read(self, i: int, got: int, want: int, offset: int) -> OSError:
        s = self._src[i]
        where = self.disk_path(i) if s == DISK else self.sources[s].path
        log.error("%s: short read for item %r (%d of %d bytes at %d): file changed or truncated",
                  where, self.name(i), got, want, offset)
        return ReadError(errno.EIO,
                         f"{where}: short read for item {self.name(i)!r}: file changed or truncated")

    def iter_read(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """(prefix + name, bytes) of every item, in index order — the bulk path.

        No lookups: the paths come from one ``split`` of the cached joined names, then one
        ``pread`` per item (a short read raises EIO). Measured alternatives that batch the
        preads in C-level ``map``s were slower: holding a batch of buffers defeats malloc's
        reuse of the one just freed (tests/bench/bench_api.py).
        """
        n = len(self)
        if n == 0:
            return iter(())
        if self._joined is None:
            # Names joined by NUL (which no name contains), decoded once and kept.
            self._joined = b"\0".join(map(self._names.__getitem__, map(
                slice, chain((0,), self._name_ends), self._name_ends))).decode()
        paths = (prefix + self._joined.replace("\0", "\0" + prefix)).split("\0")
        if DISK in self._src or self._src.count(self._src[0]) != n:
            return ((path, self.read(i)) for i, path in enumerate(paths))
        return self._reads(paths, self.sources[self._src[0]])

    def _reads(self, paths: list[str], src: BlobSource) -> Iterator[tuple[str, bytes]]:
        # ``src.fd`` is taken per item and held only by the call, never by a local across
        # ``yield``: a suspended iterator must not keep the tar open after ``close()``.
        # One ``check`` (an fstat costs more than a small pread) covers every pread made
        # before it, so items are read, checked and yielded in small batches.
        pread = os.pread
        batch: list[tuple[str, bytes]] = []
        held = 0
        for i, (path, start, end) in enumerate(zip(paths, self._starts, self._ends)):
            want = end - start
            try:
                data = pread(src.fd, want, start)
            except OSError:
                if src.fd < 0:
                    break  # closed during this batch: what it read first, then the error
                raise
            if len(data) != want:
                src.check()  # a tar cut short has changed: say that (once) first
                raise self._short_read(i, len(data), want, 0)
            batch.append((path, data))
            held += want
            if len(batch) == _BATCH_ITEMS or held >= _BATCH_BYTES:
                yield from _checked(batch, src)
                batch, held = [], 0
        yield from _checked(batch, src)
        if src.fd < 0:
            raise src.closed_error()


def _checked(batch: list[tuple[str, bytes]], src: BlobSource) -> Iterator[tuple[str, bytes]]:
    """``batch`` (read by the ``next()`` now running) once the tar is found unchanged. The
    first item is that call's answer even if ``close()`` came meanwhile (the pread was in
    flight), the rest answer later calls, which a closed project refuses."""
    if not batch:
        return
    src.check()
    for k, item in enumerate(batch):
        if k and src.fd < 0:
            raise src.closed_error()
        yield item


#: ``iter_read`` checks the tar (``BlobSource.check``) once per this many items or bytes.
_BATCH_ITEMS = 32
_BATCH_BYTES = 1 << 20


def _negative(i: int) -> IndexError:
    # find() answers -1 for "absent": as an index it must not wrap to the last item, so that
    # read(find(name)) of a missing name fails instead of serving another image's bytes.
    return IndexError(f"item number {i} is negative (find() gives -1 for a name not found)")
