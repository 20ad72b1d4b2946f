#!/usr/bin/env python3
"""The rows issue #3 still misses, served by the kernel instead of a daemon: the native folder,
the blobfs mount and a tar-index EROFS image of the same project, in one run.

Run by hand, as root (mount), never by pytest, after bench_mount.py has built its data:

    .venv/bin/python tests/bench/probe_erofs.py --workdir /tmp/bm --n 30000

``probe_erofs_tarindex.py`` writes the image (metadata only: each image item is a chunk
pointing into the project's tar, no byte copied) and it is mounted file-backed (Linux 6.12+).
Every warm request is then answered in the kernel: no daemon, and no ``isatty()`` round trip
(EROFS answers TCGETS itself). Interleaved rounds, medians, ratios to native, as
bench_mount.py's table (its other rows — mount time, memory, cold reads — are not probed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_mount import latency_us, read_os, read_py, read_py_parallel, seq_mbs
from mountbench_setup import BIG, BLOBFS, System, force_unmount, knob, log, mounted, names_for
from probe_erofs_tarindex import build, mount_image

ROWS = [
    ("os", "read all, 1 reader, warm, os.open/read", "files/s", ">= 0.8x"),
    ("py", "read all, 1 reader, warm, Python open()", "files/s", ">= 0.25x"),
    ("par", "read all, 8 readers, warm, open()", "files/s", ">= 0.5x"),
    ("lat", "random 4 KB file, warm, mean latency", "us", "<= 3x"),
    ("seq", "256 MiB member, sequential, warm", "MB/s", ">= 0.5x"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bm"))
    ap.add_argument("--n", type=int, default=30000, help="which of bench_mount.py's sizes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--readers", type=int, default=8)
    args = ap.parse_args()
    base = args.workdir / f"n{args.n}"
    if not (base / ".complete").exists():
        sys.exit(f"{base}: not built; run bench_mount.py --sizes {args.n} --workdir {args.workdir} first")
    tmp = Path(tempfile.mkdtemp(prefix="erofs-probe-"))
    image, emnt, bmnt = tmp / "index.erofs", tmp / "erofs", tmp / "blobfs"
    emnt.mkdir()
    img, tars = build(base / "proj")
    image.write_bytes(img)
    log(f"tar-index image: {len(img):,} bytes for {args.n + 1:,} items")
    mount_image(image, emnt, tars)
    blobfs = System("blobfs", bmnt / "ds" / "img", bmnt, [*BLOBFS, "mount", str(base / "proj"), str(bmnt)])
    blobfs.mount()
    columns = [("native", base / "native"), ("blobfs", blobfs.img), ("erofs", emnt / "ds" / "img")]
    res: dict[str, dict[str, list[float]]] = {name: {k: [] for k, *_ in ROWS} for name, _ in columns}
    try:
        names = names_for(args.n)
        sample = names[:: max(1, args.n // 2000)]
        for rnd in range(args.rounds):
            order = columns[rnd % 3:] + columns[: rnd % 3]
            log(f"round {rnd + 1}/{args.rounds}: {', '.join(n for n, _ in order)}")
            for name, top in order:
                all_p = [str(top / x) for x in names]
                read_os(all_p)
                r = res[name]
                r["os"].append(read_os(all_p))
                r["py"].append(read_py(all_p))
                r["par"].append(read_py_parallel(all_p, args.readers))
                r["lat"].append(latency_us([str(top / x) for x in sample]))
                seq_mbs(str(top / BIG))
                r["seq"].append(seq_mbs(str(top / BIG)))
    finally:
        blobfs.umount()
        subprocess.run(["umount", str(emnt)], check=False)
        for m in (emnt, bmnt):
            if mounted(m):
                force_unmount(m)
        image.unlink()
        for m in (emnt, bmnt, tmp):
            os.rmdir(m)
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, EROFS file-backed, "
          f"fuse enable_uring={knob('/sys/module/fuse/parameters/enable_uring')}, "
          f"sched_autogroup_enabled={knob('/proc/sys/kernel/sched_autogroup_enabled')}")
    print(f"### {args.n:,} images: tar-index EROFS image beside blobfs and the native folder "
          f"(median of {args.rounds} interleaved rounds)")
    print("| measure | unit | native | blobfs | erofs | blobfs/native | erofs/native | target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, label, unit, target in ROWS:
        nat, bfs, ero = (statistics.median(res[s][key]) for s in ("native", "blobfs", "erofs"))
        fmt = (lambda v: f"{v:,.1f}") if unit == "us" else (lambda v: f"{v:,.0f}")
        print(f"| {label} | {unit} | {fmt(nat)} | {fmt(bfs)} | {fmt(ero)} | {bfs / nat:.2f}x "
              f"| {ero / nat:.2f}x | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
