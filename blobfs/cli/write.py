"""Click commands of the write side: ``pack``, ``pack-project``, ``unpack``.

Thin: parse options into one frozen dataclass, run ``blobfs.write``, report. Exit codes:
0 done; 1 for ``unpack`` when the source had problems (entries skipped as the mount skips
them, or hidden files such as FIFOs: the output is written and equals the mount, each problem
is printed); 2 bad input, refused output (exists, no ``--force``; another ``pack`` writing it;
its folder missing or no folder; a file output written as a folder, ``-o out.tar/``) or usage;
1 the output could not be written (full disk, permissions); 130 interrupted (Ctrl-C, SIGTERM,
SIGHUP). In every failure case before the output is renamed into place nothing is left under
its name; an interrupt after that says the new output is in place (blobfs.cli.reporting).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import re
import sys
import time
from pathlib import Path
from typing import Callable

import click

from blobfs.cli.params import NonEmptyPath, OutputFile
from blobfs.cli.reporting import reporting
from blobfs.errors import one_line
from blobfs.write.options import PackOptions, PackProjectOptions, UnpackOptions

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SizeType(click.ParamType):
    """A byte size: ``4096``, ``512K``, ``1.5G`` (binary units; ``KB``/``KiB`` spellings ok)."""

    name = "SIZE"

    def convert(self, value, param, ctx):  # type: ignore[override]
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(value), re.I)
        if not m:
            self.fail(f"{value!r} is not a size like 4096, 512K, 2G", param, ctx)
        return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


class MtimeType(click.ParamType):
    """Seconds since the epoch, or an ISO 8601 date/time (UTC when no zone is given), within
    what a tar header holds: a usage error, not a silently different timestamp, outside it."""

    name = "MTIME"

    def convert(self, value, param, ctx):  # type: ignore[override]
        from blobfs.write.tarwriter import MTIME_MAX, MTIME_RANGE

        if isinstance(value, int):
            seconds = value
        elif re.fullmatch(r"-?\d+", text := str(value).strip()):
            seconds = int(text)
        else:
            try:
                when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                self.fail(f"{value!r} is neither epoch seconds nor an ISO 8601 date", param, ctx)
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.timezone.utc)
            seconds = int(when.timestamp() // 1)  # floor: a fraction before 1970 is refused
        if not 0 <= seconds <= MTIME_MAX:
            self.fail(f"{value!r} is out of range: {MTIME_RANGE}", param, ctx)
        return seconds


SIZE = SizeType()
MTIME = MtimeType()
#: ``-j/--jobs``, shared by the three write commands (see blobfs.write.workers).
JOBS = click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None, metavar="N",
                    help="Worker processes (default: one per CPU, at most 4; 1 = no workers).")


class _Progress:
    """click progress bar on stderr, only when stderr is a terminal: counts and files/s."""

    def __init__(self, label: str, stack: contextlib.ExitStack) -> None:
        self.label = label
        self.stack = stack
        self.t0 = time.monotonic()
        self.bar = None

    @property
    def start(self) -> Callable[[int], Callable[[int], None] | None] | None:
        """The ``progress_start`` to hand to the write functions; None (no counting work at
        all) when stderr is not a terminal."""
        return self._start if sys.stderr.isatty() else None

    def _start(self, total: int) -> Callable[[int], None] | None:
        self.t0 = time.monotonic()
        self.bar = self.stack.enter_context(click.progressbar(
            length=total, label=self.label, file=sys.stderr, show_pos=True, show_eta=True,
            item_show_func=lambda _item: self._rate()))
        return self.bar.update

    def _rate(self) -> str:
        elapsed = time.monotonic() - self.t0
        pos = self.bar.pos if self.bar is not None else 0
        return f"{pos / elapsed:,.0f} files/s" if elapsed > 0 else ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _seconds(t0: float) -> str:
    return f"{time.monotonic() - t0:.1f} s"


@click.command("pack")
@click.argument("images_dir", type=NonEmptyPath(file_okay=False, path_type=Path))
@click.option("-o", "--output", "out", required=True, type=OutputFile(path_type=Path),
              help="The tar to write (NAME.tar); NAME_offsets.pkl is written beside it.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Pack files matching GLOB instead of the SDK image extensions (repeatable; "
                   "a GLOB with / matches the relative path, else the base name).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@click.option("--recursive/--no-recursive", default=True, show_default=True,
              help="Also pack files in sub-folders.")
@click.option("--rename", is_flag=True,
              help="Same base name in two folders: rename the one(s) in sub-folders to their "
                   "relative path with / replaced by __ (default: refuse).")
@click.option("--mtime", type=MTIME, help="Member mtime for every file (epoch seconds or ISO "
                                           "date); default: each file's own mtime.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@click.option("--fsync", is_flag=True, help="fsync the output before renaming it into place.")
@JOBS
def pack_cmd(images_dir: Path, out: Path, include: tuple[str, ...], exclude: tuple[str, ...],
             recursive: bool, rename: bool, mtime: int | None, force: bool, fsync: bool,
             jobs: int | None) -> None:
    """Pack the images of IMAGES_DIR into one tar plus its SDK offsets file.

    One pack at a time per output: a second pack into an OUTPUT being written exits 2 at once
    ("another blobfs pack is writing this output"). The offsets file is renamed into place
    after the tar, so an interrupted replace never leaves the new tar beside the old offsets.
    """
    from blobfs.write.pack import pack

    opts = PackOptions(include=include, exclude=exclude, recursive=recursive, rename=rename,
                       mtime=mtime, force=force, fsync=fsync, jobs=jobs)
    t0 = time.monotonic()
    with reporting():  # the summary too: an interrupt there says the outputs are in place
        with contextlib.ExitStack() as stack:
            result = pack(images_dir, out, opts, _Progress("packing", stack).start)
        click.echo(f"{result.tar}: {_count(result.count, 'image')}, {result.tar_size:,} bytes; "
                   f"{result.offsets.name} beside it ({_seconds(t0)})", err=True)


@click.command("pack-project")
@click.argument("classic_dir", type=NonEmptyPath(file_okay=False, path_type=Path))
@click.argument("out_dir", type=NonEmptyPath(file_okay=False, path_type=Path))
@click.option("--max-blob-size", type=SIZE, help="Split a dataset's tar into NAME-000.tar, "
              "NAME-001.tar, ... so that each stays within SIZE (e.g. 2G; at least 10K); default: one "
              "tar per dataset.")
@click.option("--min-size", type=SIZE, default=0, help="Images smaller than SIZE stay ordinary img/ files.")
@click.option("--max-size", type=SIZE, help="Images larger than SIZE stay ordinary img/ files.")
@click.option("--mtime", type=MTIME, help="Member mtime in the tars (epoch seconds or ISO date); "
                                           "default: each file's own mtime.")
@click.option("--force", is_flag=True, help="Replace an existing OUT_DIR.")
@click.option("--fsync", is_flag=True, help="fsync the output before renaming it into place.")
@JOBS
def pack_project_cmd(classic_dir: Path, out_dir: Path, max_blob_size: int | None, min_size: int,
                     max_size: int | None, mtime: int | None, force: bool, fsync: bool,
                     jobs: int | None) -> None:
    """Turn the classic project CLASSIC_DIR into the blob project OUT_DIR."""
    from blobfs.write.pack_project import pack_project
    from blobfs.write.tarwriter import RECORD

    # Both would be honoured silently and give no useful result: a limit below the smallest
    # tar there is (one record) puts every image into a tar of its own (and 0 often means
    # "no limit" elsewhere); an empty size range packs nothing.
    if max_blob_size is not None and max_blob_size < RECORD:
        raise click.BadParameter(f"{max_blob_size} bytes is below {RECORD} (10K), the size of the "
                                 "smallest tar: every image would get a tar of its own",
                                 param_hint="'--max-blob-size'")
    if max_size is not None and min_size > max_size:
        raise click.BadParameter(f"{min_size} is above --max-size {max_size}: no image would "
                                 "go into a blob", param_hint="'--min-size'")
    opts = PackProjectOptions(max_blob_size=max_blob_size, min_size=min_size, max_size=max_size,
                              mtime=mtime, force=force, fsync=fsync, jobs=jobs)
    t0 = time.monotonic()
    with reporting():
        with contextlib.ExitStack() as stack:
            result = pack_project(classic_dir, out_dir, opts, _Progress("packing", stack).start)
        click.echo(f"{result.out_dir}: {_count(result.datasets, 'dataset')}, "
                   f"{_count(result.blob_items, 'image')} in {_count(result.tars, 'tar')}, "
                   f"{result.plain_images} left in img/, {_count(result.copied, 'other file')} "
                   f"copied ({_seconds(t0)})", err=True)


@click.command("unpack")
@click.argument("blob_project", type=NonEmptyPath(path_type=Path))
@click.argument("out_dir", type=NonEmptyPath(file_okay=False, path_type=Path))
@click.option("--synthesize-ann", is_flag=True,
              help="Write an empty annotation for items that have none (as the mount does).")
@click.option("--force", is_flag=True, help="Replace an existing OUT_DIR.")
@click.option("--fsync", is_flag=True, help="fsync the output before renaming it into place.")
@JOBS
def unpack_cmd(blob_project: Path, out_dir: Path, synthesize_ann: bool, force: bool,
               fsync: bool, jobs: int | None) -> None:
    """Write BLOB_PROJECT as the classic project OUT_DIR (exactly what the mount shows)."""
    from blobfs.write.unpack import unpack

    opts = UnpackOptions(synthesize_ann=synthesize_ann, force=force, fsync=fsync, jobs=jobs)
    t0 = time.monotonic()
    with reporting():
        with contextlib.ExitStack() as stack:
            result = unpack(blob_project, out_dir, opts, _Progress("unpacking", stack).start)
        for line in (*result.notes, *result.problems):
            click.echo(f"blobfs: warning: {one_line(line)}", err=True)
        click.echo(f"{result.out_dir}: {_count(result.files, 'file')}, {result.bytes:,} bytes ({_seconds(t0)})"
                   + (f"; {_count(len(result.notes), 'non-item')} of img/ left behind" if result.notes else "")
                   + (f"; {_count(len(result.problems), 'problem')} in the source" if result.problems else "")
                   + (", see above" if result.notes or result.problems else ""), err=True)
    if result.problems:
        sys.exit(1)
