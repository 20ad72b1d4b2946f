"""One daemon process per CPU, each pinned, so a request is answered on the CPU that sent it.

Why: a FUSE request puts the reader to sleep until the daemon replies. When the daemon runs on
another CPU, the request wakes that CPU and the reply wakes the reader's CPU back; on these
KVM/Firecracker guests an idle vCPU halts (``haltpoll.guest_halt_poll_ns=0``) and each such
wake-up goes through the host. Measured with an ``isatty()`` loop on a mounted file (one
request each; ``tests/bench/bench_roundtrip.py``): ~10k/s with one blocking daemon thread on
the other CPU, ~180k/s with reader and daemon pinned to one CPU.

So after FUSE_INIT the daemon forks one worker per CPU (or per group of CPUs) and pins each.
Every worker waits in ``poll(2)`` on the shared ``/dev/fuse``. ``poll`` waiters are woken
together (fs/fuse/dev.c ``fuse_dev_poll`` adds to ``fiq->waitq`` non-exclusively), and the one
on the sender's CPU runs first: the sender is going to sleep on that CPU anyway, while every
other worker must first be woken through the host. The others find the queue empty (EAGAIN)
and wait again. Processes, not threads: the workers must not take turns on the GIL, and a
waiting thread would be woken by the GIL's hand-over instead of by its CPU.

The kernel's per-CPU FUSE queues (FUSE over io_uring, Linux 6.14, off unless the ``fuse``
module's ``enable_uring`` is set) do this without the spurious wake-ups; libfuse speaks it
from 3.18 on, and Debian 12 ships 3.14.

Every worker runs SCHED_BATCH (see :func:`_settle`), so the spurious wake-ups do not preempt
what runs on the other CPUs.

Lifecycle: workers are forked with no other thread alive, die with the main process
(``PR_SET_PDEATHSIG``), never unmount (the main process does), and end with ``os._exit`` so
nothing of libfuse's or Python's clean-up runs twice. The main process watches them through
pidfds in its poll set: a worker that dies takes requests it had read with it, so the main
process ends the session (unmount) rather than leave readers hanging.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

#: Upper bound of the default worker count: every request wakes every worker (non-exclusive
#: poll), so more workers cost more spurious wake-ups.
MAX_DEFAULT_WORKERS = 8
_PR_SET_PDEATHSIG = 1


class WorkerLost(RuntimeError):
    """A worker process died while serving; the session was ended and unmounted."""


def cpu_groups(workers: int) -> list[set[int]]:
    """The CPUs each worker is pinned to: this process's CPUs dealt round-robin (with more
    workers than CPUs, some share one)."""
    cpus = sorted(os.sched_getaffinity(0))
    n = max(1, workers)
    if n > len(cpus):
        return [{cpus[j % len(cpus)]} for j in range(n)]
    return [set(cpus[j::n]) for j in range(n)]


def default_workers() -> int:
    return min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS)


def plan(workers: int | None) -> list[set[int]]:
    """The CPU groups for ``-o workers`` (None: :func:`default_workers`)."""
    return cpu_groups(workers or default_workers())


@dataclass
class Workers:
    """The forked workers as seen from one process (``index`` 0 is the main process)."""

    index: int
    pids: list[int] = field(default_factory=list)
    pidfds: list[int] = field(default_factory=list)
    stop_signal: int = signal.SIGTERM  #: what :meth:`finish` sends the workers

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def reap(self) -> list[tuple[int, str]]:
        """Forget every worker that has exited; (pid, how) of those that died abnormally (a
        worker exits 0 only after its loop ended cleanly, e.g. on unmount or its own SIGTERM,
        having answered every request it read)."""
        lost = []
        for j in reversed(range(len(self.pids))):
            pid = self.pids[j]
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            del self.pids[j]
            os.close(self.pidfds.pop(j))
            if status != 0:
                lost.append((pid, _describe(status)))
        return lost

    def finish(self, status: int, failed: bool = False) -> int:
        """End of the loop: a worker leaves the process here (status 1 if its loop raised);
        the main process stops the workers and returns ``status``."""
        if not self.is_main:
            os._exit(1 if failed else 0)
        deadline = time.monotonic() + 5.0
        left = set(self.pids)
        nudged = 0.0
        while left:
            if time.monotonic() - nudged >= 0.1:
                # Again and again: a SIGTERM that lands between the loop's exit check and
                # poll(2) sets the exit flag but interrupts nothing; the next one wakes poll.
                nudged = time.monotonic()
                for pid in left:
                    try:
                        os.kill(pid, self.stop_signal)
                    except ProcessLookupError:
                        pass
            for pid in list(left):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    left.discard(pid)
            if not left:
                break
            if time.monotonic() > deadline:
                for pid in left:
                    log.warning("worker %d did not stop on SIGTERM; killing it", pid)
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        for fd in self.pidfds:
            os.close(fd)
        self.pidfds = []
        return status


def fork(groups: list[set[int]], on_worker: Callable[[int], None], *, serve_in_main: bool = True,
         stop_signal: int = signal.SIGTERM, policy: int = os.SCHED_BATCH) -> Workers:
    """Fork one worker per group after the first; every process (main included) is pinned to
    its group and gets its :class:`Workers`. ``on_worker(k)`` runs in worker ``k`` first.
    With ``serve_in_main=False`` every group gets a forked worker (``k`` = 1..len(groups),
    pinned to ``groups[k - 1]``) and the main process stays unpinned. ``policy``: the
    workers' scheduling policy (see :func:`_settle`)."""
    if threading.active_count() != 1:
        raise RuntimeError(f"{threading.active_count()} threads alive; not forking workers")
    main_pid = os.getpid()
    pids: list[int] = []
    first = 1 if serve_in_main else 0
    for j in range(first, len(groups)):
        k = j + 1 - first
        pid = os.fork()
        if pid == 0:
            die_with_parent(main_pid)
            _settle(groups[j], policy)
            on_worker(k)
            return Workers(k, stop_signal=stop_signal)
        pids.append(pid)
    if serve_in_main:
        _settle(groups[0], policy)
    return Workers(0, pids, [os.pidfd_open(pid) for pid in pids], stop_signal)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this forked process when ``parent`` ends (``PR_SET_PDEATHSIG``)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _settle(cpus: set[int], policy: int = os.SCHED_BATCH) -> None:
    """Pin this process to ``cpus`` and make it SCHED_BATCH: a woken worker then does not
    preempt the task running on its CPU (sched(7)). The worker on the reader's CPU still runs
    at once, since the reader goes to sleep there; the others no longer preempt their CPU's
    task only to find the queue empty. Measured (bench_mount.py, 30k): 8 Python ``open()``
    readers 0.28x native against 0.17x without it, one reader unchanged; one reader against
    two CPU-bound processes 23.6k files/s against 14.9k."""
    os.sched_setaffinity(0, cpus)
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as e:  # e.g. a seccomp filter; pinning alone still works
        log.debug("scheduling policy %d refused: %s", policy, e)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


__all__ = ["MAX_DEFAULT_WORKERS", "WorkerLost", "Workers", "cpu_groups", "default_workers", "die_with_parent", "fork",
           "plan"]
