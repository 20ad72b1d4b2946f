"""``blobfs pack-project``: classic project → blob project.

Output layout: ``meta.json`` and every other file of the source copied byte for byte (mtimes
kept), except the images that go into blobs. Per dataset (found as the SDK finds them,
``blobfs.model.discovery``) the image files of ``img/`` whose size is within
``[min_size, max_size]`` become members of ``blob/STEM.tar`` (member name = item name, sorted),
and ``STEM_offsets.pkl`` is written into the dataset's folder. ``STEM`` is the dataset name with
``/`` (nested datasets) replaced by ``__``, cut to its first bytes and a digest when
``STEM-NNN_offsets.pkl`` would be too long a file name; when that is taken by another dataset,
``_2``, ``_3``, ... is appended. With ``max_blob_size`` a dataset whose tar would be larger is split
into ``STEM-000.tar``, ``STEM-001.tar``, ... (members in order, a new tar when the next member
would cross the limit; a single image larger than the limit gets a tar of its own). Images
outside the size range stay ordinary ``img/`` files, and so do images whose name cannot be an
item name (``names.new_name_problem``: control characters, too long; one warning line per
dataset); an ``img/`` folder left empty is not created. The whole tree is built under a temporary name beside ``OUT_DIR`` and renamed into
place at the end.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Callable

from blobfs.errors import InputError, one_line
from blobfs.format.names import NAME_MAX, fit_name, is_image_name, new_name_problem, nfc_twins, twins_note
from blobfs.format.offsets_write import offsets_path_for_tar
from blobfs.model.discovery import find_datasets, list_image_files
from blobfs.model.discovery import is_dir as entry_is_dir, is_file as entry_is_file
from blobfs.write.atomic import AtomicOutputs
from blobfs.write.blobwriter import CHUNK, Member, Progress, write_blob
from blobfs.write.errors import input_failed, output_failed
from blobfs.write.options import PackProjectOptions
from blobfs.write.outpaths import check_apart
from blobfs.write.tarwriter import archive_size, clamped_note, member_span
from blobfs.write.workers import run_chunks

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PackProjectResult:
    out_dir: Path
    datasets: int
    tars: int
    blob_items: int
    plain_images: int
    copied: int


@dataclass(slots=True)
class _Blob:
    stem: str
    dataset_rel: str
    members: list[Member] = field(default_factory=list)


#: Bytes of a tar stem before a "_K" for a taken one: "STEM_K-NNNN_offsets.pkl" must stay a
#: legal file name (NAME_MAX), also for a dataset folder name that is one, or a nested
#: dataset's "A__B" made of two.
_STEM_MAX = NAME_MAX - len("_99-0000_offsets.pkl")


def _stems(name: str, parts: int, taken: set[str]) -> list[str]:
    """The tar stems of a dataset written as ``parts`` tars: ``STEM``, or ``STEM-000``, ...
    when split. Each of them must be free, not just ``STEM``: a split ``a__b`` would
    otherwise take the ``a__b-000`` of a dataset ``a/datasets/b-000`` met before it (and the
    second tar of that name fails to be created)."""
    # The SDK pairs a tar and its offsets file by the stem only, whatever it is.
    base = fit_name(name.replace("/", "__"), _STEM_MAX)
    stem, k = base, 1
    while True:
        names = [stem] if parts == 1 else [f"{stem}-{i:03d}" for i in range(parts)]
        if stem not in taken and taken.isdisjoint(names):
            taken.update([stem, *names])
            return names
        k += 1
        stem = f"{base}_{k}"


def plan_blobs(src: Path, opts: PackProjectOptions) -> tuple[list[_Blob], set[str], list[str]]:
    """(blobs to write, project-relative paths of the images they take, the ``img/`` folder of
    every dataset found)."""
    blobs: list[_Blob] = []
    packed: set[str] = set()
    taken: set[str] = set()
    datasets = find_datasets(src)
    for ds in datasets:
        if ds.offsets:
            # Copied as it is, it would give the output's dataset the items of whatever tar
            # its stem names there (another dataset's), or take the name of the one written.
            raise InputError(f"{src / ds.relpath / ds.offsets[0]}: an offsets file in a classic "
                             "project (pack-project writes them; remove it or unpack the blob "
                             "project first)")
    twins: list[tuple[str, str]] = []
    twins_where = ""
    for ds in datasets:
        img_rel = f"{ds.relpath}/img"
        chosen: list[Member] = []
        for sub in _subfolders(src / img_rel):
            log.warning("%s: sub-folder of img/: its files are no items (only the files directly "
                        "in img/ are); copied as they are, not packed", sub)
        images = list_image_files(src / img_rel)
        found = nfc_twins([name for name, _size in images])  # items packed or not
        if found and not twins:
            twins_where = str(src / img_rel)
        twins += found
        unnamed: list[tuple[str, str]] = []
        for name, size in images:
            if size < opts.min_size or (opts.max_size is not None and size > opts.max_size):
                continue
            problem = new_name_problem(name)
            if problem:
                unnamed.append((name, problem))  # left where it is, as the mount would
                continue
            chosen.append((name, f"{img_rel}/{name}", size, None))
        if unnamed:
            _warn_unnamed(src / img_rel, unnamed)
        if not chosen:
            continue
        parts = _split(chosen, opts.max_blob_size)
        names = _stems(ds.name, len(parts), taken)
        for part_stem, members in zip(names, parts):
            blobs.append(_Blob(part_stem, ds.relpath, members))
        packed.update(m[1] for m in chosen)
    if twins:
        log.warning("%s", one_line(twins_note(twins, twins_where)))
    return blobs, packed, [f"{ds.relpath}/img" for ds in datasets]


def _warn_unnamed(img_dir: Path, unnamed: list[tuple[str, str]]) -> None:
    """One line per dataset: its images whose name cannot be an item stay ordinary img/ files
    (copied, not lost), which the summary's "left in img/" count alone does not explain."""
    name, problem = min(unnamed)  # the folder's order is the file system's
    why = problem.removeprefix(f"name {name!r} ")  # the name is shown once
    log.warning("%s", one_line(
        f"{img_dir}: {len(unnamed)} image(s) left as ordinary img/ files, not packed: a name "
        f"that cannot be an item name, first {name!r} ({why})"))


def _subfolders(img_dir: Path) -> list[Path]:
    try:
        with os.scandir(img_dir) as it:
            return sorted(img_dir / e.name for e in it if entry_is_dir(e))
    except OSError:
        return []  # no img/ (or unreadable: the copy walk reports it)


def _split(members: list[Member], limit: int | None) -> list[list[Member]]:
    if limit is None:
        return [members]
    parts: list[list[Member]] = [[]]
    spans = 0
    for m in members:
        span = member_span(m[0], m[2])
        if parts[-1] and archive_size(spans + span) > limit:
            parts.append([])
            spans = 0
        parts[-1].append(m)
        spans += span
    return parts


def copy_file(src: str, dst: str, label_src: Path, label_dst: Path) -> None:
    """Copy one regular file byte for byte (in the kernel), keeping its mtime. Messages name
    ``label_dst``, the final path, not the temporary ``dst``."""
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
    except OSError as e:
        raise input_failed(label_src, e, "while copying") from None
    try:
        st = os.fstat(sfd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{label_src}: changed while copying (no longer a regular file)")
        try:
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise output_failed(label_dst, e) from None
        try:
            done = 0
            while done < st.st_size:
                try:
                    n = os.sendfile(dfd, sfd, done, st.st_size - done)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise output_failed(label_dst, e) from None
                    raise input_failed(label_src, e, "while copying") from None
                if n == 0:
                    raise InputError(f"{label_src}: changed size while copying")
                done += n
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _plan_copies(src: Path, dst: Path, packed: set[str], label: Path) -> list[str]:
    """Create the output folders in ``dst`` (the temporary of the final ``label``); return the
    relative paths of the files to copy (everything but ``packed``), in walk order."""
    files: list[str] = []
    active: set[tuple[int, int]] = set()
    out_st = os.stat(dst)
    output = (out_st.st_dev, out_st.st_ino)

    def walk(rel: str) -> None:
        here = src / rel if rel else src
        try:
            st = os.stat(here)
        except OSError as e:
            raise InputError(f"{here}: {e.strerror}") from None
        key = (st.st_dev, st.st_ino)
        if key in active:
            return  # a symlink back up the tree
        if key == output:
            # A symlink that reaches the folder being written: walking it would copy the copy
            # (each level creates the next) until the path is too long.
            log.warning("%s: leads into the output being written; not copied", here)
            return
        active.add(key)
        try:
            with os.scandir(here) as it:
                entries = sorted(((e.name, entry_is_dir(e), entry_is_file(e)) for e in it))
        except OSError as e:
            raise InputError(f"{here}: {e.strerror}") from None
        children = [(f"{rel}/{name}" if rel else name, is_dir, is_file)
                    for name, is_dir, is_file in entries]
        # A folder whose every file went into a blob (a dataset's img/) is not created.
        if rel and (not children or any(c not in packed for c, _d, _f in children)):
            try:
                os.mkdir(dst / rel)
            except OSError as e:
                raise output_failed(label / rel, e) from None
        for child, is_dir, is_file in children:
            if child in packed:
                continue
            if is_dir:
                walk(child)
            elif is_file:
                files.append(child)
            else:
                log.warning("%s: not a regular file or folder; not copied", src / child)
        active.discard(key)

    walk("")
    return files


def pack_project(src: Path, out_dir: Path, opts: PackProjectOptions,
                 progress_start: Callable[[int], Progress | None] | None = None
                 ) -> PackProjectResult:
    src, out_dir = Path(src), Path(out_dir)
    try:
        if not stat.S_ISDIR(os.stat(src).st_mode):
            raise InputError(f"{src}: not a folder")
    except OSError as e:  # missing, a dangling link, no permission: said as it is
        raise InputError(f"{src}: {e.strerror}") from None
    if not (src / "meta.json").is_file():
        raise InputError(f"{src}: not a classic project (no meta.json)")
    if (src / "blob").exists():
        raise InputError(f"{src}: already has a blob/ folder (pack-project takes a classic project)")
    check_apart(src, out_dir)
    with AtomicOutputs([out_dir], force=opts.force, fsync=opts.fsync) as outputs:
        blobs, packed, img_dirs = plan_blobs(src, opts)
        tmp = outputs.directory(out_dir)
        copies = _plan_copies(src, tmp, packed, out_dir)
        total = sum(len(b.members) for b in blobs) + len(copies)
        progress = progress_start(total) if progress_start else None
        base_src, base_dst = os.fspath(src), os.fspath(tmp)

        def copy(chunk: tuple[str, list[str]]) -> tuple[int, int]:
            for rel in chunk[1]:
                copy_file(f"{base_src}/{rel}", f"{base_dst}/{rel}", src / rel, out_dir / rel)
            return len(chunk[1]), 0

        # Chunks per output folder, one worker per folder (see blobfs.write.workers).
        by_folder: dict[str, list[str]] = {}
        for rel in copies:
            by_folder.setdefault(rel.rpartition("/")[0], []).append(rel)
        chunks = [(folder, rels[i : i + CHUNK]) for folder, rels in by_folder.items()
                  for i in range(0, len(rels), CHUNK)]
        run_chunks(chunks, copy, os.fspath(out_dir), progress=progress, jobs=opts.jobs,
                   key=itemgetter(0))
        # Items only: an image in a sub-folder of img/, or in an img/ of a folder that is no
        # dataset, is copied too but is no item (a warning names the sub-folders).
        item_dirs = set(img_dirs)
        plain = sum(1 for rel in copies
                    if rel.rpartition("/")[0] in item_dirs and is_image_name(rel))
        if blobs:
            _mkdirs(tmp, "blob", out_dir)
        clamped = 0
        for blob in blobs:
            tar = tmp / "blob" / f"{blob.stem}.tar"
            offsets = Path(offsets_path_for_tar(tar, tmp / blob.dataset_rel))
            _mkdirs(tmp, blob.dataset_rel, out_dir)
            clamped += _write_one(src, blob, tar, offsets, out_dir, opts, progress)
        outputs.commit()
    if clamped:
        log.warning("%s: %s", src, clamped_note(clamped))
    return PackProjectResult(out_dir, len(img_dirs), len(blobs), len(packed), plain, len(copies))


def _mkdirs(tmp: Path, rel: str, label: Path) -> None:
    """``tmp/rel`` and its missing parents; a failure names ``label/rel``, the final path."""
    try:
        os.makedirs(tmp / rel, exist_ok=True)
    except OSError as e:
        raise output_failed(label / rel, e) from None


def _write_one(src: Path, blob: _Blob, tar: Path, offsets: Path, out_dir: Path,
               opts: PackProjectOptions, progress: Progress | None) -> int:
    """Write one blob; returns how many of its members' mtimes were clamped."""
    # Labels name the final paths: what the user will look for in a message.
    tar_label = out_dir / "blob" / tar.name
    off_label = out_dir / blob.dataset_rel / offsets.name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        tar_fd = os.open(tar, flags, 0o666)
    except OSError as e:
        raise output_failed(tar_label, e) from None
    try:
        try:
            off_fd = os.open(offsets, flags, 0o666)
        except OSError as e:
            raise output_failed(off_label, e) from None
        try:
            return write_blob(blob.members, os.fspath(src), tar_fd, tar_label, off_fd, off_label,
                              mtime=opts.mtime, progress=progress, jobs=opts.jobs)[2]
        finally:
            os.close(off_fd)
    finally:
        os.close(tar_fd)
