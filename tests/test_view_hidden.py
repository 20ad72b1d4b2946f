"""What the view hides in a project's real folders: its one log line per folder (the mount's
only clue for an operator whose file "is missing"), and ``verify``'s problem lines for it."""
from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from blobfs.model.hidden import EXAMPLES
from blobfs.model.opening import open_project
from blobfs.model.view import ClassicView
from blobfs.write.options import UnpackOptions
from blobfs.write.unpack import unpack
from mount_helpers import BLOBFS

LOGGER = "blobfs.model.hidden"


def _copy(blob_project: Path, dst: Path) -> Path:
    shutil.copytree(blob_project, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dst


def _socket(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bound AF_UNIX socket at ``path`` (bound by a relative name: tmp_path can be longer
    than the 107 bytes an AF_UNIX address holds)."""
    monkeypatch.chdir(path.parent)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(path.name)
    finally:
        s.close()


@pytest.fixture
def odd_project(blob_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """ds1/ann: a FIFO; ds1/meta: a socket, links leading out and nowhere, a FIFO (four, one
    more than a line names); ds1/img: a sub-folder; ds2/img_info: a FIFO whose name holds an
    escape character. The root, ds2, ds2/ann and ds1/img_info hide nothing."""
    proj = _copy(blob_project, tmp_path / "proj")
    os.mkfifo(proj / "ds1/ann/pipe.json")
    _socket(proj / "ds1/meta/s.sock", monkeypatch)
    (proj / "ds1/meta/out.json").symlink_to("/etc/hostname")
    (proj / "ds1/meta/dangling.json").symlink_to("nowhere.json")
    os.mkfifo(proj / "ds1/meta/zz.json")
    (proj / "ds1/img/sub").mkdir()
    (proj / "ds1/img/sub/deep.png").write_bytes(b"x")
    (proj / "ds2/img_info").mkdir()
    os.mkfifo(proj / "ds2/img_info/bad\x1bname.json")
    return proj


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


def _by_folder(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        folder = line.partition(": ")[0]
        assert folder not in out, lines  # one line per folder
        out[folder] = line
    return out


def test_listing_logs_one_line_per_folder_that_hides_something(
        odd_project: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(odd_project) as p:
        listed = [rel for rel, _dirs, _files in p.view.walk()]
        assert {"", "ds1/img_info", "ds2", "ds2/ann"} <= set(listed)
        lines = _by_folder(_lines(caplog))
        assert sorted(lines) == ["ds1/ann", "ds1/img", "ds1/meta", "ds2/img_info"]
        assert lines["ds1/ann"] == "ds1/ann: the mount hides 1 entry of this folder: 'pipe.json' (FIFO)"
        assert lines["ds1/img"] == "ds1/img: the mount hides 1 entry of this folder: 'sub' (folder in img/)"
        meta = lines["ds1/meta"]
        assert meta.startswith("ds1/meta: the mount hides 4 entries of this folder: ")
        assert meta.endswith(", ...")  # four hidden, three named
        kinds = {"'s.sock' (socket)", "'out.json' (link leading out of the project)",
                 "'dangling.json' (link leading nowhere)", "'zz.json' (FIFO)"}
        assert sum(k in meta for k in kinds) == EXAMPLES
        # the name's escape character is escaped, the line stays one line
        assert lines["ds2/img_info"] == ("ds2/img_info: the mount hides 1 entry of this folder: "
                                         "'bad\\x1bname.json' (FIFO)")
        # readdir repeats (ls, find, a second walk): nothing new
        for _ in p.view.walk():
            pass
        p.view.listdir("ds1/meta")
        assert len(_lines(caplog)) == 4


def test_listing_in_chunks_logs_once(odd_project: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The kernel lists a big folder in chunks, resuming at offsets: the line comes once,
    whatever the chunks; exact when one scan judged the whole folder without stopping, "at
    least" when a chunk ended after a hidden entry (its scan may never be resumed)."""
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(odd_project) as p:
        view = p.view
        total = len(view.listdir("ds1/meta"))
        assert len(_lines(caplog)) == 1
    caplog.clear()
    with open_project(odd_project) as p:
        view = p.view
        first = []
        for entry in view.readdir("ds1/meta", 0):  # the kernel's first chunk: 3 entries fit
            first.append(entry)
            if len(first) == 3:
                break
        early = _lines(caplog)  # what the first chunk's scan met before it stopped, if any
        assert early == [] or (len(early) == 1 and early[0].startswith(
            "ds1/meta: the mount hides at least ")), early
        offset = first[-1][3]
        rest = list(view.readdir("ds1/meta", offset))
        assert len(first) + len(rest) == total + 2  # "." and ".."
        assert [ln.partition(":")[0] for ln in _lines(caplog)] == ["ds1/meta"]
        if not early:  # the resumed scan judged every entry
            assert "hides 4 entries" in _lines(caplog)[0]
        list(view.readdir("ds1/meta", 0))
        list(view.readdir("ds1/meta", offset))
        assert len(_lines(caplog)) == 1


def _list_alternating(views: list, path: str, chunk: int) -> list[str]:
    """List ``path`` in chunks of ``chunk`` entries, each resumed by the next of ``views`` (as
    the daemon's worker processes take a listing's READDIR calls in turn)."""
    names: list[str] = []
    offset = 0
    for view in itertools.cycle(views):
        part = list(itertools.islice(view.readdir(path, offset), chunk))
        if not part:
            return names
        names += [e[0] for e in part]
        offset = part[-1][3]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("chunk", [7, 100, 999])
def test_a_listing_split_between_processes_still_says_what_it_hides(
        blob_project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, chunk: int) -> None:
    """With two worker processes, a big folder's READDIR calls alternate between them, and a
    process resuming where the other stopped passes over the entries before without judging
    them: no scan sees the whole folder. The one that judged the hidden entry still says it
    ("at least", as it cannot know the rest), once."""
    proj = _copy(blob_project, tmp_path / "proj")
    extra = proj / "ds1/extra"
    extra.mkdir()
    for i in range(2000):
        (extra / f"f{i:04d}.json").write_bytes(b"{}")
    os.mkfifo(extra / "pipe")
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(proj) as a, open_project(proj) as b:
        names = _list_alternating([a.view, b.view], "ds1/extra", chunk)
    assert sorted(names[2:]) == [f"f{i:04d}.json" for i in range(2000)]
    lines = [ln for ln in _lines(caplog) if ln.startswith("ds1/extra:")]
    assert lines in (["ds1/extra: the mount hides at least 1 entry of this folder: 'pipe' (FIFO)"],
                     ["ds1/extra: the mount hides 1 entry of this folder: 'pipe' (FIFO)"]), lines


def test_lookup_of_a_hidden_name_logs_once_per_folder(
        odd_project: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(odd_project) as p:
        view = p.view
        for path in ("ds1/meta/s.sock", "ds1/meta/out.json", "ds1/img/sub", "ds1/img/sub/deep.png",
                     "ds2/img/nope.png", "ds2/ann/nope.json", "ds1/meta/nope.json"):
            with pytest.raises(OSError) as e:
                view.getattr(path)
            assert e.value.errno == errno.ENOENT, path
        assert _by_folder(_lines(caplog)) == {
            "ds1/meta": "ds1/meta: the mount hides 's.sock' (socket) of this folder, looked up by name",
            "ds1/img": "ds1/img: the mount hides 'sub' (folder in img/) of this folder, looked up by name"}
        with pytest.raises(OSError):
            view.read("ds1/ann/pipe.json", 10, 0)  # never opened: it would block
        assert _lines(caplog)[-1] == ("ds1/ann: the mount hides 'pipe.json' (FIFO) of this folder, "
                                      "looked up by name")
        for _ in view.walk():  # folders already said are not said again
            pass
        assert len(_lines(caplog)) == 4 and _lines(caplog)[-1].startswith("ds2/img_info: ")


def test_no_line_for_a_clean_project(blob_project: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(blob_project) as p:
        for _ in p.view.walk():
            pass
        with pytest.raises(OSError):
            p.view.getattr("ds1/img/nope.png")
    assert _lines(caplog) == []


def test_callers_that_report_it_themselves_turn_the_line_off(
        odd_project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    with open_project(odd_project) as p:
        for view in (ClassicView(p, log_hidden=False), ClassicView(p, log_synth_failures=False)):
            for _ in view.walk():
                pass
            with pytest.raises(OSError):
                view.getattr("ds1/meta/s.sock")
    assert _lines(caplog) == []
    # unpack reports each entry among its problems; the view's line would say it twice
    result = unpack(odd_project, tmp_path / "out", UnpackOptions(jobs=1))
    assert any("s.sock" in line for line in result.problems)
    assert _lines(caplog) == []


# -- verify -------------------------------------------------------------------------------------
def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BLOBFS, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_verify_reports_what_the_mount_hides_in_every_pass_through_folder(
        odd_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = odd_project
    os.mkfifo(proj / "root.fifo")                    # the project's root
    os.mkfifo(proj / "ds2/pipe")                     # a dataset's own folder
    (proj / "ds1/ann/sub").mkdir()                   # below ann/
    os.mkfifo(proj / "ds1/ann/sub/deep.json")
    (proj / "ds1/img_info/up").symlink_to("..")      # round in a circle: hidden, said once
    r = run("verify", str(proj))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "WARNING" not in r.stderr  # verify says it, the view's log line does not repeat it
    want = [
        f"{proj / 'root.fifo'}: not a regular file (FIFO); the mount hides it",
        f"{proj / 'ds2/pipe'}: not a regular file (FIFO); the mount hides it",
        f"{proj / 'ds1/ann/sub/deep.json'}: not a regular file (FIFO); the mount hides it",
        f"{proj / 'ds1/meta/s.sock'}: not a regular file (socket); the mount hides it",
        f"{proj / 'ds1/meta/out.json'}: symlink leads outside the project; the mount hides it",
        f"{proj / 'ds1/meta/dangling.json'}: symlink leads nowhere; the mount hides it",
        f"{proj / 'ds1/meta/zz.json'}: not a regular file (FIFO); the mount hides it",
        f"{proj / 'ds2/img_info'}/bad\\x1bname.json: not a regular file (FIFO); the mount hides it",
        f"{proj / 'ds1/ann/pipe.json'}: not a regular file (FIFO); the mount hides it",
        f"{proj / 'ds1/img_info/up'}: symlink leads round in a circle (to a folder it lies in); "
        "the mount hides it",
    ]
    lines = r.stdout.splitlines()
    for line in want:
        assert lines.count(line) == 1, (line, r.stdout)
    # img/'s sub-folder is no item by the format's rule, no problem of the source
    assert not any("/ds1/img/sub" in ln for ln in lines)
    assert lines[-1].endswith(f", {len(want)} problem(s)")


def test_verify_clean_project_stays_clean(blob_project: Path, tmp_path: Path) -> None:
    proj = _copy(blob_project, tmp_path / "proj")
    (proj / "ds1/img_info/inside.json").symlink_to("photo_a.png.json")  # inside: shown
    r = run("verify", str(proj))
    assert r.returncode == 0, r.stdout + r.stderr
