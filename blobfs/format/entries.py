"""A compact table of offsets entries: (name, offset_start, offset_end) in file order.

A million entries held as Python objects (a str, two ints and a tuple each) cost ~150 MiB;
held here as one UTF-8 byte string plus three machine arrays they cost ~40 MiB, which is what
lets a 1,000,000-image dataset load within the memory budget (issue #2).
"""
from __future__ import annotations

from array import array
from typing import Iterable, Iterator


class EntryTable:
    """Parallel arrays: names (UTF-8, concatenated), exclusive name ends, starts, ends."""

    __slots__ = ("names", "name_ends", "starts", "ends")

    def __init__(self) -> None:
        self.names = bytearray()
        self.name_ends = array("Q")
        self.starts = array("q")
        self.ends = array("q")

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[str, int, int]]) -> "EntryTable":
        table = cls()
        for name, start, end in entries:
            table.append(name.encode("utf-8"), start, end)
        return table

    def append(self, name_utf8: bytes, start: int, end: int) -> None:
        """Add one entry; ``start``/``end`` must fit in a signed 64-bit integer."""
        self.starts.append(start)
        self.ends.append(end)
        self.names += name_utf8
        self.name_ends.append(len(self.names))

    def __len__(self) -> int:
        return len(self.starts)

    def name_bytes(self, i: int) -> bytes:
        lo = self.name_ends[i - 1] if i else 0
        return bytes(self.names[lo : self.name_ends[i]])

    def name(self, i: int) -> str:
        return self.name_bytes(i).decode("utf-8")

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        names, name_ends, starts, ends = self.names, self.name_ends, self.starts, self.ends
        lo = 0
        for i in range(len(starts)):
            hi = name_ends[i]
            yield names[lo:hi].decode("utf-8"), starts[i], ends[i]
            lo = hi

    def __repr__(self) -> str:
        return f"<EntryTable {len(self)} entries>"
