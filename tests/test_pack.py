"""``blobfs pack``: real folders in, real tars and offsets out, read back by tarfile, GNU tar,
the SDK's rules and blobfs itself."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from blobfs.cli.write import pack_cmd
from blobfs.format.offsets_write import dumps_offsets
from blobfs.model.opening import open_project
from offsets_helpers import sdk_entries
from sdk_rules import load_offsets

BLOBFS = [sys.executable, "-m", "blobfs"]
LONG = "long_" + "x" * 120 + ".png"          # > 100 bytes: needs a PAX path record
UNICODE = "café ünïcødé 图像.jpg"


def make_images(root: Path) -> dict[str, bytes]:
    """A folder of images (nested, unicode, long names) plus files that are not images."""
    files = {
        "a.png": b"\x89PNG" + b"a" * 700,
        "B.JPG": b"\xff\xd8" + b"b" * 512,           # upper-case extension counts (SDK rule)
        "empty.png": b"",
        UNICODE: "ü".encode() * 300,
        LONG: b"L" * 1025,
        "sub/c.webp": b"c" * 3000,
        "sub/deeper/d.tif": os.urandom(70_000),
        "zz/e.bmp": b"e" * 10,
        "notes.txt": b"not an image",
        "sub/readme.md": b"not an image either",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (1_600_000_000, 1_600_000_000))
    return {rel: data for rel, data in files.items() if not rel.endswith((".txt", ".md"))}


def tarfile_add_order(root: Path, rel: str = "") -> list[str]:
    """The order in which ``tarfile.add`` (the SDK's archive_directory) visits files."""
    out = []
    for name in sorted(os.listdir(root / rel)):
        child = f"{rel}/{name}" if rel else name
        out.extend(tarfile_add_order(root, child) if (root / child).is_dir() else [child])
    return out


def run_pack(*args: str | Path):
    return CliRunner().invoke(pack_cmd, [str(a) for a in args], catch_exceptions=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".blobfs-" in p.name)


def test_pack_tar_and_offsets(tmp_path: Path) -> None:
    src = tmp_path / "images"
    expected = make_images(src)
    out = tmp_path / "out.tar"
    res = run_pack(src, "-o", out)
    assert res.exit_code == 0, res.output
    # Python's tarfile: every image, sorted depth-first, with its bytes, fixed ownership.
    with tarfile.open(out) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == [n for n in tarfile_add_order(src) if n in expected]
        for m in members:
            assert m.isfile() and (m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, "", "", 0o644)
            assert m.mtime == 1_600_000_000
            assert tar.extractfile(m).read() == expected[m.name]
    assert os.path.getsize(out) % 10240 == 0
    # GNU tar lists the same names.
    listed = subprocess.run(["tar", "tf", str(out)], capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines() == names
    # The offsets file is exactly what save_blob_offsets_pkl would write for this tar.
    offsets = tmp_path / "out_offsets.pkl"
    assert offsets.read_bytes() == dumps_offsets(sdk_entries(out))
    # ... which the SDK's restricted unpickler accepts, naming items by base name.
    entries, warnings = load_offsets(offsets)
    assert not warnings
    data = out.read_bytes()
    assert {n: data[s:e] for n, s, e in entries} == {k.rpartition("/")[2]: v for k, v in expected.items()}
    # blobfs reads it back as a bare tar with its sibling offsets.
    with open_project(out) as p:
        ds = p.datasets[0]
        assert len(ds.items) == len(expected)
        for rel, blob in expected.items():
            assert ds.items.read(ds.items.find(rel.rpartition("/")[2])) == blob


def test_sorted_order_matches_tarfile_walk(tmp_path: Path) -> None:
    """Depth-first, each folder's entries in name order (folders interleaved), like tarfile.add."""
    src = tmp_path / "images"
    for rel in ("b.png", "a/x.png", "c/y.png", "a.png", "ab.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    assert run_pack(src, "-o", tmp_path / "o.tar", "--rename").exit_code == 0
    with tarfile.open(tmp_path / "o.tar") as tar:
        assert tar.getnames() == ["a/x.png", "a.png", "ab.png", "b.png", "c/y.png"]


def test_deterministic_and_mtime_option(tmp_path: Path) -> None:
    src = tmp_path / "images"
    make_images(src)
    assert run_pack(src, "-o", tmp_path / "one.tar").exit_code == 0
    assert run_pack(src, "-o", tmp_path / "two.tar").exit_code == 0
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    assert (tmp_path / "one_offsets.pkl").read_bytes() == (tmp_path / "two_offsets.pkl").read_bytes()
    # New mtimes on the inputs change the tar; --mtime pins it again, in both spellings.
    for p in src.rglob("*"):
        os.utime(p, (1_700_000_123, 1_700_000_123))
    assert run_pack(src, "-o", tmp_path / "three.tar").exit_code == 0
    assert (tmp_path / "three.tar").read_bytes() != (tmp_path / "one.tar").read_bytes()
    assert run_pack(src, "-o", tmp_path / "four.tar", "--mtime", "1600000000").exit_code == 0
    assert (tmp_path / "four.tar").read_bytes() == (tmp_path / "one.tar").read_bytes()
    assert run_pack(src, "-o", tmp_path / "five.tar", "--mtime", "2020-09-13T12:26:40Z").exit_code == 0
    assert (tmp_path / "five.tar").read_bytes() == (tmp_path / "one.tar").read_bytes()


MTIME_MAX = 8**11 - 1  # 2242-03-16 12:56:31 UTC: 11 octal digits, what a ustar header holds


@pytest.mark.parametrize("value", ["-1", str(MTIME_MAX + 1), "1969-12-31T23:59:59.5Z",
                                   "2242-03-16T12:56:32Z", "9999-01-01"])
def test_mtime_a_tar_header_cannot_hold_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """It was clamped silently: -1 became 1970, 9999 became 2242."""
    src = tmp_path / "images"
    make_images(src)
    res = subprocess.run([*BLOBFS, "pack", str(src), "-o", str(tmp_path / "o.tar"), "--mtime",
                          value], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert (f"Invalid value for '--mtime': {value!r} is out of range: a tar header holds 0 "
            f"(1970-01-01) to {MTIME_MAX} (2242-03-16 12:56:31 UTC)") in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_mtime_out_of_range_is_refused_by_the_python_api_too(tmp_path: Path) -> None:
    from blobfs.errors import InputError
    from blobfs.write.options import PackOptions
    from blobfs.write.pack import pack

    src = tmp_path / "images"
    make_images(src)
    with pytest.raises(InputError, match=r"mtime -1: out of range \(a tar header holds 0"):
        pack(src, tmp_path / "o.tar", PackOptions(mtime=-1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.parametrize("value, expected", [("0", 0), (str(MTIME_MAX), MTIME_MAX),
                                             ("2242-03-16T12:56:31Z", MTIME_MAX)])
def test_mtime_at_the_edges_of_the_range(tmp_path: Path, value: str, expected: int) -> None:
    src = tmp_path / "images"
    make_images(src)
    assert run_pack(src, "-o", tmp_path / "o.tar", "--mtime", value).exit_code == 0
    with tarfile.open(tmp_path / "o.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {expected}


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_own_mtimes_a_tar_header_cannot_hold_warn_once(tmp_path: Path, jobs: str) -> None:
    """Files from 1900 and 2500 (os.utime): stored as 1970 and 2242 as before, now with one
    warning that counts them (exit 0); with workers (5 chunks of files) the counts add up."""
    src = tmp_path / "images"
    src.mkdir()
    for i in range(4500):
        (src / f"img_{i:04d}.png").write_bytes(b"p" * (i % 50))
    old, future = -2_208_988_800, 16_725_225_600  # 1900-01-01, 2500-01-01
    odd = {"img_0000.png": old, "img_2100.png": future, "img_4499.png": old}
    for name, t in odd.items():
        os.utime(src / name, (t, t))
    out = tmp_path / "o.tar"
    res = subprocess.run([*BLOBFS, "pack", str(src), "-o", str(out), "-j", jobs],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "WARNING" in line]
    assert warnings == [f"blobfs: WARNING: {src}: 3 file(s) with an mtime before 1970 or after "
                        "2242-03-16 12:56:31 UTC, out of what a tar header holds: stored as the "
                        "nearest it holds (--mtime sets one for all)"], res.stderr
    with tarfile.open(out) as tar:
        got = {m.name: m.mtime for m in tar.getmembers() if m.name in odd}
    assert got == {"img_0000.png": 0, "img_2100.png": MTIME_MAX, "img_4499.png": 0}
    # --mtime for all: nothing clamped, nothing to say.
    res = subprocess.run([*BLOBFS, "pack", str(src), "-o", str(tmp_path / "p.tar"), "--mtime",
                          "0"], capture_output=True, text=True)
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr


def test_refuses_to_overwrite_unless_force(tmp_path: Path) -> None:
    src = tmp_path / "images"
    make_images(src)
    out = tmp_path / "out.tar"
    out.write_bytes(b"precious")
    res = run_pack(src, "-o", out)
    assert res.exit_code == 2
    assert str(out) in res.output and "--force" in res.output
    assert out.read_bytes() == b"precious"
    assert not (tmp_path / "out_offsets.pkl").exists()
    assert run_pack(src, "-o", out, "--force").exit_code == 0
    assert tarfile.is_tarfile(out) and (tmp_path / "out_offsets.pkl").exists()
    assert leftovers(tmp_path) == []


def test_duplicate_base_names_refused_or_renamed(tmp_path: Path) -> None:
    src = tmp_path / "images"
    for rel in ("x.png", "a/x.png", "a/b/x.png", "a/y.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    out = tmp_path / "out.tar"
    res = run_pack(src, "-o", out)
    assert res.exit_code == 2
    assert str(src / "a/b/x.png") in res.output and str(src / "a/x.png") in res.output
    assert "--rename" in res.output
    assert not out.exists() and leftovers(tmp_path) == []
    assert run_pack(src, "-o", out, "--rename").exit_code == 0
    with tarfile.open(out) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert got == {"a/b/a__b__x.png": b"a/b/x.png", "a/a__x.png": b"a/x.png",
                   "a/y.png": b"a/y.png", "x.png": b"x.png"}
    names = [n for n, _s, _e in load_offsets(tmp_path / "out_offsets.pkl")[0]]
    assert sorted(names) == ["a__b__x.png", "a__x.png", "x.png", "y.png"]


def test_include_exclude_and_recursion(tmp_path: Path) -> None:
    src = tmp_path / "images"
    make_images(src)
    assert run_pack(src, "-o", tmp_path / "flat.tar", "--no-recursive").exit_code == 0
    with tarfile.open(tmp_path / "flat.tar") as tar:
        assert "/" not in "".join(tar.getnames()) and "a.png" in tar.getnames()
    res = run_pack(src, "-o", tmp_path / "none.tar", "--include", "*.txt", "--exclude", "notes*")
    assert res.exit_code == 2 and "no files to pack" in res.output
    assert run_pack(src, "-o", tmp_path / "sel.tar", "--include", "*.md",
                    "--include", "sub/*.webp").exit_code == 0
    with tarfile.open(tmp_path / "sel.tar") as tar:
        assert tar.getnames() == ["sub/c.webp", "sub/readme.md"]
    assert run_pack(src, "-o", tmp_path / "ex.tar", "--exclude", "sub/*.webp").exit_code == 0
    with tarfile.open(tmp_path / "ex.tar") as tar:
        assert "sub/c.webp" not in tar.getnames() and "sub/deeper/d.tif" in tar.getnames()
    # fnmatch: "*" also matches "/", so a folder glob takes the whole subtree.
    assert run_pack(src, "-o", tmp_path / "ex2.tar", "--exclude", "sub/*").exit_code == 0
    with tarfile.open(tmp_path / "ex2.tar") as tar:
        assert not [n for n in tar.getnames() if n.startswith("sub/")]


def test_links_leading_to_each_other_are_not_packed(tmp_path: Path) -> None:
    """A pair of image links (``x.png -> y.png -> x.png``) and a pair of folder links are
    left out like a dangling link; they stopped the pack with ELOOP (exit 2)."""
    src = tmp_path / "images"
    want = make_images(src)
    (src / "x.png").symlink_to("y.png")
    (src / "y.png").symlink_to("x.png")
    (src / "dx").symlink_to("dy")
    (src / "dy").symlink_to("dx")
    res = run_pack(src, "-o", tmp_path / "out.tar")
    assert res.exit_code == 0, res.output
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert sorted(tar.getnames()) == sorted(want)


def test_images_that_are_no_regular_file_are_named_in_one_warning(tmp_path: Path, caplog) -> None:
    """A dangling ``x.png`` link or a FIFO named like an image was left out without a word
    (exit 0): an image the user meant to pack was silently missing from the tar."""
    src = tmp_path / "images"
    want = make_images(src)
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(src / "pipe.jpg")
    (src / "notes").symlink_to(tmp_path / "nowhere")  # not an image name: not a candidate
    with caplog.at_level("WARNING"):
        res = run_pack(src, "-o", tmp_path / "out.tar")
    assert res.exit_code == 0, res.output
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert sorted(tar.getnames()) == sorted(want)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "2 matching entries not packed" in warnings[0], warnings
    assert "'gone.png'" in warnings[0] and "\n" not in warnings[0]


def test_bad_output_name_and_empty_input(tmp_path: Path) -> None:
    src = tmp_path / "images"
    make_images(src)
    res = run_pack(src, "-o", tmp_path / "out.tgz")
    assert res.exit_code == 2 and ".tar" in res.output
    (tmp_path / "empty").mkdir()
    res = run_pack(tmp_path / "empty", "-o", tmp_path / "e.tar")
    assert res.exit_code == 2 and "no files to pack" in res.output
    res = run_pack(tmp_path / "missing", "-o", tmp_path / "m.tar")
    assert res.exit_code == 2 and str(tmp_path / "missing") in res.output
    assert leftovers(tmp_path) == []


def test_large_member_and_fsync_via_subprocess(tmp_path: Path) -> None:
    """A file above the buffering limit goes through the kernel copy; real CLI process."""
    src = tmp_path / "images"
    src.mkdir()
    big = os.urandom(3 << 20)
    (src / "big.png").write_bytes(big)
    (src / "small.png").write_bytes(b"s" * 100)
    out = tmp_path / "out.tar"
    proc = subprocess.run([*BLOBFS, "pack", str(src), "-o", str(out), "--fsync"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(out) as tar:
        assert tar.extractfile("big.png").read() == big
    assert (tmp_path / "out_offsets.pkl").read_bytes() == dumps_offsets(sdk_entries(out))


def test_fixture_offsets_equal_the_sdk_writer(blob_project: Path) -> None:
    """Anchor of the byte-equality chain: for the SDK's own tars, the writer pack uses gives
    the SDK's own pickles byte for byte."""
    for tar, pkl in (("small_images", "ds1"), ("more_images", "ds2")):
        expected = (blob_project / pkl / f"{tar}_offsets.pkl").read_bytes()
        assert dumps_offsets(sdk_entries(blob_project / "blob" / f"{tar}.tar")) == expected


# -- failures in a real process: interrupted, disk full, input vanished ----------------------

@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough files that a pack takes a while (the process is stopped mid-way anyway)."""
    root = tmp_path_factory.mktemp("many") / "images"
    root.mkdir()
    blob = os.urandom(4096)
    for i in range(30_000):
        with open(root / f"img_{i:06d}.png", "wb") as f:
            f.write(blob[: 1000 + i % 3000])
    return root


def _start_and_stop(src: Path, out: Path, **kw) -> subprocess.Popen:
    """Start a pack and SIGSTOP it as soon as its temporary tar exists."""
    proc = subprocess.Popen([*BLOBFS, "pack", str(src), "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(f".{out.name}.blobfs-tmp") for p in out.parent.iterdir()):
        assert proc.poll() is None, f"pack ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_pack_leaves_nothing(many_files: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out.tar"
    proc = _start_and_stop(many_files, out)
    assert not out.exists()
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no final name, no temporary left


def test_killed_pack_leaves_no_final_name(many_files: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    proc = _start_and_stop(many_files, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists() and not (tmp_path / "out_offsets.pkl").exists()
    assert all(p.name.startswith(".out") for p in tmp_path.iterdir())  # only hidden temporaries


def test_vanished_input(many_files: Path, tmp_path: Path) -> None:
    src = tmp_path / "images"
    os.symlink(many_files, src)  # the fixture folder stays intact: remove a link to a file
    links = tmp_path / "links"
    links.mkdir()
    for name in sorted(os.listdir(many_files))[:20_000]:
        os.symlink(many_files / name, links / name)
    out = tmp_path / "out.tar"
    proc = _start_and_stop(links, out)
    (links / "img_019999.png").unlink()  # the last file: not read yet
    proc.send_signal(signal.SIGCONT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert str(links / "img_019999.png") in stderr and "vanished" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() and leftovers(tmp_path) == []


def test_disk_full_leaves_nothing(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes write(2) fail with EFBIG past 1 MiB, as a full disk fails with ENOSPC
    (Python ignores SIGXFSZ, so the write error reaches blobfs)."""
    import resource

    src = tmp_path / "images"
    src.mkdir()
    for i in range(40):
        (src / f"{i:02d}.png").write_bytes(os.urandom(100_000))
    out = tmp_path / "out.tar"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run([*BLOBFS, "pack", str(src), "-o", str(out)], capture_output=True,
                          text=True, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    assert str(out) in proc.stderr and "nothing written" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_worker_processes_write_the_same_bytes(many_files: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """30k files go through the forked workers; the bytes equal an in-process pack's and the
    offsets equal the SDK's for that tar."""
    forked, inline = tmp_path / "forked.tar", tmp_path / "inline.tar"
    assert run_pack(many_files, "-o", forked).exit_code == 0
    import blobfs.write.workers as workers

    monkeypatch.setattr(workers, "FORK_MIN_CHUNKS", 10**9)
    assert run_pack(many_files, "-o", inline).exit_code == 0
    assert forked.read_bytes() == inline.read_bytes()
    offsets = (tmp_path / "forked_offsets.pkl").read_bytes()
    assert offsets == (tmp_path / "inline_offsets.pkl").read_bytes()
    assert offsets == dumps_offsets(sdk_entries(forked))
    entries, _ = load_offsets(tmp_path / "forked_offsets.pkl")
    data = forked.read_bytes()
    for name, start, end in entries[::997]:
        assert data[start:end] == (many_files / name).read_bytes()


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_jobs_option_writes_the_same_bytes(many_files: Path, tmp_path: Path, jobs: str) -> None:
    default, chosen = tmp_path / "default.tar", tmp_path / "chosen.tar"
    assert run_pack(many_files, "-o", default).exit_code == 0
    assert run_pack(many_files, "-o", chosen, "--jobs", jobs).exit_code == 0
    assert chosen.read_bytes() == default.read_bytes()
    assert (tmp_path / "chosen_offsets.pkl").read_bytes() == (tmp_path / "default_offsets.pkl").read_bytes()
