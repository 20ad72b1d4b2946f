"""The low-level driver's request loop, with adaptive polling of ``/dev/fuse``.

Why not libfuse's ``fuse_session_loop``: it blocks in ``read(2)`` on ``/dev/fuse`` after every
request, so each request that follows must wake the daemon's thread. On a KVM/Firecracker
guest whose idle vCPU halts (``haltpoll.guest_halt_poll_ns=0`` on these machines), that
wake-up is an IPI to a halted vCPU the host has to reschedule: measured here at ~100 µs per
round trip against ~7 µs when reader and daemon share a CPU. Python's ``open()`` sends one
such request per file (``isatty`` is an ioctl the kernel always forwards, fs/fuse/ioctl.c), so
that wake-up decided single-reader ``open()`` throughput.

This loop reads ``/dev/fuse`` non-blocking and, after each request, keeps polling for a short
window (``spin_us``) before it blocks in ``poll(2)``: a reader that opens file after file finds
the daemon awake. It is the same trade the guest kernel's halt polling makes
(Documentation/virt/guest-halt-polling.rst): a bounded window of CPU after activity, nothing
while idle. With ``spin_us=0`` a single process keeps libfuse's own loop; with per-CPU worker
processes (:mod:`blobfs.fuse.cpuworkers`, the default) this loop runs in each of them, forks
them once FUSE_INIT is answered, and watches them through pidfds in its poll set.

Requests are decoded and answered by libfuse exactly as in its own loop
(``fuse_session_receive_buf`` + ``fuse_session_process_buf``, both public since libfuse 3.0);
only the waiting differs. Signals: libfuse's handlers set the session's exit flag and, as they
are installed without ``SA_RESTART``, interrupt ``poll(2)`` with ``EINTR``; ``poll`` is called
through ctypes so Python's PEP 475 retry does not swallow that.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import select
import time
from typing import Any, Callable

from blobfs.fuse.cpuworkers import WorkerLost, Workers
from blobfs.fuse.lowlevel_abi import FuseBuf

log = logging.getLogger(__name__)


class _PollFd(ctypes.Structure):
    """``struct pollfd``."""

    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


_POLL_MS = 1000


def available(api: Any) -> bool:
    """Whether the loaded libfuse exports what this loop calls (every 3.x does)."""
    return None not in (api.fuse_session_receive_buf, api.fuse_session_process_buf,
                        api.fuse_session_exited, api.fuse_session_fd)


def _poll_set(fd: int, workers: Workers | None) -> Any:
    """``/dev/fuse`` and the pidfd of every live worker, as a ``struct pollfd`` array."""
    fds = [fd, *(workers.pidfds if workers is not None else ())]
    return (_PollFd * len(fds))(*(_PollFd(f, select.POLLIN, 0) for f in fds))


class Waiter:
    """Sleeps until ``/dev/fuse`` is readable, a worker exits or a signal arrives, and reaps
    exited workers. ``poll`` is called through ctypes: libfuse's signal handlers are installed
    without SA_RESTART, so a signal ends it with EINTR, which PEP 475 would retry. The timeout
    is for a signal that lands between the caller's exit check and the call: it sets libfuse's
    exit flag but interrupts nothing, so the caller looks again after a second."""

    def __init__(self, fd: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._poll = libc.poll
        self._poll.restype = ctypes.c_int
        self._poll.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int]
        self._fd = fd
        self.workers: Workers | None = None
        self._pfds = _poll_set(fd, None)

    def watch(self, workers: Workers | None) -> None:
        self.workers = workers
        self._pfds = _poll_set(self._fd, workers)

    def wait(self) -> str:
        """Wait once; "" or one line naming the workers that died abnormally."""
        pfds = self._pfds
        self._poll(pfds, len(pfds), _POLL_MS)
        if self.workers is None or not any(p.revents for p in pfds[1:]):
            return ""
        dead = self.workers.reap()
        self._pfds = _poll_set(self._fd, self.workers)
        return "; ".join(f"worker process {pid} {how}" for pid, how in dead)


def serve(api: Any, se: int, spin_us: int,
          fork_workers: Callable[[], Workers | None] | None = None) -> int:
    """Serve the session until it exits; 0 on a normal end, else an errno value. ``api``: the
    :class:`blobfs.fuse.lowlevel_abi.Prototypes` of the loaded libfuse. ``fork_workers`` is
    called once FUSE_INIT is answered (the first request; the kernel sends nothing else
    before it), so every worker starts with libfuse's negotiated session state."""
    receive, process = api.fuse_session_receive_buf, api.fuse_session_process_buf
    exited, session_fd = api.fuse_session_exited, api.fuse_session_fd
    libc = ctypes.CDLL(None, use_errno=True)
    libc.free.argtypes = [ctypes.c_void_p]

    fd = session_fd(se)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    buf = FuseBuf()
    pbuf = ctypes.byref(buf)
    workers: Workers | None = None
    waiter = Waiter(fd)
    window = spin_us * 1000
    clock = time.monotonic_ns
    again, intr = -errno.EAGAIN, -errno.EINTR
    status = 0
    lost, failed = "", False
    last = clock()
    try:
        while not exited(se):
            res = receive(se, pbuf)
            if res > 0:
                process(se, pbuf)
                last = clock()
                if fork_workers is not None:
                    workers, fork_workers = fork_workers(), None
                    waiter.watch(workers)
            elif res == again:
                if clock() - last >= window:
                    lost = waiter.wait()  # EINTR from a signal: the loop re-checks the exit flag
                    last = clock()
                    if lost:
                        break
            elif res == intr:
                continue
            else:  # 0: unmounted or the connection aborted (libfuse has set the exit flag)
                status = -res if res < 0 else 0
                break
    except BaseException:
        failed = True
        if workers is not None and not workers.is_main:
            log.exception("worker process %d failed", os.getpid())  # os._exit below: say it now
        raise
    finally:
        if workers is not None:
            status = workers.finish(status, failed)  # a worker process ends here
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        if buf.mem:
            libc.free(buf.mem)
    if lost:
        raise WorkerLost(lost)
    return status


__all__ = ["Waiter", "available", "serve"]
