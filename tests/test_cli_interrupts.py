"""Ctrl-C, SIGTERM and SIGHUP end every command with one line and exit 130, in real processes:
while it works, while it writes its output to a pipe nobody reads, during the summary of a
command that wrote something (which then says its outputs are in place)."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tar_helpers import big_tar as big_tar_at

BLOBFS = [sys.executable, "-m", "blobfs"]


@pytest.fixture(scope="module")
def big_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare tar: 30,000 small members (listing them is ~450 kB, far more than a pipe holds;
    ``verify --decode`` takes seconds) and one 2 MB member to ``cat``."""
    return big_tar_at(tmp_path_factory.mktemp("interrupts") / "big.tar", 100)


def wait_blocked_on_pipe(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``proc`` sleeps in a write to a full pipe (/proc/PID/wchan); where the kernel does
    not say, a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ended before it blocked: {proc.communicate()}"
        try:
            wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
        except OSError:
            wchan = "0"
        if wchan in ("", "0"):  # hidden: give it time to fill the pipe
            time.sleep(0.5)
            return
        if "pipe_write" in wchan:
            return
        time.sleep(0.01)
    raise AssertionError("never blocked writing to its pipe")


def full_pipe() -> tuple[int, int]:
    """(read end, write end) of a pipe whose buffer is full of newlines: a process writing to
    it blocks until the other end reads."""
    r, w = os.pipe()
    flags = fcntl.fcntl(w, fcntl.F_GETFL)
    fcntl.fcntl(w, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"\n" * 4096)
    except BlockingIOError:
        pass
    try:
        while True:
            os.write(w, b"\n")
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, flags)  # the flag belongs to the shared file description
    return r, w


def assert_interrupted(proc: subprocess.Popen, err: str, state: str = "") -> None:
    """The one property wherever the signal landed: exit 130 and one line."""
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted!" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("blobfs: interrupted")]
    assert lines == ["blobfs: interrupted" + (f"; {state}" if state else "")], err


# -- while writing to a pipe nobody reads: deterministic, the process cannot have ended -----

@pytest.mark.parametrize("args, sig", [
    (["ls", "{tar}", "big/img"], signal.SIGINT),
    (["ls", "-l", "{tar}", "big/img"], signal.SIGTERM),
    (["cat", "{tar}", "big/img/huge.png"], signal.SIGINT),
    (["cat", "{tar}", "big/img/huge.png"], signal.SIGHUP),
    (["verify", "--decode", "{tar}"], signal.SIGINT),  # 30,001 problem lines, all at the end
])
def test_interrupted_while_writing_stdout(big_tar: Path, args: list[str], sig: int) -> None:
    proc = subprocess.Popen([*BLOBFS, *(a.format(tar=big_tar) for a in args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.read(1)  # it runs the command
    wait_blocked_on_pipe(proc)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert_interrupted(proc, err.decode())
    assert err.decode().strip() == "blobfs: interrupted"


# -- an interrupt that landed in an exec() --------------------------------------------------

def run_module(tmp_path: Path, name: str, source: str, **kw) -> subprocess.CompletedProcess:
    """Run ``source`` as module ``name`` with -m, as blobfs runs (blobfs importable)."""
    (tmp_path / f"{name}.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", name], cwd=tmp_path, env=env, timeout=60, **kw)


def test_an_interrupt_caught_from_an_exec_still_exits_130(tmp_path: Path) -> None:
    """A Ctrl-C that lands while a module imports lands in an ``exec`` of a string (every
    dataclass is made so); CPython then ended ``python -m blobfs`` killed by SIGINT (-2, about
    one interrupted ``verify --decode`` in ten) whatever exit code the command asked for. The
    interrupt here is raised in such an ``exec``, deterministically, in a module run with -m as
    blobfs is."""
    r = run_module(tmp_path, "interrupted_in_exec",
                   "from blobfs.cli.main import end_interrupted\n"
                   "try:\n"
                   "    exec('raise KeyboardInterrupt')\n"
                   "except KeyboardInterrupt:\n"
                   "    end_interrupted()\n", capture_output=True, text=True)
    assert r.returncode == 130 and r.stderr.strip() == "blobfs: interrupted", (r.returncode, r.stderr)


# -- while working ----------------------------------------------------------------------------

def opened(proc: subprocess.Popen, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{proc.pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{proc.pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            pass
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_while_busy(big_tar: Path, sig: int) -> None:
    # verify --decode of 30,001 members takes seconds after it opened the tar; the signal
    # lands in that work nearly always, and wherever it lands the same must hold.
    proc = subprocess.Popen([*BLOBFS, "verify", "--decode", str(big_tar)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not opened(proc, big_tar) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    if proc.returncode == 1 and not err:
        pytest.skip("verify ended before the signal landed")
    assert_interrupted(proc, err)


# -- during the summary of a command that wrote something: it says what is in place --------

def summary_blocked(args: list[str], outputs: list[Path], stream: str, sig: int,
                    **kw) -> tuple[subprocess.Popen, str]:
    """Run ``blobfs ARGS`` with ``stream`` (stdout or stderr) a full pipe, so its summary line
    blocks; signal it once ``outputs`` exist and it waits on the pipe; all it wrote after."""
    r, w = full_pipe()
    other = subprocess.PIPE
    proc = subprocess.Popen([*BLOBFS, *args], stdin=subprocess.DEVNULL,
                            stdout=w if stream == "stdout" else other,
                            stderr=w if stream == "stderr" else other, **kw)
    os.close(w)
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in outputs):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    wait_blocked_on_pipe(proc)
    proc.send_signal(sig)
    with os.fdopen(r, "rb") as f:
        blocked = f.read().decode()
    proc.wait(timeout=60)
    rest = (proc.stdout or proc.stderr).read().decode()  # type: ignore[union-attr]
    return proc, blocked + rest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_during_pack_summary(tmp_path: Path, sig: int) -> None:
    src = tmp_path / "images"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.png").write_bytes(b"png" * i)
    out, offsets = tmp_path / "out.tar", tmp_path / "out_offsets.pkl"
    proc, err = summary_blocked(["pack", str(src), "-o", str(out)], [out, offsets], "stderr", sig)
    assert_interrupted(proc, err, f"the new {out}, {offsets} are in place")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "out.tar", "out_offsets.pkl"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_during_index_summary(big_tar: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "big_offsets.pkl"
    proc, text = summary_blocked(["index", str(big_tar), "-o", str(tmp_path)], [out], "stdout",
                                 sig)
    assert_interrupted(proc, text, f"the new {out} is in place")
    assert out.stat().st_size > 0 and [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_interrupted_while_index_works(tmp_path: Path, sig: int) -> None:
    """Before its offsets file is written (index blocks in the warning about a member it
    leaves out, stderr a full pipe): "no output written", as pack says, and no temporary
    left (it said only "interrupted")."""
    from tar_helpers import members_tar

    tar = members_tar(tmp_path / "w.tar", [("a.png", b"abc"), ("bad\x01.png", b"abc")],
                      tarfile.GNU_FORMAT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc, err = summary_blocked(["index", str(tar), "-o", str(out_dir)], [], "stderr", sig)
    assert_interrupted(proc, err, "no output written")
    assert list(out_dir.iterdir()) == []


# -- signals that are not blobfs's to take --------------------------------------------------

def test_an_ignored_sighup_stays_ignored(tmp_path: Path) -> None:
    """``nohup blobfs pack ...``: closing the terminal must not stop the pack."""
    src = tmp_path / "images"
    src.mkdir()
    for i in range(20_000):
        (src / f"img_{i:05d}.png").write_bytes(b"x" * (i % 700))
    out = tmp_path / "out.tar"
    proc = subprocess.Popen([*BLOBFS, "pack", str(src), "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.tar.blobfs-tmp") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGCONT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "20000 images" in err and out.is_file()


_MOUNT_SIGNALS = """
import signal, sys
import blobfs.fuse.daemon as daemon
def run(opts):
    print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
          signal.getsignal(signal.SIGHUP) is signal.SIG_DFL, flush=True)
    return 0
daemon.run = run  # reports instead of mounting
sys.argv = ["blobfs", *sys.argv[1:]]
from blobfs.cli.main import main
main()
"""


def test_mount_keeps_the_default_stop_signals(blob_project: Path, tmp_path: Path) -> None:
    # libfuse installs its SIGTERM/SIGHUP handlers (unmount, exit 0) only over the default
    # action: the top-level guard must leave mount's alone, as fstab's form routes to mount.
    for args in (["mount", str(blob_project), str(tmp_path)], [str(blob_project), str(tmp_path)]):
        res = subprocess.run([sys.executable, "-c", _MOUNT_SIGNALS, *args], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT),
                                           (signal.SIGTERM, signal.SIGINT)])
def test_a_second_interrupt_while_the_line_is_written_keeps_exit_130(
        big_tar: Path, first: int, second: int) -> None:
    """Its one line blocked on a full stderr pipe, the command gets a second signal: it ends at
    once, with exit 130 and no traceback (it ended killed by SIGINT, and a caller saw a signal
    instead of the exit code)."""
    r, w = full_pipe()
    try:
        proc = subprocess.Popen([*BLOBFS, "verify", "--decode", str(big_tar)],
                                stdout=subprocess.DEVNULL, stderr=w)
        os.close(w)
        deadline = time.monotonic() + 60
        while not opened(proc, big_tar):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(first)
        wait_blocked_on_pipe(proc)  # writing its line to the full pipe
        proc.send_signal(second)
        assert proc.wait(timeout=60) == 130
        os.set_blocking(r, False)
        rest = b""
        while True:
            try:
                chunk = os.read(r, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            rest += chunk
        assert b"Traceback" not in rest
    finally:
        os.close(r)


# -- click's Abort path (an interrupt in the top-level options, an aborted prompt) with a
# -- stderr that cannot be written ----------------------------------------------------------

def broken_stderr(kind: str) -> tuple[dict, list[int]]:
    """Popen keywords for a stderr that cannot be written, and the fds to close after start:
    "pipe" nobody reads any more (EPIPE), "full" (/dev/full: ENOSPC), "closed" (``2>&-``)."""
    if kind == "pipe":
        r, w = os.pipe()
        os.close(r)
        return {"stderr": w}, [w]
    if kind == "full":
        fd = os.open("/dev/full", os.O_WRONLY)
        return {"stderr": fd}, [fd]
    return {"stderr": subprocess.DEVNULL, "preexec_fn": lambda: os.close(2)}, []


@pytest.mark.parametrize("kind", ["pipe", "full", "closed"])
def test_interrupted_in_the_top_level_options_with_stderr_broken(kind: str) -> None:
    """``blobfs --help`` blocked on a full stdout: the Ctrl-C lands in click's option parsing,
    where click writes a blank line on stderr before it raises Abort. That write failing made
    it exit 141 (pipe) or 1 (/dev/full), as for a failed output, instead of 130."""
    r, w = full_pipe()
    streams_kw, close_after = broken_stderr(kind)
    try:
        proc = subprocess.Popen([*BLOBFS, "--help"], stdin=subprocess.DEVNULL, stdout=w,
                                **streams_kw)
    finally:
        os.close(w)
        for fd in close_after:
            os.close(fd)
    with os.fdopen(r, "rb") as f:
        wait_blocked_on_pipe(proc)
        proc.send_signal(signal.SIGINT)
        f.read()
    assert proc.wait(timeout=60) == 130


_PROMPT = """
import sys
import click
import blobfs.cli.main as m

@click.command("ask")
def ask():
    click.prompt("name")  # stdin at its end: click raises Abort

m.COMMANDS["ask"] = (__name__, "ask")
sys.argv = ["blobfs", "ask"]
m.main()
"""


@pytest.mark.parametrize("kind", ["ok", "pipe", "full"])  # no stderr at all: input() refuses
def test_a_prompt_at_the_end_of_its_input_is_aborted_not_interrupted(kind: str) -> None:
    """A prompt that reads the end of stdin: "Aborted!" and exit 1, as click says it (it said
    "blobfs: interrupted", 130); with stderr broken, still exit 1 and no second error at
    shutdown (exit 120). No command prompts today; a plugin or a future one may."""
    streams_kw, close_after = ({"stderr": subprocess.PIPE}, []) if kind == "ok" else broken_stderr(kind)
    try:
        proc = subprocess.Popen([sys.executable, "-c", _PROMPT], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, **streams_kw)
    finally:
        for fd in close_after:
            os.close(fd)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert out == b"name: "
    if kind == "ok":
        assert err.decode().splitlines() == ["Aborted!"], err


def test_interrupted_line_is_the_only_line_in_a_pipe_or_file(tmp_path: Path) -> None:
    """The newline before "blobfs: interrupted" ends a ^C or a progress bar on a terminal;
    in a pipe or log file it was an empty line before the one line."""
    source = "from blobfs.cli.main import end_interrupted\nend_interrupted('no output written')\n"
    r = run_module(tmp_path, "interrupted_in_pipe", source, capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (130, "blobfs: interrupted; no output written\n")
    master, slave = os.openpty()  # on a terminal the newline stays
    try:
        r = run_module(tmp_path, "interrupted_in_pipe", source, stderr=slave)
        seen = os.read(master, 4096)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 130 and seen == b"\r\nblobfs: interrupted; no output written\r\n"
