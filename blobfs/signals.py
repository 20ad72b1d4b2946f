"""SIGTERM and SIGHUP as Ctrl-C: a ``KeyboardInterrupt`` that runs every cleanup on its way
out (Python's default for both is to die on the spot, temporaries and all).

Only a signal whose action is still the default is taken over: one the process was started
with ignored (``nohup`` ignores SIGHUP) stays ignored, and one that C code handles (libfuse)
is left to it. Kept free of heavy imports: every command, ``mount`` too, loads it at start-up.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

#: Besides SIGINT (Python's own KeyboardInterrupt): the signals that ask a process to stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP) if os.name == "posix" else ()


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupt_guard() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt while the block runs (see the module
    doc). Nested guards are no-ops; outside the main thread there is nothing to install."""
    try:
        old = {s: signal.signal(s, _raise_interrupt) for s in STOP_SIGNALS
               if signal.getsignal(s) == signal.SIG_DFL}
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def release_stop_signals() -> None:
    """Give SIGTERM and SIGHUP their default action back inside a guard, for a command with
    handlers of its own: libfuse installs its handlers only where the default is still set."""
    for s in STOP_SIGNALS:
        if signal.getsignal(s) is _raise_interrupt:
            signal.signal(s, signal.SIG_DFL)


#: The exit code of an interrupted command (128 + SIGINT, what a shell shows for Ctrl-C).
EXIT_INTERRUPTED = 130


def forget_caught_interrupt() -> None:
    """Let an interrupt that was caught end with the exit code asked for.

    CPython remembers a KeyboardInterrupt that escaped an ``exec``/``eval`` of a string (every
    dataclass and namedtuple is made that way, so any module importing when Ctrl-C lands) even
    after the program caught it, and ``python -m blobfs`` then ends killed by SIGINT, whatever
    ``sys.exit`` said: Python/pythonrun.c ``run_eval_code_obj`` sets the flag,
    Modules/main.c ``pymain_run_module`` leaves it for ``Py_RunMain``'s ``exit_sigint()``. A
    caller's ``wait`` saw -2 instead of 130 in about one run in ten of an interrupted
    ``verify``. The same function clears the flag on entry, so an empty ``exec`` forgets it."""
    exec("")  # noqa: S102 - a constant empty string: the side effect is the point


def _exit_interrupted(_signum: int, _frame: object) -> None:
    os._exit(EXIT_INTERRUPTED)


def exit_on_next_interrupt() -> None:
    """Once an interrupt is being reported: SIGINT, SIGTERM and SIGHUP end the process at once
    with the same exit code 130. A second Ctrl-C while the last line is written (to a terminal
    or pipe that blocks) must neither print a traceback over it nor change the exit code (the
    default action would end it killed by SIGINT, which a caller's ``wait`` sees as a signal,
    not as exit 130); a blocked write is interrupted (EINTR) and the handler runs."""
    for s in (signal.SIGINT, *STOP_SIGNALS):
        with contextlib.suppress(ValueError):
            if signal.getsignal(s) != signal.SIG_IGN:
                signal.signal(s, _exit_interrupted)
