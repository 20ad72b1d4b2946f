"""``blobfs preview`` and ``blobfs demo``; ``images_report`` for ``blobfs info --images``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from blobfs.cli.inspect import warn_left_out
from blobfs.cli.params import NonEmptyPath, OutputFile
from blobfs.cli.reporting import interrupts, reporting
from blobfs.errors import one_line
from blobfs.preview.options import PreviewOptions
from blobfs.preview.report import format_images_report, images_report
from blobfs.write.outpaths import check_apart, check_output_folder
from blobfs.write.errors import WriteFailedError

__all__ = ["preview_cmd", "demo_cmd", "images_report", "format_images_report"]

log = logging.getLogger(__name__)
_D = PreviewOptions()  # defaults shown in --help


@click.command("preview")
@click.argument("source", type=NonEmptyPath(path_type=Path))
@click.argument("dataset", required=False)
@click.option("-o", "--output", required=True, type=OutputFile(path_type=Path),
              help="Sheet to write (.png is streamed row by row; .jpg/.webp also work).")
@click.option("--limit", type=click.IntRange(min=1), default=_D.limit, show_default=True,
              help="At most this many items.")
@click.option("--sample", type=click.Choice(["random", "first"]), default=_D.sample,
              show_default=True, help="A seeded random sample, or the first items in index order.")
@click.option("--seed", type=int, default=_D.seed, show_default=True, help="Random sample seed.")
@click.option("--columns", type=click.IntRange(1, 1000), default=_D.columns, show_default=True,
              help="Thumbnails per row.")
@click.option("--thumb", type=click.IntRange(16, 2048), default=_D.thumb, show_default=True,
              help="Thumbnail box in pixels; images are scaled up or down to fit.")
@click.option("--no-ann", is_flag=True, help="Images only, no annotations drawn.")
@click.option("--no-labels", is_flag=True, help="Draw objects without their class titles.")
def preview_cmd(source: Path, dataset: str | None, output: Path, limit: int, sample: str, seed: int,
                columns: int, thumb: int, no_ann: bool, no_labels: bool) -> None:
    """Contact sheet of SOURCE's images with their annotations drawn.

    SOURCE is a blob project, a classic project, a blobfs mount point, a dataset folder or a
    tar; DATASET (e.g. "ds1" or "parent/child") restricts the sheet to one dataset.
    Undecodable images appear as a red crossed placeholder and are logged.
    """
    from blobfs import open_project
    from blobfs.preview.sheet import write_sheet

    options = PreviewOptions(limit=limit, sample=sample, seed=seed, columns=columns, thumb=thumb,  # type: ignore[arg-type]
                             no_ann=no_ann, labels=not no_labels, output=output)
    check_apart(source, output)  # never over one of the source's own files
    check_output_folder(output)  # before the project is opened, which can take a while
    # Input problems go on to the group (exit 2, as before); Ctrl-C is exit 130 as for the
    # write commands.
    with interrupts():  # the summary too: an interrupt there says the sheet is in place
        try:
            with open_project(source) as project:
                warn_left_out(source, project.problems)
                layout = write_sheet(project, dataset, options, output)
        except (OSError, WriteFailedError) as e:
            # The output could not be written (full disk, read-only): exit 1, as the write commands.
            why = str(e) if isinstance(e, WriteFailedError) else f"{output}: {e.strerror or e}"
            click.echo(f"blobfs: {one_line(why)}", err=True)
            sys.exit(1)
        w, h = layout.size
        click.echo(f"{output}: {layout.count} items, {layout.columns} x {layout.rows} "
                   f"thumbnails, {w}x{h} px")


@click.command("demo")
@click.argument("directory", type=NonEmptyPath(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed (same seed, same bytes).")
def demo_cmd(directory: Path, seed: int) -> None:
    """Write a small demo blob project into DIRECTORY (created; must be absent or empty).

    Two datasets (one nested), a tar in blob/ with offsets files, one ordinary img/ file,
    and annotations with every geometry blobfs draws. Whole or not at all: exit 2 when
    DIRECTORY is not empty, 1 when it could not be written, 130 interrupted.
    """
    from blobfs.demo import make_demo

    with reporting():
        demo = make_demo(directory, seed=seed)
        for ds in demo.datasets:
            click.echo(f"{ds.name}: {ds.item_count} items in {directory / ds.dir}")
        click.echo(f"try: blobfs preview {directory} -o demo-preview.png")
