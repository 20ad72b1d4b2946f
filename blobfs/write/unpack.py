"""``blobfs unpack``: a blob project (or dataset, or bare tar) → the classic project.

The output is, file for file and byte for byte, the tree the mount shows: it is produced by
walking ``open_project(src).view`` and copying every file it lists (so ``diff -r`` between an
unpacked project and a mounted one is empty by construction). Files get the view's mtimes and
ordinary permissions (0666 & ~umask: the mount's read-only modes are not copied). Everything
is written under a temporary name beside ``OUT_DIR`` and renamed into place at the end. The
folders are created first; the files are then written by forked workers
(``blobfs.write.workers``), each reading through the view it inherited.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from blobfs.errors import InputError
from blobfs.model.project import open_project
from blobfs.write.atomic import AtomicOutputs
from blobfs.write.blobwriter import Progress, write_all
from blobfs.write.errors import output_failed
from blobfs.write.options import UnpackOptions
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
    problems: tuple[str, ...] = ()   # what the source's model reported (entries skipped, ...)


def _copy_out(view, vpath: str, dst: str, src_label: str) -> int:
    """Write one view file to ``dst``; returns its size."""
    try:
        st = view.getattr(vpath)
    except OSError as e:
        raise InputError(f"{src_label}: {e.strerror or e}") from None
    try:
        fd = os.open(dst, _FLAGS, 0o666)
    except OSError as e:
        raise output_failed(dst, e) from None
    try:
        offset = 0
        while offset < st.size:
            try:
                data = view.read(vpath, min(_CHUNK, st.size - offset), offset)
            except OSError as e:
                raise InputError(f"{src_label}: {e.strerror or e}") from None
            if not data:
                raise InputError(f"{src_label}: ends after {offset} of {st.size} bytes")
            write_all(fd, data, dst)
            offset += len(data)
        os.utime(fd, ns=(st.mtime_ns, st.mtime_ns))
    finally:
        os.close(fd)
    return st.size


def unpack(src: Path, out_dir: Path, opts: UnpackOptions,
           progress_start: Callable[[int], Progress | None] | None = None) -> UnpackResult:
    src, out_dir = Path(src), Path(out_dir)
    if src.is_dir() and (os.path.realpath(out_dir) + "/").startswith(os.path.realpath(src) + "/"):
        raise InputError(f"{out_dir}: output inside the source {src}")
    with AtomicOutputs([out_dir], force=opts.force, fsync=opts.fsync) as outputs, \
            open_project(src, synthesize_ann=opts.synthesize_ann) as project:
        view = project.view
        folders: list[str] = []
        files: list[str] = []
        for rel, _dirs, names in view.walk():
            folders.append(rel)
            files.extend(f"{rel}/{n}" if rel else n for n in names)
        progress = progress_start(len(files)) if progress_start is not None else None
        tmp = outputs.directory(out_dir)
        for rel in folders[1:]:  # [0] is the root, created above
            try:
                os.mkdir(tmp / rel)
            except OSError as e:
                raise output_failed(out_dir / rel, e) from None
        base, label = os.fspath(tmp), os.fspath(src)

        def copy(chunk: list[str]) -> tuple[int, int]:
            nbytes = 0
            for rel in chunk:
                nbytes += _copy_out(view, "/" + rel, f"{base}/{rel}", f"{label}/{rel}")
            return len(chunk), nbytes

        chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
        n_files, n_bytes = run_chunks(chunks, copy, os.fspath(out_dir), progress=progress)
        outputs.commit()
        problems = tuple(project.problems)
    return UnpackResult(out_dir, n_files, n_bytes, problems)
