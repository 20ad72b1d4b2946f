"""``blobfs unpack``: a blob project (or dataset, or bare tar) → the classic project.

The output is, file for file and byte for byte, the tree the mount shows: it is produced by
walking ``open_project(src).view`` and copying every file it lists (so ``diff -r`` between an
unpacked project and a mounted one is empty by construction). Files get the view's mtimes and
ordinary permissions (0666 & ~umask: the mount's read-only modes are not copied). Everything
is written under a temporary name beside ``OUT_DIR`` and renamed into place at the end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from blobfs.errors import InputError
from blobfs.model.project import open_project
from blobfs.write.atomic import AtomicOutputs
from blobfs.write.blobwriter import PROGRESS_EVERY, Progress
from blobfs.write.errors import output_failed
from blobfs.write.options import UnpackOptions

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
            mv = memoryview(data)
            try:
                while mv:
                    mv = mv[os.write(fd, mv):]
            except OSError as e:
                raise output_failed(dst, e) from None
            offset += len(data)
        os.utime(fd, ns=(st.mtime_ns, st.mtime_ns))
    finally:
        os.close(fd)
    return st.size


def unpack(src: Path, out_dir: Path, opts: UnpackOptions,
           progress_start: Callable[[int], Progress | None] | None = None) -> UnpackResult:
    src, out_dir = Path(src), Path(out_dir)
    with AtomicOutputs([out_dir], force=opts.force, fsync=opts.fsync) as outputs, \
            open_project(src, synthesize_ann=opts.synthesize_ann) as project:
        view = project.view
        progress = None
        if progress_start is not None:
            progress = progress_start(sum(len(files) for _d, _s, files in view.walk()))
        tmp = outputs.directory(out_dir)
        n_files = n_bytes = pending = 0
        for rel, _dirs, files in view.walk():
            base = os.fspath(tmp / rel) if rel else os.fspath(tmp)
            if rel:
                try:
                    os.mkdir(base)
                except OSError as e:
                    raise output_failed(out_dir / rel, e) from None
            prefix = f"/{rel}/" if rel else "/"
            for name in files:
                n_bytes += _copy_out(view, prefix + name, f"{base}/{name}", f"{src}{prefix}{name}")
                n_files += 1
                if progress is not None:
                    pending += 1
                    if pending == PROGRESS_EVERY:
                        progress(pending)
                        pending = 0
        if progress is not None and pending:
            progress(pending)
        outputs.commit()
        problems = tuple(project.problems)
    return UnpackResult(out_dir, n_files, n_bytes, problems)
