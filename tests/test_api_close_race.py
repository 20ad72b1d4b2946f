"""A read racing ``Project.close()`` in another thread: it must return the tar's own bytes or
raise the API's ``ValueError`` for a closed project — never another file's bytes, never EBADF.

The race is forced, not hoped for: a profile hook runs in the reading thread at the moment
``os.pread`` is called, its descriptor argument already taken from the project, and there
makes another thread close the project and open a file of other bytes enough times to take
any freed descriptor number. That is the interleaving that served a file opened since as an
image (or raised EBADF) when ``close()`` released the number under a read in flight.
"""
from __future__ import annotations

import io
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

import blobfs

#: Enough opens to take the freed number even if a few lower ones are free too.
REUSE = 16


@pytest.fixture()
def decoy(tmp_path: Path) -> Path:
    """A file that is no image: any byte of it served for an item is wrong data."""
    path = tmp_path / "decoy.bin"
    path.write_bytes(b"\xaa" * (8 << 20))  # longer than any tar, so a misread is never short
    return path


@contextmanager
def close_at_first_pread(p: blobfs.Project, decoy: Path) -> Iterator[list[int]]:
    """In this thread, the first ``os.pread`` about to run waits until another thread has
    closed ``p`` and opened ``decoy`` REUSE times (the descriptors are yielded, kept open)."""
    held: list[int] = []
    fired = threading.Event()

    def close_and_reuse() -> None:
        p.close()
        held.extend(os.open(decoy, os.O_RDONLY | os.O_CLOEXEC) for _ in range(REUSE))

    def hook(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and arg is os.pread and not fired.is_set():
            fired.set()
            t = threading.Thread(target=close_and_reuse)
            t.start()
            t.join()

    sys.setprofile(hook)
    try:
        yield held
    finally:
        sys.setprofile(None)
        for fd in held:
            os.close(fd)
    assert fired.is_set(), "the read made no os.pread: the race was not exercised"


def open_tars() -> set[str]:
    """Real paths of the .tar files this process has open."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.endswith(".tar"):
            found.add(target)
    return found


def _item(p: blobfs.Project, path: str) -> bytes:
    ds_name, _, name = path.partition("/img/")
    ds = next(d for d in p.datasets if d.relpath == ds_name)
    return ds.items.read(ds.items.find(name))


def _file(p: blobfs.Project, path: str) -> Callable[[], bytes]:
    f = p.open(path)
    return f.read


def _buffered(p: blobfs.Project, path: str) -> Callable[[], bytes]:
    f = io.BufferedReader(p.open(path))
    return f.read


def _first_of_iter(p: blobfs.Project, path: str) -> Callable[[], bytes]:
    it = p.iter_bytes()

    def first() -> bytes:
        got_path, data = next(it)
        assert got_path == path
        return data
    return first


# (source under the fixture project, view path of a tar item, how to read it). Each reader is
# made before the race (a file object is opened, an iterator started), read during it.
CASES = {
    "items.read": ("", "ds2/img/scan 01.png", lambda p, path: lambda: _item(p, path)),
    "Project.read": ("", "ds1/img/img_040.png", lambda p, path: lambda: p.read(path)),
    "ProjectFile.read": ("", "ds2/img/scan 01.png", _file),
    "BufferedReader(ProjectFile)": ("", "ds2/img/scan 01.png", _buffered),
    # ds2 alone has one tar and no img/ files: iter_bytes' bulk path (one descriptor).
    "iter_bytes bulk": ("ds2", None, _first_of_iter),
    # ds1 also has img/ files: iter_bytes' per-item path (tar items come first).
    "iter_bytes mixed": ("ds1", None, _first_of_iter),
}


@pytest.mark.parametrize("case", CASES)
def test_read_racing_close_in_another_thread_never_reads_another_file(
        blob_project: Path, decoy: Path, case: str) -> None:
    sub, path, make = CASES[case]
    source = blob_project / sub if sub else blob_project
    with blobfs.open_project(source) as ref:
        if path is None:
            path = next(iter(ref.iter_bytes()))[0]
        want = ref.read(path)
    assert not open_tars()

    p = blobfs.open_project(source)
    read = make(p, path)
    with close_at_first_pread(p, decoy):
        try:
            got = read()
        except ValueError as e:  # the documented error for a closed project is allowed
            assert "closed project" in str(e)
        else:
            assert got == want, "bytes of another file were served as the image"
        # Closed now: every read started after close() says so, however it is made.
        with pytest.raises(ValueError, match="closed project"):
            read()
        with pytest.raises(ValueError, match="closed project"):
            p.read(path)
    # The read that was in flight has ended: the deferred close has happened.
    assert not open_tars()


def test_every_read_after_close_raises_value_error(blob_project: Path) -> None:
    """Not only tar items: img/ files, annotations and meta.json are read by path, so nothing
    but the project's own state can refuse them once it is closed."""
    p = blobfs.open_project(blob_project)
    ds1 = next(d for d in p.datasets if d.relpath == "ds1")
    disk = ds1.items.find("photo_a.png")
    assert disk >= 0 and not ds1.items.is_blob(disk)
    ann = p.open("ds1/ann/img_001.png.json")
    meta = p.open("meta.json")
    at_end = p.open("ds2/img/scan 01.png")
    at_end.read()
    # An iterator left where only img/ files of ds1 remain: ds1's tar items come first.
    it = p.iter_bytes()
    for _ in range(len(ds1.items) - 2):
        next(it)
    p.close()
    for read in (lambda: ds1.items.read(disk), ann.read, meta.read, at_end.read,
                 lambda: next(it), lambda: ann.readinto(bytearray(8))):
        with pytest.raises(ValueError, match="closed project"):
            read()
