"""``blobfs pack``: a folder of images → one tar + its SDK offsets file.

Which files: by default those with an SDK image extension (case-insensitive, FORMAT.md §1);
``include`` globs replace that test, ``exclude`` globs then remove files. A glob without ``/``
is matched against the file's base name, one with ``/`` against its path relative to the
folder (``fnmatch``, case-sensitive). Symlinks to files and folders are followed (a folder
already on the current path is not entered twice); a selected entry that is no regular file
(a dangling or circular link, a FIFO) is left out, with one warning line for all of them.

Order: depth-first, each folder's entries sorted by name (code point order = UTF-8 byte order),
as ``tarfile.add`` does. Member names are the paths relative to the folder; the offsets entry
name is the member's base name (FORMAT.md §6), so two files with one base name would be two
items with one name: refused, naming both paths, unless ``rename``.

Rename rule (``--rename``): in every group of files sharing a base name, a file in a
sub-folder is renamed to its relative path with ``/`` replaced by ``__``
(``a/b/x.png`` → ``a__b__x.png``, member ``a/b/a__b__x.png``); a file at the top level keeps its
name. If the new names still collide, the pack is refused.
"""
from __future__ import annotations

import fnmatch
import gc
import logging
import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from blobfs.errors import InputError, one_line
from blobfs.format.names import IMAGE_EXTENSIONS, new_name_problem, nfc_twins, twins_note
from blobfs.format.offsets_write import offsets_path_for_tar
from blobfs.model.discovery import is_dir, is_file
from blobfs.write.atomic import AtomicOutputs
from blobfs.write.blobwriter import CHUNK, Member, Progress, write_blob
from blobfs.write.errors import input_failed
from blobfs.write.options import PackOptions
from blobfs.write.outlock import output_lock
from blobfs.write.tarwriter import clamped_note, flat_chunks
from blobfs.write.workers import run_chunks

RENAME_SEPARATOR = "__"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PackResult:
    tar: Path
    offsets: Path
    count: int
    tar_size: int


def _matches(patterns: tuple[str, ...], rel: str, base: str) -> bool:
    return any(fnmatch.fnmatchcase(rel if "/" in p else base, p) for p in patterns)


def scan_images(folder: Path, opts: PackOptions, skip: frozenset[str] = frozenset()
                ) -> list[str]:
    """Relative path of every file to pack, in pack order. ``skip``: absolute real paths
    never to pack (the output itself, when it lies inside the folder)."""
    out: list[str] = []
    try:
        root_st = os.stat(folder)
    except OSError as e:
        raise InputError(f"{folder}: {e.strerror}") from None
    if not stat.S_ISDIR(root_st.st_mode):
        raise InputError(f"{folder}: not a folder")
    left: list[str] = []
    _scan(folder, "", opts, skip, out, {(root_st.st_dev, root_st.st_ino)}, left)
    if left:
        # Not packed, as before, but no longer silently: a dangling link named x.png is an
        # image the user meant to pack.
        log.warning("%s", one_line(
            f"{folder}: {len(left)} matching entr{'y' if len(left) == 1 else 'ies'} not packed "
            f"(not a regular file: a dangling or circular link, FIFO, socket or device), "
            f"first {min(left)!r}"))
    return out


def _scan(folder: Path, rel: str, opts: PackOptions, skip: frozenset[str],
          out: list[str], active: set[tuple[int, int]], left: list[str]) -> None:
    path = os.path.join(folder, rel) if rel else os.fspath(folder)
    prefix = f"{rel}/" if rel else ""
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{path}: folder name is not valid UTF-8") from None
    include, exclude = opts.include, opts.exclude
    # Only when an output lies in this folder: its real path, computed once (a realpath per
    # file would cost more than the packing itself).
    here = os.path.realpath(path) + "/" if skip else ""
    files: list[str] = []
    dirs: list[str] = []
    exts = IMAGE_EXTENSIONS
    try:
        with os.scandir(path) as it:
            for entry in it:
                name = entry.name
                if is_dir(entry):
                    if opts.recursive:
                        dirs.append(name)
                    continue
                if include:
                    if not _matches(include, prefix + name, name):
                        continue
                else:  # is_image_name, inlined: this loop runs once per file
                    dot = name.rfind(".")
                    if dot <= 0 or name[dot:].lower() not in exts:
                        continue
                if exclude and _matches(exclude, prefix + name, name):
                    continue
                if here and here + name in skip:
                    continue
                if is_file(entry):  # dangling links, links in a circle, FIFOs, sockets, devices: not packed
                    files.append(name)
                else:
                    left.append(prefix + name)
    except OSError as e:
        raise InputError(f"{e.filename or path}: {e.strerror}") from None
    if not dirs:
        files.sort()
        out.extend([prefix + name for name in files] if prefix else files)
        return
    # Files and sub-folders interleaved in name order, as tarfile.add walks a folder.
    folders = set(dirs)
    for name in sorted(files + dirs):
        child = prefix + name
        if name not in folders:
            out.append(child)
            continue
        try:
            st = os.stat(os.path.join(path, name))
        except OSError as e:
            raise InputError(f"{path}/{name}: {e.strerror}") from None
        key = (st.st_dev, st.st_ino)
        if key in active:  # a symlink back up the tree
            continue
        active.add(key)
        _scan(folder, child, opts, skip, out, active, left)
        active.discard(key)


def file_stats(folder: Path, files: list[str], parent_work: Callable[[], None] | None = None,
               jobs: int | None = None) -> tuple[memoryview, memoryview]:
    """(sizes, mtimes in seconds) of the files, stat'ed by the worker processes (a third of a
    pack's serial time otherwise) into shared memory. Refuses what is not a regular file."""
    shared = mmap.mmap(-1, max(16 * len(files), 16))
    n = len(files)
    sizes = memoryview(shared)[: 8 * n].cast("q")
    mtimes = memoryview(shared)[8 * n : 16 * n].cast("q")
    root = os.fspath(folder) + "/"

    # The children read flat bytes, not the parent's strings (see blobwriter.write_blob).
    flat = flat_chunks(files, CHUNK)

    def stat_span(span: tuple[int, int]) -> tuple[int, int]:
        # Relative to an fd of the root: one path component to walk per file, not the whole
        # root path again.
        try:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise input_failed(root, e, "while packing") from None
        o_stat, is_reg = os.stat, stat.S_ISREG
        i = span[0]
        try:
            for rel in flat[i // CHUNK].split(b"\0"):
                try:
                    st = o_stat(rel, dir_fd=root_fd)
                except OSError as e:
                    raise input_failed(root + os.fsdecode(rel), e, "while packing") from None
                if not is_reg(st.st_mode):
                    raise InputError(f"{root}{os.fsdecode(rel)}: not a regular file")
                sizes[i] = st.st_size
                mtimes[i] = st.st_mtime_ns // 1_000_000_000
                i += 1
        finally:
            os.close(root_fd)
        return 0, 0

    run_chunks([(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)], stat_span, os.fspath(folder),
               parent_work=parent_work, jobs=jobs)
    return sizes, mtimes


def assign_members(folder: Path, files: list[str], rename: bool, jobs: int | None = None
                   ) -> list[Member]:
    """Members (member name, relative path, size, mtime) whose base names are unique item
    names (see the module doc). The names are checked while the workers stat the files; a
    bad name is reported even if a stat failed too."""
    members = files

    def check_names() -> None:
        nonlocal members
        bases = [rel.rpartition("/")[2] for rel in files]
        if len(set(bases)) != len(bases):
            members = _resolve_duplicates(folder, files, bases, rename)
            bases = [m.rpartition("/")[2] for m in members]
            if len(set(bases)) != len(bases):
                seen: dict[str, str] = {}
                for rel, base in zip(files, bases):
                    if seen.setdefault(base, rel) is not rel:
                        raise InputError(f"{folder / seen[base]} and {folder / rel}: both would "
                                         f"be item {base!r} after --rename")
        # Fast path, checked in C over all names at once: printable ASCII holds no control
        # character, names of at most 250 characters fit, and ASCII names are their own
        # Unicode normalization; else the full check per name.
        joined = "/".join(bases)
        ascii_only = joined.isascii()
        if not (ascii_only and joined.isprintable() and max(map(len, bases)) <= 250):
            for rel, base in zip(files, bases):
                problem = new_name_problem(base)
                if problem:
                    raise InputError(f"{folder / rel}: cannot be an item: {problem}")
        if not ascii_only:
            twins = nfc_twins(bases)
            if twins:
                log.warning("%s", one_line(twins_note(twins, str(folder))))

    sizes, mtimes = file_stats(folder, files, check_names, jobs)
    return list(zip(members, files, sizes, mtimes))


def _resolve_duplicates(folder: Path, files: list[str], bases: list[str], rename: bool) -> list[str]:
    by_base: dict[str, list[int]] = {}
    for i, base in enumerate(bases):
        by_base.setdefault(base, []).append(i)
    members = list(files)
    for base, idx in by_base.items():
        if len(idx) < 2:
            continue
        if not rename:
            a, b = (files[i] for i in idx[:2])
            more = f" and {len(idx) - 2} more" if len(idx) > 2 else ""
            raise InputError(f"{folder / a} and {folder / b}{more}: same base name {base!r} "
                             "would be one item name (use --rename, or --exclude one)")
        for i in idx:
            rel = files[i]
            if "/" in rel:
                members[i] = f"{rel.rpartition('/')[0]}/{rel.replace('/', RENAME_SEPARATOR)}"
    return members


def check_tar_name(out_tar: Path) -> None:
    if out_tar.suffix != ".tar" or out_tar.name == ".tar":
        raise InputError(f"{out_tar}: output must be named NAME.tar (the SDK finds blobs by "
                         "the lower-case .tar extension)")


def pack(folder: Path, out_tar: Path, opts: PackOptions,
         progress_start: Callable[[int], Progress | None] | None = None) -> PackResult:
    """Pack the images of ``folder`` into ``out_tar`` and ``STEM_offsets.pkl`` beside it.

    One pack at a time per output: another one already writing ``out_tar`` makes this one fail
    at once (``OutputBusyError``, see ``blobfs.write.outlock``). The offsets file is renamed
    into place after the tar (see ``blobfs.write.atomic``).

    ``progress_start(total)`` is called once the files are known and may return a callback
    that receives counts of files done.
    """
    # No cyclic garbage is made here, but the 300k member tuples would trigger collections
    # that walk them all (~15% of the parent's CPU).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _pack(Path(folder), Path(out_tar), opts, progress_start)
    finally:
        if gc_was_enabled:
            gc.enable()


def _pack(folder: Path, out_tar: Path, opts: PackOptions,
          progress_start: Callable[[int], Progress | None] | None) -> PackResult:
    check_tar_name(out_tar)
    offsets = Path(offsets_path_for_tar(out_tar))
    # The lock spans the existence check, the write and both renames: another pack into the
    # same output could otherwise publish its tar between ours and our offsets file.
    with output_lock(out_tar, "blobfs pack") as lock, \
            AtomicOutputs([out_tar, offsets], force=opts.force, fsync=opts.fsync,
                          marker=offsets) as outputs:
        skip = frozenset(os.path.realpath(p) for p in (out_tar, offsets, lock))
        files = scan_images(folder, opts, skip)
        if not files:
            raise InputError(f"{folder}: no files to pack (no image extensions or globs matched)")
        members = assign_members(folder, files, opts.rename, opts.jobs)
        del files
        progress = progress_start(len(members)) if progress_start else None
        tar_fd, _ = outputs.file(out_tar)
        try:
            off_fd, _ = outputs.file(offsets)
            try:
                count, size, clamped = write_blob(members, os.fspath(folder), tar_fd, out_tar,
                                                  off_fd, offsets, mtime=opts.mtime,
                                                  progress=progress, jobs=opts.jobs)
            finally:
                os.close(off_fd)
        finally:
            os.close(tar_fd)
        outputs.commit()
    if clamped:
        log.warning("%s: %s", folder, clamped_note(clamped))
    return PackResult(out_tar, offsets, count, size)
