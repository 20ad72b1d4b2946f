"""Standard output and error that remember a failed write, so that every command ends on one
the same way: one line on stderr and exit 1, or nothing and exit 141 for a reader gone.

A failed write is an ``OSError`` wherever it happens: in ``click.echo``, in ``cat``'s binary
write, in a log line, at the final flush, in click itself (which swallows a broken pipe and
exits 1). Telling it from any other ``OSError`` at the top is guesswork; the file object under
``sys.stdout`` and ``sys.stderr`` records it where it happens, and ``main`` asks afterwards.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys
from dataclasses import dataclass
from typing import NoReturn

#: Exit code for a reader that went away (EPIPE): the status a shell reports for ``ls``,
#: ``cat`` or ``grep`` killed by SIGPIPE in ``... | head``, and not 1, which ``verify`` and
#: ``info`` use for "problems found".
EXIT_BROKEN_PIPE = 128 + int(getattr(signal, "SIGPIPE", 13))


@dataclass(frozen=True, slots=True)
class StreamFailure:
    label: str  # "standard output" or "standard error"
    fd: int
    error: OSError


_failures: list[StreamFailure] = []
_tracking = False


class _RecordingFile(io.FileIO):
    """fd 1 or 2 (not closed with this object: the original ``sys.stdout`` still holds it)."""

    def __init__(self, fd: int, label: str, name: str) -> None:
        super().__init__(fd, "wb", closefd=False)
        self.label = label
        self.name = name  # type: ignore[misc]  # "<stdout>" in messages, as Python's own

    def write(self, data) -> int | None:  # type: ignore[override]
        # All of it: unbuffered (PYTHONUNBUFFERED), the text layer and ``cat``'s
        # ``sys.stdout.buffer.write`` write here directly and ignore a short count, which a
        # pipe closed during a large write returns (``cat X | head -c 10`` ended with exit 0).
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = super().write(view[done:])
                if n is None:  # non-blocking and full: said as FileIO says it
                    return done or None
                done += n
        except OSError as e:
            if not isinstance(e, BlockingIOError):
                _failures.append(StreamFailure(self.label, self.fileno(), e))
            raise
        return done


def _closed_at_start(fd: int, label: str):
    """fd 1 or 2 closed before the start (``>&-``; Python made the stream None): /dev/null
    opened read-only holds the number, so no file opened later takes it (a stray write would
    land in an output), and a write fails with EBADF and is recorded like any other."""
    try:
        os.fstat(fd)
        return None  # taken since the start: not ours to replace
    except OSError:
        pass
    try:
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None
    if null != fd:
        os.dup2(null, fd, inheritable=False)
        os.close(null)
    raw = _RecordingFile(fd, label, f"<{label.split()[-1]}>")
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8",
                            errors="backslashreplace", line_buffering=True)


def _recording(stream, fd: int, label: str):
    """A text stream like ``stream`` (encoding, errors, buffering) writing through a
    ``_RecordingFile``; for a fd closed at start, one whose every write fails (EBADF)."""
    if stream is None:
        return _closed_at_start(fd, label)
    if not hasattr(stream, "buffer"):
        return stream
    try:
        if stream.fileno() != fd:
            return stream
        stream.flush()
    except (OSError, ValueError):
        return stream
    raw = _RecordingFile(fd, label, getattr(stream, "name", str(fd)))
    # Unbuffered as Python made it (``-u``, PYTHONUNBUFFERED: the text layer over the file).
    buffer = raw if isinstance(stream.buffer, io.RawIOBase) else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffer, encoding=stream.encoding,
                            errors=stream.errors, line_buffering=stream.line_buffering,
                            write_through=getattr(stream, "write_through", False))


def track() -> None:
    """Route ``sys.stdout`` and ``sys.stderr`` through recording files (once, at start-up)."""
    global _tracking
    if not _tracking:
        sys.stdout = _recording(sys.stdout, 1, "standard output")
        sys.stderr = _recording(sys.stderr, 2, "standard error")
        _tracking = True


def untrack() -> None:
    """Failed writes are the command's own business (``mount``: a daemon whose terminal went
    away keeps serving, and its exit code is the mount's)."""
    global _tracking
    _tracking = False
    _failures.clear()


def failure() -> StreamFailure | None:
    """The first failed write to stdout or stderr, if any."""
    return _failures[0] if _tracking and _failures else None


def silence_failed() -> None:
    """/dev/null onto every fd that failed, so what is still buffered for it goes nowhere when
    Python flushes at shutdown (instead of a second error, and exit code 120)."""
    fds = {f.fd for f in _failures}
    if not fds:
        return
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in fds:
            os.dup2(null, fd)
        os.close(null)


def end_output_failed(what: StreamFailure, state: str | None) -> NoReturn:
    """One line on stderr naming the stream and the error (with ``state``: what the command
    left in place), exit 1; a broken pipe is a reader that had enough: no line, exit 141."""
    if what.error.errno == errno.EPIPE:
        silence_failed()
        sys.exit(EXIT_BROKEN_PIPE)
    why = what.error.strerror or type(what.error).__name__
    line = f"blobfs: cannot write to {what.label}: {why}" + (f"; {state}" if state else "")
    with contextlib.suppress(OSError, ValueError):  # stderr may be the stream that failed
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    silence_failed()
    sys.exit(1)
