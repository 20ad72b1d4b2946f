"""The ``blobfs`` command group: logging, version, and one-line errors instead of tracebacks."""
from __future__ import annotations

import logging
import sys

import click

from blobfs import __version__
from blobfs.errors import BlobfsError


class _Group(click.Group):
    """Turns every ``BlobfsError`` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except BlobfsError as e:
            click.echo(f"blobfs: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="blobfs")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def cli(verbose: int, quiet: bool) -> None:
    """Mount, inspect, pack and preview Supervisely blob image projects.

    A blob project keeps its images in plain tars (project/blob/NAME.tar) and, per dataset,
    NAME_offsets.pkl with each image's byte range. blobfs shows it as a classic project
    (dataset/img/IMAGE beside dataset/ann/IMAGE.json) without unpacking anything.
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="blobfs: %(levelname)s: %(message)s", stream=sys.stderr)


def _register() -> None:
    from blobfs.cli import inspect

    for cmd in inspect.COMMANDS:
        cli.add_command(cmd)
    optional = [("blobfs.cli.mount", ("mount_cmd", "umount_cmd")),
                ("blobfs.cli.write", ("pack_cmd", "pack_project_cmd", "unpack_cmd")),
                ("blobfs.cli.preview", ("preview_cmd", "demo_cmd"))]
    import importlib

    for module, names in optional:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            if hasattr(mod, name):
                cli.add_command(getattr(mod, name))


_register()


def route_argv(argv: list[str]) -> list[str]:
    """mount(8) runs ``blobfs SOURCE MOUNTPOINT -o OPTS`` for fstab type ``fuse.blobfs``
    (through mount.fuse3): a first word that is no command means ``mount``."""
    if len(argv) >= 2 and not argv[0].startswith("-") and argv[0] not in cli.commands:
        return ["mount", *argv]
    return argv


def main() -> None:
    cli.main(args=route_argv(sys.argv[1:]), prog_name="blobfs")
