"""``blobfs unpack``: a blob project (or dataset, or bare tar) → the classic project.

The output is, file for file and byte for byte, the tree the mount shows: it is produced by
walking ``open_project(src).view`` and copying every file it lists (so ``diff -r`` between an
unpacked project and a mounted one is empty by construction). Files get the view's mtimes and
ordinary permissions (0666 & ~umask: the mount's read-only modes are not copied). Everything
is written under a temporary name beside ``OUT_DIR`` and renamed into place at the end. The
folders are created first; the files are then written by forked workers, one per output
folder (``blobfs.write.workers``). Images of a blob take the fast path of ``itemcopy`` (the
dataset's index gives names and byte ranges, so nothing is looked up per image: the bytes are
exactly what the view's read returns); the files of a folder the view passes through
unchanged (``ClassicView.real_folder``: ``ann/``, ``meta/``, ...) are copied straight from the
real folder; the rest (virtual files, images stored as files in ``img/``, synthesized
annotations) through the view.

Nothing the source holds is left out silently: what the view hides by no rule of the format
(a FIFO, socket or device, a symlink leading out of the project, nowhere or round in a
circle) is reported, one line per entry, with the model's own problems; a sub-folder or
non-image file of ``img/``, which is no item by the format's rule, gets a line as well, but is
no problem.
"""
from __future__ import annotations

import gc
import os
import stat
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterator

from blobfs.errors import InputError, one_line
from blobfs.model.items import DISK
from blobfs.model.opening import open_project
from blobfs.model.project import Dataset
from blobfs.model.synth_ann import SynthError
from blobfs.model.view import ClassicView
from blobfs.write.atomic import AtomicOutputs
from blobfs.write.blobwriter import Progress, write_all
from blobfs.write.errors import output_failed
from blobfs.write.itemcopy import READ, copy_files, copy_items
from blobfs.write.options import UnpackOptions
from blobfs.write.outpaths import check_apart
from blobfs.write.workers import run_chunks

#: Files per unit of work (see blobfs.write.workers).
CHUNK = 1000
_CHUNK = 8 << 20
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class UnpackResult:
    out_dir: Path
    files: int
    bytes: int
    problems: tuple[str, ...] = ()   # one line per source entry skipped or not written
    notes: tuple[str, ...] = ()      # entries no item by the format's rule, left behind


def _copy_out(view, vpath: str, dst: str, src_label: str, dst_label: str) -> int:
    """Write one view file to ``dst`` (a failure names ``dst_label``, the final path); returns
    its size. ``SynthError`` (an annotation to synthesize for an image that does not decode)
    before anything is created."""
    try:
        st = view.getattr(vpath)
    except SynthError:
        raise
    except OSError as e:
        raise InputError(f"{src_label}: {e.strerror or e}") from None
    try:
        fd = os.open(dst, _FLAGS, 0o666)
    except OSError as e:
        raise output_failed(dst_label, e) from None
    try:
        offset = 0
        while offset < st.size:
            try:
                data = view.read(vpath, min(_CHUNK, st.size - offset), offset)
            except OSError as e:
                raise InputError(f"{src_label}: {e.strerror or e}") from None
            if not data:
                raise InputError(f"{src_label}: ends after {offset} of {st.size} bytes")
            write_all(fd, data, dst_label)
            offset += len(data)
        os.utime(fd, ns=(st.mtime_ns, st.mtime_ns))
    finally:
        os.close(fd)
    return st.size


def unpack(src: Path, out_dir: Path, opts: UnpackOptions,
           progress_start: Callable[[int], Progress | None] | None = None) -> UnpackResult:
    gc_was_enabled = gc.isenabled()
    gc.disable()  # 300k small objects, none of them cyclic: collections would only cost time
    try:
        return _unpack(Path(src), Path(out_dir), opts, progress_start)
    finally:
        if gc_was_enabled:
            gc.enable()


def _walk(view, item_dirs: dict[str, Dataset]) -> tuple[list[str], list[tuple]]:
    """(every folder of the view, top-down; the units of work for the files outside the item
    folders). An item folder is not listed: its dataset's index is its listing. The files of
    a folder that the view passes through unchanged are copied straight from the real folder
    (("real", folder, real folder, [name, ...])); the others through the view (("files",
    folder, [view path, ...]))."""
    folders: list[str] = []
    chunks: list[tuple] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        folders.append(rel)
        if rel in item_dirs:
            continue
        dirs, names = [], []
        for name, mode in view.listdir(rel):
            (dirs if stat.S_ISDIR(mode) else names).append(name)
        real = view.real_folder(rel) if names else None
        if real is not None:
            chunks.extend(("real", rel, os.fspath(real), names[i : i + CHUNK])
                          for i in range(0, len(names), CHUNK))
        else:
            paths = [f"{rel}/{n}" if rel else n for n in names]
            chunks.extend(("files", rel, paths[i : i + CHUNK]) for i in range(0, len(paths), CHUNK))
        stack.extend(reversed([f"{rel}/{n}" if rel else n for n in dirs]))
    return folders, chunks


def _join(folder: str, rel: str) -> str:
    return f"{folder}/{rel}" if rel else folder


def _item_chunks(rel: str, ds: Dataset) -> Iterator[tuple]:
    """Units of work for the images of one dataset: ("items", folder, dataset, lo, hi) for a
    run of items read from one tar, ("files", folder, [view path, ...]) for a run that holds
    files of ``img/`` or mixes tars (rare: copied through the view)."""
    src = ds.items.arrays()[4]
    for lo in range(0, len(src), CHUNK):
        hi = min(lo + CHUNK, len(src))
        s0 = src[lo]
        if s0 != DISK and src[lo:hi].count(s0) == hi - lo:
            yield ("items", rel, ds, lo, hi)
        else:
            yield ("files", rel, [f"{rel}/{ds.items.name(i)}" for i in range(lo, hi)])


def _unpack(src: Path, out_dir: Path, opts: UnpackOptions,
            progress_start: Callable[[int], Progress | None] | None) -> UnpackResult:
    check_apart(src, out_dir)
    with AtomicOutputs([out_dir], force=opts.force, fsync=opts.fsync) as outputs, \
            open_project(src, synthesize_ann=opts.synthesize_ann) as project:
        # An annotation that cannot be synthesized is reported among the problems, with its
        # path; the synthesizer's own warning (the mount's log line) would say it twice.
        view = ClassicView(project, log_synth_failures=False)
        item_dirs = {f"{ds.relpath}/img": ds for ds in project.datasets}
        folders, chunks = _walk(view, item_dirs)
        # What the view does not show is not written either; the mount can only hide it,
        # unpack says so: a problem (a FIFO in ann/), or a note (a sub-folder of img/).
        left_out: tuple[list[str], list[str]] = ([], [])
        for rel in folders:
            for path, why, problem in view.dropped(rel):
                left_out[problem].append(f"{path}: {why}; not unpacked")
        for rel, ds in item_dirs.items():
            chunks.extend(_item_chunks(rel, ds))
        n_files = sum(len(c[-1]) if c[0] != "items" else c[4] - c[3] for c in chunks)
        progress = progress_start(n_files) if progress_start is not None else None
        tmp = outputs.directory(out_dir)
        for rel in folders[1:]:  # [0] is the root, created above
            try:
                os.mkdir(tmp / rel)
            except OSError as e:
                raise output_failed(out_dir / rel, e) from None
        base, label = os.fspath(tmp), os.fspath(src)
        bufs: dict[int, bytearray] = {}

        def copy(chunk: tuple) -> tuple[int, int] | tuple[int, int, list[str]]:
            if chunk[0] == "files":
                nbytes = 0
                skipped: list[str] = []
                for rel in chunk[2]:
                    try:
                        nbytes += _copy_out(view, "/" + rel, f"{base}/{rel}", f"{label}/{rel}",
                                            f"{out_dir}/{rel}")
                    except SynthError as e:  # one image's problem: skip its annotation, go on
                        skipped.append(f"{label}/{rel}: not written, the image header does not "
                                       f"decode ({one_line(e.reason)})")
                return len(chunk[2]) - len(skipped), nbytes, skipped
            if chunk[0] == "real":
                _kind, rel, real, names = chunk
                try:
                    src_fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as e:
                    raise InputError(f"{_join(label, rel)}: {e.strerror or e}") from None
                try:
                    dir_fd = os.open(_join(base, rel), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        nbytes = copy_files(names, src_fd, _join(label, rel), dir_fd,
                                            _join(os.fspath(out_dir), rel))
                    finally:
                        os.close(dir_fd)
                finally:
                    os.close(src_fd)
                return len(names), nbytes
            _kind, rel, ds, lo, hi = chunk
            # One buffer per process, reused for all its chunks (fresh memory costs page
            # faults on every first touch).
            buf = bufs.get(os.getpid())
            if buf is None:
                buf = bufs[os.getpid()] = bytearray(READ)
            names, name_ends, starts, ends, srcs = ds.items.arrays()
            first = name_ends[lo - 1] if lo else 0
            cuts = name_ends[lo:hi]
            chunk_names = list(map(names.__getitem__, map(slice, [first, *cuts[:-1]], cuts)))
            source = ds.items.sources[srcs[lo]]
            dir_fd = os.open(f"{base}/{rel}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                nbytes = copy_items(chunk_names, starts[lo:hi], ends[lo:hi], max(ends[lo:hi]),
                                    source.fd, f"{label}/{rel}", dir_fd, f"{out_dir}/{rel}",
                                    source.mtime_ns, buf)
            finally:
                os.close(dir_fd)
            return hi - lo, nbytes

        # Every chunk names the folder it creates files in (its [1]): one worker per folder.
        not_written: list[str] = []
        n_files, n_bytes = run_chunks(chunks, copy, os.fspath(out_dir), progress=progress,
                                      jobs=opts.jobs, key=itemgetter(1), problems=not_written)
        outputs.commit()
        problems = (*project.problems, *left_out[True], *sorted(not_written))
    return UnpackResult(out_dir, n_files, n_bytes, problems, tuple(left_out[False]))
