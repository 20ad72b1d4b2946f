"""Per-CPU worker processes of the low-level driver (blobfs.fuse.cpuworkers, blobfs.fuse.nodelog)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from blobfs.fuse.cpuworkers import cpu_groups
from blobfs.fuse.nodelog import BASE, NodeLog
from blobfs.fuse.nodes import ROOT_ID, NodeTable
from blobfs.model.opening import open_project
from mount_helpers import (Libfuse, is_mounted, kill_worker_and_expect_unmount, libfuse_available, main_daemon_pid,
                           mounted, read_expected, requires_fuse, wait_for_daemon_processes, wait_gone)

needs_fuse3 = pytest.mark.skipif(not libfuse_available(3), reason="libfuse 3 not installed")
LOWLEVEL = Libfuse(3)


# -- node ids every worker can resolve (no FUSE) ----------------------------------------------
def test_node_log_ids_resolve_in_every_worker():
    log = NodeLog(2)
    a = log.ref("ds1/ann")
    assert log.ref("ds1/ann") == a  # this worker hands out one id per path
    assert a >= BASE and a != ROOT_ID
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # worker 1: hands out ids of its own, resolves worker 0's
        try:
            log.become(1)
            b = log.ref("ds1/ann/x \udcff.json")  # undecodable bytes survive
            ok = log.path(a) == "ds1/ann" and b != a
            os.write(w, f"{int(ok)} {b}".encode())
        finally:
            os._exit(0)
    os.close(w)
    ok, b = os.read(r, 100).decode().split()
    os.close(r)
    os.waitpid(pid, 0)
    assert ok == "1"
    assert log.path(int(b)) == "ds1/ann/x \udcff.json"  # written by the other process
    assert log.path(BASE + (7 << 40)) is None  # no such worker
    assert log.path(a + 10_000) is None  # past the end of worker 0's records


def test_node_log_resolves_past_its_cache():
    log = NodeLog(1)
    ids = {log.ref(f"meta/{i}.json"): f"meta/{i}.json" for i in range(10_000)}
    assert len(set(ids)) == len(ids)
    assert all(log.path(nid) == path for nid, path in ids.items())


def test_shared_node_table_keeps_images_out_of_the_log():
    items = {(2 << 56) | 5: "ds/img/a.png"}
    t = NodeTable(items.get)
    t.share(NodeLog(2))
    assert t.ref("ds/img/a.png", (2 << 56) | 5) == (2 << 56) | 5
    nid = t.ref("ds/ann/a.png.json", 1234)
    assert nid >= BASE and t.path(nid) == "ds/ann/a.png.json"
    t.forget(nid, 1)  # not counted across workers: the record stays
    assert t.path(nid) == "ds/ann/a.png.json"
    assert t.path(ROOT_ID) == ""


def test_item_json_files_write_no_node_log_record(blob_project):
    view = open_project(blob_project).view
    t = NodeTable(view.ids.node_path, view.ids.item_json_node)
    log = NodeLog(2)
    t.share(log)
    size = lambda: sum(os.fstat(fd).st_size for fd in log._fds)  # noqa: E731
    n = 0
    for rel, _dirs, files in view.walk():
        if rel.rpartition("/")[2] in ("ann", "img_info", "meta"):
            for name in files:
                path = f"{rel}/{name}"
                assert t.path(t.ref(path, view.getattr(path).ino)) == path
                n += 1
    assert n > 0 and size() == 0
    folder = t.ref("ds1/img_info", view.getattr("ds1/img_info").ino)  # anything else: a record
    assert size() > 0 and t.path(folder) == "ds1/img_info"


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_cpu_groups_cover_every_cpu(n):
    cpus = os.sched_getaffinity(0)
    groups = cpu_groups(n)
    assert len(groups) == n
    assert set().union(*groups) == cpus if n <= len(cpus) else all(len(g) == 1 for g in groups)
    if n <= len(cpus):
        assert sum(len(g) for g in groups) == len(cpus)  # each CPU in exactly one group


# -- mounted ----------------------------------------------------------------------------------
def _mount_test(f):
    """A test that mounts through the low-level driver (which alone has workers)."""
    for mark in reversed((pytest.mark.mount, pytest.mark.timeout(120), requires_fuse, needs_fuse3)):
        f = mark(f)
    return f


def _allowed_cpus(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("Cpus_allowed_list"))


def _cpu_list(cpus: set[int]) -> str:
    """A CPU set the way /proc/PID/status prints it: "0-3,8"."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


@_mount_test
@pytest.mark.parametrize("workers,spin", [("1", "50"), ("2", "0"), ("2", "50"), ("4", "0")])
def test_workers_serve_the_fixture_and_stop_together(blob_project, fixtures_dir, tmp_path, workers, spin):
    # 4 workers on a 2-CPU machine: two per CPU, so nodes looked up by one worker are
    # resolved by another (the node log), whichever worker reads each request.
    n = int(workers)
    with mounted(blob_project, tmp_path, libfuse=LOWLEVEL, args=("-o", f"workers={workers},spin_us={spin}")) as m:
        pids = wait_for_daemon_processes(m.mountpoint, n)
        main = main_daemon_pid(pids)
        groups = cpu_groups(n)
        if n > 1:  # every process pinned to its own group, SCHED_BATCH (a worker does both
            # right after its fork, so a just-forked one may not have yet)
            want = sorted(_cpu_list(g) for g in groups)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                settled = (sorted(_allowed_cpus(p) for p in pids) == want
                           and all(os.sched_getscheduler(p) == os.SCHED_BATCH for p in pids))
                if settled:
                    break
                time.sleep(0.05)
            assert sorted(_allowed_cpus(p) for p in pids) == want
            assert all(os.sched_getscheduler(p) == os.SCHED_BATCH for p in pids)
        for _ in range(2):  # the second pass reads through cached dentries
            assert read_expected(m.mountpoint, fixtures_dir) > 0
        assert m.stop(signal.SIGTERM) == 0
        assert wait_gone(pids)
        assert not is_mounted(tmp_path)
        assert "Traceback" not in m.stderr()
        assert main == m.proc.pid


@_mount_test
def test_a_killed_worker_ends_the_mount_with_an_error(blob_project, tmp_path):
    with mounted(blob_project, tmp_path, libfuse=LOWLEVEL, args=("-o", "workers=2,spin_us=0"),
                 expect_exit=None) as m:
        pids = wait_for_daemon_processes(m.mountpoint, 2)
        worker = next(p for p in pids if p != m.proc.pid)
        kill_worker_and_expect_unmount(m, worker)


@_mount_test
def test_a_worker_stopped_cleanly_leaves_the_mount_serving(blob_project, fixtures_dir, tmp_path):
    with mounted(blob_project, tmp_path, libfuse=LOWLEVEL, args=("-o", "workers=2,spin_us=0")) as m:
        pids = wait_for_daemon_processes(m.mountpoint, 2)
        worker = next(p for p in pids if p != m.proc.pid)
        os.kill(worker, signal.SIGTERM)  # it finishes the request it holds, then exits 0
        assert wait_gone([worker])
        assert read_expected(m.mountpoint, fixtures_dir) > 0
        assert m.proc.poll() is None
