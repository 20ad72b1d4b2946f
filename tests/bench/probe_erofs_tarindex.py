#!/usr/bin/env python3
"""Feasibility probe: serve a blob project's classic view from the kernel, with no daemon.

Run by hand, as root (mount), never by pytest:

    .venv/bin/python tests/bench/probe_erofs_tarindex.py PROJECT IMAGE [--mount MNT] [--check EXPECTED_JSON]

It writes IMAGE, an EROFS image that holds only metadata: the classic view's folders (as
blobfs shows them), each image item of a tar as a chunk-based inode whose one chunk points at
the item's bytes inside the tar (an extra EROFS device: ``-o device=TAR``, one per tar), and
every other file the view shows (``ann/``, ``meta.json``, ``img/`` files on disk) copied in.
Tar members' data start on 512-byte boundaries, so the image uses 512-byte blocks and the
chunk's start block is the item's offset / 512: no byte of an image is copied. With
``--mount`` it mounts the image read-only on MNT (file-backed, Linux 6.12+) and leaves it
mounted for the caller to read and unmount; with ``--check`` it compares every file
``expected_mount.json`` lists, then unmounts.

This is a probe for a possible ``blobfs mount`` backend (see README, Performance): every warm
request (open, ``isatty()``, read) is then answered by the kernel, as on ext4. It covers what
the probe needs: no xattrs, files under 4 GiB, names up to 255 bytes, 32-bit block numbers
(tars under 2 TiB). On-disk format: the kernel's fs/erofs/erofs_fs.h.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from blobfs.model.opening import open_project  # noqa: E402

BLKBITS = 9
BLK = 1 << BLKBITS
SLOT = 64                       # bytes per inode slot (32-byte compact inode + chunk index)
MAGIC = 0xE0F5E1E2
INCOMPAT_CHUNKED_FILE, INCOMPAT_DEVICE_TABLE = 0x4, 0x8
FLAT_PLAIN, CHUNK_BASED = 0, 4
CHUNK_INDEXES = 0x20
FT_REG, FT_DIR = 1, 2
MS_RDONLY = 1
DEVT_SLOTOFF = 12               # device table at byte 12 * 128 = 1536
SUPER = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQB3sIQQQQ")
COMPACT = struct.Struct("<HHHHIIIIHHI")
CHUNK_INDEX = struct.Struct("<HHI")
DIRENT = struct.Struct("<QHBB")
DEVSLOT = struct.Struct("<64sIIIH50s")


@dataclass
class Node:
    nid: int
    mode: int
    nlink: int
    size: int
    mtime: int
    ino: int
    children: dict[bytes, "Node"] = field(default_factory=dict)
    chunk: tuple[int, int] | None = None     # (device number, byte offset in that tar)
    data: bytes | None = None                 # copied into the image
    startblk: int = 0


def build(project: Path) -> tuple[bytearray, list[Path]]:
    """The image of ``project``'s classic view, and the tars to pass as ``device=`` in order.
    Everything comes from the view (``blobfs.model.view``), so the image shows what the FUSE
    mount shows: the same names, modes, link counts and sizes (mtimes to the second, and every
    file owned by root: compact inodes hold no more)."""
    p = open_project(project, lenient=True)
    view = p.view
    img_of = {(f"{d.relpath}/img" if d.relpath else "img"): d for d in p.datasets}
    devices: dict[Path, int] = {}
    nodes: list[Node] = []

    def node(path: str, **kw) -> Node:
        s = view.getattr(path)
        # Slot 0 stays empty, so no inode sits where a zeroed nid field would point.
        n = Node((len(nodes) + 1) * SLOT // 32, s.mode, s.nlink, s.size, s.mtime_ns // 10**9,
                 len(nodes) + 1, **kw)
        nodes.append(n)
        return n

    root = node("")
    dirs = {"": root}
    for top, subdirs, files in view.walk():
        d = dirs[top]
        for name in subdirs:
            path = f"{top}/{name}" if top else name
            dirs[path] = d.children[name.encode("utf-8", "surrogateescape")] = node(path)
        ds = img_of.get(top)
        for name in files:
            path = f"{top}/{name}" if top else name
            i = ds.items.find(name) if ds is not None else -1
            if i >= 0 and ds.items.is_blob(i):
                start, _end = ds.items.range(i)
                assert start % BLK == 0, (path, start)
                dev = devices.setdefault(ds.items.source(i).path, len(devices) + 1)
                n = node(path, chunk=(dev, start))
            else:
                n = node(path, data=view.read_all(path))
            d.children[name.encode("utf-8", "surrogateescape")] = n
    p.close()

    meta_blkaddr = -(-(DEVT_SLOTOFF * 128 + 128 * len(devices)) // BLK)
    data_blk = meta_blkaddr + -(-(len(nodes) + 1) * SLOT // BLK)
    blobs: list[bytes] = []

    def place(data: bytes) -> int:
        nonlocal data_blk
        blk = data_blk
        blobs.append(data + bytes(-len(data) % BLK))
        data_blk += -(-len(data) // BLK)
        return blk

    parents = {id(c): n for n in nodes for c in n.children.values() if stat.S_ISDIR(c.mode)}
    for n in nodes:
        if stat.S_ISDIR(n.mode):
            parent = parents.get(id(n), n) if n is not root else root
            ents = sorted([(b".", n), (b"..", parent), *n.children.items()], key=lambda e: e[0])
            n.data = _dir_blocks(ents)
            n.size = len(n.data)
        if n.data is not None:
            n.startblk = place(n.data)

    img = bytearray(meta_blkaddr * BLK + (len(nodes) + 1) * SLOT)
    img.extend(bytes(-len(img) % BLK))
    for n in nodes:
        pos = meta_blkaddr * BLK + n.nid * 32
        if n.chunk is not None:
            bits = max(0, (max(n.size, 1) - 1).bit_length() - BLKBITS)
            layout, i_u = CHUNK_BASED, bits | CHUNK_INDEXES
            dev, off = n.chunk
            CHUNK_INDEX.pack_into(img, pos + 32, (off >> BLKBITS) >> 32, dev, (off >> BLKBITS) & 0xFFFFFFFF)
        else:
            layout, i_u = FLAT_PLAIN, n.startblk
        assert n.size < 1 << 32
        COMPACT.pack_into(img, pos, layout << 1, 0, n.mode & 0xFFFF, n.nlink, n.size, n.mtime,
                          i_u, n.ino, 0, 0, 0)
    for blob in blobs:
        img.extend(blob)
    for path, dev in devices.items():
        DEVSLOT.pack_into(img, (DEVT_SLOTOFF + dev - 1) * 128, b"", -(-path.stat().st_size // BLK),
                          0, 0, 0, b"")
    SUPER.pack_into(img, 1024, MAGIC, 0, 0, BLKBITS, 0, root.nid, len(nodes), 0, 0,
                    len(img) // BLK, meta_blkaddr, 0, hashlib.md5(str(project).encode()).digest(),
                    b"blobfs", INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE, 0, len(devices),
                    DEVT_SLOTOFF, 0, 0, 0, 0, 0, b"", 0, 0, 0, 0, 0)
    return img, list(devices)


def _dir_blocks(ents: list[tuple[bytes, Node]]) -> bytes:
    """EROFS directory blocks: per block, dirents then names, sorted across blocks."""
    out, block = bytearray(), []

    def flush() -> None:
        names = b"".join(nm for nm, _ in block)
        buf = bytearray()
        off = DIRENT.size * len(block)
        for nm, n in block:
            buf += DIRENT.pack(n.nid, off, FT_DIR if stat.S_ISDIR(n.mode) else FT_REG, 0)
            off += len(nm)
        buf += names
        out.extend(buf + bytes(BLK - len(buf)))
        block.clear()

    used = 0
    for nm, n in ents:
        if used + DIRENT.size + len(nm) > BLK:
            flush()
            used = 0
        block.append((nm, n))
        used += DIRENT.size + len(nm)
    if block:
        flush()
    return bytes(out)


def mount_image(image: Path, mnt: Path, tars: list[Path]) -> None:
    """mount(2) itself: mount(8) would put a regular file on a loop device first, and the
    file-backed mode (fs/erofs/fileio.c) is the one that needs no block device."""
    opts = ",".join(f"device={t}" for t in tars).encode()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(bytes(image), bytes(mnt), b"erofs", MS_RDONLY, opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount -t erofs {image} {mnt}: {os.strerror(e)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path)
    ap.add_argument("image", type=Path)
    ap.add_argument("--mount", type=Path)
    ap.add_argument("--check", type=Path, help="expected_mount.json: compare, then unmount")
    args = ap.parse_args()
    img, tars = build(args.project)
    args.image.write_bytes(img)
    print(f"{args.image}: {len(img):,} bytes of metadata for {len(tars)} tar(s)")
    if not args.mount:
        return 0
    mount_image(args.image, args.mount, tars)
    if not args.check:
        return 0
    try:
        want = json.loads(args.check.read_text())["files"]
        bad = [f for f, e in want.items()
               if hashlib.sha256((args.mount / f).read_bytes()).hexdigest() != e["sha256"]]
        shown = {str(q.relative_to(args.mount)) for q in args.mount.rglob("*") if q.is_file()}
        print(f"{len(want) - len(bad)}/{len(want)} files equal; "
              f"{len(shown - set(want))} extra, {len(set(want) - shown)} missing; bad: {bad[:5]}")
        return 0 if not bad and shown == set(want) else 1
    finally:
        subprocess.run(["umount", str(args.mount)], check=False)


if __name__ == "__main__":
    sys.exit(main())
