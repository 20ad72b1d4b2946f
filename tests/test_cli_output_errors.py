"""stdout or stderr that cannot be written ends every command with one line on stderr and exit
1, never a traceback; a reader that closed the pipe early ends it quietly with exit 141 (as
``ls | head``). Real processes writing to /dev/full, to a terminal whose other side is gone
(EIO), and to a pipe closed after one line."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from blobfs.format.offsets_read import read_offsets
from tar_helpers import big_tar as big_tar_at

BLOBFS = [sys.executable, "-m", "blobfs"]
ENOSPC_LINE = "blobfs: cannot write to standard output: No space left on device"


@pytest.fixture(scope="module")
def big_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare tar of 30,000 members: its listing (~450 kB) is far more than a pipe holds."""
    return big_tar_at(tmp_path_factory.mktemp("output_errors") / "big.tar", 10)


def to_full(args: list[str], stream: str = "stdout", **kw) -> subprocess.CompletedProcess:
    """``blobfs ARGS`` with ``stream`` on /dev/full (the other one captured)."""
    with open("/dev/full", "wb") as full:
        streams = ({"stdout": full, "stderr": subprocess.PIPE} if stream == "stdout"
                   else {"stdout": subprocess.PIPE, "stderr": full})
        return subprocess.run([*BLOBFS, *args], **streams, text=True, timeout=120, **kw)


def assert_one_line(res: subprocess.CompletedProcess, line: str) -> None:
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    assert res.stderr.splitlines() == [line], res.stderr


@pytest.mark.parametrize("args", [
    ["ls", "{p}"],
    ["ls", "-l", "{p}", "ds1/img"],
    ["cat", "{p}", "ds1/img/img_040.png"],
    ["cat", "{p}", "meta.json"],
    ["info", "{p}"],
    ["info", "--json", "{p}"],
    ["verify", "{p}"],
    ["--help"],
    ["ls", "--help"],
    ["--version"],
])
def test_stdout_full(blob_project: Path, args: list[str]) -> None:
    res = to_full([a.format(p=blob_project) for a in args])
    assert_one_line(res, ENOSPC_LINE)


def test_cat_of_a_big_member_to_a_full_stdout(big_tar: Path) -> None:
    assert_one_line(to_full(["cat", str(big_tar), "big/img/huge.png"]), ENOSPC_LINE)


def test_stdout_a_terminal_that_is_gone(blob_project: Path) -> None:
    """A terminal closed under the command (its master side gone): EIO, one line, exit 1."""
    master, slave = os.openpty()
    os.close(master)
    try:
        res = subprocess.run([*BLOBFS, "ls", str(blob_project)], stdout=slave,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(slave)
    assert_one_line(res, "blobfs: cannot write to standard output: Input/output error")


_UNFLUSHED = """
import sys
import click
import blobfs.cli.main as m

@click.command("late")
def late():
    sys.stdout.write("x" * 100)  # buffered: it fails only at the final flush

m.COMMANDS["late"] = (__name__, "late")
sys.argv = ["blobfs", "late"]
m.main()
"""


def test_a_write_failing_only_at_the_final_flush() -> None:
    """Still one line and exit 1, and no second error when Python flushes again at shutdown
    (which would print "Exception ignored" and exit 120)."""
    with open("/dev/full", "wb") as full:
        res = subprocess.run([sys.executable, "-c", _UNFLUSHED], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    assert_one_line(res, ENOSPC_LINE)


# -- a pipe closed early: quiet, exit 141 --------------------------------------------------

@pytest.mark.parametrize("unbuffered", ["", "1"])  # "1": cat's 2 MB write came back short
@pytest.mark.parametrize("args", [["ls", "{tar}", "big/img"], ["ls", "-l", "{tar}", "big/img"],
                                  ["cat", "{tar}", "big/img/huge.png"]])
def test_pipe_closed_after_one_line(big_tar: Path, args: list[str], unbuffered: str) -> None:
    proc = subprocess.Popen([*BLOBFS, *(a.format(tar=big_tar) for a in args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err  # what a shell reports for `ls | head -1`
    assert err == b""


# -- commands that wrote something: the output stays, the line says it is in place ---------

def test_index_summary_to_a_full_stdout(blob_project: Path, tmp_path: Path) -> None:
    tar = blob_project / "blob" / "small_images.tar"
    out = tmp_path / "small_images_offsets.pkl"
    res = to_full(["index", str(tar), "-o", str(tmp_path)])
    assert_one_line(res, f"{ENOSPC_LINE}; the new {out} is in place")
    assert out.read_bytes() == (blob_project / "ds1" / "small_images_offsets.pkl").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_demo_summary_to_a_full_stdout(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = to_full(["demo", str(out)])
    assert_one_line(res, f"{ENOSPC_LINE}; the new {out} is in place")
    check = subprocess.run([*BLOBFS, "verify", str(out)], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def pack_source(tmp_path: Path) -> Path:
    src = tmp_path / "images"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.png").write_bytes(b"png" * (i + 1))
    return src


def test_pack_summary_to_a_full_stderr(tmp_path: Path) -> None:
    """pack's summary goes to stderr: with stderr full nothing can be said, but the exit code
    says it (1, not a 0 with the summary lost), and the outputs are whole and in place."""
    src = pack_source(tmp_path)
    out = tmp_path / "out.tar"
    res = to_full(["pack", str(src), "-o", str(out)], stream="stderr")
    assert res.returncode == 1 and res.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out.tar", "out_offsets.pkl"]
    with tarfile.open(out) as t:
        assert sorted(t.getnames()) == [f"{i}.png" for i in range(5)]
    assert len(read_offsets(tmp_path / "out_offsets.pkl").table) == 5


def test_pack_summary_to_a_closed_pipe(tmp_path: Path) -> None:
    """stderr a pipe nobody reads any more: quiet, exit 141, the outputs in place."""
    src = pack_source(tmp_path)
    out = tmp_path / "out.tar"
    r, w = os.pipe()
    os.close(r)
    try:
        res = subprocess.run([*BLOBFS, "pack", str(src), "-o", str(out)],
                             stdout=subprocess.PIPE, stderr=w, timeout=120)
    finally:
        os.close(w)
    assert res.returncode == 141 and res.stdout == b""
    assert len(read_offsets(tmp_path / "out_offsets.pkl").table) == 5 and out.is_file()


def test_a_full_stdout_nothing_is_written_to(tmp_path: Path) -> None:
    """pack writes nothing on stdout: a full one is no failure."""
    src = pack_source(tmp_path)
    res = to_full(["pack", str(src), "-o", str(tmp_path / "out.tar")])
    assert res.returncode == 0 and "5 images" in res.stderr, res.stderr


# -- stdout or stderr closed before the start (`blobfs ... >&-`, `2>&-`) -------------------

def closed_at_start(args: list[str], fd: int) -> subprocess.CompletedProcess:
    """``blobfs ARGS`` started with ``fd`` (1 or 2) closed, the other one captured."""
    return subprocess.run(["sh", "-c", f'exec "$@" {fd}>&-', "sh", *BLOBFS, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["ls", "{p}"], ["info", "--json", "{p}"], ["verify", "{p}"]])
def test_stdout_closed_at_start(blob_project: Path, args: list[str]) -> None:
    """As /dev/full: one line naming the stream (EBADF), exit 1, no traceback."""
    res = closed_at_start([a.format(p=blob_project) for a in args], 1)
    assert_one_line(res, "blobfs: cannot write to standard output: Bad file descriptor")


def test_unpack_with_stdout_closed_at_start(blob_project: Path, tmp_path: Path) -> None:
    """unpack writes nothing on stdout: a closed one is no failure, and the fd left free is
    not taken by an output file (whose bytes a stray write to stdout would then change)."""
    out = tmp_path / "out"
    res = closed_at_start(["unpack", str(blob_project), str(out)], 1)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert (out / "meta.json").read_bytes() == (blob_project / "meta.json").read_bytes()


@pytest.mark.parametrize("cmd", ["unpack", "pack"])
def test_write_command_with_stderr_closed_at_start(blob_project: Path, tmp_path: Path,
                                                   cmd: str) -> None:
    """The output is written (a progress bar asked a missing stderr whether it was a terminal
    and nothing was written); the lost summary is exit 1, as with a full stderr."""
    if cmd == "unpack":
        out = tmp_path / "out"
        res = closed_at_start(["unpack", str(blob_project), str(out)], 2)
        assert (out / "ds1" / "img").is_dir()
    else:
        out = tmp_path / "out.tar"
        res = closed_at_start(["pack", str(pack_source(tmp_path)), "-o", str(out)], 2)
        assert len(read_offsets(tmp_path / "out_offsets.pkl").table) == 5
    assert res.returncode == 1 and res.stdout == ""


def test_verify_with_stderr_closed_at_start(blob_project: Path) -> None:
    """Nothing to say on stderr: a closed one changes nothing (exit 0, the report on stdout)."""
    res = closed_at_start(["verify", str(blob_project)], 2)
    assert res.returncode == 0 and "0 problem(s)" in res.stdout, res.stdout
