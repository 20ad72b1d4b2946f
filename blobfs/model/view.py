"""The classic-project view of a source: the file tree the mount, ``ls``/``cat`` and ``unpack`` show.

The tree is the real project folder with a few overlays, resolved path by path (nothing is
materialized per file, so a 1,000,000-item dataset costs no memory here):

* ``<dataset>/img/`` is the dataset's items (blob entries and on-disk image files);
* the project-level ``blob/`` and each dataset's ``*_offsets.pkl`` are hidden, because a client
  that sees both the pickles and ``img/`` counts every blob item twice (FORMAT.md §9);
* with ``synthesize_ann`` an item without annotation gets a generated ``ann/`` file;
* everything else passes through: real files and folders, write bits removed. A symlink is
  followed only when it stays inside the project (with ``allow_other`` anything else would let
  other users read files through the mount) and does not lead round in a circle (the mount
  shows no symlinks: ``up -> ..`` would be a folder holding itself, ``listing.Around``); FIFOs,
  sockets and devices are hidden, so a reader can never hang on one.

Errors are ``OSError`` with an errno; the FUSE adapter passes them through unchanged.
"""
from __future__ import annotations

import errno
import logging
import os
import stat as st
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from blobfs.model.confine import opened_inside, same_file
from blobfs.model.discovery import OFFSETS_SUFFIX
from blobfs.model.folderscan import folder_stamp
from blobfs.model.hidden import HiddenLog
from blobfs.model.listing import (DIR_MODE as _DIR_MODE, FILE_MODE as _FILE_MODE, Around,
                                  HiddenEntry, RealLister)
from blobfs.model.numbering import ITEM, VDIR, VFILE, NodeIds, number, real_ino
from blobfs.model.ownership import Ownership
from blobfs.model.synth_ann import AnnSynthesizer, RealAnn
from blobfs.model.view_reports import OutsideTheView
from blobfs.model.viewstat import BLKSIZE, Stat

if TYPE_CHECKING:
    from blobfs.model.project import Dataset, Project

log = logging.getLogger(__name__)

_WRITE_BITS = 0o222
_SYNTH_OFF = 1 << 48


def _err(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


@dataclass
class _DirNode:
    """An explicit directory: real (with overlays) or virtual."""

    rel: str
    real: Path | None
    ino: int
    overlay: dict[str, tuple]          # name -> node (see ClassicView._resolve)
    hidden: frozenset[str] = frozenset()
    hide_offsets: bool = False
    items_of: "Dataset | None" = None  # img/ of this dataset
    ann_of: "Dataset | None" = None    # ann/ with synthesized files for this dataset
    ds_index: int = -1

    def hides(self, name: str) -> bool:
        """Whether a real entry of this folder is not shown (or shown by an overlay instead)."""
        return (name in self.overlay or name in self.hidden
                or (self.hide_offsets and name.endswith(OFFSETS_SUFFIX)))


class ClassicView(OutsideTheView):
    """Path-level read-only view; every method is thread-safe."""

    def __init__(self, project: "Project", *, log_synth_failures: bool = True,
                 log_hidden: bool | None = None, log_lookups: bool = True) -> None:
        """The mount's log lines for an annotation that cannot be synthesized and for what the
        view hides (``log_hidden``: as ``log_synth_failures`` unless given; ``log_lookups``:
        also what a lookup by name hides) are off for a caller that reports these itself
        (``unpack``; ``cat`` and ``ls`` say :meth:`hidden_why` in their error line)."""
        self.project = project
        self._hidden = HiddenLog(log_synth_failures if log_hidden is None else log_hidden,
                                 log_lookups)
        self._root_real = os.path.realpath(project.root) if project.root else None
        self._dirs: dict[str, _DirNode] = {}
        self._lister = RealLister(self._root_real)
        self._synth = AnnSynthesizer(project.datasets, log_failures=log_synth_failures)
        self.ids = NodeIds(project.datasets)  #: node ids that need no table (FUSE driver)
        self._shown_as: Ownership | None = None
        self._build()

    def show_as(self, ownership: Ownership | None) -> None:
        """Show every entry with ``ownership``'s owner, group and umask (``-o uid=,gid=,umask=``);
        set before the mount serves, so every adapter and worker process sees the same."""
        self._shown_as = ownership or None

    # -- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        p = self.project
        root_overlay: dict[str, tuple] = {}
        if p.virtual_root:
            meta = ("link", p.meta_path) if p.meta_path else ("bytes", p.meta_bytes(), VFILE)
            root_overlay["meta.json"] = meta
            self._dirs[""] = _DirNode("", None, VDIR, root_overlay)
        else:
            hidden = frozenset({"blob"}) if p.root and (p.root / "blob").is_dir() else frozenset()
            self._dirs[""] = _DirNode("", p.root, 0, root_overlay, hidden)
        for k, ds in enumerate(p.datasets):
            base = number(VDIR, k, -1)
            rel = ds.relpath
            overlay: dict[str, tuple] = {"img": ("dir", f"{rel}/img")}
            self._dirs[f"{rel}/img"] = _DirNode(f"{rel}/img", None, base | 1, {},
                                                items_of=ds, ds_index=k)
            if p.synthesize_ann or ds.path is None:
                overlay["ann"] = ("dir", f"{rel}/ann")
                self._dirs[f"{rel}/ann"] = _DirNode(
                    f"{rel}/ann", ds.ann_dir, base | 2, {},
                    ann_of=ds if p.synthesize_ann else None, ds_index=k)
            self._dirs[rel] = _DirNode(rel, ds.path, base, overlay, hide_offsets=True, ds_index=k)
            if p.virtual_root:
                root_overlay[rel] = ("dir", rel)

    # -- resolution ---------------------------------------------------------------------
    def _resolve(self, rel: str) -> tuple:
        """Node of view path ``rel`` ("" = root): ("dir", rel) | ("item", ds, i, k) |
        ("real", path, stat) | ("bytes", data, ino) | ("synth", k, name)."""
        parent_rel, _, name = rel.rpartition("/")
        parent = self._dirs.get(parent_rel)
        if parent is not None and parent.items_of is not None:  # the hot path: an image
            raw = name.encode("utf-8", "surrogateescape")
            i = parent.items_of.items.find_bytes(raw)
            if i >= 0:
                return ("item", parent.items_of, i, parent.ds_index)
            self._hidden.img_looked_up(parent_rel, parent.items_of, name, self._lister.img_kind)
            raise _err(errno.ENAMETOOLONG if len(raw) > 255 else errno.ENOENT, rel)
        if rel in self._dirs:
            return ("dir", rel)
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) > 255:
            raise _err(errno.ENAMETOOLONG, rel)
        if not name or name in (".", ".."):
            raise _err(errno.ENOENT, rel)
        if parent is None:
            # Below the last view folder: up to the first path whose parent is one (checking
            # each name on the way, as a call per level would), then down through real
            # folders. A loop: a path thousands of levels deep would overflow the stack.
            names, top = [name], parent_rel
            while top not in self._dirs and top.rpartition("/")[0] not in self._dirs:
                top, _, up = top.rpartition("/")
                if len(up.encode("utf-8", "surrogateescape")) > 255:
                    raise _err(errno.ENAMETOOLONG, f"{top}/{up}")
                if not up or up in (".", ".."):
                    raise _err(errno.ENOENT, f"{top}/{up}")
                names.append(up)
            node, here = self._resolve(top), top
            for part in reversed(names):
                here = f"{here}/{part}"
                if node[0] == "real" and st.S_ISDIR(node[2].st_mode):
                    node = self._real(node[1] / part, here)
                elif node[0] == "dir":  # unreachable: explicit dirs are in self._dirs
                    raise _err(errno.ENOENT, here)
                else:
                    raise _err(errno.ENOTDIR, here)
            return node
        if name in parent.overlay:
            child = parent.overlay[name]
            return self._real(child[1], rel) if child[0] == "link" else child
        if parent.hides(name):
            raise _err(errno.ENOENT, rel)
        if parent.real is not None:
            try:
                return self._real(parent.real / name, rel)
            except OSError as e:
                if e.errno != errno.ENOENT or parent.ann_of is None:
                    raise
        if parent.ann_of is not None and self._synth.has(parent.ds_index, name, self._present(parent)):
            return ("synth", parent.ds_index, name)
        raise _err(errno.ENOENT, rel)

    def _real(self, path: Path, rel: str) -> tuple:
        try:
            s = self._lister.lookup(path, rel.rpartition("/")[0], self._dirs)
        except HiddenEntry as h:  # said in its folder's log line if first
            self._hidden.looked_up(rel, h.kind)
            raise _err(errno.ENOENT, rel) from None
        except FileNotFoundError:
            raise _err(errno.ENOENT, rel) from None
        except NotADirectoryError:
            raise _err(errno.ENOTDIR, rel) from None
        except PermissionError:
            raise _err(errno.EACCES, rel) from None
        return ("real", path, s)

    @staticmethod
    def _rel(path: str) -> str:
        return path.strip("/")

    def _lookup(self, path: str) -> tuple[str, tuple]:
        """(rel, node) of view path ``path``. A trailing slash names a folder, as in any file
        system: ``x.png/`` is ENOTDIR (``cat``, ``ls`` and the API get user paths)."""
        rel = self._rel(path)
        node = self._resolve(rel)
        if path.endswith("/") and node[0] != "dir" and not (
                node[0] == "real" and st.S_ISDIR(node[2].st_mode)):
            raise _err(errno.ENOTDIR, rel)
        return rel, node

    # -- attributes ---------------------------------------------------------------------
    def getattr(self, path: str) -> Stat:
        s = self._stat(path)
        return s if self._shown_as is None else self._shown_as.apply(s)

    def _stat(self, path: str) -> Stat:
        rel, node = self._lookup(path)
        kind = node[0]
        if kind == "item":
            ds, i, k = node[1], node[2], node[3]
            items = ds.items
            src = items.source(i)
            if src is not None:
                mtime, uid, gid = src.mtime_ns, src.uid, src.gid
            else:
                s = os.stat(items.disk_path(i))
                mtime, uid, gid = s.st_mtime_ns, s.st_uid, s.st_gid
            return Stat(_FILE_MODE, number(ITEM, k, i), 1, items.size(i), mtime, uid, gid)
        if kind == "real":
            s = node[2]
            return Stat(s.st_mode & ~_WRITE_BITS, real_ino(s.st_ino), s.st_nlink, s.st_size,
                        s.st_mtime_ns, s.st_uid, s.st_gid)
        if kind == "dir":
            d = self._dirs[node[1]]
            if d.real is not None and d.items_of is None:
                try:
                    s = os.stat(d.real)
                    return Stat(s.st_mode & ~_WRITE_BITS, real_ino(s.st_ino),
                                self._nlink(d, s.st_nlink), 0, s.st_mtime_ns, s.st_uid, s.st_gid)
                except OSError:
                    pass
            return Stat(_DIR_MODE, d.ino, self._nlink(d, 2), 0, *self._dir_times(d))
        if kind == "bytes":
            mtime, uid, gid = self._dir_times(self._dirs[""])
            return Stat(_FILE_MODE, node[2], 1, len(node[1]), mtime, uid, gid)
        k, name = node[1], node[2]
        data = self._synth.data(k, name)
        mtime, uid, gid = self._dir_times(self._dirs[self.project.datasets[k].relpath])
        return Stat(_FILE_MODE, self._synth_ino(k, name), 1, len(data), mtime, uid, gid)

    def _nlink(self, d: _DirNode, real_nlink: int) -> int:
        """A folder's link count, 2 + the folders it shows, as on disk: a walker may stop looking
        for folders once it has seen st_nlink - 2 (a blob dataset's real folder, without
        ``img/``, counts one too few). The real count holds unless the view adds or hides some."""
        if not (d.overlay or d.hidden or d.hide_offsets):
            return real_nlink
        n = 2 + sum(1 for node in d.overlay.values() if node[0] == "dir")
        if d.real is not None:
            n += self._lister.subfolders(d.real, d.hides, Around(d.rel, self._dirs))
        return n

    def _synth_ino(self, k: int, name: str) -> int:
        return number(VFILE, k, self._synth.item(k, name))

    def _dir_times(self, d: _DirNode) -> tuple[int, int, int]:
        """mtime/uid/gid of a virtual folder: its real counterpart, else its dataset or tar."""
        candidates = [d.real]
        if d.ds_index >= 0:
            ds = self.project.datasets[d.ds_index]
            candidates += [ds.path, ds.items.img_dir]
        candidates += [self.project.root] + [s.path for s in self.project.sources]
        for c in candidates:
            if c is not None:
                try:
                    s = os.stat(c)
                    return s.st_mtime_ns, s.st_uid, s.st_gid
                except OSError:
                    continue
        return 0, os.getuid(), os.getgid()

    # -- listing ------------------------------------------------------------------------
    def readdir(self, path: str, offset: int) -> Iterator[tuple[str, int, int, int]]:
        """(name, mode, inode number, next offset) after ``offset``; "." and ".." first.

        Each entry carries its mode (so ``find -type f`` needs no stat) and its inode number
        (with ``use_ino`` libfuse copies it to d_ino, and glibc's readdir skips d_ino 0)."""
        rel = self._rel(path)
        node = self._resolve(rel)
        if node[0] == "real":
            if not st.S_ISDIR(node[2].st_mode):
                raise _err(errno.ENOTDIR, rel)
            d, real, ino = None, node[1], real_ino(node[2].st_ino)
        elif node[0] == "dir":
            d = self._dirs[node[1]]
            real, ino = d.real, self.getattr(rel).ino if offset < 1 else 0  # "." only
        else:
            raise _err(errno.ENOTDIR, rel)
        if offset < 1:
            yield ".", _DIR_MODE, ino, 1
        if offset < 2:
            yield "..", _DIR_MODE, 1, 2  # any non-zero inode: the kernel resolves ".." itself
        offset = max(offset, 2)
        if d is not None and d.items_of is not None:
            self._hidden.img_listed(rel, d.items_of)
            items, base = d.items_of.items, number(ITEM, d.ds_index, -1)
            for i in range(offset - 2, len(items)):
                yield items.name(i), _FILE_MODE, base | (i + 1), i + 3
            return
        pos = 2
        for name in (d.overlay if d is not None else ()):
            pos += 1
            if pos > offset:
                a = self.getattr(f"{rel}/{name}" if rel else name)
                yield name, a.mode, a.ino, pos
        if real is not None and offset < _SYNTH_OFF:
            yield from self._lister.entries(rel, real, d.hides if d else None, offset, pos,
                                            self._hidden.listing(rel), Around(rel, self._dirs))
        if d is not None and d.ann_of is not None:
            # Synthesized names get offsets of their own, far above any real entry's, so
            # resuming never has to count the real folder again.
            k = d.ds_index
            for j, name, i in self._synth.listing(k, self._present(d), offset - _SYNTH_OFF):
                yield name, _FILE_MODE, number(VFILE, k, i), _SYNTH_OFF + j + 1

    def listdir(self, path: str) -> list[tuple[str, int]]:
        """All (name, mode) of a folder, without "." and "..", sorted by name."""
        return sorted((e[0], e[1]) for e in self.readdir(path, 2))

    def walk(self, top: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like ``os.walk`` over view paths, top-down, sorted."""
        stack = [top.strip("/")]
        while stack:
            rel = stack.pop()
            dirs, files = [], []
            for name, mode in self.listdir(rel):
                (dirs if st.S_ISDIR(mode) else files).append(name)
            yield rel, dirs, files
            stack.extend(f"{rel}/{n}" if rel else n for n in reversed(dirs))

    # -- data ---------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int) -> bytes:
        rel, node = self._lookup(path)
        kind = node[0]
        if kind == "item":
            return node[1].items.read(node[2], size, offset)
        if kind == "real":
            if st.S_ISDIR(node[2].st_mode):
                raise _err(errno.EISDIR, rel)
            fd = os.open(node[1], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                if not (same_file(fd, node[2]) if self._root_real is None  # links never followed
                        else opened_inside(fd, node[1], self._root_real)):
                    self._hidden.looked_up(rel, "link leading out of the project, swapped in")
                    raise _err(errno.ENOENT, rel)
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)
        if kind == "dir":
            raise _err(errno.EISDIR, rel)
        data = node[1] if kind == "bytes" else self._synth.data(node[1], node[2])
        return data[offset : offset + size]

    def read_all(self, path: str) -> bytes:
        rel, node = self._lookup(path)
        if node[0] == "item":  # the API's hot path: one lookup, one pread
            return node[1].items.read(node[2])
        return self.read(path, self.getattr(path).size, 0)

    def close(self) -> None:
        """Let go of the folders that listings left open for their next READDIR."""
        self._lister.close()

    def statfs(self) -> dict[str, int]:
        total = sum(s.size for s in self.project.sources)
        files = self.project.item_count
        return {"f_bsize": BLKSIZE, "f_frsize": 4096, "f_blocks": -(-total // 4096),
                "f_bfree": 0, "f_bavail": 0, "f_files": files, "f_ffree": 0, "f_favail": 0,
                "f_namemax": 255}

    def _present(self, d: _DirNode) -> RealAnn:
        """The names of ``d``'s real folder, which synthesized names never shadow."""
        real, around = d.real, Around(d.rel, self._dirs)
        return RealAnn(lambda: (e[0] for e in self._lister.scan(real, None, None, around)) if real
                       else (), lambda: folder_stamp(real) if real else None)
