"""Inode numbers and FUSE node ids of the classic view, and the way back from them to paths.

Every virtual number is a pure function of (dataset, item), so the view and the FUSE driver
keep nothing per image or per item JSON file, whatever the project's size. The top byte says
what a number is; the low 56 bits hold ``(dataset + 1) << 32 | (item + 1)``:

====  ===================================================================
1     a virtual folder (the root of a virtual project, ``DS/img``, ``DS/ann``)
2     an image (``DS/img/NAME``): inode number and FUSE node id alike
3     a generated file (``meta.json``, a synthesized annotation)
4     node id of ``DS/ann/NAME.json``, NAME an item of DS
5     node id of a record in the worker processes' node log (:mod:`blobfs.fuse.nodelog`)
6, 7  node ids of ``DS/img_info/NAME.json`` and ``DS/meta/NAME.json``
====  ===================================================================

Node ids of an item's JSON files are not its inode numbers: a real file keeps its own number
(:func:`real_ino`), a synthesized annotation its generated one. The id only names the path;
resolving it is the view's business. The kernel identifies inodes by node id
(https://libfuse.github.io/doxygen/structfuse__lowlevel__ops.html ``lookup``), so ids made
this way need no table entry and no FORGET bookkeeping.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blobfs.model.project import Dataset

VDIR = 1 << 56
ITEM = 2 << 56
VFILE = 3 << 56
JSON_NODES = {"ann": 4 << 56, "img_info": 6 << 56, "meta": 7 << 56}
NODE_LOG = 5 << 56
_JSON_DIRS = {nid >> 56: sub for sub, nid in JSON_NODES.items()}
_VIRTUAL_LO, _VIRTUAL_HI = 1 << 56, 8 << 56
_FLIP = 1 << 63


def real_ino(ino: int) -> int:
    """The inode number the view shows for a real file: ``ino`` itself, or, when it falls in
    the virtual range, ``ino`` with its top bit set.

    Real file systems hand out far smaller numbers (ext4, XFS, btrfs, tmpfs), but st_ino is 64
    bits and NFS fileids, 9p or a FUSE source can be anything; a real file whose number decoded
    as an image would have its LOOKUP answered with the image's node id and be served the
    image's bytes. Once moved it could only meet a real file whose number is exactly that."""
    return ino ^ _FLIP if _VIRTUAL_LO <= ino < _VIRTUAL_HI else ino


def number(top: int, k: int, i: int) -> int:
    """The number of kind ``top`` (VDIR, ITEM, ...) for dataset ``k``, item (or slot) ``i``."""
    return top | (k + 1) << 32 | (i + 1)


class NodeIds:
    """Paths from image inode numbers and item JSON node ids, and those ids from paths."""

    def __init__(self, datasets: "list[Dataset]") -> None:
        self._datasets = datasets
        self._by_rel = {ds.relpath: k for k, ds in enumerate(datasets)}

    def item_path(self, ino: int) -> str | None:
        """The view path of the image whose inode number is ``ino``; None for any other inode."""
        hit = self._item_of(ino) if ino >> 56 == ITEM >> 56 else None
        return None if hit is None else f"{hit[0].relpath}/img/{hit[0].items.name(hit[1])}"

    def node_path(self, nid: int) -> str | None:
        """The view path of an image's inode number or of an id from :meth:`item_json_node`;
        None for any other number."""
        sub = _JSON_DIRS.get(nid >> 56)
        if sub is None:
            return self.item_path(nid)
        hit = self._item_of(nid)
        return None if hit is None else f"{hit[0].relpath}/{sub}/{hit[0].items.name(hit[1])}.json"

    def item_json_node(self, path: str) -> int | None:
        """The node id of ``DS/ann/NAME.json``, ``DS/img_info/NAME.json`` or
        ``DS/meta/NAME.json`` when NAME is an item of dataset DS (whether or not that file
        exists); None for any other path."""
        parent, _, name = path.strip("/").rpartition("/")
        ds_rel, _, sub = parent.rpartition("/")
        top = JSON_NODES.get(sub)
        k = self._by_rel.get(ds_rel)
        if top is None or k is None or not name.endswith(".json"):
            return None
        i = self._datasets[k].items.find(name[: -len(".json")])
        return None if i < 0 else number(top, k, i)

    def _item_of(self, nid: int) -> "tuple[Dataset, int] | None":
        k, i = ((nid >> 32) & 0xFFFFFF) - 1, (nid & 0xFFFFFFFF) - 1
        if not (0 <= k < len(self._datasets) and 0 <= i < len(self._datasets[k].items)):
            return None
        return self._datasets[k], i


__all__ = ["ITEM", "JSON_NODES", "NODE_LOG", "NodeIds", "VDIR", "VFILE", "number", "real_ino"]
