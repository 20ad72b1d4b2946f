"""``blobfs pack`` publishes a tar and its offsets file as a pair: one writer per output (a lock
beside it), the offsets file renamed last, and ``verify`` naming a tar beside an offsets file
written for another tar."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from blobfs.cli.main import cli
from blobfs.model.opening import open_project
from test_pack import _start_and_stop, leftovers, many_files, run_pack  # noqa: F401 (fixture)

BLOBFS = [sys.executable, "-m", "blobfs"]


def write_images(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """``files`` under ``root``; returns them by item name (base name)."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel.rpartition("/")[2]: data for rel, data in files.items()}


def annotations(folder: Path, names: list[str]) -> Path:
    """An ann folder with one parseable annotation per item, so that a clean pair verifies
    with exit 0 (a bare tar has no ann/ folder of its own)."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.json").write_text("{}")
    return folder


def verify(out: Path, ann: Path):
    return CliRunner().invoke(cli, ["verify", str(out), "--ann", str(ann)], catch_exceptions=False)


def served(out: Path) -> dict[str, bytes]:
    """What blobfs serves for each item of ``out`` with its sibling offsets file."""
    with open_project(out) as p:
        items = p.datasets[0].items
        return {items.name(i): items.read(i) for i in range(len(items))}


def test_pack_into_an_output_being_written_fails_at_once(tmp_path: Path) -> None:
    """The lock held here stands for another pack writing the same output."""
    src, src2 = tmp_path / "one", tmp_path / "two"
    write_images(src, {"a.png": b"a" * 100})
    second = write_images(src2, {"a.png": b"b" * 300, "c.png": b"c" * 10})
    out = tmp_path / "out" / "o.tar"
    out.parent.mkdir()
    assert run_pack(src, "-o", out).exit_code == 0
    before = (out.read_bytes(), (out.parent / "o_offsets.pkl").read_bytes())
    lock = out.parent / ".o.tar.blobfs-lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        res = run_pack(src2, "-o", out, "--force")
        assert res.exit_code == 2
        assert res.output.strip() == (f"blobfs: {out}: another blobfs pack is writing this output; "
                                      "run again when it has finished")
        assert (out.read_bytes(), (out.parent / "o_offsets.pkl").read_bytes()) == before
        assert lock.exists()  # the holder's lock file is not removed by the refused run
    finally:
        os.close(fd)
    # The lock file left behind (as after a SIGKILL) is reused and removed.
    res = run_pack(src2, "-o", out, "--force")
    assert res.exit_code == 0, res.output
    assert served(out) == second
    assert sorted(os.listdir(out.parent)) == ["o.tar", "o_offsets.pkl"]


def test_concurrent_packs_into_one_output_leave_a_matching_pair(tmp_path: Path) -> None:
    """Two ``pack --force`` started together, repeatedly: one may be refused (exit 2), and the
    tar and offsets file left are always one run's pair. The two sources put the same names
    at different places, so a mixed pair would read wrong bytes and fail verify."""
    runs = {
        "A": write_images(tmp_path / "A", {f"{i:03d}.png": bytes([i]) * (100 + i) for i in range(120)}),
        "B": write_images(tmp_path / "B", {f"{i:03d}.png": bytes([i + 1]) * (700 - i) for i in range(120)}),
    }
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.tar"
    ann = annotations(tmp_path / "ann", list(runs["A"]))
    for _round in range(6):
        procs = [subprocess.Popen([*BLOBFS, "pack", str(tmp_path / name), "-o", str(out), "--force"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in runs]
        results = [(p.communicate(timeout=60)[1], p.returncode)[::-1] for p in procs]
        for rc, stderr in results:
            assert rc in (0, 2), stderr
            if rc == 2:
                assert "another blobfs pack is writing this output" in stderr, stderr
        assert 0 in (rc for rc, _ in results)
        got = served(out)
        assert got in (runs["A"], runs["B"])
        res = verify(out, ann)
        assert res.exit_code == 0, res.output
        assert sorted(os.listdir(out_dir)) == ["o.tar", "o_offsets.pkl"]  # no lock, no temporaries


def test_verify_names_a_tar_beside_the_offsets_of_its_previous_version(tmp_path: Path) -> None:
    """The state a crash between the renames left before the offsets file was renamed last:
    the new tar beside the old offsets. Sizes changed, so ranges miss the member data."""
    src = tmp_path / "images"
    write_images(src, {"a.png": b"a" * 100, "b.png": b"b" * 2000})
    out = tmp_path / "o.tar"
    offsets = tmp_path / "o_offsets.pkl"
    assert run_pack(src, "-o", out).exit_code == 0
    old = offsets.read_bytes()
    write_images(src, {"a.png": b"A" * 1500})
    assert run_pack(src, "-o", out, "--force").exit_code == 0
    ann = annotations(tmp_path / "ann", ["a.png", "b.png"])
    assert verify(out, ann).exit_code == 0
    offsets.write_bytes(old)
    res = verify(out, ann)
    assert res.exit_code == 1
    assert f"{out}: item o/img/b.png range [1536, 3536) is not the data of a member" in res.output


def test_verify_names_offsets_of_another_tar_with_the_same_layout(tmp_path: Path) -> None:
    """Files moved between folders: every range is still some member's data, but of the
    member of another name, so ``a.png`` would be served the bytes of ``b.png``."""
    one, two = tmp_path / "one", tmp_path / "two"
    write_images(one, {"a.png": b"a" * 10, "sub/b.png": b"b" * 10})
    write_images(two, {"b.png": b"B" * 10, "sub/a.png": b"A" * 10})
    out = tmp_path / "o.tar"
    assert run_pack(one, "-o", out).exit_code == 0
    old = (tmp_path / "o_offsets.pkl").read_bytes()
    assert run_pack(two, "-o", out, "--force").exit_code == 0
    ann = annotations(tmp_path / "ann", ["a.png", "b.png"])
    assert verify(out, ann).exit_code == 0
    (tmp_path / "o_offsets.pkl").write_bytes(old)
    assert served(out)["a.png"] == b"B" * 10  # what a client would be given
    res = verify(out, ann)
    assert res.exit_code == 1
    assert (f"{out}: item o/img/a.png range [512, 522) is the data of member 'b.png', though the "
            "tar has a member 'a.png'") in res.output
    assert "item o/img/b.png" in res.output


def test_offsets_that_appear_while_packing_stop_the_tar_too(many_files: Path, tmp_path: Path) -> None:
    """Without --force an offsets file that appears while packing refuses the publish before
    the tar is renamed: no new tar beside a foreign offsets file (the tar used to go first)."""
    out = tmp_path / "out.tar"
    proc = _start_and_stop(many_files, out)
    (tmp_path / "out_offsets.pkl").write_bytes(b"someone else's")
    proc.send_signal(signal.SIGCONT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert f"{tmp_path / 'out_offsets.pkl'}: appeared while writing" in stderr
    assert not out.exists()
    assert (tmp_path / "out_offsets.pkl").read_bytes() == b"someone else's"
    assert leftovers(tmp_path) == []


def test_force_replaces_the_pair_and_leaves_no_old_offsets(tmp_path: Path) -> None:
    """The old offsets file is moved aside before the tar is replaced, and removed after."""
    src = tmp_path / "images"
    write_images(src, {"a.png": b"a" * 100})
    out = tmp_path / "o.tar"
    assert run_pack(src, "-o", out, "--fsync").exit_code == 0
    new = write_images(src, {"b.png": b"b" * 5000})
    res = run_pack(src, "-o", out, "--force", "--fsync")
    assert res.exit_code == 0, res.output
    assert served(out) == {"a.png": b"a" * 100, **new}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "o.tar", "o_offsets.pkl"]


# -- the offsets file's rename fails after the tar's ---------------------------------------
# An LD_PRELOAD shim in front of libc's rename functions fails every rename onto a name ending
# in "_offsets.pkl" with EIO, the way a dying disk or a network filesystem can fail one rename
# and not the one before it.
_FAIL_OFFSETS_RENAME_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
static int hit(const char *to) {
    size_t n = strlen(to), k = strlen("_offsets.pkl");
    return n >= k && strcmp(to + n - k, "_offsets.pkl") == 0;
}
int rename(const char *a, const char *b) {
    static int (*real)(const char *, const char *);
    if (hit(b)) { errno = EIO; return -1; }
    if (!real) real = dlsym(RTLD_NEXT, "rename");
    return real(a, b);
}
int renameat(int fa, const char *a, int fb, const char *b) {
    static int (*real)(int, const char *, int, const char *);
    if (hit(b)) { errno = EIO; return -1; }
    if (!real) real = dlsym(RTLD_NEXT, "renameat");
    return real(fa, a, fb, b);
}
int renameat2(int fa, const char *a, int fb, const char *b, unsigned flags) {
    static int (*real)(int, const char *, int, const char *, unsigned);
    if (hit(b)) { errno = EIO; return -1; }
    if (!real) real = dlsym(RTLD_NEXT, "renameat2");
    return real(fa, a, fb, b, flags);
}
"""


def test_a_failed_offsets_rename_says_the_tar_is_in_place(tmp_path: Path) -> None:
    (tmp_path / "fail.c").write_text(_FAIL_OFFSETS_RENAME_C)
    shim = tmp_path / "fail.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(tmp_path / "fail.c"), "-ldl"],
                   check=True, timeout=60)
    src, out = tmp_path / "images", tmp_path / "out" / "b.tar"
    out.parent.mkdir()
    write_images(src, {"a.png": b"A" * 900, "b.jpg": b"B" * 1100})
    assert run_pack(src, "-o", out).exit_code == 0
    old_tar = out.read_bytes()
    write_images(src, {"c.png": b"C" * 700})
    r = subprocess.run([*BLOBFS, "pack", str(src), "-o", str(out), "--force"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "LD_PRELOAD": str(shim)})
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "nothing written" not in line[0], r.stderr
    assert "b_offsets.pkl" in line[0] and f"the new {out} is in place without b_offsets.pkl" in line[0]
    # what it says is what is there: the new tar, no offsets file (never the old one beside it),
    # and the tar's own headers serve every image right
    assert out.read_bytes() != old_tar and not (out.parent / "b_offsets.pkl").exists()
    project = open_project(out)
    items = project.datasets[0].items
    assert {items.name(i): items.read(i) for i in range(len(items))} == {
        "a.png": b"A" * 900, "b.jpg": b"B" * 1100, "c.png": b"C" * 700}
    assert leftovers(out.parent) == []
