#!/usr/bin/env python3
"""Mount speed and memory (issue #3): blobfs against the native directory and ratarmount.

Run by hand, as root (cold rounds write /proc/sys/vm/drop_caches), never by pytest:

    python3 -m venv /tmp/ratvenv && /tmp/ratvenv/bin/pip install ratarmount
    .venv/bin/python tests/bench/bench_mount.py --sizes 30000,300000 \
        --ratarmount /tmp/ratvenv/bin/ratarmount --workdir /tmp/blobfs-mountbench

For each size it generates (once, cached under ``--workdir``) N images of ~4 KB of random
bytes plus one 256 MiB member in a plain folder (``native``: the physical limit), packs the
folder with ``blobfs pack`` into a blob project, and mounts the same tar with ratarmount and
with blobfs (one column per ``--variant``). Warm measures run in interleaved rounds (the
system order rotates per round) and each figure is the median over rounds; the machine is
shared, so the FUSE round trip moves with the host's load far more than the native folder.
Prints one table per size: every system, ratios to native (and blobfs / ratarmount), targets.
Everything mounted is unmounted on the way out, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mountbench_setup import (BIG, BLOBFS, CHUNK, System, build, build_sparse, force_unmount, knob, log,
                              names_for, pss_mib, rss_mib)

# -- readers (each returns a rate or a time) --------------------------------------------------
def read_os(paths: list[str]) -> float:
    """Files/s with plain syscalls, like cat/cp: open, read until EOF, close."""
    o, r, c, fl = os.open, os.read, os.close, os.O_RDONLY
    t0 = time.perf_counter()
    for p in paths:
        fd = o(p, fl)
        while r(fd, CHUNK):
            pass
        c(fd)
    return len(paths) / (time.perf_counter() - t0)


def read_py(paths: list[str]) -> float:
    """Files/s with Python's open() (what PIL.Image.open(path) does: fstat, isatty, read)."""
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    return len(paths) / (time.perf_counter() - t0)


def _reader_proc(paths: list[str], go, q, buffering: int) -> None:  # type: ignore[no-untyped-def]
    go.wait()
    for p in paths:
        with open(p, "rb", buffering=buffering) as f:
            f.read()
    q.put(time.perf_counter())


def read_py_parallel(paths: list[str], procs: int, buffering: int = -1) -> float:
    """Files/s of ``procs`` processes with open(), from a common start to the last finisher.
    ``buffering`` as open()'s: the default -1 asks ``isatty()``, any other value does not."""
    ctx = mp.get_context("fork")
    go, q = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_reader_proc, args=(paths[k::procs], go, q, buffering)) for k in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    go.set()
    ends = [q.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    return len(paths) / (max(ends) - t0)


def latency_us(paths: list[str]) -> float:
    """Mean µs to open, read and close one random file."""
    o, r, c, fl, pc = os.open, os.read, os.close, os.O_RDONLY, time.perf_counter
    total = 0.0
    for p in paths:
        t0 = pc()
        fd = o(p, fl)
        while r(fd, CHUNK):
            pass
        c(fd)
        total += pc() - t0
    return total / len(paths) * 1e6


def find_s(folder: Path, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["find", str(folder), *args], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def seq_mbs(path: str) -> float:
    buf = bytearray(1 << 20)
    fd = os.open(path, os.O_RDONLY)
    total = 0
    t0 = time.perf_counter()
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    return total / (time.perf_counter() - t0) / 1e6


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# -- the run ---------------------------------------------------------------------------------
TARGETS: list[tuple[str, str, str, str, float]] = [
    # key, label, unit, target text, kind ("rate": higher better; "time": lower better)
    ("os", "read all, 1 reader, warm, os.open/read", "files/s", ">= 0.8x native", 0),
    ("py", "read all, 1 reader, warm, Python open()", "files/s", ">= 0.25x native, >= 4x ratarmount", 0),
    ("cold", "read all, 1 reader, cold caches (os)", "files/s", ">= 1.0x native", 0),
    ("par", "read all, 8 readers, warm, open()", "files/s", ">= 0.5x native", 0),
    ("lat", "random 4 KB file, warm, mean latency", "us", "<= 3x native", 1),
    ("find", "find -type f, warm", "s", "<= 1.5x native", 1),
    ("findp", "find -printf '%s\\n', warm", "s", "<= 1.5x native", 1),
    ("seq", "256 MiB member, sequential, warm", "MB/s", ">= 0.5x native", 0),
    ("mount", "mount until listable (index cached)", "s", "<= 1 s (300k) / <= 3 s (1M)", 1),
    ("mountc", "mount until listable, after drop_caches", "s", "", 1),
    ("mount1", "first mount (no index cache)", "s", "", 1),
    ("rss", "daemon VmRSS after reading all", "MiB", "<= 120 MiB (300k) / <= 250 MiB (1M)", 1),
    ("pss", "daemon PSS, all its processes", "MiB", "<= 120 MiB (300k) / <= 250 MiB (1M)", 1),
]


def run_size(args: argparse.Namespace, n: int, systems: list[System]) -> dict[str, dict[str, list[float]]]:
    res: dict[str, dict[str, list[float]]] = {s.name: {k: [] for k, *_ in TARGETS} for s in systems}
    names = names_for(n)
    sample = random.Random(7).sample(names, min(args.latency_samples, n))
    fuse = [s for s in systems if s.is_fuse]

    def paths(s: System, which: list[str]) -> list[str]:
        return [str(s.img / x) for x in which]

    # First mounts with no index cache (ratarmount's sqlite index, blobfs's XDG cache).
    for s in fuse:
        for d in s.env.get("_CLEAN", "").split(":"):
            if d:
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
        t = s.mount()
        res[s.name]["mount1"].append(t)
        log(f"{s.name}: first mount {t:.2f} s")
        s.umount()
        res[s.name]["mount"].append(s.mount())

    for rnd in range(args.rounds):
        order = systems[rnd % len(systems):] + systems[: rnd % len(systems)]
        log(f"n={n} round {rnd + 1}/{args.rounds}: {', '.join(s.name for s in order)}")
        for s in order:
            if s.is_fuse and rnd:  # a fresh daemon each round: VmRSS is after this round's reads
                s.umount()
                res[s.name]["mount"].append(s.mount())
            which = names
            if s.name == "ratarmount" and n > args.ratarmount_sample:
                which = random.Random(rnd).sample(names, args.ratarmount_sample)
            all_p, lat_p = paths(s, which), paths(s, sample)
            read_os(all_p)  # warm: page cache and the kernel's dentry/attr caches
            r = res[s.name]
            r["os"].append(read_os(all_p))
            r["py"].append(read_py(all_p))
            r["par"].append(read_py_parallel(all_p, args.readers))
            r["lat"].append(latency_us(lat_p))
            find_s(s.img, "-type", "f")
            r["find"].append(find_s(s.img, "-type", "f"))
            r["findp"].append(find_s(s.img, "-printf", "%s\n"))
            seq_mbs(str(s.img / BIG))
            r["seq"].append(seq_mbs(str(s.img / BIG)))
            if s.is_fuse:
                r["rss"].append(rss_mib(s.pid))
                r["pss"].append(pss_mib(s.pid))
        # Cold: drop every cache, remount, read everything once (os.open/read).
        if rnd < args.cold_rounds:
            for s in order:
                s.umount()
                drop_caches()
                if s.is_fuse:
                    res[s.name]["mountc"].append(s.mount())
                which = names
                if s.name == "ratarmount" and n > args.ratarmount_sample:
                    which = sorted(random.Random(rnd).sample(names, args.ratarmount_sample))
                res[s.name]["cold"].append(read_os(paths(s, which)))
    return res


def fmt(v: float, unit: str) -> str:
    if v != v:
        return "-"
    if unit == "files/s" or (unit == "MB/s" and v >= 100):
        return f"{v:,.0f}"
    if unit == "us":
        return f"{v:.1f}"
    if unit == "s":
        return f"{v:.3f}"
    return f"{v:.1f}"


def table(n: int, res: dict[str, dict[str, list[float]]], systems: list[System], rat: str | None,
          sample: int) -> str:
    names = [s.name for s in systems]
    blobs = [s.name for s in systems if s.name not in ("native", rat)]
    med = {s: {k: (statistics.median(v) if v else float("nan")) for k, v in res[s].items()} for s in names}
    head = ["measure", "unit", *names, *(f"{b}/native" for b in blobs)]
    if rat:
        head += [f"{rat}/native", *(f"{b}/{rat}" for b in blobs)]
    head.append("target")
    rows = [head]
    for key, label, unit, target, _kind in TARGETS:
        row = [label, unit, *(fmt(med[s][key], unit) for s in names)]

        def ratio(a: str, b: str) -> str:
            x, y = med[a][key], med[b][key]
            return "-" if x != x or y != y or y == 0 else f"{x / y:.2f}x"

        row += [ratio(b, "native") for b in blobs]
        if rat:
            row += [ratio(rat, "native"), *(ratio(b, rat) for b in blobs)]
        row.append(target)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"### {n:,} images of ~4 KB (median of rounds; ratios: time ratios for s/us rows)"]
    if rat and n > sample:
        lines.append(f"(ratarmount's read rates: {sample:,} random files per pass)")
    for j, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if j == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def mount_only(args: argparse.Namespace, work: Path, n: int, variants: list[tuple[str, list[str]]]) -> str:
    """Mount time and daemon memory for a sparse N-entry project (blobfs only)."""
    base = build_sparse(work, n)
    lines = [f"### blobfs, {n:,}-entry offsets into a sparse tar (mount time and memory only)"]
    for vname, extra in variants:
        mpnt = work / "mnt" / vname
        xdg = work / "xdg" / vname
        s = System(vname, mpnt / "ds" / "img", mpnt,
                   [*BLOBFS, "mount", str(base / "proj"), str(mpnt), *extra],
                   {"XDG_CACHE_HOME": str(xdg), "_CLEAN": str(xdg)})
        times, firsts, rss = [], [], []
        try:
            for k in range(args.rounds):
                if k == 0:
                    shutil.rmtree(xdg, ignore_errors=True)
                t = s.mount()
                (firsts if k == 0 else times).append(t)
                # stat every item (the kernel forgets nothing; this is the daemon's lookup work)
                with os.scandir(s.img) as it:
                    cnt = sum(1 for _ in it)
                rss.append(rss_mib(s.pid))
                s.umount()
            read_rss = read_pss = None
            if args.sparse_read_all:
                # Open and read every item once (1 LOOKUP + 1 READ each reach the daemon).
                s.mount()
                names = os.listdir(s.img)
                o, r, c, fl = os.open, os.read, os.close, os.O_RDONLY
                for name in names:
                    fd = o(os.path.join(s.img, name), fl)
                    while r(fd, CHUNK):
                        pass
                    c(fd)
                read_rss, read_pss = rss_mib(s.pid), pss_mib(s.pid)
                s.umount()
        finally:
            s.umount()
        lines.append(f"- {vname}: first mount {firsts[0]:.2f} s, cached mount "
                     f"{statistics.median(times) if times else float('nan'):.2f} s, VmRSS after listing "
                     f"{cnt:,} entries {statistics.median(rss):.0f} MiB"
                     + (f", after reading all {read_rss:.0f} MiB (PSS of all daemon processes "
                        f"{read_pss:.0f} MiB)" if read_rss is not None else "")
                     + " (targets <= 3 s, <= 250 MiB)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="30000,300000", help="comma-separated image counts")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/blobfs-mountbench"))
    ap.add_argument("--ratarmount", help="path to the ratarmount executable (its own venv)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="a blobfs column with extra mount arguments, e.g. 'mt=--threads' "
                         "(default: one column 'blobfs' with no arguments)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold-rounds", type=int, default=2)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--latency-samples", type=int, default=3000)
    ap.add_argument("--sparse", type=int, default=0, help="also time mounting an N-entry sparse project")
    ap.add_argument("--sparse-read-all", action="store_true",
                    help="with --sparse: also read every entry once and report the daemon's VmRSS")
    ap.add_argument("--ratarmount-sample", type=int, default=30000,
                    help="ratarmount reads this many random files (not all) per pass on bigger "
                         "sizes: it is ~25x slower and rates are per file")
    ap.add_argument("--no-ratarmount-over", type=int, default=10**9,
                    help="skip ratarmount for sizes above this")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("run as root (cold rounds drop the page cache)")
    work = args.workdir.resolve()
    variants = [(v.partition("=")[0], shlex.split(v.partition("=")[2])) for v in args.variant] or [("blobfs", [])]
    all_systems: list[System] = []

    def cleanup(*_: object) -> None:
        for s in all_systems:
            s.umount()

    old = signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    out = []
    # -o uring variants fall back to /dev/fuse unless the kernel has it on. Autogroup puts the
    # daemon (its own session) in a scheduling group of its own, which changes how often a
    # reader's request costs two context switches (README, "Where the time goes").
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, "
          f"fuse enable_uring={knob('/sys/module/fuse/parameters/enable_uring')}, "
          f"sched_autogroup_enabled={knob('/proc/sys/kernel/sched_autogroup_enabled')}", flush=True)
    try:
        for n in (int(x) for x in args.sizes.split(",") if x.strip()):
            base = build(work, n)
            systems = [System("native", base / "native")]
            rat = None
            if args.ratarmount and n <= args.no_ratarmount_over:
                rat = "ratarmount"
                mpnt = work / "mnt" / "rat"
                idx = work / f"ratindex{n}"
                idx.mkdir(parents=True, exist_ok=True)
                systems.append(System(rat, mpnt, mpnt, [args.ratarmount, "--index-folders", str(idx),
                                                        str(base / "proj" / "blob" / "images.tar"), str(mpnt)],
                                      {"_CLEAN": str(idx)}))
            for vname, extra in variants:
                mpnt = work / "mnt" / vname
                xdg = work / "xdg" / vname
                systems.append(System(vname, mpnt / "ds" / "img", mpnt,
                                      [*BLOBFS, "mount", str(base / "proj"), str(mpnt), *extra],
                                      {"XDG_CACHE_HOME": str(xdg), "_CLEAN": str(xdg)}))
            all_systems.extend(systems)
            try:
                res = run_size(args, n, systems)
            finally:
                cleanup()
            out.append(table(n, res, systems, rat, args.ratarmount_sample))
            print(out[-1], flush=True)
            print(flush=True)
        if args.sparse:
            out.append(mount_only(args, work, args.sparse, variants))
            print(out[-1], flush=True)
    except KeyboardInterrupt:
        log("interrupted; unmounting")
        return 130
    finally:
        cleanup()
        signal.signal(signal.SIGTERM, old)
        if os.path.isdir(work / "mnt"):
            for m in (work / "mnt").iterdir():
                force_unmount(m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
