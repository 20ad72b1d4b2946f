"""The soak script's short mode (tests/bench/soak.py --short), as CI runs it, plus a check that
the soak would notice wrong bytes (a soak that cannot fail proves nothing)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mount_helpers import is_mounted, libfuse_params, requires_fuse

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120), requires_fuse]
SOAK = Path(__file__).resolve().parent / "bench" / "soak.py"


def _soak(workdir: Path, *args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, str(SOAK), "--json", "--workdir", str(workdir), *args],
                       capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_soak_short(tmp_path_factory, libfuse):
    workdir = tmp_path_factory.getbasetemp() / "soak"  # the built project is shared by both runs
    code, rep = _soak(workdir, "--short", "--libfuse", str(libfuse))
    assert code == 0 and rep["ok"], rep
    assert rep["mismatches"] == 0 and rep["read_errors"] == 0 and rep["daemon_exit"] == 0
    assert rep["min_reads_per_reader"] > 0  # every reader, of every kind, verified files
    assert set(rep["reads_by_kind"]) >= {"read", "pread_chunks", "mmap", "read_evict"}
    assert rep["reader_processes"] > 0 and rep["reader_threads"] > 0
    assert not any(is_mounted(p) for p in workdir.glob("mnt-*"))


def test_soak_detects_wrong_bytes(tmp_path):
    code, rep = _soak(tmp_path, "--images", "500", "--seconds", "1", "--readers", "2")
    assert code == 0, rep
    tar = tmp_path / "soak-500" / "blob" / "images.tar"
    data = bytearray(tar.read_bytes())
    for off in range(4096, len(data) - 10240, 4096):  # flip a byte every 4 KiB (inside most items)
        data[off] ^= 0xFF
    tar.write_bytes(data)
    code, rep = _soak(tmp_path, "--images", "500", "--seconds", "2", "--readers", "4")
    assert code == 1 and rep["mismatches"] > 0 and not rep["ok"]
    assert rep["daemon_exit"] == 0  # and it still unmounted cleanly
    shutil.rmtree(tmp_path / "soak-500")
