"""Inspection commands: info, ls, cat, index, verify. Thin: arguments in, text out."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import stat as st
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import click

from blobfs.cli.params import NonEmptyPath
from blobfs.errors import InputError, one_line
from blobfs.model.project import SourceSpec

if TYPE_CHECKING:
    from blobfs.model.project import Project
    from blobfs.model.view import ClassicView

log = logging.getLogger(__name__)


def source_options(f):
    """SOURCE plus the bare-tar options, shared by every command that opens a source."""
    f = click.option("--ann", type=NonEmptyPath(path_type=Path),
                     help="Annotation folder for a bare TAR source.")(f)
    f = click.option("--offsets", type=NonEmptyPath(path_type=Path),
                     help="Offsets file for a bare TAR source (default: the sibling "
                          "STEM_offsets.pkl, else the tar's own headers).")(f)
    return click.argument("source", type=NonEmptyPath(path_type=Path))(f)


def spec(source: Path, offsets: Path | None, ann: Path | None, synthesize_ann: bool = False) -> SourceSpec:
    return SourceSpec(source, offsets, ann, synthesize_ann)


def warn_left_out(source: Path, problems: list[str]) -> None:
    """One warning line when a lenient command (``ls``, ``preview``) goes on without what the
    source's problems skip, as the mount does; ``verify`` and ``info`` list them all."""
    if problems:
        more = (f"; {len(problems) - 1} more problem(s), 'blobfs verify {source}' lists them all"
                if len(problems) > 1 else "")
        log.warning("%s (left out%s)", one_line(problems[0]), one_line(more))


def view_path(path: str) -> str:
    """A user's view path as the view takes it: ``./ds1``, ``ds1//img`` and ``ds1/x/../img``
    name what they name in a shell (the mount resolves them in the kernel; the view itself
    gets canonical paths). A trailing slash stays: it says "a folder" (ENOTDIR otherwise)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    out = "/".join(parts)
    folder = path.endswith(("/", "/.", "/..")) or path in (".", "..")
    return out + "/" if folder and out else out


def quiet_view(p: Project) -> ClassicView:
    """The view for ``ls`` and ``cat``: what a lookup by name hides is said in the command's
    error line (:func:`not_found`), not in a warning before it."""
    from blobfs.model.view import ClassicView

    return ClassicView(p, log_lookups=False)


def not_found(view: ClassicView, shown: str, path: str, e: OSError) -> InputError:
    """The one error line for a view path that failed: the real file and why the view hides
    it (a FIFO, a link leading out of the project), else the OS's words."""
    hidden = view.hidden_why(path) if e.errno == errno.ENOENT else None
    if hidden is not None:
        return InputError(f"{hidden[0]}: {hidden[1]}; the mount hides it")
    return InputError(f"{shown or '/'}: {e.strerror}")


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator:
    """A progress bar on stderr when it is a terminal and the work is long; else a no-op."""
    if total < 1000 or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr,
                           show_pos=True, show_eta=True) as bar:
        yield bar.update


@click.command("info")
@source_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--images", is_flag=True, help="Also read every image header: formats, modes, sizes.")
def info_cmd(source: Path, offsets: Path | None, ann: Path | None, as_json: bool, images: bool) -> None:
    """Datasets, item counts, bytes, blobs and problems of SOURCE.

    SOURCE is a project folder, a dataset folder or a bare TAR. Exit 1 when problems were
    found (with --images: also when an image header does not decode), 2 when SOURCE cannot
    be read.
    """
    from blobfs.model.verify import summary

    with spec(source, offsets, ann).open(lenient=True) as p:
        report = summary(p)
        if images:
            from blobfs.cli.preview import format_images_report, images_report

            report["images"] = images_report(p, progress=sys.stderr.isatty())
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            _print_info(report)
            if images:
                click.echo(format_images_report(report["images"]))
    # An image nothing can decode is a problem the user asked --images to find.
    sys.exit(1 if report["problems"] or (images and report["images"]["unreadable"]) else 0)


def _print_info(r: dict) -> None:
    # Folder and tar names on disk may hold a newline or an escape sequence: one line each,
    # as problems are (--json keeps them exact).
    click.echo(f"{r['kind']}: {one_line(r['source'] or ', '.join(b['path'] for b in r['blobs']))}")
    click.echo(f"items: {r['items']} in {len(r['datasets'])} dataset(s)")
    for d in r["datasets"]:
        click.echo(f"  {one_line(d['name']):<30} {d['items']:>9} items ({d['blob_items']} in blobs, "
                   f"{d['disk_items']} in img/)  {_human(d['bytes'])}")
    for b in r["blobs"]:
        click.echo(f"blob: {one_line(b['path'])}  {_human(b['bytes'])}")
    if r["problems"]:
        click.echo(f"problems: {len(r['problems'])}")
        for line in r["problems"]:
            click.echo(f"  {one_line(line)}")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command("ls")
@source_options
@click.argument("path", default="")
@click.option("-l", "long", is_flag=True, help="Long listing: type, size, name.")
def ls_cmd(source: Path, offsets: Path | None, ann: Path | None, path: str, long: bool) -> None:
    """List PATH of the classic view of SOURCE (what the mount would show)."""
    shown, path = path, view_path(path)
    with spec(source, offsets, ann).open() as p:
        view = quiet_view(p)
        try:
            a = view.getattr(path)
            # The source's problems after the path is found: a path that is not is one line.
            warn_left_out(source, p.problems)
            entries = view.listdir(path) if st.S_ISDIR(a.mode) else [(path.rsplit("/", 1)[-1], a.mode)]
        except OSError as e:
            raise not_found(view, shown, path, e) from None
        for name, mode in entries:
            if long:
                full = f"{path.strip('/')}/{name}".strip("/") if st.S_ISDIR(a.mode) else path
                size = view.getattr(full).size
                click.echo(f"{'d' if st.S_ISDIR(mode) else '-'} {size:>10} {name}")
            else:
                click.echo(name + ("/" if st.S_ISDIR(mode) else ""))


@click.command("cat")
@source_options
@click.argument("path")
def cat_cmd(source: Path, offsets: Path | None, ann: Path | None, path: str) -> None:
    """Write the bytes of view PATH (e.g. ds1/img/x.png) of SOURCE to stdout."""
    with spec(source, offsets, ann).open() as p:
        view = quiet_view(p)
        try:
            data = view.read_all(view_path(path))
        except OSError as e:
            raise not_found(view, path, view_path(path), e) from None
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@click.command("index")
@click.argument("tar", type=NonEmptyPath(path_type=Path, dir_okay=False))
@click.option("-o", "--output-dir", type=NonEmptyPath(path_type=Path, file_okay=False),
              help="Folder for STEM_offsets.pkl (default: beside the tar).")
@click.option("--include", multiple=True, metavar="GLOB", help="Only members matching this glob (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip members matching this glob (repeatable).")
@click.option("--force", is_flag=True, help="Replace an existing offsets file.")
def index_cmd(tar: Path, output_dir: Path | None, include: tuple[str, ...],
              exclude: tuple[str, ...], force: bool) -> None:
    """Write TAR's offsets file, byte-identical to the SDK's save_blob_offsets_pkl.

    Every regular member in archive order, named by its base name. Globs match the full
    member name or its base name. A member whose name no reader can use (".", "..", control
    characters, C1 ones too, not UTF-8) is left out with a warning (exit 1); no member left to
    index at all is refused (exit 2): an empty dataset is a mistake, not a result. Two names
    that are one after Unicode normalization (NFC) are both indexed, with a warning. Two
    members of one base name are both indexed, as the SDK does, with a warning (exit 1):
    readers show only the last, and the SDK skips the dataset.
    """
    from blobfs.cli.reporting import reporting
    from blobfs.format.offsets_write import offsets_path_for_tar
    from blobfs.write.index import write_index
    from blobfs.write.options import IndexOptions

    out = offsets_path_for_tar(tar, output_dir)
    # As pack: exit 1 for an output not written (full disk, read-only folder), 130 with what
    # was left when interrupted, the summary included (the new file is in place by then).
    with reporting():
        result = write_index(tar, out, IndexOptions(include=include, exclude=exclude, force=force))
        click.echo(f"{out}: {result.entries} entries" + (
            f", {result.not_indexed} member(s) not indexed" if result.not_indexed else ""))
    if result.not_indexed or result.duplicates:
        sys.exit(1)


@click.command("verify")
@source_options
@click.option("--decode", is_flag=True, help="Also decode every image and check its size "
                                             "against the annotation.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_cmd(source: Path, offsets: Path | None, ann: Path | None, decode: bool, as_json: bool) -> None:
    """Check SOURCE: offsets against tar headers, one parseable annotation per item,
    and with --decode every image. Exit 0 clean, 1 problems found, 2 unreadable input."""
    from blobfs.model.verify import verify

    with spec(source, offsets, ann).open(lenient=True) as p:
        with progress(p.item_count, "verify") as bar:
            problems = verify(p, decode=decode, progress=bar)
        if as_json:
            click.echo(json.dumps({"items": p.item_count, "problems": problems}, indent=2))
        else:
            for line in problems:
                click.echo(one_line(line))
            click.echo(f"{p.item_count} items checked, {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


COMMANDS = [info_cmd, ls_cmd, cat_cmd, index_cmd, verify_cmd]
