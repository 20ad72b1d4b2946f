"""Interrupts and failures of the commands that write, in real processes: ``--force`` stopped
after the old tree was moved aside, ``demo`` and ``preview`` stopped or failing mid-way."""
from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from blobfs.cli.write import unpack_cmd
from blobfs.demo import make_demo

BLOBFS = [sys.executable, "-m", "blobfs"]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def hidden(parent: Path, prefix: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(prefix)]


def stop_when(args: list[str], parent: Path, prefix: str, **kw) -> subprocess.Popen:
    """Start ``blobfs ARGS`` and SIGSTOP it as soon as a name starting with ``prefix``
    appears in ``parent`` (the process is then interrupted at a known point)."""
    proc = subprocess.Popen([*BLOBFS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)
    deadline = time.monotonic() + 60
    while not hidden(parent, prefix):
        assert proc.poll() is None, f"ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    proc.send_signal(signal.SIGSTOP)
    return proc


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    """Send ``sig`` to the stopped ``proc``, let it go on; its stderr once it ended."""
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    _out, err = proc.communicate(timeout=120)
    return err


# -- --force: stopped while the replaced tree is being deleted ------------------------------

@pytest.mark.parametrize("cmd", ["unpack", "pack-project"])
def test_interrupted_force_replacement(cmd: str, blob_project: Path, classic_project: Path,
                                       tmp_path: Path) -> None:
    src = blob_project if cmd == "unpack" else classic_project
    ref = tmp_path / "ref"
    subprocess.run([*BLOBFS, cmd, str(src), str(ref)], check=True, capture_output=True)
    out = tmp_path / "out"
    out.mkdir()
    for i in range(20_000):  # enough that deleting the old tree takes a while
        (out / f"old_{i:05d}").touch()

    proc = stop_when([cmd, "--force", str(src), str(out)], tmp_path, ".out.blobfs-old-")
    err = interrupt(proc)

    assert proc.returncode == 130, err
    assert "no output written" not in err and "Traceback" not in err
    [old] = hidden(tmp_path, ".out.blobfs-old-")  # its deletion was cut short
    assert err.strip() == (f"blobfs: interrupted; the new {out} is in place; the rest of the old "
                           f"one, {old}, is removed by the next run that writes {out}")
    assert tree(out) == tree(ref)

    again = subprocess.run([*BLOBFS, cmd, "--force", str(src), str(out)], capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and str(old) in warnings[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref"]
    assert tree(out) == tree(ref)


def test_leftover_of_a_live_process_is_kept(blob_project: Path, tmp_path: Path, caplog) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = tmp_path / f".out.blobfs-old-{ended.pid}-0badc0de"
    live = tmp_path / f".out.blobfs-old-{os.getpid()}-0badc0de"  # still being deleted
    other = tmp_path / f".other.blobfs-old-{ended.pid}-0badc0de"  # another output's
    for d in (dead, live, other):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(unpack_cmd, [str(blob_project), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert not dead.exists() and live.is_dir() and other.is_dir()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{dead}: removing what an interrupted --force run left of the output it replaced"]


# -- demo: whole or not at all --------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_leaves_nothing(tmp_path: Path, sig: int) -> None:
    proc = stop_when(["demo", str(tmp_path / "d")], tmp_path, ".d.blobfs-tmp-")
    err = interrupt(proc, sig)
    assert proc.returncode == 130, err
    assert err.strip() == "blobfs: interrupted; no output written"
    assert list(tmp_path.iterdir()) == []


def _limit_file_size() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG: a full disk,
    # without mounting one.
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


def test_demo_that_cannot_be_written_leaves_nothing(tmp_path: Path) -> None:
    res = subprocess.run([*BLOBFS, "demo", str(tmp_path / "d")], capture_output=True, text=True,
                         preexec_fn=_limit_file_size)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == f"blobfs: {tmp_path / 'd'}: File too large; nothing written"
    assert list(tmp_path.iterdir()) == []


def test_demo_into_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    made = make_demo(tmp_path / "d")
    assert made.tar == tmp_path / "d" / "blob" / "demo.tar" and made.tar.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


# -- preview: Ctrl-C is exit 130 with one line, as for the write commands --------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_preview(tmp_path: Path, sig: int) -> None:
    make_demo(tmp_path / "d")
    sheet = tmp_path / "sheet.png"
    proc = stop_when(["preview", str(tmp_path / "d"), "-o", str(sheet), "--thumb", "1024"],
                     tmp_path, ".sheet.png.blobfs-tmp-")
    err = interrupt(proc, sig)
    assert proc.returncode == 130, err
    assert err.strip() == "blobfs: interrupted; no output written"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


# -- --force: the replaced tree's name is never empty ---------------------------------------

_WATCH = r"""
import os, sys
path, stop = sys.argv[1], sys.argv[2]
missing = looks = 0
print("ready", flush=True)
while not os.path.exists(stop):
    looks += 1
    try:
        os.stat(os.path.join(path, "marker"))
    except FileNotFoundError:
        missing += 1
print(missing, looks)
"""


def test_force_replacement_of_a_tree_is_one_step_for_readers(tmp_path: Path) -> None:
    # Another process stats OUT/marker in a loop while OUT is replaced again and again: with
    # rename-aside-then-rename it finds the name empty now and then, with RENAME_EXCHANGE never.
    from blobfs.write.atomic import AtomicOutputs

    out, stop = tmp_path / "out", tmp_path / "stop"
    out.mkdir()
    (out / "marker").write_bytes(b"0")
    watcher = subprocess.Popen([sys.executable, "-c", _WATCH, str(out), str(stop)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None and watcher.stdout.readline().strip() == "ready"
        for i in range(1, 301):
            with AtomicOutputs([out], force=True) as outputs:
                tmp = outputs.directory(out)
                (tmp / "marker").write_bytes(str(i).encode())
                outputs.commit()
        stop.touch()
        missing, looks = map(int, watcher.communicate(timeout=60)[0].split())
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert (out / "marker").read_bytes() == b"300"
    assert looks > 300  # it watched the whole time
    assert missing == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # old trees deleted
