"""The mounted SDK blob project: content, errno/stat semantics, read-only-ness (libfuse 2 and 3)."""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from mount_helpers import libfuse_params, mounted, requires_fuse

pytestmark = [pytest.mark.mount, pytest.mark.timeout(90), requires_fuse]


@pytest.fixture(scope="module", params=libfuse_params())
def mnt(request, blob_project: Path, tmp_path_factory):
    mp = tmp_path_factory.mktemp(f"mnt{request.param}")
    with mounted(blob_project, mp, libfuse=request.param) as m:
        yield m


@pytest.fixture(scope="module")
def expected(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "expected_mount.json").read_text())


def _walk(root: Path) -> tuple[dict[str, Path], list[str]]:
    files, dirs = {}, []
    for d, ds, fs in os.walk(root):
        for name in ds:
            dirs.append(os.path.relpath(os.path.join(d, name), root))
        for name in fs:
            p = Path(d) / name
            files[p.relative_to(root).as_posix()] = p
    return files, dirs


# -- content ---------------------------------------------------------------------------------
def test_mount_equals_expected_path_for_path_byte_for_byte(mnt, expected):
    files, _ = _walk(mnt.mountpoint)
    assert sorted(files) == sorted(expected["files"])
    for rel, want in expected["files"].items():
        data = files[rel].read_bytes()
        assert len(data) == want["size"], rel
        assert hashlib.sha256(data).hexdigest() == want["sha256"], rel
        assert os.stat(files[rel]).st_size == len(data), rel


def test_mount_hides_blob_folder_and_offsets_pickles(mnt):
    files, dirs = _walk(mnt.mountpoint)
    assert "blob" not in os.listdir(mnt.mountpoint)
    assert not [f for f in files if f.endswith(".pkl") or f.startswith("blob/")]
    assert not [d for d in dirs if d.split("/")[-1] == "blob"]


def test_sdk_rules_reader_sees_the_expected_datasets(mnt, expected):
    from sdk_rules import read_project

    sdk = read_project(mnt.mountpoint)
    assert sdk.warnings == []
    assert sdk.counts() == {d["name"]: d["items"] for d in expected["datasets"]}


# -- errno -----------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["nope", "ds1/img/nope.png", "ds1/nope/x", "blob", "ds1/small_images_offsets.pkl"])
def test_enoent(mnt, rel):
    with pytest.raises(FileNotFoundError):
        os.stat(mnt.path(rel))


def test_enotdir(mnt):
    with pytest.raises(NotADirectoryError):
        os.stat(mnt.path("meta.json/x"))
    with pytest.raises(NotADirectoryError):
        os.listdir(mnt.path("meta.json"))


def test_eisdir_on_read_of_a_directory(mnt):
    fd = os.open(mnt.path("ds1/img"), os.O_RDONLY)
    try:
        with pytest.raises(IsADirectoryError):
            os.read(fd, 10)
    finally:
        os.close(fd)


def test_enametoolong(mnt):
    with pytest.raises(OSError) as e:
        os.stat(mnt.path("ds1/img/" + "a" * 300))
    assert e.value.errno == errno.ENAMETOOLONG


# -- stat ------------------------------------------------------------------------------------
def test_stable_inodes_match_readdir_and_are_unique(mnt):
    seen: dict[int, str] = {}
    for d in ("", "ds1", "ds1/img", "ds1/ann", "ds2/img"):
        with os.scandir(mnt.path(d)) as it:
            for entry in it:
                st1 = os.stat(entry.path)
                st2 = os.stat(entry.path)
                assert st1.st_ino == st2.st_ino == entry.inode(), entry.path
                assert seen.setdefault(st1.st_ino, entry.path) == entry.path
    assert len(seen) > 100


def test_nlink_size_blksize_and_no_write_bits(mnt, expected):
    for rel in expected["files"]:
        st = os.stat(mnt.path(rel))
        assert stat.S_ISREG(st.st_mode) and st.st_nlink >= 1
        assert st.st_mode & 0o222 == 0
        assert st.st_size == expected["files"][rel]["size"]
        assert st.st_blksize >= 64 * 1024
        assert st.st_blocks * 512 >= st.st_size
    for rel in ("", "ds1", "ds1/img", "ds2/img"):
        st = os.stat(mnt.path(rel))
        assert stat.S_ISDIR(st.st_mode) and st.st_nlink >= 2 and st.st_mode & 0o222 == 0


def test_mtimes_come_from_the_source_files(mnt, expected, blob_project):
    for rel, want in expected["files"].items():
        src = want["source"]
        if src.startswith("blob:"):
            origin = blob_project / "blob" / src[len("blob:"):]
        else:
            origin = blob_project / rel
        assert os.stat(mnt.path(rel)).st_mtime_ns == os.stat(origin).st_mtime_ns, rel


def test_statfs_is_sensible(mnt):
    sv = os.statvfs(mnt.mountpoint)
    assert sv.f_bsize >= 4096 and sv.f_frsize >= 512
    assert sv.f_namemax == 255
    assert sv.f_flag & os.ST_RDONLY
    assert sv.f_blocks > 0 and sv.f_bavail == 0


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


def _dtypes(path: Path) -> dict[str, int]:
    """d_type of every entry, straight from readdir(3) (os.scandir hides it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.POINTER(_Dirent)
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    d = libc.opendir(os.fsencode(path))
    assert d, os.strerror(ctypes.get_errno())
    out = {}
    try:
        while True:
            ent = libc.readdir(d)
            if not ent:
                break
            out[os.fsdecode(ent.contents.d_name)] = ent.contents.d_type
    finally:
        libc.closedir(d)
    return out


@pytest.mark.parametrize("libfuse", libfuse_params())
def test_daemon_says_once_per_folder_what_it_hides(libfuse, blob_project: Path, tmp_path: Path):
    """A FIFO in ann/ and a link leading out in meta/ are hidden, and the daemon's log has one
    line per folder for them however often the folder is listed or the name looked up."""
    proj = tmp_path / "proj"
    shutil.copytree(blob_project, proj)
    os.mkfifo(proj / "ds1/ann/pipe.json")
    (proj / "ds1/meta").mkdir(exist_ok=True)
    (proj / "ds1/meta/out.json").symlink_to("/etc/hostname")
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(proj, mp, libfuse=libfuse) as m:
        for _ in range(3):
            assert "pipe.json" not in os.listdir(m.path("ds1/ann"))
            assert "out.json" not in os.listdir(m.path("ds1/meta"))
            assert not m.path("ds1/ann/pipe.json").exists()
        err = m.stderr()
    lines = [x for x in err.splitlines() if "the mount hides" in x]
    assert lines == ["blobfs: WARNING: ds1/ann: the mount hides 1 entry of this folder: "
                     "'pipe.json' (FIFO)",
                     "blobfs: WARNING: ds1/meta: the mount hides 1 entry of this folder: "
                     "'out.json' (link leading out of the project)"], err


def test_readdir_gives_types_without_stat(mnt):
    DT_DIR, DT_REG = 4, 8
    root = _dtypes(mnt.mountpoint)
    assert root["ds1"] == DT_DIR and root["meta.json"] == DT_REG
    img = _dtypes(mnt.path("ds1/img"))
    assert len(img) == 62 + 2
    assert {t for n, t in img.items() if n not in (".", "..")} == {DT_REG}
    assert _dtypes(mnt.path("ds1"))["img"] == DT_DIR


# -- read-only -------------------------------------------------------------------------------
WRITE_OPS = {
    "open_for_write": lambda p: os.close(os.open(p / "meta.json", os.O_WRONLY)),
    "open_rdwr": lambda p: os.close(os.open(p / "ds1/img/img_000.png", os.O_RDWR)),
    "create": lambda p: os.close(os.open(p / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644)),
    "mkdir": lambda p: os.mkdir(p / "newdir"),
    "unlink": lambda p: os.unlink(p / "meta.json"),
    "rmdir": lambda p: os.rmdir(p / "ds2/img"),
    "rename": lambda p: os.rename(p / "meta.json", p / "meta2.json"),
    "chmod": lambda p: os.chmod(p / "meta.json", 0o666),
    "chown": lambda p: os.chown(p / "meta.json", 1, 1),
    "truncate": lambda p: os.truncate(p / "ds1/img/img_000.png", 0),
    "setxattr": lambda p: os.setxattr(p / "meta.json", "user.x", b"1"),
    "touch": lambda p: os.utime(p / "meta.json"),
    "symlink": lambda p: os.symlink("meta.json", p / "link"),
    "hardlink": lambda p: os.link(p / "meta.json", p / "link2"),
}


@pytest.mark.parametrize("op", sorted(WRITE_OPS))
def test_writes_fail_with_erofs(mnt, op):
    with pytest.raises(OSError) as e:
        WRITE_OPS[op](mnt.mountpoint)
    assert e.value.errno == errno.EROFS, (op, e.value)
