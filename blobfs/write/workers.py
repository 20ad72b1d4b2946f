"""Run chunks of per-file work in forked worker processes.

Packing or unpacking 300k small files is bound by per-file Python work, so threads (one GIL)
do not help; processes do. The parent prepares everything (file lists, tar layout, view)
*before* forking, so children inherit it for free and share nothing mutable but the output
files (written with ``pwrite`` at fixed offsets, or as distinct files) and a small shared
counter array for the progress bar. Chunks are dealt out round-robin (worker k takes chunks
k, k+w, ...), so all workers move through the output together and the result does not depend
on the number of workers.

Work that creates files says which folder each chunk writes into (``key``): chunks of one
folder then all go to one worker, and folders are dealt out largest first to the least loaded
worker. Creating a file takes its folder's lock exclusively (``inode_lock`` of the parent in
fs/namei.c ``open_last_lookups``), so two processes creating in one folder only take turns, and
the one waiting spins on the lock (``rwsem_spin_on_owner``): measured on a 300k-file unpack into
one folder, two workers then needed twice the CPU of one for the same wall time, and on a busy
ext4 more wall time too. A project has several folders (``img/`` and ``ann/`` of every
dataset), so it still gets one worker per folder.

Failure handling: a child that fails writes one line ("I:" input / "W:" output problem) to a
pipe and exits 1; the parent stops the others and raises the matching error. Problems with
single files that the work skips and goes on ("P:" lines, see ``run_chunks``) travel through
the same pipe, which the parent drains while it waits. Children ignore
SIGINT/SIGTERM/SIGHUP (Ctrl-C reaches the whole process group: the parent alone handles it,
kills its children and removes the temporaries) and get SIGKILL when the parent dies
(``prctl(PR_SET_PDEATHSIG)``), so a killed pack leaves no writer behind.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import signal
import struct
import time
from typing import Callable, Hashable, Sequence, TypeVar, Union

from blobfs.errors import BlobfsError, InputError, one_line
from blobfs.write.errors import WriteFailedError

T = TypeVar("T")
#: What ``work`` returns: (units done, a second count: bytes written, or what else the work
#: counts), optionally followed by problem lines. Both counts are summed over the chunks.
Done = Union[tuple[int, int], tuple[int, int, Sequence[str]]]
#: Below this many chunks, forking costs more than it saves.
FORK_MIN_CHUNKS = 4
_PR_SET_PDEATHSIG = 1


def worker_count() -> int:
    """One worker per CPU this process may use, at most 4."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


def run_chunks(chunks: Sequence[T], work: Callable[[T], Done], label: str, *,
               progress: Callable[[int], None] | None = None,
               parent_work: Callable[[], None] | None = None,
               jobs: int | None = None,
               key: Callable[[T], Hashable] | None = None,
               problems: list[str] | None = None) -> tuple[int, int]:
    """Call ``work(chunk)`` for every chunk; it returns (units done, a second count), and a third
    element, lines about files it skipped, when there were any: they are appended to
    ``problems`` (in no particular order across workers). Meanwhile the parent runs
    ``parent_work()``. ``jobs``: worker processes (None: :func:`worker_count`; 1: everything in
    this process). ``key``: chunks with equal keys (the folder they create files in) go to one
    worker, in their order. Returns the summed (units, second count)."""
    found: list[str] = problems if problems is not None else []
    plan = deal(chunks, jobs if jobs is not None else worker_count(), key)
    if len(plan) < 2 or len(chunks) < FORK_MIN_CHUNKS or not hasattr(os, "fork"):
        if parent_work is not None:
            parent_work()
        units = nbytes = 0
        for chunk in chunks:
            done = work(chunk)
            u, b = done[0], done[1]
            units, nbytes = units + u, nbytes + b
            if len(done) > 2:
                found.extend(map(one_line, done[2]))  # as the forked path must (line protocol)
            if progress is not None:
                progress(u)
        return units, nbytes
    return _forked(plan, work, label, progress, parent_work, found)


def deal(chunks: Sequence[T], w: int, key: Callable[[T], Hashable] | None = None) -> list[list[T]]:
    """The chunks of each of at most ``w`` workers (none empty). Without ``key``: round-robin
    (worker k takes chunks k, k+w, ...), so all workers move through the output together.
    With it: whole groups of equal keys, largest group first to the least loaded worker."""
    if key is None:
        return [list(chunks[k::w]) for k in range(min(w, len(chunks)))]
    groups: dict[Hashable, list[T]] = {}
    for chunk in chunks:
        groups.setdefault(key(chunk), []).append(chunk)
    plan: list[list[T]] = [[] for _ in range(min(w, len(groups)))]
    for group in sorted(groups.values(), key=len, reverse=True):  # stable: ties keep order
        min(plan, key=len).extend(group)
    return plan


def _forked(plan: list[list[T]], work: Callable[[T], Done], label: str,
            progress: Callable[[int], None] | None,
            parent_work: Callable[[], None] | None, problems: list[str]) -> tuple[int, int]:
    w = len(plan)
    counters = mmap.mmap(-1, 16 * w)          # per worker: units done, the second count
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)               # drained while waiting: children block on a full pipe
    lines = _Lines(rfd, problems)
    pids: list[int] = []
    try:
        for k in range(w):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                _child(k, plan[k], work, label, counters, wfd)
            pids.append(pid)
        os.close(wfd)
        wfd = -1
        if parent_work is not None:
            parent_work()
        reported = 0
        failed = False
        while pids and not failed:
            time.sleep(0.02)
            lines.drain()
            for pid in list(pids):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    pids.remove(pid)
                    failed = failed or os.waitstatus_to_exitcode(status) != 0
            if progress is not None:
                units = sum(struct.unpack_from(f"{2 * w}q", counters)[0::2])
                if units > reported:
                    progress(units - reported)
                    reported = units
        lines.drain()
        if failed:
            kind, text = lines.failure or ("I", "")
            if kind == "W":
                raise WriteFailedError(text)
            raise InputError(text or f"{label}: a worker process died")
        values = struct.unpack_from(f"{2 * w}q", counters)
        return sum(values[0::2]), sum(values[1::2])
    finally:
        for pid in pids:  # interrupted or failed: stop the rest, reap them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
        counters.close()


def _child(k: int, chunks: list[T], work: Callable[[T], tuple[int, int]],
           label: str, counters: mmap.mmap, wfd: int) -> None:  # pragma: no cover - child
    """Never returns: leaves with os._exit, so no parent cleanup (temp removal!) runs here."""
    code = 0
    try:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
        units = nbytes = 0
        for chunk in chunks:
            done = work(chunk)
            units, nbytes = units + done[0], nbytes + done[1]
            for line in done[2] if len(done) > 2 else ():
                # One write per line, under PIPE_BUF: lines of several children never mix.
                os.write(wfd, f"P:{one_line(line)}\n".encode("utf-8", "backslashreplace")[:4000])
            struct.pack_into("qq", counters, 16 * k, units, nbytes)
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent as one line
        code = 1
        kind = "W" if isinstance(e, WriteFailedError) else "I"
        text = str(e) if isinstance(e, BlobfsError) else f"{label}: {type(e).__name__}: {e}"
        try:
            os.write(wfd, f"{kind}:{text}\n".encode()[:4000])
        except OSError:
            pass
    finally:
        os._exit(code)


class _Lines:
    """Lines the children write to the pipe: "P:" problems are collected, the first "I:"/"W:"
    line is the failure to raise."""

    def __init__(self, rfd: int, problems: list[str]) -> None:
        self.rfd = rfd
        self.problems = problems
        self.failure: tuple[str, str] | None = None
        self._rest = b""

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.rfd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            *complete, self._rest = (self._rest + data).split(b"\n")
            for raw in complete:
                kind, _, text = raw.decode("utf-8", "replace").partition(":")
                if kind == "P":
                    self.problems.append(text)
                elif self.failure is None:
                    self.failure = (kind, text.strip())
