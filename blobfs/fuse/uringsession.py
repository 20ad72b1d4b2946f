"""Serving a mount through FUSE over io_uring (``-o uring``): per-CPU request queues.

libfuse still creates, mounts and unmounts the session and owns the signal handlers; from
FUSE_INIT on, blobfs speaks the protocol itself (:mod:`blobfs.fuse.wire`), because libfuse
3.14 cannot ask the kernel for io_uring. The layout:

* The main process answers FUSE_INIT on ``/dev/fuse``, agreeing to io_uring, then forks one
  worker per CPU group (:func:`blobfs.fuse.cpuworkers.plan`), each pinned to its group.
* Each worker registers one ring entry per CPU of its group with the kernel, one io_uring
  per worker. The kernel queues a request on the queue of the CPU its sender runs on and
  wakes only that queue's worker, which answers and waits for the next request in a single
  ``io_uring_enter`` (COMMIT_AND_FETCH). Every possible CPU needs a queue before the kernel
  switches over (fs/fuse/dev_uring.c ``is_ring_ready``), so CPUs outside this process's
  affinity are dealt to the groups too.
* The main process keeps reading ``/dev/fuse``: FORGET and INTERRUPT always come that way
  (``fuse_io_uring_ops``), and so does anything sent before the last queue registered. It
  watches the workers through pidfds as :mod:`blobfs.fuse.pollloop` does.
* Workers run SCHED_IDLE. A reply wakes the reader while the worker still runs on the
  reader's CPU; the scheduler then moves the reader to the other CPU if that one is idle
  (kernel/sched/fair.c ``select_idle_sibling``), and every such move wakes a halted vCPU
  through the hypervisor. A CPU that runs only SCHED_IDLE tasks counts as idle
  (``sched_idle_cpu``), so the reader stays. Measured (one Python ``open()`` reader, 20,000
  files, warm): SCHED_BATCH workers 10-14k files/s with 8,000-12,000 migrations, SCHED_IDLE
  42k with 4; with a CPU-bound process on each CPU, 27k against 28k for the /dev/fuse
  workers. (The /dev/fuse workers do not need it: each request wakes every worker, so the
  other CPU is rarely idle when the reply comes.)
* Workers ignore SIGTERM/SIGINT/SIGHUP: a queue whose worker left would hold its CPU's
  requests forever, so only the main process ends the session; it stops the workers with
  SIGUSR1. A worker killed any other way ends the session (:class:`cpuworkers.WorkerLost`).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import struct
from pathlib import Path
from typing import Any

from blobfs.fuse import cpuworkers, uring, wire
from blobfs.fuse.nodelog import NodeLog
from blobfs.fuse.pollloop import Waiter

log = logging.getLogger(__name__)

_READ_SIZE = wire.MAX_PAYLOAD + 4096
_STOP = signal.SIGUSR1


def possible_cpus() -> list[int]:
    """The kernel's possible CPUs (one FUSE queue each)."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return sorted(os.sched_getaffinity(0))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def queue_plan(groups: list[set[int]], possible: list[int]) -> list[list[int]]:
    """The queue ids (CPUs) each group's worker registers: its own CPUs, plus the possible
    CPUs no group runs on, dealt round-robin."""
    plan = [sorted(g) for g in groups]
    owned = set().union(*groups)
    for j, cpu in enumerate(c for c in possible if c not in owned):
        plan[j % len(plan)].append(cpu)
    return plan


def serve(fs: Any, api: Any, se: int, groups: list[set[int]], debug: bool = False) -> int:
    """Serve the session (see the module docstring); 0 on a normal end, else an errno value.
    ``fs``: the :class:`blobfs.fuse.lowlevel.LowLevelFS` whose view, nodes and init hook to use;
    ``debug``: log every request and its answer (``-o debug``; libfuse sees none of them here)."""
    fd = api.fuse_session_fd(se)
    msg = _read_init(fd, api, se)
    if msg is None:
        return 0
    reply, agreed = wire.answer_init(msg, uring=True)
    fs.initialized()
    os.write(fd, reply)
    wfs = wire.WireFS(fs.view, fs.nodes, fs.timeout)
    workers: cpuworkers.Workers | None = None
    if agreed:
        queues = queue_plan(groups, possible_cpus())
        nodelog = NodeLog(len(groups) + 1)
        fs.nodes.share(nodelog)
        try:
            workers = cpuworkers.fork(groups, nodelog.become, serve_in_main=False, stop_signal=_STOP,
                                      policy=os.SCHED_IDLE)
        except (RuntimeError, OSError) as e:  # no queue registers, so requests stay on /dev/fuse
            log.warning("serving from one process: %s", e)
        else:
            if not workers.is_main:
                _worker(wfs, fd, queues[workers.index - 1], debug)  # never returns
    else:
        log.warning("the kernel did not agree to FUSE over io_uring; serving from one process")
    return _main_loop(wfs, fd, api, se, workers, debug)


def _read_init(fd: int, api: Any, se: int) -> bytes | None:
    while not api.fuse_session_exited(se):
        try:
            return os.read(fd, _READ_SIZE)
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
    return None


def _main_loop(wfs: wire.WireFS, fd: int, api: Any, se: int, workers: cpuworkers.Workers | None,
               debug: bool) -> int:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    waiter = Waiter(fd)
    waiter.watch(workers)
    status, lost, failed = 0, "", False
    try:
        while not api.fuse_session_exited(se):
            try:
                msg = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                lost = waiter.wait()  # EINTR from a signal: the loop re-checks the exit flag
                if lost:
                    break
                continue
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                if e.errno != errno.ENODEV:
                    status = e.errno or errno.EIO
                break  # ENODEV: unmounted
            out = wfs.handle_message(msg)
            if debug:
                _log_request(msg, out)
            if out is not None:
                _write(fd, out)
    except BaseException:
        failed = True
        raise
    finally:
        if workers is not None:
            status = workers.finish(status, failed)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    if lost:
        raise cpuworkers.WorkerLost(lost)
    return status


def _log_request(request: Any, reply: Any) -> None:
    """``-o debug``: one line per request, from the request and reply as on ``/dev/fuse``."""
    _, opcode, unique, nodeid, *_ = wire.IN_HEADER.unpack_from(request)
    if reply is None:
        _log_answer(unique, opcode, nodeid, None)
    else:
        length, err, _ = wire.OUT_HEADER.unpack_from(reply)
        _log_answer(unique, opcode, nodeid, (err, length - wire.OUT_HEADER.size))


def _log_answer(unique: int, opcode: int, nodeid: int, answer: tuple[int, int] | None) -> None:
    if answer is None:
        log.debug("unique %d, opcode %d, nodeid %#x: no reply", unique, opcode, nodeid)
    else:
        log.debug("unique %d, opcode %d, nodeid %#x: error %d, %d bytes", unique, opcode, nodeid, *answer)


def _write(fd: int, reply: bytes) -> None:
    try:
        os.write(fd, reply)
    except OSError as e:
        if e.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
            raise


def _worker(wfs: wire.WireFS, fd: int, qids: list[int], debug: bool) -> None:
    """A worker's life: serve its queues until unmounted or told to stop, then ``os._exit``."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(_STOP, lambda *_: stop.append(True))
    code = 0
    try:
        _serve_queues(wfs, fd, qids, stop, debug)
    except BaseException:
        log.exception("worker process %d failed", os.getpid())
        code = 1
    finally:
        os._exit(code)


def _serve_queues(wfs: wire.WireFS, fd: int, qids: list[int], stop: list[bool], debug: bool = False) -> None:
    try:
        # One entry per queue: four did no better for 8 readers (0.9x with the Python loop,
        # 1.0x with the compiled one).
        entries = [uring.Entry(qid, wire.MAX_PAYLOAD) for qid in qids]
        ring = uring.Ring(fd, entries, fast=uring.compiled_loop(debug))
    except OSError as e:
        # e.g. a seccomp filter that refuses io_uring_setup. The kernel switches to the rings
        # only once every CPU's queue has registered, so until then every request still comes
        # through /dev/fuse, which the main process serves: slower, but the mount works.
        log.warning("worker process %d: cannot set up io_uring (%s); requests stay on /dev/fuse", os.getpid(), e)
        return
    for k in range(len(entries)):
        ring.register(k)
    try:
        _serve_ring(wfs, ring, stop, debug)
    finally:
        if ring.answered_in_c:
            log.info("worker process %d: %d ioctl requests answered by the compiled loop", os.getpid(),
                     ring.answered_in_c)


def _serve_ring(wfs: wire.WireFS, ring: uring.Ring, stop: list[bool], debug: bool) -> None:
    # The loop below runs once per request; names are bound locally on purpose.
    entries, commit_ids = ring.entries, ring.commit_ids
    unpack_req, pack_out, out_size = uring.REQUEST.unpack_from, wire.OUT_HEADER.pack_into, wire.OUT_HEADER.size
    pack_size, size_at = struct.Struct("<I").pack_into, uring.REPLY_SIZE_AT
    handle, enosys, ioctl = wfs.handle, (-errno.ENOSYS, b""), wire.IOCTL
    reap, commit = ring.reap, ring.commit
    while not stop:
        for k, res in reap():  # empty after a signal: look at ``stop`` again
            entry = entries[k]
            if res < 0:
                registered = commit_ids[k] != 0  # a request came, so REGISTER was taken
                if res in (-errno.EINTR, -errno.EAGAIN):  # resubmit what came back
                    if registered:
                        commit(k, commit_ids[k])
                    else:
                        ring.register(k)
                    continue
                if res in (-errno.ENOTCONN, -errno.ECONNABORTED, -errno.ENODEV):
                    return  # unmounted: the kernel tore the queues down
                if not registered:  # as above: the rings never take over
                    log.warning("worker process %d: the kernel refused a FUSE queue (%s); requests stay on "
                                "/dev/fuse", os.getpid(), os.strerror(-res))
                    return
                raise OSError(-res, f"FUSE io_uring command: {os.strerror(-res)}")
            header = entry.header
            _, opcode, unique, nodeid, _, _, _, _, _, commit_id, size = unpack_req(header)
            # isatty() from every Python open(): answered without a call (by the compiled loop
            # when it is built)
            reply = enosys if opcode == ioctl else handle(opcode, nodeid, entry.op_in, entry.payload_view[:size])
            err, body = reply if reply is not None else (0, b"")
            n = len(body)
            if n:
                entry.payload[:n] = body
            pack_out(header, 0, out_size + n, err, unique)
            pack_size(header, size_at, n)
            if debug:
                _log_answer(unique, opcode, nodeid, (err, n))
            commit(k, commit_id)


__all__ = ["possible_cpus", "queue_plan", "serve"]
