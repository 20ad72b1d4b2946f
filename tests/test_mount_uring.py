"""FUSE over io_uring (``-o uring``): the protocol answers (no FUSE), and real mounts.

Every mount test of the suite also runs with ``-o uring`` (``mount_helpers.LIBFUSE_VERSIONS``);
these cover what is particular to it.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import struct
import termios
import time
from pathlib import Path

import pytest

from blobfs.fuse import uring, wire
from blobfs.fuse.uring import ENABLE as ENABLE_URING
from blobfs.fuse.cpuworkers import cpu_groups
from blobfs.fuse.nodes import ROOT_ID, NodeTable
from blobfs.fuse.uringsession import _serve_queues, queue_plan
from blobfs.model.opening import open_project
from mount_helpers import (Libfuse, kill_worker_and_expect_unmount, libfuse_available, mounted, read_expected,
                           requires_fuse, uring_unavailable, wait_for_daemon_processes, wait_gone)

URING = Libfuse(3, "uring")


# -- the protocol, without a mount -------------------------------------------------------------
def _init_msg(*, major: int = 7, opcode: int = wire.INIT, flags2: int = wire.FUSE_OVER_IO_URING >> 32) -> bytes:
    flags = wire.FUSE_ASYNC_READ | wire.FUSE_MAX_PAGES | wire.FUSE_INIT_EXT | (1 << 3)
    body = struct.pack("<IIIII", major, 45, 131072, flags, flags2) + bytes(44)
    return wire.IN_HEADER.pack(40 + len(body), opcode, 99, 0, 0, 0, 0, 0, 0) + body


def _reply(raw: bytes) -> tuple[int, int, bytes]:
    length, err, unique = wire.OUT_HEADER.unpack_from(raw)
    assert length == len(raw)
    return err, unique, raw[wire.OUT_HEADER.size:]


def test_init_agrees_to_io_uring_only_when_offered_and_asked():
    raw, agreed = wire.answer_init(_init_msg(), uring=True)
    err, unique, body = _reply(raw)
    assert (err, unique, agreed) == (0, 99, True)
    major, minor, readahead, flags = struct.unpack_from("<IIII", body)
    (flags2,) = struct.unpack_from("<I", body, 32)
    assert (major, minor, readahead) == (7, 45, 131072)
    assert flags & wire.FUSE_MAX_PAGES and not flags & (1 << 3)  # only what blobfs wants
    assert flags2 << 32 == wire.FUSE_OVER_IO_URING
    assert wire.answer_init(_init_msg(), uring=False)[1] is False
    assert wire.answer_init(_init_msg(flags2=0), uring=True)[1] is False  # kernel did not offer


@pytest.mark.parametrize("kw", [{"major": 8}, {"opcode": wire.LOOKUP}])
def test_init_refuses_what_it_cannot_speak(kw):
    with pytest.raises(wire.ProtocolError):
        wire.answer_init(_init_msg(**kw), uring=True)


@pytest.fixture()
def wfs(blob_project):
    project = open_project(blob_project)
    yield wire.WireFS(project.view, NodeTable(project.view.ids.item_path), 3600)
    project.close()


def _ask(wfs: wire.WireFS, opcode: int, nodeid: int, body: bytes = b"") -> tuple[int, bytes]:
    msg = wire.IN_HEADER.pack(40 + len(body), opcode, 7, nodeid, 0, 0, 0, 0, 0) + body
    out = wfs.handle_message(msg)
    assert out is not None
    err, unique, reply = _reply(out)
    assert unique == 7
    return err, reply


def _lookup(wfs: wire.WireFS, parent: int, name: str) -> tuple[int, int, int]:
    err, body = _ask(wfs, wire.LOOKUP, parent, name.encode() + b"\0")
    assert err == 0
    nodeid = struct.unpack_from("<Q", body)[0]
    size, mode = struct.unpack_from("<Q", body, 48)[0], struct.unpack_from("<I", body, 40 + 60)[0]
    return nodeid, size, mode


def test_wire_requests_answer_like_the_view(wfs, blob_project):
    view = wfs.view
    ds = next(name for name, mode in view.listdir("") if name != "meta.json")
    img = next(name for name, _ in view.listdir(f"{ds}/img"))
    ds_id, _, ds_mode = _lookup(wfs, ROOT_ID, ds)
    assert ds_mode >> 12 == 0o04
    img_dir, _, _ = _lookup(wfs, ds_id, "img")
    nid, size, mode = _lookup(wfs, img_dir, img)
    assert mode >> 12 == 0o10 and size == view.getattr(f"{ds}/img/{img}").size
    read_in = struct.pack("<QQIIQII", 0, 0, size + 100, 0, 0, 0, 0)
    err, data = _ask(wfs, wire.READ, nid, read_in)
    assert err == 0 and data == view.read_all(f"{ds}/img/{img}")
    err, attr = _ask(wfs, wire.GETATTR, nid, bytes(16))
    assert err == 0 and struct.unpack_from("<Q", attr, 16 + 8)[0] == size
    err, listing = _ask(wfs, wire.READDIR, img_dir, struct.pack("<QQIIQII", 0, 0, 65536, 0, 0, 0, 0))
    assert err == 0 and img.encode() in listing
    err, opened = _ask(wfs, wire.OPENDIR, img_dir, bytes(8))
    assert err == 0 and struct.unpack_from("<I", opened, 8)[0] == wire.FOPEN_CACHE_DIR | wire.FOPEN_KEEP_CACHE
    err, stfs = _ask(wfs, wire.STATFS, ROOT_ID)
    assert err == 0 and len(stfs) == 80


def test_wire_errors_are_errno_values(wfs):
    err, body = _ask(wfs, wire.LOOKUP, ROOT_ID, b"no such thing\0")
    assert err == 0 and struct.unpack_from("<Q", body)[0] == 0  # a cacheable negative entry
    assert _ask(wfs, wire.GETATTR, (9 << 56) | 1, bytes(16))[0] == -errno.ESTALE
    assert _ask(wfs, wire.OPEN, ROOT_ID, bytes(8))[0] == -errno.ENOSYS  # zero-message opens
    assert _ask(wfs, 39, ROOT_ID, bytes(32))[0] == -errno.ENOSYS  # IOCTL (isatty)
    assert _ask(wfs, 16, ROOT_ID, bytes(40))[0] == -errno.ENOSYS  # WRITE: never served
    forget = wire.IN_HEADER.pack(48, wire.FORGET, 8, ROOT_ID, 0, 0, 0, 0, 0) + struct.pack("<Q", 1)
    assert wfs.handle_message(forget) is None  # the kernel expects no reply


def test_a_refused_queue_leaves_the_requests_on_dev_fuse(wfs, caplog):
    # A real ring, whose REGISTER the kernel refuses (no FUSE device behind fd -1): the worker
    # returns with one warning instead of ending the mount; the main process keeps serving.
    with caplog.at_level("WARNING", logger="blobfs.fuse.uringsession"):
        _serve_queues(wfs, -1, [0], [])
    # (where io_uring itself is disabled, io_uring_setup fails first: the same fallback)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "requests stay on /dev/fuse" in caplog.text


def test_queue_plan_gives_every_possible_cpu_a_queue():
    assert queue_plan([{0}, {1}], [0, 1]) == [[0], [1]]
    # CPUs outside the daemon's affinity (offline or not allowed) still need a queue
    assert queue_plan([{0, 2}, {1}], [0, 1, 2, 3, 4, 5]) == [[0, 2, 3, 5], [1, 4]]
    assert queue_plan([{0}], [0, 1]) == [[0, 1]]


# -- mounted -----------------------------------------------------------------------------------
def _mount_test(f):
    why = None if libfuse_available(3) else "libfuse 3 not installed"
    why = why or uring_unavailable()
    for mark in reversed((pytest.mark.mount, pytest.mark.timeout(120), requires_fuse,
                          pytest.mark.skipif(why is not None, reason=why or ""))):
        f = mark(f)
    return f


@_mount_test
@pytest.mark.parametrize("workers", ["1", "2", "3"])
def test_uring_mount_serves_the_fixture(blob_project, fixtures_dir, tmp_path, workers):
    # 3 workers on 2 CPUs: two pinned to one CPU, each with a queue of its own; with 1, one
    # worker serves every CPU's queue.
    n = int(workers)
    with mounted(blob_project, tmp_path, libfuse=URING, args=("-o", f"workers={workers}")) as m:
        pids = wait_for_daemon_processes(m.mountpoint, n + 1)  # the main process reads /dev/fuse; n workers
        workers = [p for p in pids if p != m.proc.pid]
        deadline = time.monotonic() + 10  # a just-forked worker may not have settled yet
        while time.monotonic() < deadline:
            if all(os.sched_getscheduler(p) == os.SCHED_IDLE for p in workers):
                break
            time.sleep(0.05)
        # SCHED_IDLE keeps the woken reader on its CPU (see blobfs.fuse.uringsession)
        assert all(os.sched_getscheduler(p) == os.SCHED_IDLE for p in workers)
        assert os.sched_getscheduler(m.proc.pid) == os.SCHED_OTHER
        assert sorted(len(os.sched_getaffinity(p)) for p in workers) == sorted(len(g) for g in cpu_groups(n))
        for _ in range(2):
            assert read_expected(m.mountpoint, fixtures_dir) > 0
        with open(next(m.mountpoint.rglob("*.json")), "rb") as f:  # Python's open(): one IOCTL
            assert f.read(1) == b"{"
        assert m.stop(signal.SIGTERM) == 0
        assert wait_gone(pids)
        assert "FUSE over io_uring" in m.stderr()


@_mount_test
def test_uring_compiled_loop_answers_isatty(blob_project, tmp_path):
    # .ci/setup installs a C compiler, so the optional extension must have been built here
    assert uring.fast_loop() is not None, "blobfs/fuse/_uringloop.c was not built"
    with mounted(blob_project, tmp_path, libfuse=URING, args=("-o", "workers=1")) as m:
        path = next(m.mountpoint.rglob("*.json"))
        fd = os.open(path, os.O_RDONLY)
        try:
            assert [os.isatty(fd) for _ in range(25)] == [False] * 25  # ENOSYS reaches the caller as ENOTTY
            with pytest.raises(OSError) as e:
                fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8))
            assert e.value.errno == errno.ENOTTY
        finally:
            os.close(fd)
        with open(path, "rb") as f:  # the requests the compiled loop hands back still get answered
            assert f.read() == (blob_project / path.relative_to(m.mountpoint)).read_bytes()
        assert m.stop(signal.SIGTERM) == 0
        err = m.stderr()
    assert "every request answered in Python" not in err, err
    counts = [int(n) for n in re.findall(r"(\d+) ioctl requests answered by the compiled loop", err)]
    assert len(counts) == 1 and counts[0] >= 27, err


@_mount_test
def test_uring_pure_python_loop_on_request(blob_project, tmp_path):
    # $BLOBFS_PURE_PYTHON: the workers answer everything in Python, and the mount says so
    with mounted(blob_project, tmp_path, libfuse=URING, args=("-o", "workers=2"),
                 env={uring.PURE_PYTHON_ENV: "1"}) as m:
        path = next(m.mountpoint.rglob("*.json"))
        with open(path, "rb") as f:  # isatty(): the IOCTL, answered by the Python loop
            assert not f.isatty() and f.read() == (blob_project / path.relative_to(m.mountpoint)).read_bytes()
        assert m.stop(signal.SIGTERM) == 0
        err = m.stderr()
    assert "FUSE over io_uring, 2 worker processes, every request answered in Python" in err, err
    assert "answered by the compiled loop" not in err, err


@_mount_test
def test_uring_workers_ignore_sigterm_and_a_killed_one_ends_the_mount(blob_project, fixtures_dir, tmp_path):
    with mounted(blob_project, tmp_path, libfuse=URING, args=("-o", "workers=2"), expect_exit=None) as m:
        pids = wait_for_daemon_processes(m.mountpoint, 3)
        worker = next(p for p in pids if p != m.proc.pid)
        # Its CPU's queue would be left without a server: a worker leaves only with the mount.
        os.kill(worker, signal.SIGTERM)
        time.sleep(0.3)
        assert read_expected(m.mountpoint, fixtures_dir) > 0
        assert m.proc.poll() is None and os.path.exists(f"/proc/{worker}")
        kill_worker_and_expect_unmount(m, worker)


@_mount_test
@pytest.mark.skipif(os.geteuid() != 0, reason="turning io_uring off needs root")
@pytest.mark.parametrize("switch,off", [(ENABLE_URING, "N"), (Path("/proc/sys/kernel/io_uring_disabled"), "2")])
def test_uring_falls_back_to_dev_fuse_when_the_kernel_has_it_off(blob_project, fixtures_dir, tmp_path, switch, off):
    if not switch.exists():
        pytest.skip(f"no {switch}")
    was = switch.read_text().strip()
    switch.write_text(off)
    try:
        with mounted(blob_project, tmp_path, libfuse=URING, args=("-o", "workers=2")) as m:
            assert read_expected(m.mountpoint, fixtures_dir) > 0
            err = m.stderr()
            assert "FUSE over io_uring unavailable" in err and f"{switch.name} is {off}" in err, err
            assert "FUSE over io_uring," not in err
    finally:
        switch.write_text(was)


@_mount_test
@pytest.mark.skipif(os.geteuid() != 0, reason="turning io_uring off needs root")
@pytest.mark.parametrize("enable", ["Y", "N"])
def test_by_default_io_uring_is_used_whenever_the_kernel_offers_it(blob_project, fixtures_dir, tmp_path, enable):
    was = ENABLE_URING.read_text().strip()
    ENABLE_URING.write_text(enable)
    try:  # the low-level driver named, without uring or nouring
        with mounted(blob_project, tmp_path, libfuse=Libfuse(3, "lowlevel"), args=("-o", "workers=2")) as m:
            assert read_expected(m.mountpoint, fixtures_dir) > 0
            err = m.stderr()
    finally:
        ENABLE_URING.write_text(was)
    assert ("FUSE over io_uring, 2 worker processes" in err) == (enable == "Y"), err
    assert "WARNING" not in err, err  # not asked for, so its absence is no warning
    if enable == "N":
        assert "2 worker processes, one per CPU group" in err, err


@_mount_test
def test_uring_debug_logs_every_request(blob_project, fixtures_dir, tmp_path):
    with mounted(blob_project, tmp_path, libfuse=URING, args=("-o", "workers=2,debug")) as m:
        path = next(m.mountpoint.rglob("*.json"))
        with open(path, "rb") as f:  # LOOKUPs, a READ, and isatty()'s IOCTL
            f.read()
        err = m.stderr()
    assert f"opcode {wire.READ}, nodeid" in err and f"opcode {wire.LOOKUP}, nodeid" in err, err
    assert f"opcode {wire.IOCTL}, nodeid" in err and f"error {-errno.ENOSYS}, 0 bytes" in err, err
