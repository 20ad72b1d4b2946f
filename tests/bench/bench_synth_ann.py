"""What ``--synthesize-ann`` costs the mount: listing, reading and daemon memory.

Run by hand (root, /dev/fuse), never by pytest:

    .venv/bin/python tests/bench/bench_synth_ann.py --workdir /tmp/bm --n 1000000 --rounds 3

Two projects share one tar of N tiny PNGs (each a distinct size, so no answer can be reused):
``real/`` has an ``ann/NAME.json`` file on disk per image, ``synth/`` has none and is mounted
with ``--synthesize-ann``, which must give the same bytes. The peer is the first: passed-through
annotation files are what a user without the option would have. Per round, each is mounted
fresh and timed on: the first listing of ``ann/`` (every name goes through the daemon), reading
every annotation once with ``os.open``/``os.read``, and the daemon's VmRSS after that.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mountbench_setup import BLOBFS, REPO, System, force_unmount, log, rss_mib  # noqa: E402

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE.parent))
from tar_helpers import blob_of, tiny_png  # noqa: E402

from blobfs.format.offsets_write import write_offsets  # noqa: E402
from blobfs.preview.synth import synthesize_ann  # noqa: E402


def size_of(i: int) -> tuple[int, int]:
    return 1 + i % 4096, 1 + i // 4096


def build(work: Path, n: int) -> Path:
    base = work / f"synth{n}"
    if (base / ".complete").exists():
        return base
    real, synth = base / "real", base / "synth"
    for proj in (real, synth):
        (proj / "blob").mkdir(parents=True, exist_ok=True)
        (proj / "ds").mkdir(exist_ok=True)
        (proj / "meta.json").write_text('{"classes": [], "tags": []}')
    log(f"writing a tar of {n} PNGs")
    names = [f"img_{i:07d}.png" for i in range(n)]
    entries = blob_of(synth / "blob" / "images.tar", [(name, tiny_png(*size_of(i))) for i, name in enumerate(names)])
    os.link(synth / "blob" / "images.tar", real / "blob" / "images.tar")
    for proj in (real, synth):
        write_offsets(proj / "ds" / "images_offsets.pkl", entries)
    log(f"writing {n} annotation files")
    ann = real / "ds" / "ann"
    ann.mkdir()
    for i, name in enumerate(names):
        (ann / f"{name}.json").write_bytes(synthesize_ann(*size_of(i)))
    (base / ".complete").touch()
    return base


def read_all(folder: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    total = 0
    for name in os.listdir(folder):
        fd = os.open(folder / name, os.O_RDONLY)
        total += len(os.read(fd, 1 << 16))
        os.close(fd)
    return time.perf_counter() - t0, total


def measure(system: System, ann: Path) -> dict[str, float]:
    mount_s = system.mount()
    try:
        t0 = time.perf_counter()
        count = len(os.listdir(ann))
        list_s = time.perf_counter() - t0
        read_s, total = read_all(ann)
        return {"mount until listable (s)": mount_s, "first listing of ann/ (s)": list_s,
                "read every ann/ file (files/s)": count / read_s, "bytes read (MB)": total / 1e6,
                "daemon VmRSS after reading all (MiB)": rss_mib(system.pid)}
    finally:
        system.umount()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bm"))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = build(args.workdir, args.n)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()
    systems = {}
    for kind, extra in (("real ann/ files", []), ("--synthesize-ann", ["--synthesize-ann"])):
        proj = base / ("real" if not extra else "synth")
        mp = args.workdir / f"mnt-synth-{'real' if not extra else 'synth'}"
        force_unmount(mp)
        systems[kind] = System(kind, mp / "ds" / "ann", mp, [*BLOBFS, "mount", str(proj), str(mp), *extra])
    results: dict[str, dict[str, list[float]]] = {k: {} for k in systems}
    for r in range(args.rounds):
        for kind, system in systems.items():
            log(f"round {r + 1}/{args.rounds}: {kind}")
            for key, value in measure(system, system.img).items():
                results[kind].setdefault(key, []).append(value)
    real, synth = results["real ann/ files"], results["--synthesize-ann"]
    print(f"\n#### --synthesize-ann, {args.n:,} images (head {head}; median of {args.rounds} rounds)")
    print("| measure | real ann/ files | --synthesize-ann | synth / real |")
    print("| --- | --- | --- | --- |")
    for key in real:
        a, b = statistics.median(real[key]), statistics.median(synth[key])
        print(f"| {key} | {a:,.2f} | {b:,.2f} | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
