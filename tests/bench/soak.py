#!/usr/bin/env python3
"""Soak test: many concurrent readers over a large mounted blob, every byte checked.

    .venv/bin/python tests/bench/soak.py [--images 300000] [--seconds 60] [--readers 64]
                                          [--short] [--workdir DIR] [--libfuse 2|3] [--threads]

Builds (once, cached under ``--workdir``) a blob project of N images of pseudo-random bytes
(mostly 0.2-6 KiB, every 100th 64-400 KiB so reads cross the 128 KiB FUSE request size) with a
sha256 of every source image taken before packing; mounts it with ``blobfs mount -f``; runs
the readers for a fixed time; always unmounts. Half of the readers are processes, half are
threads (in a few processes, so the GIL of one interpreter is not the bottleneck). Reader kinds
take turns: buffered ``read()``, ``pread`` in odd-sized chunks, ``mmap``, ``O_DIRECT`` (the
page cache is bypassed, so every read reaches the daemon) and read-then-evict
(``posix_fadvise(DONTNEED)``, so the next read of that file reaches the daemon again).

O_DIRECT on FUSE: with no FOPEN_DIRECT_IO from the filesystem, Linux still accepts O_DIRECT
opens on FUSE and sends the reads straight to the daemon (fs/fuse/file.c ``fuse_direct_IO``);
blobfs answers ``open`` with ENOSYS, and the kernel then opens without asking it. If the open
fails with EINVAL (older kernels), the O_DIRECT readers fall back to read-then-evict and the
report says so.

Pass criteria (exit 0, else 1): zero mismatches, zero read errors, every reader made progress
within every ``--stall`` seconds (the watchdog; a stuck reader or daemon fails the run), all
readers stopped when asked, the daemon's VmRSS flat during the read phase (the maximum over the
second half of the run is within 16 MiB + 10 % of the maximum over the first half), a clean
unmount and daemon exit 0. Before the readers start, every name is looked up once: libfuse's
high-level API keeps a node per looked-up name (~180 bytes each, measured: 300,000 names
+54 MiB, then flat), which would otherwise look like growth during the run.
``--short`` = 3,000 images, 8 s, 16 readers (what tests/test_soak_short.py runs in CI).
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import mmap
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOBFS = [sys.executable, "-m", "blobfs"]
KINDS = ("read", "pread_chunks", "mmap", "odirect", "read_evict")
CHUNKS = (1, 511, 4096, 65536, 131072, 200_000)


# -- the data ----------------------------------------------------------------------------------
def image_name(i: int) -> str:
    return f"img_{i:07d}.png"


def image_bytes(i: int) -> bytes:
    rnd = random.Random(i * 7919 + 1)
    size = 65536 + rnd.randrange(335_000) if i % 100 == 99 else 200 + rnd.randrange(6000)
    return rnd.randbytes(size)


def build(workdir: Path, n: int) -> Path:
    """The project for ``n`` images (reused when already built); returns its folder."""
    root = workdir / f"soak-{n}"
    if (root / "done.json").is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    sys.path.insert(0, str(REPO))
    from blobfs.format.offsets_write import write_offsets
    from blobfs.format.tarindex import index_tar

    (root / "blob").mkdir(parents=True)
    (root / "ds" / "ann").mkdir(parents=True)
    (root / "meta.json").write_text('{"classes": [], "tags": []}')
    digests = bytearray()
    t0 = time.monotonic()
    with tarfile.open(root / "blob" / "images.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(n):
            data = image_bytes(i)
            digests += hashlib.sha256(data).digest()  # from the source, before packing
            info = tarfile.TarInfo(image_name(i))
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    entries = index_tar(root / "blob" / "images.tar")
    assert [e[0] for e in entries] == [image_name(i) for i in range(n)]
    write_offsets(root / "ds" / "images_offsets.pkl", entries)
    (root / "sha256.bin").write_bytes(bytes(digests))
    (root / "done.json").write_text(json.dumps({"images": n, "tar_bytes": (root / "blob" / "images.tar").stat().st_size,
                                                "build_s": round(time.monotonic() - t0, 1)}))
    return root


# -- readers -------------------------------------------------------------------------------------
def odirect_supported(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    return True


def read_one(path: str, kind: str, rnd: random.Random, buf: mmap.mmap) -> bytes:
    """sha256 digest of the file at ``path`` read the ``kind`` way."""
    h = hashlib.sha256()
    if kind == "read" or kind == "read_evict":
        with open(path, "rb") as f:
            h.update(f.read())
            if kind == "read_evict":
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return h.digest()
    flags = os.O_RDONLY | (os.O_DIRECT if kind == "odirect" else 0)
    fd = os.open(path, flags)
    try:
        size = os.fstat(fd).st_size
        if kind == "mmap":
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
                h.update(m)
            return h.digest()
        off = 0
        while off < size:
            if kind == "odirect":  # aligned buffer and lengths, as O_DIRECT wants in general
                n = os.preadv(fd, [buf], off)
                data = buf[:n]
            else:
                data = os.pread(fd, rnd.choice(CHUNKS), off)
                n = len(data)
            if n == 0:
                break
            h.update(data)
            off += n
        return h.digest()
    finally:
        os.close(fd)


def reader(slot: int, kind: str, root: str, n: int, digests: bytes, progress, bad, errors, stop,
           q) -> None:
    rnd = random.Random(slot)
    buf = mmap.mmap(-1, 1 << 20)  # page-aligned
    img = os.path.join(root, "ds", "img")
    while not stop.value:
        i = rnd.randrange(n)
        try:
            got = read_one(os.path.join(img, image_name(i)), kind, rnd, buf)
        except OSError as e:
            if stop.value:
                break
            errors[slot] += 1
            if errors[slot] <= 3:
                q.put(f"reader {slot} ({kind}): {image_name(i)}: {e}")
            continue
        if got != digests[32 * i:32 * i + 32]:
            bad[slot] += 1
            if bad[slot] <= 3:
                q.put(f"reader {slot} ({kind}): MISMATCH {image_name(i)}")
        progress[slot] += 1


def worker(slots: list[tuple[int, str]], root: str, n: int, digests_path: str, progress, bad, errors,
           stop, q) -> None:
    digests = Path(digests_path).read_bytes()
    threads = [threading.Thread(target=reader, args=(s, k, root, n, digests, progress, bad, errors, stop, q))
               for s, k in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# -- daemon ---------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return any(line.split()[4] == str(path) for line in f)


def wait_mounted(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"blobfs exited with {proc.returncode} before mounting")
        if is_mounted(path):
            os.listdir(path)
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path} not mounted within {timeout} s")


def unmount(path: Path, proc: subprocess.Popen) -> int:
    """Unmount (lazily if busy), wait for the daemon; never leaves a mount or a process."""
    if is_mounted(path):
        r = subprocess.run([*BLOBFS, "umount", str(path)], capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0 and is_mounted(path):
            subprocess.run([*BLOBFS, "umount", "--lazy", str(path)], capture_output=True, cwd=REPO)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=30)
    finally:
        if is_mounted(path):
            for cmd in (["fusermount3", "-u", "-z"], ["fusermount", "-u", "-z"], ["umount", "-l"]):
                if shutil.which(cmd[0]) and is_mounted(path):
                    subprocess.run([*cmd, str(path)], capture_output=True)


# -- the run ---------------------------------------------------------------------------------------
def soak(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    root = build(workdir, args.images)
    built = json.loads((root / "done.json").read_text())
    mnt = Path(tempfile.mkdtemp(prefix="mnt-", dir=workdir))
    log = open(workdir / "daemon.log", "w")
    cmd = [*BLOBFS, "mount", "-f", str(root), str(mnt)]
    if args.libfuse:
        cmd += ["--libfuse", str(args.libfuse)]
    if args.threads:
        cmd += ["-o", "threads"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO)
    report: dict = {"images": args.images, "tar_bytes": built["tar_bytes"], "seconds": args.seconds,
                    "readers": args.readers, "libfuse": args.libfuse or 3, "threads": args.threads,
                    "failures": []}
    fail = report["failures"]
    ctx = mp.get_context("spawn")
    procs: list = []
    stop = ctx.Value("b", 0, lock=False)
    try:
        wait_mounted(mnt, proc)
        report["setup_s"] = round(time.monotonic() - t0, 1)
        report["daemon_rss_kib_mounted"] = rss_kib(proc.pid)
        if not args.no_warm:
            # libfuse's high-level API keeps one node per name the kernel looked up (until the
            # kernel forgets it): memory grows with the distinct names touched, bounded by the
            # item count. Look every name up once first, so the read phase measures per-read
            # growth (a leak) only.
            t = time.monotonic()
            img = mnt / "ds" / "img"
            for i in range(args.images):
                os.stat(img / image_name(i))
            report["warm_lookups_s"] = round(time.monotonic() - t, 1)
            report["daemon_rss_kib_after_lookups"] = rss_kib(proc.pid)
        probe = str(mnt / "ds" / "img" / image_name(0))
        report["odirect"] = odirect_supported(probe)
        kinds = [KINDS[k % len(KINDS)] for k in range(args.readers)]
        if not report["odirect"]:
            kinds = ["read_evict" if k == "odirect" else k for k in kinds]
        R = args.readers
        progress = ctx.Array("q", R, lock=False)
        bad = ctx.Array("q", R, lock=False)
        errors = ctx.Array("q", R, lock=False)
        q = ctx.Queue()
        # first half: one process per reader; second half: threads, spread over 4 processes
        half = R // 2
        groups = [[(s, kinds[s])] for s in range(half)]
        tgroups = max(1, min(4, R - half))
        groups += [[(s, kinds[s]) for s in range(half + g, R, tgroups)] for g in range(tgroups)]
        groups = [g for g in groups if g]
        report["reader_processes"], report["reader_threads"] = half, R - half
        for g in groups:
            p = ctx.Process(target=worker, args=(g, str(mnt), args.images, str(root / "sha256.bin"),
                                                 progress, bad, errors, stop, q), daemon=True)
            p.start()
            procs.append(p)
        start = time.monotonic()
        last = [0] * R
        last_t = [start] * R
        rss: list[tuple[float, int]] = []
        while time.monotonic() - start < args.seconds:
            time.sleep(1.0)
            now = time.monotonic()
            r = rss_kib(proc.pid)
            if r is None or proc.poll() is not None:
                fail.append(f"daemon died (status {proc.poll()})")
                break
            rss.append((round(now - start, 1), r))
            for s in range(R):
                if progress[s] != last[s]:
                    last[s], last_t[s] = progress[s], now
                elif now - last_t[s] > args.stall:
                    fail.append(f"watchdog: reader {s} ({kinds[s]}) made no progress for {args.stall} s")
            if fail:
                break
        elapsed = time.monotonic() - start
        stop.value = 1
        deadline = time.monotonic() + max(30.0, args.stall)
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        stuck = [p.pid for p in procs if p.is_alive()]
        if stuck:
            fail.append(f"watchdog: reader processes {stuck} did not stop within {max(30.0, args.stall)} s")
        msgs = []
        while not q.empty() and len(msgs) < 20:
            msgs.append(q.get_nowait())
        reads = sum(progress)
        report.update({
            "run_s": round(elapsed, 1), "reads_verified": reads, "reads_per_s": round(reads / elapsed),
            "mismatches": sum(bad), "read_errors": sum(errors),
            "reads_by_kind": {k: sum(progress[s] for s in range(R) if kinds[s] == k) for k in sorted(set(kinds))},
            "min_reads_per_reader": min(progress), "messages": msgs,
        })
        if report["mismatches"]:
            fail.append(f"{report['mismatches']} mismatching reads")
        if report["read_errors"]:
            fail.append(f"{report['read_errors']} read errors")
        if rss:
            mid = len(rss) // 2
            first = max(v for _, v in rss[:max(mid, 1)])
            second = max(v for _, v in rss[mid:]) if rss[mid:] else first
            report["daemon_rss_kib"] = {"start": rss[0][1], "max_first_half": first, "max_second_half": second,
                                        "end": rss[-1][1],
                                        "samples": [v for _, v in rss[:: max(1, len(rss) // 12)]]}
            if second > first * 1.10 + 16 * 1024:
                fail.append(f"daemon memory grew: {first} KiB -> {second} KiB")
    except BaseException as e:  # Ctrl-C or a setup failure: still clean up below
        fail.append(f"{type(e).__name__}: {e}")
    finally:
        stop.value = 1
        for p in procs:
            if p.is_alive():
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        code = unmount(mnt, proc)
        log.close()
        report["daemon_exit"] = code
        if code != 0:
            fail.append(f"daemon exit status {code}")
        if is_mounted(mnt):
            fail.append(f"{mnt} still mounted")
        else:
            mnt.rmdir()
        daemon_log = (workdir / "daemon.log").read_text(errors="replace")
        if "Traceback" in daemon_log:
            fail.append("Traceback in the daemon log")
    report["ok"] = not fail
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--readers", type=int, default=64)
    ap.add_argument("--short", action="store_true", help="3,000 images, 8 s, 16 readers (CI)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "blobfs-soak"),
                    help="where the built project is cached (default: %(default)s)")
    ap.add_argument("--libfuse", type=int, choices=(2, 3), default=None)
    ap.add_argument("--threads", action="store_true", help="mount with -o threads")
    ap.add_argument("--stall", type=float, default=30.0, help="watchdog: max seconds without progress per reader")
    ap.add_argument("--no-warm", action="store_true",
                    help="skip looking every name up before the readers start")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    if args.short:
        args.images, args.seconds, args.readers = 3_000, 8.0, 16
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    report = soak(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            if k != "messages" or v:
                print(f"{k}: {v}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
