"""Where eight Python ``open()`` readers lose their time: context switches per file.

Run by hand (root, /dev/fuse), never by pytest:

    .venv/bin/python tests/bench/bench_switches.py --workdir /tmp/bm --n 300000 --autogroup both

Eight reader processes read every image once with ``open()``, as bench_mount.py's "8 readers"
row does, from the native folder and from a blobfs mount of the same images, in interleaved
rounds. Beside files/s the table shows the system-wide context switches per file (``ctxt`` in
``/proc/stat``). A native warm read needs none; on the mount each Python ``open()`` sends one
``isatty()`` ioctl to the daemon, and the reader sleeps until the worker on its CPU has answered.

The second reader style passes ``buffering``, so ``open()`` skips its ``isatty()``: what
Python 3.14's ``open()`` does for any regular file (it answers from the ``fstat`` it already
made; CPython Modules/_io/fileio.c, ``_isatty_open_only``, gh-90102). No request then reaches
the daemon, which shows how much of the gap is that one request.

``--autogroup both`` repeats every round with ``kernel.sched_autogroup_enabled`` at 1 and at 0
(restored afterwards). With autogroup on, the daemon, which has a session of its own, is a
scheduling group of its own: the worker runs as soon as a reader blocks, answers one request,
and the reader it wakes runs next (two switches per file). With it off, the worker shares the
readers' run queue, and the readers it wakes run one after another before it answers again.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_mount import read_os, read_py_parallel  # noqa: E402
from mountbench_setup import BLOBFS, System, build, log, names_for  # noqa: E402

AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")
#: reader style -> open()'s buffering argument (-1: the default, which asks isatty())
STYLES = {"open()": -1, "open(), no isatty() (as Python 3.14)": io.DEFAULT_BUFFER_SIZE}


def switches() -> int:
    """Context switches of all CPUs since boot."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("ctxt "):
                return int(line.split()[1])
    raise RuntimeError("/proc/stat has no ctxt line")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/blobfs-bench"))
    ap.add_argument("--n", type=int, default=300000)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--autogroup", choices=("as-is", "both"), default="as-is")
    ap.add_argument("--mount-option", action="append", default=[], help="passed to blobfs mount as -o")
    args = ap.parse_args()

    base = build(args.workdir.resolve(), args.n)
    mnt = args.workdir.resolve() / "mnt" / "switches"
    extra = ["-o", ",".join(args.mount_option)] if args.mount_option else []
    systems = [System("native", base / "native"),
               System("blobfs", mnt / "ds" / "img", mnt, [*BLOBFS, "mount", str(base / "proj"), str(mnt), *extra])]
    settings = [None] if args.autogroup == "as-is" else ["1", "0"]
    original = AUTOGROUP.read_text().strip() if AUTOGROUP.exists() else None
    names = names_for(args.n)
    rates: dict[tuple[str | None, str, str], list[float]] = {}
    per_file: dict[tuple[str | None, str, str], list[float]] = {}
    try:
        systems[1].mount()
        for s in systems:
            read_os([str(s.img / x) for x in names])  # warm: page cache, dentries, attributes
        for rnd in range(args.rounds):
            for ag in settings:
                if ag is not None:
                    AUTOGROUP.write_text(ag)
                for style, buffering in STYLES.items():
                    for s in systems if rnd % 2 == 0 else systems[::-1]:
                        before = switches()
                        rate = read_py_parallel([str(s.img / x) for x in names], args.readers, buffering)
                        per_file.setdefault((ag, style, s.name), []).append((switches() - before) / args.n)
                        rates.setdefault((ag, style, s.name), []).append(rate)
                        log(f"round {rnd + 1}, autogroup {ag or original}, {style}: {s.name} {rate:,.0f} files/s")
    finally:
        systems[1].umount()
        if original is not None and args.autogroup == "both":
            AUTOGROUP.write_text(original)

    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, {args.readers} readers, {args.n:,} images, "
          f"median of {args.rounds} rounds")
    print("| autogroup | reader | native files/s | blobfs files/s | blobfs/native | switches per file, "
          "native | switches per file, blobfs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for ag in settings:
        for style in STYLES:
            med = {name: statistics.median(rates[(ag, style, name)]) for name in ("native", "blobfs")}
            sw = {name: statistics.median(per_file[(ag, style, name)]) for name in ("native", "blobfs")}
            print(f"| {ag or original} | {style} | {med['native']:,.0f} | {med['blobfs']:,.0f} | "
                  f"{med['blobfs'] / med['native']:.2f}x | {sw['native']:.2f} | {sw['blobfs']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
