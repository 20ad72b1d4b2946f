"""Opening a source from disk: a project folder, a dataset folder or a bare tar, validated up
front (so a mount fails before its mount point appears) into a :class:`~blobfs.model.project.Project`.

Fatal input (a missing, unreadable or compressed tar; an offsets file refused as a whole) raises
``InputError`` unless ``lenient=True``, which turns it into a problem line and skips that part —
what ``info`` and ``verify`` use to report everything at once (not for a bare tar, which is
the whole source: refusing it leaves nothing to check). Entry-level faults (bad names,
ranges outside the tar, duplicates) never stop anything: the entry is skipped or shadowed and
one problem line says so.

A project pickled for another process (``spawn`` workers) is opened again there from its path
(:func:`_reopen`), and refused if its tars changed meanwhile.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from blobfs.errors import InputError, ProjectError
from blobfs.format.entries import EntryTable
from blobfs.format.names import name_problem, quoted
from blobfs.format.regular import open_regular
from blobfs.format.tarfields import BLOCK, COMPRESSED_MAGIC, starts_like_tar
from blobfs.model.blobsource import BlobSource
from blobfs.model.discovery import (OFFSETS_SUFFIX, find_datasets, list_image_files,
                                    scan_dataset_dir, unlisted_line)
from blobfs.model.hidden import Tally
from blobfs.model.items import ItemIndex
from blobfs.model.project import Dataset, Project

class _Opener:
    """Collects sources and problems while a project is opened."""

    def __init__(self, lenient: bool) -> None:
        self.lenient = lenient
        self.problems: list[str] = []
        self.sources: dict[Path, BlobSource] = {}
        self.refused: set[Path] = set()

    def fail(self, message: str) -> None:
        if not self.lenient:
            raise InputError(message)
        self.problems.append(message)

    def tar(self, path: Path) -> BlobSource | None:
        """Open (once) and sanity-check a tar; None when it cannot be used (said once, however
        many datasets' offsets files lead to it)."""
        if path in self.sources:
            return self.sources[path]
        if path in self.refused:
            return None
        why = None
        try:
            # Only a regular file: open(2) of a FIFO named .tar blocks until a writer appears
            # (the mount would hang before it starts), and a folder fails only at the first read.
            if not stat.S_ISREG(os.stat(path).st_mode):
                why = "not a regular file"
            else:
                src = BlobSource.open(path)
        except FileNotFoundError:
            why = "tar not found"
        except OSError as e:
            why = f"cannot open tar: {e.strerror}"
        if why is None:
            head = os.pread(src.fd, BLOCK, 0)
            kind = next((k for magic, k in COMPRESSED_MAGIC if head.startswith(magic)), None)
            if kind:
                why = f"{kind}-compressed; only plain uncompressed tars are supported"
            elif not starts_like_tar(head, src.size):
                why = "not a tar file (its first 512 bytes are no tar header)"
            else:
                self.sources[path] = src
                return src
            src.close()
        self.refused.add(path)
        self.fail(f"{path}: {why}")
        return None

    def offsets(self, pkl: Path, tar: BlobSource
                ) -> tuple[EntryTable, object, str | None, list[str]] | None:
        """(entries, cached hash table or None, cache key, its problem lines for the cache) of
        an offsets file; None if refused."""
        from blobfs.format.offsets_read import read_offsets
        from blobfs.model import cache

        # The cache keeps each problem line without its leading "PKL: ": the key is the
        # file's identity, and the same file opened by another path since (from another
        # folder, through a link) is named as it is opened now, not as it was then.
        prefix = f"{pkl}: "
        key = cache.cache_key(pkl, tar.path)
        hit = cache.load(key, tar.size) if key else None
        if hit is not None:
            self.problems.extend(prefix + line for line in hit[1])
            return hit[0], hit[2], None, []
        try:
            result = read_offsets(pkl, tar_size=tar.size)
        except InputError as e:
            self.fail(str(e))
            return None
        except OSError as e:
            self.fail(f"{pkl}: cannot read offsets file: {e.strerror}")
            return None
        self.problems.extend(result.problems)
        if not all(line.startswith(prefix) for line in result.problems):
            key = None  # a line that does not name the file could not be rebuilt
        return result.table, None, key, [line[len(prefix):] for line in result.problems]

    def headers(self, tar: BlobSource) -> EntryTable | None:
        """Entries of a tar without offsets file: its regular members, by their own headers."""
        from blobfs.format.tarindex import index_tar

        if tar.size == 0:
            # No archive at all (GNU tar: "does not look like a tar archive"; tarfile: "empty
            # file"); with an offsets file the same file is a tar cut short instead.
            self.fail(f"{tar.path}: not a tar file (it is empty)")
            return None
        try:
            entries = index_tar(tar.path)
        except InputError as e:
            self.fail(str(e))
            return None
        table = EntryTable()
        for name, start, end in entries:
            why = name_problem(name)
            if why:
                self.problems.append(f"{tar.path}: member {quoted(name)}: {why} (skipped)")
            else:
                table.append(name.encode("utf-8"), start, end)
        return table

    def disk_images(self, img_dir: Path, root_real: str, no_items: Tally) -> list[tuple[str, int]]:
        files: list[tuple[str, int]] = []
        skipped: list[tuple[str, str]] = []
        for name, size in list_image_files(img_dir, skipped, no_items):
            why = name_problem(name)
            real = os.path.realpath(img_dir / name)
            if why:
                self.problems.append(f"{img_dir / name}: {why} (skipped)")
                no_items.add(name, lambda: "unusable name")
            elif not real.startswith(root_real + "/"):
                self.problems.append(f"{img_dir / name}: symlink leads outside the project (skipped)")
                no_items.add(name, lambda: "link leading out of the project")
            else:
                files.append((name, size))
        self.problems.extend(f"{img_dir / name}: {why} (skipped)" for name, why in skipped)
        return files

    def dataset(self, name: str, relpath: str, path: Path, offsets: tuple[str, ...],
                blob_dir: Path, root_real: str) -> Dataset:
        parts = []
        hashed, store_key, store_lines = None, None, []
        for pkl_name in offsets:
            stem = pkl_name[: -len(OFFSETS_SUFFIX)]
            tar = self.tar(blob_dir / f"{stem}.tar")
            if tar is None:
                continue
            got = self.offsets(path / pkl_name, tar)
            if got is not None:
                parts.append((got[0], list(self.sources.values()).index(tar), pkl_name))
                hashed, store_key, store_lines = got[1], got[2], got[3]
        img_dir = path / "img"
        no_items = Tally()  # what the view's img/ hides, for its log line
        disk = self.disk_images(img_dir, root_real, no_items) if img_dir.is_dir() else []
        items, dups = ItemIndex.build(parts, list(self.sources.values()), img_dir, disk, hashed)
        items.confine = root_real  # disk_images checked the links of img/ against it
        # Not with duplicates: ``items.hashed`` then describes the deduplicated index, not
        # ``parts[0][0]``, and such a cache file could never be loaded back.
        if store_key and len(parts) == 1 and not disk and not dups:
            from blobfs.model import cache

            # The offsets file's problems only: those of img/ (or of another offsets file
            # whose tar is refused) change without it.
            cache.store(store_key, parts[0][0], store_lines, items.hashed)
        self.problems.extend(f"{path}: {d}" for d in dups)
        ann: Path | None = path / "ann"
        if not ann.is_dir():
            ann = None
        elif not (os.path.realpath(ann) + "/").startswith(root_real + "/"):
            # The view hides it (a link leading out of the project): nothing is read through
            # it, and verify's line for the hidden entry says the same.
            self.problems.append(f"{ann}: symlink leads outside the project; the mount hides it")
            ann = None
        return Dataset(name, relpath, path, items, ann, list(offsets), root_real, no_items)


def _find_root(dataset_dir: Path) -> Path:
    """The project folder of a dataset folder: the nearest ancestor with ``blob/`` or
    ``meta.json`` (skipping the ``datasets`` level of nested datasets)."""
    for parent in dataset_dir.parents:
        if (parent / "blob").is_dir() or (parent / "meta.json").is_file():
            return parent
    return dataset_dir.parent


def open_project(source: str | os.PathLike, *, offsets: str | os.PathLike | None = None,
                 ann: str | os.PathLike | None = None, synthesize_ann: bool = False,
                 lenient: bool = False) -> Project:
    """Open a project folder, a dataset folder or a bare tar (see the module docstring)."""
    for what, path in (("source", source), ("offsets", offsets), ("ann", ann)):
        # pathlib and every os call read "" as ".": the folder the process happens to be in.
        if path is not None and not os.fspath(path):
            raise ProjectError(f"an empty path for {what} (it would mean the current folder)")
    src = Path(source)
    try:
        os.stat(src)
    except FileNotFoundError:
        raise ProjectError(f"{src}: no such file or directory") from None
    except OSError as e:  # a name too long, a loop of links, no permission: said as it is
        raise ProjectError(f"{src}: {e.strerror or e}") from None
    op = _Opener(lenient)
    try:
        if src.is_file():
            project = _open_tar(op, src, offsets, ann, synthesize_ann)
        elif not src.is_dir():
            raise ProjectError(f"{src}: not a folder or a tar file")
        elif offsets is not None or ann is not None:
            raise ProjectError(f"{src}: --offsets and --ann apply to a bare tar only")
        else:
            own_offsets, has_img, has_ann = scan_dataset_dir(src)
            if own_offsets or has_img or has_ann:
                project = _open_dataset(op, src, own_offsets, synthesize_ann)
            else:
                project = _open_folder(op, src, synthesize_ann)
    except BaseException:
        for s in op.sources.values():
            s.close()
        raise
    args = tuple(None if a is None else os.path.abspath(a) for a in (source, offsets, ann))
    project._reopen = (*args, synthesize_ann, lenient)
    return project


def _identity(project: Project) -> tuple:
    """What must be unchanged for a project reopened elsewhere to show the same items: its
    tars as they were when opened, and every dataset's names and ranges in item order.
    Computed when pickled (not for every open), from the sender's index."""
    # Absolute paths: the receiver reopens from the absolute source, so a project opened by a
    # relative path would otherwise never match its own reopened self.
    return (tuple((os.path.abspath(s.path), s.size, s.mtime_ns) for s in project.sources),
            tuple((ds.relpath, ds.items.digest()) for ds in project.datasets))


def _reopen(source: str, offsets: str | None, ann: str | None, synthesize_ann: bool,
            lenient: bool, identity: tuple) -> Project:
    """Unpickle a Project: open it again here, and refuse one whose tars changed meanwhile
    (its item numbers and ranges would no longer be the sender's)."""
    project = open_project(source, offsets=offsets, ann=ann, synthesize_ann=synthesize_ann,
                           lenient=lenient)
    if _identity(project) != identity:
        project.close()
        raise InputError(f"{source}: changed on disk since it was opened in the sending process")
    return project


def _meta(op: _Opener, meta: Path) -> Path | None:
    """``meta`` when it is a regular file, else None. One the user cannot read is a problem
    line (in verify's words, which it then replaces): a missing one is, and a reader of the
    project (``cat``, the mount, the SDK) fails on both alike."""
    if not meta.is_file():
        return None
    try:
        os.close(open_regular(str(meta)))
    except OSError as e:
        op.problems.append(f"{meta}: cannot read ({e.strerror}) (the SDK cannot open this project)")
    return meta


def _open_folder(op: _Opener, root: Path, synthesize_ann: bool) -> Project:
    root_real = os.path.realpath(root)
    unlisted: list[tuple[str, str]] = []
    found = find_datasets(root, unlisted)
    if not found and not (root / "meta.json").is_file():
        raise ProjectError(f"{root}: not a Supervisely project (no meta.json and no datasets)")
    op.problems.extend(unlisted_line(root / rel if rel else root, why) for rel, why in unlisted)
    datasets = [op.dataset(f.name, f.relpath, root / f.relpath, f.offsets, root / "blob", root_real)
                for f in found]
    meta = root / "meta.json"
    if not meta.is_file():
        op.problems.append(f"{root}: meta.json is missing (the SDK cannot open this project)")
    return Project(root, datasets, _meta(op, meta), list(op.sources.values()),
                   op.problems, kind="project", synthesize_ann=synthesize_ann)


def _open_dataset(op: _Opener, path: Path, own_offsets: tuple[str, ...],
                  synthesize_ann: bool) -> Project:
    root = _find_root(path.resolve())
    ds = op.dataset(path.name, path.name, path, own_offsets, root / "blob", os.path.realpath(root))
    return Project(root, [ds], _meta(op, root / "meta.json"), list(op.sources.values()),
                   op.problems, kind="dataset", synthesize_ann=synthesize_ann, virtual_root=True)


def _open_tar(op: _Opener, tar_path: Path, offsets: str | os.PathLike | None,
              ann: str | os.PathLike | None, synthesize_ann: bool) -> Project:
    # A bare tar is the whole source: what refuses it (no tar, compressed, its offsets file
    # refused) leaves nothing to read or check, so it is unreadable input for every command
    # (exit 2), lenient ones too. In a project the same tar is one problem among its datasets.
    op.lenient = False
    tar = op.tar(tar_path)
    assert tar is not None  # refused tars raise
    pkl = Path(offsets) if offsets is not None else tar_path.with_name(tar_path.stem + OFFSETS_SUFFIX)
    if offsets is not None and not pkl.is_file():
        raise ProjectError(f"{pkl}: offsets file is not a regular file" if os.path.lexists(pkl)
                           else f"{pkl}: offsets file not found")
    got = op.offsets(pkl, tar) if os.path.lexists(pkl) else (op.headers(tar), None, None, [])
    table = got[0] if got is not None else None
    ann_dir = Path(ann) if ann is not None else None
    if ann_dir is not None and not ann_dir.is_dir():
        why = "is not a folder" if os.path.lexists(ann_dir) else "not found"
        raise ProjectError(f"{ann_dir}: annotation folder {why}")
    parts = [(table, 0, pkl.name if pkl.is_file() else tar_path.name)] if table is not None else []
    items, dups = ItemIndex.build(parts, [tar], hashed=got[1] if got is not None else None)
    op.problems.extend(f"{tar_path}: {d}" for d in dups)
    stem = tar_path.name[:-4] if tar_path.name.endswith(".tar") else tar_path.name
    ds = Dataset(stem, stem, None, items, ann_dir, [pkl.name] if pkl.is_file() else [],
                 os.path.realpath(ann_dir) if ann_dir is not None else None)
    meta = _meta(op, ann_dir.parent.parent / "meta.json") if ann_dir is not None else None
    return Project(None, [ds], meta, [tar],
                   op.problems, kind="tar", synthesize_ann=synthesize_ann, virtual_root=True)
