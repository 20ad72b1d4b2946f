"""The view's log line for what it hides in a real folder: said once per folder, never per entry.

The view hides, by rule, entries of the project's real folders that a reader could not use
safely (FIFOs, sockets, devices, links leading out of the project, nowhere or round in a
circle) and what the real ``img/`` holds that is no item (sub-folders, files without an image
name). An operator whose file "is missing" in the mount needs one line saying so; a readdir
that is repeated, or a folder of a million entries listed in chunks, must not repeat it nor
pay for it per entry. So the scan only counts what it drops anyway (``Tally``; kinds for a few
examples only), and ``HiddenLog`` says each folder once per view.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import multiprocessing
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from blobfs.errors import one_line

if TYPE_CHECKING:
    from blobfs.model.project import Dataset

log = logging.getLogger(__name__)

#: Example names in a line; the count says how many more.
EXAMPLES = 3

#: How a scan reports what it hid: (tally, partial). ``partial``: the scan has not judged every
#: entry of the folder (it passed over some, or stopped short), so it hides at least that many.
Report = Callable[["Tally", bool], None]


class Tally:
    """How many entries a scan of one folder hid, with the name and kind of the first few."""

    __slots__ = ("count", "examples")

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[tuple[str, str]] = []

    def add(self, name: str, kind: Callable[[], str]) -> None:
        """Count ``name``; ``kind()`` (a stat, maybe) runs for the first few only."""
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append((name, kind()))


def _folder(rel: str) -> str:
    return one_line(rel) if rel else "."


def _named(examples: list[tuple[str, str]]) -> str:
    return ", ".join(f"'{one_line(name)}' ({kind})" for name, kind in examples)


class _Said:
    """The folders already said, shared by every process forked from the one that made it.

    The mount's worker processes are forked after the view is built (blobfs.fuse.cpuworkers),
    and the kernel sends a folder's READDIR to one worker and a LOOKUP in it to another: a set
    per process would say a folder once per worker. So the set is a bitmap of folder-name
    hashes in an anonymous shared mapping, changed under a process-shared lock, both made
    before the fork. A hash collision can only keep a second folder's line back (one in 2**20
    per pair of folders that hide something)."""

    BITS = 1 << 20

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, self.BITS // 8)  # MAP_SHARED | MAP_ANONYMOUS
        # The fork context's lock is unlinked at once: no resource tracker process.
        self._lock = multiprocessing.get_context("fork").Lock()

    def _bit(self, rel: str) -> tuple[int, int]:
        h = int.from_bytes(hashlib.blake2b(rel.encode("utf-8", "surrogateescape"),
                                           digest_size=8).digest(), "little") % self.BITS
        return h >> 3, 1 << (h & 7)

    def __contains__(self, rel: str) -> bool:
        byte, bit = self._bit(rel)
        return bool(self._map[byte] & bit)

    def add(self, rel: str) -> bool:
        """Mark ``rel``; False when it was marked already (by any process)."""
        byte, bit = self._bit(rel)
        with self._lock:
            if self._map[byte] & bit:
                return False
            self._map[byte] |= bit
        return True


class HiddenLog:
    """At most one WARNING per view folder (``rel``, relative to the view's root), the first
    time a listing or a lookup there hides something. Thread-safe, and shared by processes
    forked after it was made (see :class:`_Said`)."""

    def __init__(self, enabled: bool, lookups: bool = True) -> None:
        """``lookups``: also say what a lookup by name hides (off for a caller that says it
        in its own error line: ``cat``, ``ls``)."""
        self._said = _Said() if enabled else None
        self._lookups = lookups

    def pending(self, rel: str) -> bool:
        """Whether a line for ``rel`` may still come (a read without the lock: at worst the
        caller counts once more, ``_say`` decides under the lock)."""
        return self._said is not None and rel not in self._said

    def listing(self, rel: str) -> Report | None:
        """The callback a scan of ``rel`` reports its tally to (see ``folderscan``); None when
        nothing is to be said any more (the scan then counts nothing)."""
        if not self.pending(rel):
            return None
        return lambda tally, partial: self.listed(rel, tally, partial)

    def listed(self, rel: str, tally: Tally, partial: bool = False) -> None:
        more = ", ..." if tally.count > len(tally.examples) else ""
        entries = "entry" if tally.count == 1 else "entries"
        least = "at least " if partial else ""
        self._say(rel, f"{_folder(rel)}: the mount hides {least}{tally.count} {entries} of this "
                       f"folder: {_named(tally.examples)}{more}")

    def looked_up(self, rel: str, kind: str) -> None:
        """A lookup of view path ``rel`` found a real entry of this ``kind`` and hides it."""
        folder, _, name = rel.rpartition("/")
        if self._lookups and self.pending(folder):
            self._say(folder, f"{_folder(folder)}: the mount hides {_named([(name, kind)])} of "
                              "this folder, looked up by name")

    # The view's img/ lists the dataset's items, not the real folder: what the real img/
    # holds that is no item was counted once, when the project was opened.
    def img_listed(self, rel: str, ds: "Dataset") -> None:
        no_items = ds.img_hidden
        if no_items is not None and no_items.count and self.pending(rel):
            self.listed(rel, no_items)

    def img_looked_up(self, rel: str, ds: "Dataset", name: str,
                      kind_of: Callable[[Path, str], str | None]) -> None:
        """Name ``name``, no item of ``ds``: said if the real img/ has it (only while the
        folder's line is to come, and only if its img/ holds anything that is no item)."""
        no_items = ds.img_hidden
        if self._lookups and no_items is not None and no_items.count and self.pending(rel):
            kind = kind_of(ds.items.img_dir, name)
            if kind is not None:
                self.looked_up(f"{rel}/{name}", kind)

    def _say(self, rel: str, line: str) -> None:
        if self._said is not None and self._said.add(rel):
            log.warning("%s", line)
