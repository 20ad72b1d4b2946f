"""Node ids that every worker process of one mount can resolve (see :mod:`blobfs.fuse.cpuworkers`).

With one daemon process, :class:`blobfs.fuse.nodes.NodeTable` hands out node ids from a
counter and keeps id -> path in a dict. Worker processes cannot share that dict, and the kernel
sends a request for a node to whichever worker reads it first, not to the one that answered
the LOOKUP. So a node id here is the address of a record: each worker appends the paths it
hands out to a file of its own (a memfd created before the fork, so every worker holds all of
them), and the id says which file and at which offset. Any worker resolves any id with one
``pread``; a worker writes only its own file, so no locking is needed, and the record is
written before the LOOKUP reply that makes the id known to the kernel.

Images and the JSON files of items in ``ann/``, ``img_info/`` and ``meta/`` (every id
:meth:`blobfs.model.numbering.NodeIds.node_path` can rebuild) still need no record. Two workers
may give one path two ids; the kernel treats them as two inodes of the same file, which is
harmless for read-only data. FORGET is not counted: a record is the path plus two bytes (~20
for a folder or another pass-through file), written once per LOOKUP the kernel sends (one per
name while its dentry stays cached).
"""
from __future__ import annotations

import os
import struct

from blobfs.model.numbering import NODE_LOG

#: Node ids of records have a top byte of their own (see :mod:`blobfs.model.numbering`).
BASE = NODE_LOG
_WORKER_SHIFT = 40
_OFF_MASK = (1 << _WORKER_SHIFT) - 1
_LEN = struct.Struct("<H")
_MAX_PATH = 4096  # PATH_MAX: the kernel never sends a longer path
_CACHE = 4096  # resolved ids and handed-out paths kept per worker


class NodeLog:
    """Append-only path records, one memfd per worker."""

    def __init__(self, workers: int) -> None:
        self._fds = [os.memfd_create(f"blobfs-nodes-{k}", os.MFD_CLOEXEC) for k in range(workers)]
        self._me = 0
        self._end = 0
        self._paths: dict[int, str] = {}
        self._ids: dict[str, int] = {}

    def become(self, worker: int) -> None:
        """Called in worker ``worker``'s process right after the fork."""
        self._me = worker
        self._end = 0
        self._ids.clear()

    def ref(self, path: str) -> int:
        """The node id for ``path``, appending a record when this worker has none cached."""
        nid = self._ids.get(path)
        if nid is not None:
            return nid
        raw = path.encode("utf-8", "surrogateescape")
        rec = _LEN.pack(len(raw)) + raw
        if os.pwrite(self._fds[self._me], rec, self._end) != len(rec):
            raise OSError(28, "short write to the node log")  # ENOSPC
        nid = BASE | self._me << _WORKER_SHIFT | self._end
        self._end += len(rec)
        _remember(self._ids, path, nid)
        _remember(self._paths, nid, path)
        return nid

    def path(self, nid: int) -> str | None:
        """The path of a node id any worker handed out; None if ``nid`` is not a record."""
        path = self._paths.get(nid)
        if path is not None:
            return path
        worker, off = (nid - BASE) >> _WORKER_SHIFT, nid & _OFF_MASK
        if nid < BASE or not 0 <= worker < len(self._fds):
            return None
        head = os.pread(self._fds[worker], _LEN.size + _MAX_PATH, off)
        if len(head) < _LEN.size:
            return None
        (n,) = _LEN.unpack_from(head)
        if len(head) < _LEN.size + n:
            return None
        path = head[_LEN.size:_LEN.size + n].decode("utf-8", "surrogateescape")
        _remember(self._paths, nid, path)
        return path


def _remember(cache: dict, key: object, value: object) -> None:
    if len(cache) >= _CACHE:
        del cache[next(iter(cache))]  # oldest first: dicts keep insertion order
    cache[key] = value


__all__ = ["BASE", "NodeLog"]
