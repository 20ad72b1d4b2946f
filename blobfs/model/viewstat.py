"""The attributes the view gives a path: what the FUSE adapters turn into ``struct stat``."""
from __future__ import annotations

from dataclasses import dataclass

#: Large enough that readers (cp, Python's buffered open) make big reads; 128 KiB is the
#: default FUSE max_read, so larger buys nothing.
BLKSIZE = 128 * 1024


@dataclass(frozen=True, slots=True)
class Stat:
    mode: int
    ino: int
    nlink: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    blksize: int = BLKSIZE

    @property
    def blocks(self) -> int:
        """st_blocks: du and ls -s count 512-byte blocks, not st_size."""
        return (self.size + 511) >> 9
