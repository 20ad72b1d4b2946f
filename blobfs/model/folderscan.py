"""One pass over a real folder that a listing can resume at any later place.

The kernel lists a folder in READDIR calls of up to 128 KiB each (a few thousand names),
every call resuming at the offset of the last entry it kept (fs/fuse/readdir.c). An entry's
offset here is its place among all the folder's entries, shown or not, so any scan can go
on from it: the daemon's worker processes each keep scans of their own, and the calls of one
listing land on any of them. A worker that has not scanned that far passes over entries in C
(``islice`` over ``os.scandir``, ~0.2 us a name) instead of judging each one in Python, and
keeps its scan: a listing's later calls that reach it move the same scan forward, so each
worker reads a folder once per listing however the calls alternate. (With a new scan per
missed call, a 1,000,000-name folder took 7.5-9.5 s to list with two workers, 2.2 s with one.)

What a scan hides it reports (``hidden``) when it has judged every entry of the folder, or,
as "at least" that many, when it stops short (``flush``: a reply full, a skip): on a listing
split between workers no scan judges every entry, and the scan that judged a hidden one may
never be resumed (a worker that polls takes a run of calls, the other one the rest).
"""
from __future__ import annotations

import os
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Callable, Generic, TypeVar

from blobfs.model.hidden import Report, Tally

E = TypeVar("E")

Stamp = tuple[int, int, int, int]


def folder_stamp(real: Path) -> Stamp | None:
    """What changes when a folder's entries do: a name added, removed or renamed sets the
    folder's mtime and ctime, a folder renamed in over it has another inode (None: no folder).
    Caveat: ext4 takes timestamps from the coarse clock (one tick, 1-4 ms), so a change in the
    same tick as the one before it leaves the stamp as it was."""
    try:
        s = os.stat(real)
    except OSError:
        return None
    return s.st_dev, s.st_ino, s.st_mtime_ns, s.st_ctime_ns


class FolderScan(Generic[E]):
    """The entries ``judge`` shows of folder ``real``, numbered by place; ``hidden`` hears
    once of what it hid (``kind`` names it): at the folder's end, or at a ``flush``."""

    __slots__ = ("_it", "_judge", "_hide", "_hidden", "_kind", "_tally", "_partial", "place",
                 "stamp")

    def __init__(self, real: Path, judge: Callable[[os.DirEntry], E | None],
                 kind: Callable[[os.DirEntry], str], hide: Callable[[str], bool] | None = None,
                 hidden: Report | None = None) -> None:
        # Stamped before it is read: a change after the stamp shows as a new stamp later.
        self.stamp = folder_stamp(real)
        self._it = os.scandir(real)  # OSError: the caller's (a folder gone is an empty one)
        self._judge, self._hide, self._hidden, self._kind = judge, hide, hidden, kind
        self._tally: Tally | None = None
        self._partial = False  # entries passed over without judging them
        self.place = 0  # of the next entry to read

    def skip_to(self, place: int) -> None:
        """Pass over entries up to ``place`` without judging them."""
        if place > self.place:
            self._partial = True  # the skipped ones are not judged
            try:
                deque(islice(self._it, place - self.place), maxlen=0)
            except OSError:
                self.close()
            self.place = place

    def next(self) -> tuple[int, E] | None:
        """(place, shown entry) of the next entry shown; None at the end (then closed)."""
        hide, judge = self._hide, self._judge
        try:
            for entry in self._it:
                place = self.place
                self.place = place + 1
                if hide is not None and hide(entry.name):
                    continue
                shown = judge(entry)
                if shown is not None:
                    return place, shown
                if self._hidden is not None:  # only what is dropped anyway costs anything
                    if self._tally is None:
                        self._tally = Tally()
                    self._tally.add(entry.name, lambda: self._kind(entry))
        except OSError:
            self._partial = True  # the rest of the folder is not judged
        self.close()
        if self._tally is not None and self._hidden is not None:
            self._hidden(self._tally, self._partial)
            self._hidden = None
        return None

    def flush(self) -> None:
        """Report what the scan has hidden so far, if anything, as a lower bound for the
        folder (it has not judged every entry)."""
        if self._tally is not None and self._hidden is not None:
            self._hidden(self._tally, True)
            self._hidden = None

    def close(self) -> None:
        self._it.close()
