"""Node ids for the low-level FUSE driver: which view path a kernel ``nodeid`` stands for.

The kernel names files by the nodeid the daemon returned from LOOKUP and sends FORGET with a
count once it drops its inode (https://libfuse.github.io/doxygen/structfuse__lowlevel__ops.html
``forget``: "the inode is valid until its lookup count reaches zero"). High-level libfuse
keeps a node per looked-up name for this (~170 bytes each; with 1,000,000 images read that
was most of the daemon's memory). Here an image costs nothing: its nodeid *is* its view inode
number, from which the path is rebuilt (:meth:`blobfs.model.numbering.NodeIds.node_path`). An
item's JSON files (``ann/``, ``img_info/``, ``meta/``) cost nothing either: their nodeids are
made from the item (:meth:`NodeIds.item_json_node`). Every other node (folders, other
pass-through files, JSON files of no item) gets a counted table entry, dropped when the kernel
forgets it. Nodeids are never reused, so a late FORGET can only hit its own entry. When the
mount is served by several worker processes, those entries live in a
:class:`blobfs.fuse.nodelog.NodeLog` that every worker can read instead.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from blobfs.fuse.nodelog import NodeLog

ROOT_ID = 1  #: FUSE_ROOT_ID


class NodeTable:
    """nodeid <-> view path, with the kernel's lookup counts."""

    def __init__(self, node_path: Callable[[int], str | None],
                 item_json_node: Callable[[str], int | None] | None = None) -> None:
        self._node_path = node_path
        self._item_json_node = item_json_node
        self._paths: dict[int, list] = {ROOT_ID: ["", 1 << 62]}  # the root is never forgotten
        self._ids: dict[str, int] = {"": ROOT_ID}
        self._next = ROOT_ID + 1
        # Only the multithreaded loop needs it; uncontended it costs ~50 ns a lookup.
        self._lock = threading.Lock()
        self._log: NodeLog | None = None

    def share(self, log: NodeLog) -> None:
        """Hand out every new non-image node id from ``log`` (before worker processes fork)."""
        self._log = log

    def path(self, nodeid: int) -> str | None:
        entry = self._paths.get(nodeid)
        if entry is not None:
            return entry[0]
        path = self._node_path(nodeid)
        if path is None and self._log is not None:
            return self._log.path(nodeid)
        return path

    def ref(self, path: str, ino: int) -> int:
        """The nodeid to answer a LOOKUP of ``path`` (whose view inode is ``ino``) with."""
        if self._node_path(ino) is not None:
            return ino
        if self._item_json_node is not None:
            nid = self._item_json_node(path)
            if nid is not None:
                return nid
        if self._log is not None:
            return self._log.ref(path)
        with self._lock:
            nid = self._ids.get(path)
            if nid is None:
                nid = self._next
                self._next += 1
                self._ids[path] = nid
                self._paths[nid] = [path, 1]
            else:
                self._paths[nid][1] += 1
            return nid

    def forget(self, nodeid: int, count: int) -> None:
        with self._lock:
            entry = self._paths.get(nodeid)
            if entry is None or nodeid == ROOT_ID:
                return
            entry[1] -= count
            if entry[1] <= 0:
                del self._paths[nodeid]
                if self._ids.get(entry[0]) == nodeid:
                    del self._ids[entry[0]]

    def __len__(self) -> int:
        return len(self._paths)


__all__ = ["NodeTable", "ROOT_ID"]
