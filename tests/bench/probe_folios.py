"""How much of a file's page cache sits in large folios: why a warm sequential read of a big
member runs at ~0.4x native on some hosts.

Run by hand, as root (PFNs in /proc/self/pagemap and /proc/kpageflags need CAP_SYS_ADMIN),
never by pytest:

    .venv/bin/python tests/bench/probe_folios.py /tmp/bm/n300000/native/zz_big.png \\
        /mnt/proj/ds/img/zz_big.png

Each file is read once (so its pages are cached), mapped, and every page of its first 64 MiB
is looked up: order-0, or head/tail of a large folio (KPF_COMPOUND_HEAD = 15,
KPF_COMPOUND_TAIL = 16; Documentation/admin-guide/mm/pagemap.rst). ext4 caches file data in
large folios (where the file's layout allows); FUSE's page cache on the kernel measured here
(6.18.44) held order-0 pages only, under both INIT replies blobfs sends (its io_uring loop's:
``max_pages`` 256, ``max_write`` 1 MiB; libfuse's on ``/dev/fuse``), so a 1 MiB ``read``
copies 256 separate pages where ext4 copies a few folios.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")
SPAN = 64 << 20
_Q = struct.Struct("<Q")


def probe(path: str) -> tuple[int, int, int, int]:
    """(pages looked at, large-folio heads, tails, order-0 pages) of ``path``'s page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
        size = os.fstat(f.fileno()).st_size
        n = min(size, SPAN) // PAGE
        if n == 0:
            return 0, 0, 0, 0
        # A private copy-on-write map: readable through a read-only descriptor, and writable
        # as ctypes wants its buffer; nothing is written, so every page stays the cache's.
        m = mmap.mmap(f.fileno(), n * PAGE, access=mmap.ACCESS_COPY)
    try:
        for i in range(n):
            m[i * PAGE]  # fault the page in
        base = ctypes.addressof(ctypes.c_char.from_buffer(m)) // PAGE
        heads = tails = small = 0
        with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
            for i in range(n):
                pm.seek((base + i) * 8)
                entry = _Q.unpack(pm.read(8))[0]
                if not entry >> 63 & 1:  # not present
                    continue
                kf.seek((entry & ((1 << 55) - 1)) * 8)
                flags = _Q.unpack(kf.read(8))[0]
                if flags >> 15 & 1:
                    heads += 1
                elif flags >> 16 & 1:
                    tails += 1
                else:
                    small += 1
        return n, heads, tails, small
    finally:
        m.close()


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: probe_folios.py FILE [FILE ...]", file=sys.stderr)
        return 2
    for path in sys.argv[1:]:
        n, heads, tails, small = probe(path)
        share = (heads + tails) / n if n else 0.0
        print(f"{path}: {n} pages: {heads} large-folio heads + {tails} tails ({share:.0%} in large "
              f"folios), {small} order-0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
