"""Faults while mounted (issue #5), beyond those in test_mount_lifecycle.py.

Already covered there (not repeated): SIGKILL (foreground) then ``blobfs umount`` then a fresh
mount; SIGTERM/SIGINT with a reader holding a file open; busy ``umount`` then ``--lazy``;
missing, non-empty, file or inside-the-source mount points; mounting the same point twice; a
tar truncated under the mount (items not read before: right bytes or EIO); a tar replaced by a
rename (the daemon keeps its descriptor to the old inode and serves the old bytes).

Here: a range cut in the middle (its prefix is served, its cut part is EIO), an item read
before the cut (page cache, or EIO once evicted; never other bytes), SIGTERM while many readers are busy,
SIGKILL of a background daemon.
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from blobfs.format.tarheaders import regular_members
from blobfs.fuse.umount import STALE_ERRNOS
from mount_helpers import (BLOBFS, cleanup_mountpoint, daemon_pids, is_mounted, libfuse_params, main_daemon_pid,
                           mount_cmd, mounted, requires_fuse, wait_gone)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120), requires_fuse]


def _copy(blob_project: Path, dst: Path) -> Path:
    shutil.copytree(blob_project, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dst


def _drop_cache(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (just this file: dropping the whole system's
    cache would disturb everything else running here)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_range_cut_in_the_middle_is_eio_and_so_are_ranges_before_it(blob_project, tmp_path, libfuse):
    """The kernel reads whole pages (and reads ahead), so even a read of the first bytes of a
    partly cut item asks the daemon for bytes past the cut: EIO, never a short or zero-filled
    page. Items that end before the cut are EIO too (a tar rewritten in place starts as a cut
    one, so its first bytes may be new ones); the daemon says once why."""
    proj = _copy(blob_project, tmp_path / "proj")
    tar = proj / "blob" / "more_images.tar"
    members = regular_members(tar)
    cut_item = members[6]  # never read before the cut
    mp = tmp_path / "mp"
    mp.mkdir()
    with mounted(proj, mp, libfuse=libfuse) as mnt:
        os.truncate(tar, cut_item.offset_data + cut_item.size // 2)
        fd = os.open(mnt.path("ds2/img/scan 06.jpg"), os.O_RDONLY)
        try:
            assert os.fstat(fd).st_size == cut_item.size  # the size was fixed at mount time
            for size, offset in ((100, 0), (cut_item.size, 0), (100, cut_item.size - 100)):
                with pytest.raises(OSError) as e:
                    os.pread(fd, size, offset)
                assert e.value.errno == errno.EIO
        finally:
            os.close(fd)
        with pytest.raises(OSError) as e:
            mnt.path("ds2/img/scan 05.png").read_bytes()  # ends before the cut
        assert e.value.errno == errno.EIO
        assert mnt.proc.poll() is None
        assert "Traceback" not in mnt.stderr() and "changed on disk since it was opened" in mnt.stderr()


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_item_read_before_the_cut_is_right_or_eio(blob_project, tmp_path, libfuse):
    proj = _copy(blob_project, tmp_path / "proj")
    tar = proj / "blob" / "more_images.tar"
    mp = tmp_path / "mp"
    mp.mkdir()
    members = regular_members(tar)
    data = tar.read_bytes()
    with mounted(proj, mp, libfuse=libfuse) as mnt:
        wants = {}
        for k in (9, 10, 11):
            m = members[k]
            p = mnt.path(f"ds2/img/{m.name.rsplit('/', 1)[-1]}")
            wants[p] = data[m.offset_data:m.offset_data + m.size]
            assert p.read_bytes() == wants[p]            # now in the page cache (kernel_cache)
        os.truncate(tar, members[9].offset_data)         # all three ranges are gone
        for p, want in wants.items():
            try:
                got = p.read_bytes()
            except OSError as e:
                assert e.errno == errno.EIO
            else:
                assert got == want                       # from the page cache: the right bytes
        for p in wants:
            _drop_cache(p)
            with pytest.raises(OSError) as e:            # uncached: the daemon reads, EIO
                p.read_bytes()
            assert e.value.errno == errno.EIO
        assert mnt.proc.poll() is None


def _reader_loop(root: str, paths: list[str], wants: dict[str, str], stop_at: float, q) -> None:
    """Read until the mount goes away; report ("ok", n) or ("bad", path) or ("err", errno)."""
    n = 0
    while time.monotonic() < stop_at:
        for rel in paths:
            try:
                with open(os.path.join(root, rel), "rb") as f:
                    got = f.read()
            except OSError as e:
                q.put(("err", e.errno))
                return
            if hashlib.sha256(got).hexdigest() != wants[rel]:  # an unmount gives an error, not bytes
                q.put(("bad", rel))
                return
            n += 1
    q.put(("ok", n))


@pytest.mark.parametrize("libfuse", libfuse_params())
@pytest.mark.parametrize("threads", [False, True], ids=["single", "multithreaded"])
def test_sigterm_while_readers_are_busy(blob_project, fixtures_dir, tmp_path, libfuse, threads):
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())["files"]
    wants = {rel: w["sha256"] for rel, w in expected.items() if rel.startswith("ds1/img/")}
    paths = sorted(wants)
    args = ("-o", "threads") if threads else ()
    ctx = multiprocessing.get_context("spawn")
    with mounted(blob_project, tmp_path, libfuse=libfuse, args=args) as m:
        q = ctx.Queue()
        stop_at = time.monotonic() + 30
        procs = [ctx.Process(target=_reader_loop, args=(str(tmp_path), paths[i::4], wants, stop_at, q))
                 for i in range(4)]
        tq: "multiprocessing.Queue" = ctx.Queue()
        thr = [threading.Thread(target=_reader_loop, args=(str(tmp_path), paths[i::2], wants, stop_at, tq))
               for i in range(2)]
        for p in procs:
            p.start()
        for t in thr:
            t.start()
        time.sleep(1.0)  # everyone is mid-loop
        assert m.stop(signal.SIGTERM) == 0
        assert not is_mounted(tmp_path)
        for p in procs:
            p.join(20)
            assert p.exitcode == 0, "a reader hung or crashed"
        for t in thr:
            t.join(20)
            assert not t.is_alive()
        results = [q.get(timeout=5) for _ in procs] + [tq.get(timeout=5) for _ in thr]
        assert not [r for r in results if r[0] == "bad"], results
        # after the unmount a reader sees the empty directory (ENOENT) or a dead connection
        assert all(r[0] == "err" and r[1] in (errno.ENOENT, errno.EIO, *STALE_ERRNOS) for r in results), results
        assert "Traceback" not in m.stderr()


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_sigkill_of_a_background_daemon_then_umount_then_mount(blob_project, tmp_path, libfuse):
    def blobfs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*BLOBFS, *args], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    with cleanup_mountpoint(tmp_path):
        r = subprocess.run(mount_cmd(blob_project, tmp_path, libfuse=libfuse), capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pids = daemon_pids(tmp_path)
        assert pids
        # the per-CPU workers die with the main process (PR_SET_PDEATHSIG)
        os.kill(main_daemon_pid(pids), signal.SIGKILL)
        assert wait_gone(pids)
        with pytest.raises(OSError) as e:
            os.listdir(tmp_path)
        assert e.value.errno in STALE_ERRNOS  # ENOTCONN; ECONNABORTED or ECANCELED mid-teardown of io_uring queues
        r = blobfs("umount", str(tmp_path))
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert not is_mounted(tmp_path) and os.listdir(tmp_path) == []
        r = subprocess.run(mount_cmd(blob_project, tmp_path, libfuse=libfuse), capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(tmp_path)) == ["ds1", "ds2", "meta.json"]
        r = blobfs("umount", str(tmp_path))
        assert r.returncode == 0, r.stderr
        assert wait_gone(daemon_pids(tmp_path) or pids)
