"""Mount option parsing and the mount-helper argv routing (no FUSE needed)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from blobfs.cli.main import route_argv
from blobfs.cli.mount import mount_cmd
from blobfs.fuse.lowlevel import _argv
from blobfs.fuse.options import DEFAULT_SPIN_US, MountUsageError, build_options, parse_o
from blobfs.model.ownership import Ownership


def test_generic_options_are_accepted_and_ignored():
    # what mount(8)/mount.fuse3 actually pass: "rw,dev,suid" are added to every fstab line
    got = parse_o(["rw,dev,suid", "ro,nofail,noauto,user,users,_netdev,defaults,x-systemd.automount,"
                                  "x-systemd.idle-timeout=10min,comment=hello,auto,nouser,nosuid,nodev"])
    assert set(got) == {"ignored"}
    assert "x-systemd.idle-timeout=10min" in got["ignored"] and "rw" in got["ignored"]


def test_noexec_is_honoured_not_ignored():
    # fstab's noexec (also what mount(8) adds for "user") must reach the kernel: pass-through
    # files keep their execute bits, so ignoring it left them executable.
    from blobfs.fuse.lowlevel import _argv

    o = build_options("s", "m", o=("ro,noexec,nosuid,nodev,user",))
    assert o.noexec and "noexec" not in o.ignored
    assert o.fuse_kwargs(3)["noexec"] and o.fuse_kwargs(2)["noexec"]
    assert b"noexec" in _argv(o, "s")[2].split(b",")
    # the last of exec / noexec wins, as with mount(8)
    assert not build_options("s", "m", o=("noexec,exec",)).noexec
    assert build_options("s", "m", o=("exec", "noexec")).noexec
    d = build_options("s", "m", o=("exec",))
    assert not d.noexec and "noexec" not in d.fuse_kwargs(3) and b"noexec" not in _argv(d, "s")[2]


def test_subtype_blobfs_from_mount_fuse3_is_accepted():
    # mount.fuse3 adds subtype=blobfs for an fstab type fuse.blobfs (no helper installed).
    o = build_options("s", "m", o=("ro,nofail,subtype=blobfs",))
    assert o.fuse_kwargs(3)["subtype"] == "blobfs"


def test_own_options():
    o = build_options("src", "mp", o=("allow_other,auto_unmount", "libfuse=2,threads,log=/tmp/x.log,nonempty"))
    assert (o.allow_other, o.auto_unmount, o.libfuse, o.threads, o.nonempty) == (True, True, 2, True, True)
    assert o.log_file == Path("/tmp/x.log") and o.source.is_absolute() and o.mountpoint.is_absolute()
    kw = o.fuse_kwargs(3)
    assert kw["ro"] and kw["default_permissions"] and kw["kernel_cache"] and kw["use_ino"]
    assert kw["subtype"] == "blobfs" and kw["fsname"] == str(o.source) and kw["allow_other"]
    assert kw["attr_timeout"] >= 3600 and kw["entry_timeout"] >= 3600
    assert "nonempty" not in kw and o.fuse_kwargs(2)["nonempty"]
    assert "allow_other" not in build_options("s", "m").fuse_kwargs(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.threads = False  # type: ignore[misc]


def test_uid_gid_umask():
    d = build_options("s", "m")
    assert (d.uid, d.gid, d.umask, d.ownership) == (None, None, None, None)  # the sources' owners
    o = build_options("s", "m", o=("ro,allow_other,uid=1000,gid=1001,umask=022,nofail",))
    assert (o.uid, o.gid, o.umask) == (1000, 1001, 0o022) and o.allow_other
    assert (o.ownership.uid, o.ownership.gid, o.ownership.umask) == (1000, 1001, 0o022)
    assert build_options("s", "m", o=("umask=0077",)).umask == 0o077
    assert build_options("s", "m", o=("umask=0",)).ownership.umask == 0  # given, though it masks nothing
    assert build_options("s", "m", o=("uid=root,gid=root",)).ownership == Ownership(0, 0)  # names: pwd/grp
    assert build_options("s", "m", o=("uid=0",)).uid == 0
    kw, argv = o.fuse_kwargs(3), b",".join(_argv(o, "s"))
    # applied by the view, never handed to libfuse (whose high-level umask= replaces modes and
    # fusermount3 refuses uid=)
    assert not {"uid", "gid", "umask"} & set(kw) and b"uid=" not in argv and b"umask" not in argv


def test_cli_bad_uid_exit_2_one_line(tmp_path):
    r = CliRunner().invoke(mount_cmd, [str(tmp_path), str(tmp_path), "-o", "ro,uid=abc"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["blobfs mount: mount option uid=abc: no such user "
                                             "(give a number or a user name)"]


def test_flags_win_over_o_and_defaults():
    o = build_options("s", "m", o=("threads,libfuse=2",), threads=False, libfuse="3")
    assert (o.threads, o.libfuse) == (False, 3)
    d = build_options("s", "m")
    assert (d.threads, d.libfuse, d.foreground, d.allow_other) == (False, None, False, False)
    assert build_options("blobfs#/data/p", "m").source == Path("/data/p")


def test_spin_us_default_and_values():
    assert build_options("s", "m").spin_us is None
    assert build_options("s", "m").spin_window(1) == DEFAULT_SPIN_US > 0  # one process polls
    assert build_options("s", "m").spin_window(2) == 0  # pinned workers do not
    assert build_options("s", "m", o=("spin_us=30",)).spin_window(2) == 30
    assert build_options("s", "m", o=("spin_us=0",)).spin_us == 0
    assert build_options("s", "m", o=("ro,spin_us=250",)).spin_us == 250


def test_workers_default_and_values():
    assert build_options("s", "m").workers is None  # one per CPU
    assert build_options("s", "m", o=("workers=auto",)).workers is None
    assert build_options("s", "m", o=("workers=1",)).workers == 1
    assert build_options("s", "m", o=("ro,workers=256",)).workers == 256


def test_uring_default_and_values():
    assert build_options("s", "m").uring is None  # whenever the kernel offers it
    assert build_options("s", "m", o=("uring",)).uring is True  # asked for: a warning without it
    assert build_options("s", "m", o=("ro,nouring",)).uring is False


@pytest.mark.parametrize("bad,word", [("frobnicate", "frobnicate"), ("libfuse", "libfuse"),
                                      ("allow_other=1", "allow_other"), ("libfuse=4", "4"),
                                      ("threads,nothreads", "contradict"), ("uring,nouring", "contradict"),
                                      ("spin_us=-1", "spin_us"),
                                      ("spin_us=fast", "fast"), ("spin_us=2000000", "spin_us"),
                                      ("spin_us", "spin_us"), ("workers=0", "workers"),
                                      ("workers=-2", "workers"), ("workers=many", "many"),
                                      ("workers=257", "257"), ("workers", "workers"),
                                      # an empty value is none: it meant "no log file" etc.
                                      ("log=", "'log' needs a value"),
                                      ("offsets=", "'offsets' needs a value"),
                                      ("ann=", "'ann' needs a value"),
                                      ("fsname=", "'fsname' needs a value"),
                                      # was accepted and dropped: the mount stayed fuse.blobfs
                                      ("subtype=other", "fuse.blobfs"),
                                      ("uid=", "'uid' needs a value"), ("gid=", "'gid' needs a value"),
                                      ("umask=", "'umask' needs a value"),
                                      ("uid=-1", "uid=-1"), ("uid=ro\0ot", "uid=ro\\0ot: not a user id or name"), ("gid=-1", "gid=-1"), ("uid=+5", "uid=+5"),
                                      ("uid=4294967295", "uid=4294967295"),
                                      ("uid=no-such-user-here", "no such user"),
                                      ("gid=no-such-group-here", "no such group"),
                                      ("umask=999", "umask=999"), ("umask=8", "umask=8"),
                                      ("umask=01000", "umask=01000"), ("umask=-22", "umask=-22"),
                                      ("umask=0x12", "umask=0x12"),
                                      ("allow_root", "allow_root")])
def test_bad_options_are_usage_errors_naming_them(bad, word):
    with pytest.raises(MountUsageError) as e:
        build_options("s", "m", o=(bad,))
    assert word in str(e.value) and "\n" not in str(e.value)


def test_cli_unknown_option_exit_2_one_line(tmp_path):
    r = CliRunner().invoke(mount_cmd, [str(tmp_path), str(tmp_path), "-o", "ro,bogus"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["blobfs mount: unknown mount option 'bogus'"]


def test_route_mount_helper_argv():
    assert route_argv(["/data/p", "/mnt/p", "-o", "ro"]) == ["mount", "/data/p", "/mnt/p", "-o", "ro"]
    assert route_argv(["info", "/data/p"]) == ["info", "/data/p"]
    assert route_argv(["--help"]) == ["--help"]
    assert route_argv(["/data/p"]) == ["/data/p"]


def test_an_automount_trigger_on_the_mount_point_is_no_mount_to_refuse(tmp_path, monkeypatch):
    """``x-systemd.automount`` (systemd/fstab.example) mounts blobfs on top of an autofs
    trigger. The check saw that trigger as "already mounted (autofs …)" and refused, and with
    it gone would have listed the folder, which waits for this very mount. This kernel has no
    autofs (CONFIG_AUTOFS_FS unset), so the trigger's mount-table entry is stood in for; any
    other file system there is still refused."""
    from blobfs.fuse import preflight

    src, mp = tmp_path / "proj", tmp_path / "mp"
    src.mkdir()
    mp.mkdir()
    opts = build_options(src, mp)
    listed: list[object] = []
    real_scandir = preflight.os.scandir
    monkeypatch.setattr(preflight.os, "scandir", lambda p: listed.append(p) or real_scandir(p))
    monkeypatch.setattr(preflight, "mount_entry", lambda p: ("autofs", "systemd-1"))
    preflight.check_mountpoint(opts)
    assert listed == []
    monkeypatch.setattr(preflight, "mount_entry", lambda p: ("tmpfs", "tmpfs"))
    with pytest.raises(preflight.MountError, match=r"already mounted \(tmpfs from tmpfs\)"):
        preflight.check_mountpoint(opts)
    monkeypatch.setattr(preflight, "mount_entry", lambda p: None)
    listed.clear()  # (the stale check just made lists the folder too)
    preflight.check_mountpoint(opts)
    assert listed == [opts.mountpoint]  # a plain folder is still checked for emptiness
