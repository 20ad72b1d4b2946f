"""The ``blobfs`` command group: logging, version, and one-line errors instead of tracebacks.

Interrupts: Ctrl-C, SIGTERM and SIGHUP end every command with one line on stderr and exit 130
(click alone says "Aborted!" and exits 1 on Ctrl-C; Python dies without cleanup on SIGTERM),
wherever they land: parsing, the work, the summary, flushing stdout at the end. The commands
that write say more precisely what was left (``blobfs.cli.reporting``); ``mount`` handles
SIGTERM and SIGHUP itself (``OWN_STOP_SIGNALS``).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from typing import NoReturn

import click

from blobfs import __version__
from blobfs.cli import streams
from blobfs.errors import BlobfsError, one_line
from blobfs.signals import (exit_on_next_interrupt, forget_caught_interrupt, interrupt_guard,
                            release_stop_signals)


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
#: Commands whose SIGTERM and SIGHUP are their own: a foreground ``mount`` unmounts and exits 0
#: (libfuse installs its handlers only where the default action is still set).
OWN_STOP_SIGNALS = frozenset({"mount"})


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
        except KeyboardInterrupt:
            end_interrupted()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="blobfs")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Mount, inspect, pack and preview Supervisely blob image projects.

    A blob project keeps its images in plain tars (project/blob/NAME.tar) and, per dataset,
    NAME_offsets.pkl with each image's byte range. blobfs shows it as a classic project
    (dataset/img/IMAGE beside dataset/ann/IMAGE.json) without unpacking anything.
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="blobfs: %(levelname)s: %(message)s", stream=sys.stderr)
    if ctx.invoked_subcommand in OWN_STOP_SIGNALS:
        release_stop_signals()
        streams.untrack()


def route_argv(argv: list[str]) -> list[str]:
    """mount(8) runs ``blobfs SOURCE MOUNTPOINT -o OPTS`` for fstab type ``fuse.blobfs``
    (through mount.fuse3): a first word that is no command means ``mount``. Only when it can
    be a source, though (a path, or something that exists): a mistyped command (``blobfs
    infoo proj``) is click's "No such command", not a mount of ``infoo`` on the project."""
    if (len(argv) >= 2 and argv[0] not in COMMANDS and not argv[0].startswith("-")
            and not argv[1].startswith("-") and ("/" in argv[0] or os.path.lexists(argv[0]))):
        return ["mount", *argv]
    return argv


def end_interrupted(state: str | None = None, *, newline: bool = True) -> NoReturn:
    """The one line of an interrupted command (with ``state``: what it left), exit 130."""
    exit_on_next_interrupt()  # another Ctrl-C now ends it at once, no traceback over this line
    # The newline ends a progress bar or a ^C echoed on the terminal's line; neither is in a
    # log file or a pipe, where it would only put an empty line before the one line.
    with contextlib.suppress(OSError, ValueError):  # stderr gone: the exit code still says it
        newline = newline and sys.stderr.isatty()
    with contextlib.suppress(OSError):
        click.echo(("\n" if newline else "") + "blobfs: interrupted"
                   + (f"; {one_line(state)}" if state else ""), err=True)
    streams.silence_failed()
    forget_caught_interrupt()
    sys.exit(130)


def end_aborted(e: click.Abort) -> NoReturn:
    """click's Abort: Ctrl-C is an interrupt (exit 130); the end of stdin at a prompt is
    "Aborted!" and exit 1, as click says it. A prompt raises Abort ``from None``: what it
    caught is the context, not the cause. stderr may be broken: the exit code still says it."""
    if isinstance(e.__cause__ or e.__context__, EOFError):
        with contextlib.suppress(OSError):
            click.echo("Aborted!", err=True)  # no interrupt
        streams.silence_failed()  # no second error when Python flushes stderr at exit
        sys.exit(1)
    end_interrupted(newline=False)


def end_output_failed(failure: streams.StreamFailure) -> NoReturn:
    """stdout or stderr could not be written: one line, exit 1 (or 141 for a closed pipe). A
    write command's outputs were renamed into place before its summary: the line says so."""
    atomic = sys.modules.get("blobfs.write.atomic")  # not loaded: nothing was published
    done = atomic.published_since(0) if atomic is not None else None
    streams.end_output_failed(failure, one_line(str(done)) if done else None)


def main() -> None:
    streams.track()
    # Not click's standalone mode: it turns Ctrl-C into "Aborted!" and exit 1 (also after the
    # command, while the context closes); here every interrupt reaches end_interrupted.
    try:
        with interrupt_guard():
            try:
                code = cli.main(args=route_argv(sys.argv[1:]), prog_name="blobfs",
                                standalone_mode=False)
            except click.ClickException as e:
                with contextlib.suppress(OSError):  # stderr gone: recorded, ends below
                    e.show()
                code = e.exit_code
            except SystemExit as e:
                code = e.code
            except OSError as e:
                if isinstance(e.__context__, (KeyboardInterrupt, EOFError)):
                    # click's blank line on stderr, written as it turns Ctrl-C (or the end
                    # of stdin) into Abort, failed: the interrupt, not the stream, says how
                    # this ends (it was exit 141 or 1 with stderr broken).
                    raise click.Abort() from e.__context__
                if streams.failure() is None:
                    raise  # not a write to stdout or stderr: a bug, with its traceback
                code = 1
            # Written here, not while Python shuts down, where an interrupt is a traceback.
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            failure = streams.failure()
            if failure is not None and code != 130:  # an interrupt's line and code stand
                end_output_failed(failure)
    except click.Abort as e:  # click's KeyboardInterrupt (or EOFError), after a newline
        end_aborted(e)
    except KeyboardInterrupt:
        end_interrupted()
    sys.exit(code)
