#!/usr/bin/env python3
"""Load time and peak memory of opening a 1,000,000-entry dataset (issue #2 target: ≤ 3 s, ≤ 200 MiB).

Run by hand:  .venv/bin/python tests/bench/bench_load.py [--n 1000000] [--rounds 3]

Builds a project whose dataset has one SDK-identical offsets file of N entries (names like
``img_0000123.png``, 4 KiB each) pointing into a sparse tar of the right size, then opens it in
fresh subprocesses (so building it does not count) and prints one table: wall time of
``open_project`` plus one lookup, and the process's peak RSS (ru_maxrss) including the
interpreter: without the index cache, the first open that writes it, and later (cached) opens.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import blobfs
p = blobfs.open_project(sys.argv[1])
t1 = time.perf_counter()
ds = p.datasets[0]
assert ds.items.find("img_0000007.png") == 7, "lookup failed"
n = len(ds.items)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"n": n, "open_s": t1 - t0, "rss_mib": rss}))
"""


def build(root: Path, n: int) -> None:
    from blobfs.format.offsets_write import write_offsets

    (root / "blob").mkdir(parents=True)
    (root / "ds" / "ann").mkdir(parents=True)
    (root / "meta.json").write_text('{"classes": [], "tags": []}')
    size = 4096
    entries = ((f"img_{i:07d}.png", 1536 + i * (size + 1536), 1536 + i * (size + 1536) + size)
               for i in range(n))
    write_offsets(root / "ds" / "big_offsets.pkl", entries)
    with open(root / "blob" / "big.tar", "wb") as f:
        # A header block first: opening refuses a file whose first block is no header.
        head = tarfile.TarInfo("pax-header")
        head.size = 512
        f.write(head.tobuf(tarfile.USTAR_FORMAT))
        f.truncate(1536 + n * (size + 1536) + 10240)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="blobfs-load-") as tmp:
        root = Path(tmp) / "proj"
        build(root, args.n)
        pkl = root / "ds" / "big_offsets.pkl"
        cache = Path(tmp) / "cache"
        rows = []
        for label, env_extra in (("first open (no cache)", {"BLOBFS_CACHE": "0"}),
                                 ("first open, writes cache", {"XDG_CACHE_HOME": str(cache)}),
                                 ("later opens (cached)", {"XDG_CACHE_HOME": str(cache)})):
            runs = []
            for _ in range(1 if "writes" in label else args.rounds):
                out = subprocess.run([sys.executable, "-c", CHILD, str(root)], check=True,
                                     capture_output=True, text=True,
                                     env={**os.environ, **env_extra}).stdout
                runs.append(json.loads(out))
            assert all(r["n"] == args.n for r in runs)
            rows.append((label, statistics.median(r["open_s"] for r in runs),
                         max(r["rss_mib"] for r in runs)))
        print(f"{args.n} entries, offsets file {pkl.stat().st_size / 2**20:.1f} MiB; "
              "target: <= 3 s and <= 200 MiB peak RSS")
        print(f"{'case':<28} {'open s (median)':>16} {'peak RSS MiB':>13}")
        for label, t, m in rows:
            print(f"{label:<28} {t:>16.2f} {m:>13.0f}")

if __name__ == "__main__":
    main()
