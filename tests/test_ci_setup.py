""".ci/setup, the README's first command: run in a copy of the checkout whose apt-get, sudo and
.venv/bin/python only record how they were called (nothing is installed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: An ordinary Debian user's PATH (/etc/login.defs ENV_PATH): no /sbin, no /usr/sbin.
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")


def _sandbox(tmp_path: Path) -> tuple[Path, Path, Path]:
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "setup", repo / ".ci" / "setup")
    calls = tmp_path / "calls"
    calls.write_text("")
    recorder = f'#!/bin/sh\necho "$(basename "$0") $*" >> {calls}\n'
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    for name in ("apt-get", "sudo"):
        (fakebin / name).write_text(recorder)
        (fakebin / name).chmod(0o755)
    venv_python = repo / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(recorder)
    venv_python.chmod(0o755)
    return repo, fakebin, calls


def _run(repo: Path, fakebin: Path, path: str, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{fakebin}:{path}", "HOME": str(repo.parent), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", str(repo / ".ci" / "setup"), *args], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def _apt_calls(calls: Path) -> list[str]:
    return [ln for ln in calls.read_text().splitlines() if ln.startswith(("apt-get", "sudo"))]


def test_unknown_mode_is_a_usage_error_before_anything_is_installed(tmp_path):
    repo, fakebin, calls = _sandbox(tmp_path)
    r = _run(repo, fakebin, ROOT_PATH, "tset")
    assert r.returncode == 2
    assert r.stderr.strip() == "usage: bash .ci/setup demo|test [pytest args]"
    assert calls.read_text() == ""


def test_installed_libraries_are_found_without_sbin_on_path(tmp_path):
    # An ordinary user's PATH has no ldconfig; the libraries it finds must not look missing,
    # or every run asks sudo to apt-get them again.
    repo, fakebin, calls = _sandbox(tmp_path)
    r = _run(repo, fakebin, ROOT_PATH, "test", "--version")
    assert r.returncode == 0, r.stderr
    if _apt_calls(calls):
        pytest.skip(f"this machine lacks a package .ci/setup installs: {_apt_calls(calls)}")
    calls.write_text("")
    r = _run(repo, fakebin, USER_PATH, "test", "--version")
    assert r.returncode == 0, r.stderr
    assert _apt_calls(calls) == [], r.stderr
    assert "-m pytest -q -p no:cacheprovider --version" in calls.read_text()



def test_a_large_library_cache_does_not_make_libraries_look_missing(tmp_path):
    # On a machine with many libraries `ldconfig -p` writes more than a pipe holds; a reader
    # that stops at the first match must not turn that into "libfuse missing".
    repo, fakebin, calls = _sandbox(tmp_path)
    r = _run(repo, fakebin, ROOT_PATH, "test", "--version")
    if _apt_calls(calls):
        pytest.skip(f"this machine lacks a package .ci/setup installs: {_apt_calls(calls)}")
    calls.write_text("")
    (fakebin / "ldconfig").write_text(
        "#!/bin/sh\n"
        "printf '\\tlibfuse3.so.3 (libc6,x86-64) => /lib/libfuse3.so.3\\n"
        "\\tlibfuse.so.2 (libc6,x86-64) => /lib/libfuse.so.2\\n'\n"
        "head -c 1000000 /dev/zero | tr '\\0' 'x'\n")
    (fakebin / "ldconfig").chmod(0o755)
    r = _run(repo, fakebin, ROOT_PATH, "test", "--version")
    assert r.returncode == 0, r.stderr
    assert _apt_calls(calls) == [], r.stderr
