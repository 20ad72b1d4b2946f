"""The source changed under a running mount: each read gives the bytes the mount promised at
mount time or EIO (with one log line), never other bytes, and the daemon lives on.

README ("unmount before changing it") asks users not to do this; these tests pin what happens
when they do anyway: a tar truncated, written over in place, or replaced by rename.
"""
from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import pytest

from mount_helpers import Mount, daemon_pids, libfuse_params, mounted, requires_fuse

pytestmark = [pytest.mark.mount, pytest.mark.timeout(90), requires_fuse]
CHANGED = "changed on disk since it was opened"


def _copy_to_change(blob_project: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the SDK project, for the test to change under its mount, and a mount point."""
    proj = shutil.copytree(blob_project, tmp_path / "proj")
    (tmp_path / "mp").mkdir()
    return proj, tmp_path / "mp"


def _expected(fixtures_dir: Path, tar: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(files of the mount whose bytes come from ``tar``, every other file of the mount)."""
    files = json.loads((fixtures_dir / "expected_mount.json").read_text())["files"]
    mine = {rel: w for rel, w in files.items() if w["source"] == f"blob:{tar}"}
    return mine, {rel: w for rel, w in files.items() if rel not in mine}


def _read_all(m: Mount, files: dict[str, dict]) -> tuple[int, int]:
    """Read each file once: (how many gave the expected bytes, how many EIO); anything else
    (other bytes, another errno) fails the test."""
    good = eio = 0
    for rel, want in files.items():
        try:
            data = m.path(rel).read_bytes()
        except OSError as e:
            assert e.errno == errno.EIO, (rel, e)
            eio += 1
            continue
        assert hashlib.sha256(data).hexdigest() == want["sha256"], f"{rel}: wrong bytes"
        good += 1
    return good, eio


def _said_once(m: Mount, tar: Path) -> None:
    """The daemon said it once per process (its per-CPU workers each serve reads), not per read."""
    lines = [ln for ln in m.stderr().splitlines() if CHANGED in ln]
    assert lines and all(str(tar) in ln for ln in lines), m.stderr()
    assert len(lines) <= len(daemon_pids(m.mountpoint)), lines


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_tar_written_over_in_place_gives_eio_not_its_new_bytes(blob_project, tmp_path, fixtures_dir, libfuse):
    """`dd conv=notrunc` (or a tool rewriting the tar in place) keeps the daemon's descriptor:
    pread then returned the new bytes under the old ranges, as if they were the images."""
    proj, mp = _copy_to_change(blob_project, tmp_path)
    mine, others = _expected(fixtures_dir, "small_images.tar")
    tar = proj / "blob" / "small_images.tar"
    with tarfile.open(tar) as t:
        members = [mb for mb in t.getmembers() if mb.isfile()]
    with mounted(proj, mp, libfuse=libfuse) as m:
        with open(tar, "r+b") as f:  # every member's data, same size, other bytes
            for mb in members:
                f.seek(mb.offset_data)
                old = f.read(mb.size)
                f.seek(mb.offset_data)
                f.write(bytes(b ^ 0x5A for b in old))
        good, eio = _read_all(m, mine)
        assert eio == len(mine) and good == 0  # nothing was cached: every read reached the tar
        _said_once(m, tar)
        assert _read_all(m, others) == (len(others), 0)  # the other tar and ann/ are unaffected
        assert m.proc.poll() is None


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_tar_truncated_under_the_mount_gives_eio(blob_project, tmp_path, fixtures_dir, libfuse):
    """Even the members still inside the cut tar fail: a truncate is how a rewrite in place
    (`tar cf` of the same name) starts, so what is left may already be other bytes."""
    proj, mp = _copy_to_change(blob_project, tmp_path)
    mine, others = _expected(fixtures_dir, "small_images.tar")
    with mounted(proj, mp, libfuse=libfuse) as m:
        tar = proj / "blob" / "small_images.tar"
        os.truncate(tar, tar.stat().st_size // 2)
        assert _read_all(m, mine) == (0, len(mine))
        _said_once(m, tar)
        assert _read_all(m, others) == (len(others), 0)
        assert m.proc.poll() is None  # the daemon survives


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_tar_replaced_under_the_mount_keeps_serving_the_opened_one(blob_project, tmp_path, fixtures_dir, libfuse):
    proj, mp = _copy_to_change(blob_project, tmp_path)
    mine, _ = _expected(fixtures_dir, "more_images.tar")
    with mounted(proj, mp, libfuse=libfuse) as m:
        tar = proj / "blob" / "more_images.tar"
        junk = tar.with_suffix(".new")
        junk.write_bytes(b"\xff" * tar.stat().st_size)
        os.replace(junk, tar)  # the daemon holds an fd to the old inode
        assert _read_all(m, mine) == (len(mine), 0)
        assert CHANGED not in m.stderr()


@pytest.mark.parametrize("libfuse", libfuse_params())
@pytest.mark.parametrize("grow", [True, False])
def test_img_file_written_over_with_another_size_gives_eio(blob_project, tmp_path, libfuse, grow):
    """An item kept as a file in img/ (not in a tar) keeps the size seen at mount in the view:
    written over with more bytes it read as the new bytes cut at that size, a broken image."""
    proj, mp = _copy_to_change(blob_project, tmp_path)
    disk = proj / "ds1" / "img" / "photo_b.jpeg"
    os.chmod(disk, 0o644)
    old = disk.read_bytes()
    with mounted(proj, mp, libfuse=libfuse) as m:
        assert os.stat(m.path("ds1/img/photo_b.jpeg")).st_size == len(old)
        disk.write_bytes(b"\xff\xd8" + b"x" * (2 * len(old) if grow else len(old) // 2))
        with pytest.raises(OSError) as e:
            m.path("ds1/img/photo_b.jpeg").read_bytes()
        assert e.value.errno == errno.EIO
        assert "photo_b.jpeg" in m.stderr() and CHANGED in m.stderr()
        assert m.path("ds1/img/photo_a.png").read_bytes() == (proj / "ds1/img/photo_a.png").read_bytes()
        assert m.proc.poll() is None


# -- entries swapped under the mount ---------------------------------------------------------
def _read_with_timeout(path: Path, fifo: Path | None = None, timeout: float = 10) -> bytes | OSError:
    """Read ``path`` in a thread; a read still blocked after ``timeout`` is released (by a writer
    opening ``fifo``) and fails the test instead of hanging it."""
    got: list[bytes | OSError] = []

    def read() -> None:
        try:
            got.append(path.read_bytes())
        except OSError as e:
            got.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        # The kernel retries a failed page read, and the daemon then waits in open(2) again:
        # keep opening the FIFO for writing (which lets that open return) until the reader is done.
        while fifo is not None and t.is_alive():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # ENXIO: no one waiting in open(2) at this moment
            t.join(0.05)
        pytest.fail(f"read of {path} blocked for {timeout} s")
    return got[0]


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_img_file_swapped_for_a_link_leading_out_is_not_read(blob_project, tmp_path, libfuse):
    """img/ files are checked for links leading out when the project is opened; the read
    opened the path again and followed whatever link stood there by then."""
    proj, mp = _copy_to_change(blob_project, tmp_path)
    disk = proj / "ds1" / "img" / "photo_b.jpeg"
    secret = tmp_path / "secret"
    secret.write_bytes(b"S" * disk.stat().st_size)  # the size the mount shows: no size check helps
    with mounted(proj, mp, libfuse=libfuse) as m:
        os.unlink(disk)
        os.symlink(secret, disk)
        got = _read_with_timeout(m.path("ds1/img/photo_b.jpeg"))
        assert isinstance(got, OSError) and got.errno == errno.EIO, got
        assert "link leading out of the project" in m.stderr()
        assert m.proc.poll() is None


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_img_file_swapped_for_a_fifo_does_not_block_the_daemon(blob_project, tmp_path, libfuse):
    """open(2) of a FIFO waits for a writer: the daemon's worker hung in it, and its reader too."""
    proj, mp = _copy_to_change(blob_project, tmp_path)
    disk = proj / "ds1" / "img" / "photo_b.jpeg"
    with mounted(proj, mp, libfuse=libfuse) as m:
        os.unlink(disk)
        os.mkfifo(disk)
        got = _read_with_timeout(m.path("ds1/img/photo_b.jpeg"), fifo=disk)
        assert isinstance(got, OSError) and got.errno == errno.EIO, got
        assert m.proc.poll() is None


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_annotation_swapped_for_a_link_leading_out_is_never_served(blob_project, tmp_path, libfuse):
    """A file passed through is checked when it is looked up, then opened by path: a writer
    swapping it for a link to a secret outside the project (rename(2) of a link over it, and of
    a file back, in a loop) got the secret served between the two. Each read bypasses the page
    cache (O_DIRECT), so every one reaches the daemon."""
    proj, mp = _copy_to_change(blob_project, tmp_path)
    ann = proj / "ds1" / "ann"
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET" * 10)
    (ann / "race.json").write_bytes(b"{}")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.symlink(secret, ann / ".link")
            os.rename(ann / ".link", ann / "race.json")
            (ann / ".file").write_bytes(b"{}")
            os.rename(ann / ".file", ann / "race.json")

    buf = mmap.mmap(-1, 1 << 16)  # page-aligned, as O_DIRECT wants
    with mounted(proj, mp, libfuse=libfuse) as m:
        # Looked up once as a file: the kernel keeps that entry, and each read below reaches
        # the daemon, which looks the path up again (a first lookup that met the link would
        # leave a negative entry, and no open would reach the daemon at all).
        os.stat(m.path("ds1/ann/race.json"))
        swapper = threading.Thread(target=swap, daemon=True)
        swapper.start()
        reads, deadline = 0, time.monotonic() + 2
        try:
            while time.monotonic() < deadline:
                try:
                    fd = os.open(m.path("ds1/ann/race.json"), os.O_RDONLY | os.O_DIRECT)
                except OSError:
                    continue  # between the two renames, or hidden as a link leading out
                try:
                    n = os.preadv(fd, [buf], 0)
                    reads += 1
                    assert b"SECRET" not in buf[:n], "a file outside the project was served"
                except OSError:
                    pass  # ENOENT: found replaced (the kernel may also refuse a read, EINVAL)
                finally:
                    os.close(fd)
        finally:
            stop.set()
            swapper.join()
        assert reads > 0
        assert m.proc.poll() is None
