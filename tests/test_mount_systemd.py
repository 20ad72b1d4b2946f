"""systemd integration: unit files verify, Type=notify readiness over $NOTIFY_SOCKET."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from mount_helpers import is_mounted, mounted, requires_fuse

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
pytestmark = pytest.mark.timeout(60)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart's program exists: point the copy at this checkout's blobfs.
    exe = shutil.which("blobfs", path=str(Path(os.sys.executable).parent)) or shutil.which("blobfs")
    if exe is None:
        pytest.skip("no blobfs executable to point ExecStart at")
    text = (SYSTEMD / "blobfs@.service").read_text()
    assert "Type=notify" in text and "/usr/local/bin/blobfs" in text
    (tmp_path / "blobfs@.service").write_text(text.replace("/usr/local/bin/blobfs", exe))
    (tmp_path / "blobfs@mnt-proj.service").symlink_to("blobfs@.service")
    shutil.copy(SYSTEMD / "mnt-proj.mount", tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "./mnt-proj.mount", "./blobfs@mnt-proj.service"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_fstab_example_and_helper_script_parse():
    line = next(ln for ln in (SYSTEMD / "fstab.example").read_text().splitlines()
                if ln.strip() and not ln.startswith("#"))
    src, mp, fstype, opts, *_ = line.split()
    assert fstype == "fuse.blobfs"
    from blobfs.fuse.options import build_options

    o = build_options(src, mp, o=(opts,))
    assert o.allow_other and "nofail" in o.ignored
    r = subprocess.run(["sh", "-n", str(SYSTEMD / "mount.fuse.blobfs")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_helper_script_runs_blobfs_from_a_folder_with_a_space(tmp_path):
    # $BLOBFS, or the blobfs beside the helper, in "/opt/my tools": the helper split the path
    # at the space ("exec: /opt/my: not found", exit 127).
    tools = tmp_path / "my tools"
    tools.mkdir()
    fake = tools / "blobfs"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    helper = tools / "mount.fuse.blobfs"
    shutil.copy(SYSTEMD / "mount.fuse.blobfs", helper)
    want = ["mount", "/data/proj", "/mnt/proj", "-o", "ro,nofail"]
    for cmd, env in (([str(SYSTEMD / "mount.fuse.blobfs")], {"BLOBFS": str(fake)}), ([str(helper)], {})):
        r = subprocess.run(["/bin/sh", *cmd, "/data/proj", "/mnt/proj", "-o", "ro,nofail"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.splitlines() == want, (cmd, r.stdout, r.stderr)


@requires_fuse
@pytest.mark.mount
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_type_notify_ready_once_mounted(blob_project, tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"blobfs-test-{os.getpid()}-{id(tmp_path)}"
        sock.bind("\0" + name)
        env_addr = "@" + name
    else:
        env_addr = str(tmp_path / "notify.sock")
        sock.bind(env_addr)
    sock.settimeout(20)
    mp = tmp_path / "mp"
    mp.mkdir()
    with sock, mounted(blob_project, mp, libfuse=3, env={"NOTIFY_SOCKET": env_addr}):
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg.split("\n")
        assert is_mounted(mp) and "ds1" in os.listdir(mp)


@pytest.mark.parametrize("tail", [["-o"], ["-o", "ro", "-t"]], ids=["bare-o", "bare-t"])
def test_helper_script_refuses_an_option_without_its_value(tmp_path, tail):
    # mount(8) never sends these, but a hand-typed "mount.fuse.blobfs SRC MNT -o" died on
    # "shift: can't shift that many" and never said which option lacked its value.
    fake = tmp_path / "blobfs"
    fake.write_text("#!/bin/sh\necho ran >&2\nexit 0\n")
    fake.chmod(0o755)
    r = subprocess.run(["/bin/sh", str(SYSTEMD / "mount.fuse.blobfs"), "/data/proj", "/mnt/proj", *tail],
                       env={"BLOBFS": str(fake)}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr == f"mount.fuse.blobfs: option {tail[-1]} needs a value\n"
