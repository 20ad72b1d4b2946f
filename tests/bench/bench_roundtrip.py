"""One FUSE round trip, in isolation: ``isatty()`` on a mounted file, in a loop.

Run by hand (root, /dev/fuse), never by pytest:

    .venv/bin/python tests/bench/bench_roundtrip.py --workdir /tmp/blobfs-rt

``isatty()`` is an ioctl the kernel forwards to the daemon every time and libfuse answers in C
(blobfs leaves ``ioctl`` unimplemented), so calls/s is the request round trip and nothing else:
the cost Python's ``open()`` pays once per file. Each daemon layout is mounted on the fixture-
sized demo project, and the loop runs from an unpinned reader and from readers pinned to each
CPU, in interleaved rounds; the table shows medians. Layouts: one daemon process that blocks
(``workers=1,spin_us=0``, libfuse's own loop), one that polls 50 µs after each request
(``workers=1``), one pinned worker per CPU on ``/dev/fuse`` (the default where the kernel
offers no io_uring), and FUSE over io_uring (``-o uring``; needs
``/sys/module/fuse/parameters/enable_uring`` set), with its workers answering every request in
Python (``$BLOBFS_PURE_PYTHON``) and with the compiled loop answering the ioctl.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mountbench_setup import BLOBFS, REPO, daemon_pid, force_unmount, knob, log, wait_gone  # noqa: E402

#: name -> (mount arguments, extra environment)
LAYOUTS = {"1 process, blocking": (["-o", "workers=1,spin_us=0,nouring"], {}),
           "1 process, polls 50 us": (["-o", "workers=1,nouring"], {}),
           "worker per CPU on /dev/fuse (-o nouring)": (["-o", "nouring"], {}),
           "FUSE over io_uring, Python loop": (["-o", "uring"], {"BLOBFS_PURE_PYTHON": "1"}),
           "FUSE over io_uring (the default when offered)": (["-o", "uring"], {})}
ENABLE_URING = Path("/sys/module/fuse/parameters/enable_uring")

_LOOP = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
n = int(sys.argv[2])
t0 = time.perf_counter()
for _ in range(n):
    os.isatty(fd)
print(n / (time.perf_counter() - t0))
"""


def calls_per_s(path: Path, n: int, cpu: int | None) -> float:
    cmd = [sys.executable, "-c", _LOOP, str(path), str(n)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/blobfs-rt")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(args.workdir)
    src = work / "demo"
    if not src.exists():
        subprocess.run([*BLOBFS, "demo", str(src)], check=True, cwd=REPO, capture_output=True)
    cpus = sorted(os.sched_getaffinity(0))
    readers: list[int | None] = [None, *cpus]
    res: dict[tuple[str, int | None], list[float]] = {}
    for rnd in range(args.rounds):
        for name, (extra, env) in LAYOUTS.items():
            mp = work / "mnt"
            mp.mkdir(parents=True, exist_ok=True)
            subprocess.run([*BLOBFS, "mount", *extra, str(src), str(mp)], check=True, cwd=REPO,
                           env={**os.environ, **env})
            try:
                f = next(p for p in mp.glob("*/img/*") if p.is_file())
                for cpu in readers:
                    res.setdefault((name, cpu), []).append(calls_per_s(f, args.calls, cpu))
            finally:
                pid = daemon_pid(mp)
                force_unmount(mp)
                wait_gone(pid)
        log(f"round {rnd + 1}/{args.rounds} done")
    heads = ["reader unpinned", *(f"reader on CPU {c}" for c in cpus)]
    # off: the -o uring rows fall back to the default layout
    print(f"kernel {os.uname().release}, fuse enable_uring={knob(str(ENABLE_URING))}")
    print(f"### isatty() round trips per second on a blobfs mount (median of {args.rounds} rounds)")
    print("| daemon | " + " | ".join(heads) + " |")
    print("| --- |" + " --- |" * len(heads))
    for name in LAYOUTS:
        cells = [f"{statistics.median(res[(name, c)]):,.0f}" for c in readers]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
