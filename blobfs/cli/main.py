"""The ``blobfs`` command group: logging, version, and one-line errors instead of tracebacks."""
from __future__ import annotations

import importlib
import logging
import sys

import click

from blobfs import __version__
from blobfs.errors import BlobfsError, one_line


#: command name -> (module, attribute). Imported only when the command runs (or for --help),
#: so ``blobfs mount`` does not pay for Pillow and the write side at start-up.
COMMANDS = {
    "info": ("blobfs.cli.inspect", "info_cmd"),
    "ls": ("blobfs.cli.inspect", "ls_cmd"),
    "cat": ("blobfs.cli.inspect", "cat_cmd"),
    "index": ("blobfs.cli.inspect", "index_cmd"),
    "verify": ("blobfs.cli.inspect", "verify_cmd"),
    "mount": ("blobfs.cli.mount", "mount_cmd"),
    "umount": ("blobfs.cli.mount", "umount_cmd"),
    "pack": ("blobfs.cli.write", "pack_cmd"),
    "pack-project": ("blobfs.cli.write", "pack_project_cmd"),
    "unpack": ("blobfs.cli.write", "unpack_cmd"),
    "preview": ("blobfs.cli.preview", "preview_cmd"),
    "demo": ("blobfs.cli.preview", "demo_cmd"),
}


class _Group(click.Group):
    """Lazily loaded commands; every ``BlobfsError`` becomes one line on stderr and exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except BlobfsError as e:
            click.echo(f"blobfs: {one_line(str(e))}", err=True)
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


def route_argv(argv: list[str]) -> list[str]:
    """mount(8) runs ``blobfs SOURCE MOUNTPOINT -o OPTS`` for fstab type ``fuse.blobfs``
    (through mount.fuse3): a first word that is no command means ``mount``."""
    if (len(argv) >= 2 and argv[0] not in COMMANDS and not argv[0].startswith("-")
            and not argv[1].startswith("-")):
        return ["mount", *argv]
    return argv


def main() -> None:
    cli.main(args=route_argv(sys.argv[1:]), prog_name="blobfs")
