"""Data and mounts for bench_mount.py: generated images (cached under the work folder), the
sparse 1M-entry project, and one mounted column (native folder, ratarmount or blobfs) that
always unmounts and waits for its daemon to exit."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BLOBFS = [sys.executable, "-m", "blobfs"]
BIG = "zz_big.png"
BIG_SIZE = 256 << 20
CHUNK = 128 << 10
MTIME = 1700000000


# -- data ------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def knob(path: str) -> str:
    """A kernel setting the figures depend on, for the table's header line."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "absent"


def names_for(n: int) -> list[str]:
    return [f"img_{i:07d}.png" for i in range(n)]


def build(work: Path, n: int) -> Path:
    """``work/nN`` with ``native/`` (N images + the big member) and ``proj/`` (blob project)."""
    base = work / f"n{n}"
    done = base / ".complete"
    if done.exists():
        return base
    if base.exists():
        shutil.rmtree(base)
    native, proj = base / "native", base / "proj"
    native.mkdir(parents=True)
    log(f"generating {n} images in {native}")
    rnd = random.Random(n)
    pool = os.urandom(1 << 20)
    for i, name in enumerate(names_for(n)):
        size = 3500 + rnd.randrange(1200)
        off = rnd.randrange(len(pool) - size)
        # A distinct header per file: same-content files would let any cache cheat.
        data = i.to_bytes(8, "little") + pool[off + 8 : off + size]
        fd = os.open(native / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    with open(native / BIG, "wb") as f:
        for _ in range(BIG_SIZE >> 20):
            f.write(os.urandom(1 << 20))
    for p in native.iterdir():
        os.utime(p, (MTIME, MTIME))
    (proj / "blob").mkdir(parents=True)
    (proj / "ds" / "ann").mkdir(parents=True)
    (proj / "meta.json").write_text('{"classes": [], "tags": []}')
    log("packing with blobfs pack")
    tar = proj / "blob" / "images.tar"
    subprocess.run([*BLOBFS, "pack", str(native), "-o", str(tar), "--include", "*.png",
                    "--mtime", str(MTIME)], check=True, cwd=REPO)
    (proj / "blob" / "images_offsets.pkl").rename(proj / "ds" / "images_offsets.pkl")
    ann = proj / "ds" / "ann"
    for name in [*names_for(n), BIG]:
        (ann / f"{name}.json").write_text("{}")
    done.touch()
    return base


def build_sparse(work: Path, n: int) -> Path:
    """A project whose offsets file has N entries into a sparse tar (mount time / memory only)."""
    base = work / f"sparse{n}"
    done = base / ".complete"
    if done.exists():
        return base
    if base.exists():
        shutil.rmtree(base)
    sys.path.insert(0, str(REPO))
    from blobfs.format.offsets_write import write_offsets

    proj = base / "proj"
    (proj / "blob").mkdir(parents=True)
    (proj / "ds" / "ann").mkdir(parents=True)
    (proj / "meta.json").write_text('{"classes": [], "tags": []}')
    log(f"writing a sparse tar with {n} offsets")
    entries, pos = [], 512
    for name in names_for(n):
        entries.append((name, pos, pos + 4096))
        pos += 4096 + 512
    with open(proj / "blob" / "images.tar", "wb") as f:
        # The first member's header: opening refuses a file whose first block is no header.
        head = tarfile.TarInfo(names_for(1)[0])
        head.size = 4096
        f.write(head.tobuf(tarfile.USTAR_FORMAT))
        f.truncate(pos + 1024)
    write_offsets(proj / "ds" / "images_offsets.pkl", entries)
    ann = proj / "ds" / "ann"
    for name in names_for(n):
        (ann / f"{name}.json").write_text("{}")
    done.touch()
    return base


# -- mounts ----------------------------------------------------------------------------------
def mounted(mp_: Path) -> bool:
    target = str(mp_)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return any(line.split()[4] == target for line in f)


def force_unmount(mp_: Path) -> None:
    for cmd in (["fusermount3", "-u", "-q"], ["fusermount", "-u", "-q"], ["fusermount3", "-u", "-z", "-q"],
                ["umount", "-l"]):
        if not mounted(mp_):
            return
        if shutil.which(cmd[0]):
            subprocess.run([*cmd, str(mp_)], capture_output=True, timeout=60)


def daemon_pids(mp_: Path) -> list[int]:
    """Every process serving ``mp_``: the daemon and its per-CPU workers."""
    want = str(mp_).encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if want in args and not any(a.endswith(b"bench_mount.py") for a in args):
            pids.append(int(d))
    return pids


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def daemon_pid(mp_: Path) -> int | None:
    """The main daemon process of ``mp_`` (the workers are its children)."""
    pids = daemon_pids(mp_)
    mains = [p for p in pids if _ppid(p) not in pids]
    return mains[0] if mains else None


def pss_mib(pid: int | None) -> float:
    """Proportional set size of ``pid`` and its children: the memory the daemon's processes
    use together, shared pages counted once (VmRSS would count them in every worker)."""
    if pid is None:
        return float("nan")
    pids = [pid]
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            pids += [int(c) for c in f.read().split()]
    total = 0
    for p in pids:
        with open(f"/proc/{p}/smaps_rollup") as f:
            total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    return total / 1024


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_gone(pid: int | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.02)


@dataclass
class System:
    """One column: where its files are and how to (re)mount it."""

    name: str
    img: Path                       # the folder holding the N images (and the big member)
    mountpoint: Path | None = None  # None: native
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None

    @property
    def is_fuse(self) -> bool:
        return self.mountpoint is not None

    def mount(self) -> float:
        """Mount; seconds from the command's start until the image folder is listable."""
        if not self.is_fuse:
            return float("nan")
        assert self.mountpoint is not None
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        t0 = time.perf_counter()
        r = subprocess.run(self.cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"{self.name}: mount failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        deadline = time.monotonic() + 600
        while True:  # ratarmount may return before it serves
            try:
                with os.scandir(self.img) as it:
                    next(it)
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: {self.img} not listable") from None
                time.sleep(0.005)
        dt = time.perf_counter() - t0
        self.pid = daemon_pid(self.mountpoint)
        return dt

    def umount(self) -> None:
        if self.mountpoint is not None:
            force_unmount(self.mountpoint)
            wait_gone(self.pid)
            self.pid = None
