#!/usr/bin/env python3
"""Python API read speed against a bare ``os.pread`` loop over the same ranges (issue #2:
the API must reach ≥ 0.8x), and against the SDK's ``Dataset.get_blob_img_bytes`` when the SDK
is importable (``--sdk-python`` points at a venv's python with ``supervisely`` installed).

Run by hand:  .venv/bin/python tests/bench/bench_api.py [--n 100000] [--rounds 5]

Builds a blob project of N items of ~4 KiB (random bytes: reading does not care about pixels),
warms the page cache, then runs interleaved rounds of each reader and prints one table of
items/s (median of the rounds) and the ratio to the bare pread loop.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def build(root: Path, n: int) -> None:
    from blobfs.format.offsets_write import write_offsets
    from blobfs.format.tarindex import index_tar

    rnd = random.Random(1)
    (root / "blob").mkdir(parents=True)
    (root / "ds" / "ann").mkdir(parents=True)
    (root / "meta.json").write_text('{"classes": [], "tags": []}')
    tar_path = root / "blob" / "images.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        import io

        for i in range(n):
            data = rnd.randbytes(3000 + rnd.randrange(2000))
            info = tarfile.TarInfo(f"img_{i:07d}.png")
            info.size = len(data)
            info.mtime = 1700000000
            tf.addfile(info, io.BytesIO(data))
    entries = index_tar(tar_path)
    write_offsets(root / "ds" / "images_offsets.pkl", entries)
    for name, _, _ in entries:  # the SDK drops a dataset with an item lacking its annotation
        (root / "ds" / "ann" / f"{name}.json").write_text("{}")


def bare_pread(root: Path) -> int:
    from blobfs.format.offsets_read import read_offsets

    table = read_offsets(root / "ds" / "images_offsets.pkl").table
    fd = os.open(root / "blob" / "images.tar", os.O_RDONLY)
    pread = os.pread
    with Timer() as t:
        for s, e in zip(table.starts, table.ends):
            pread(fd, e - s, s)
    os.close(fd)
    return t.times


class Timer:
    """Wall and CPU time of a block (CPU time is less disturbed by other tenants)."""

    def __enter__(self) -> "Timer":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.times = (time.perf_counter() - self._w, time.process_time() - self._c)


def api_iter_bytes(p) -> tuple[float, float]:
    with Timer() as t:
        for _path, _data in p.iter_bytes():
            pass
    return t.times


def api_items_read(p) -> tuple[float, float]:
    items = p.datasets[0].items
    read = items.read
    with Timer() as t:
        for i in range(len(items)):
            read(i)
    return t.times


def api_read_path(p, paths) -> tuple[float, float]:
    read = p.read
    with Timer() as t:
        for path in paths:
            read(path)
    return t.times


SDK_CHILD = r"""
import os, sys, time, json
os.chdir(sys.argv[1])
import supervisely as sly
project = sly.Project("proj", sly.OpenMode.READ)
ds = project.datasets.get("ds")
names = ds.get_items_names()[: int(sys.argv[2])]
t0 = time.perf_counter()
for name in names:
    ds.get_blob_img_bytes(name)
print(json.dumps({"n": len(names), "s": time.perf_counter() - t0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sdk-python", help="python of a venv with the supervisely SDK installed")
    ap.add_argument("--sdk-items", type=int, default=200,
                    help="items the SDK reads (it rescans the offsets file per image)")
    args = ap.parse_args()
    import blobfs

    with tempfile.TemporaryDirectory(prefix="blobfs-api-") as tmp:
        root = Path(tmp) / "proj"
        build(root, args.n)
        with blobfs.open_project(root) as p:
            paths = [f"ds/img/{name}" for name in p.datasets[0].items.names()]
            api_iter_bytes(p)  # warm the page cache
            runs: dict[str, list[tuple[float, float]]] = {k: [] for k in
                                            ("bare os.pread loop", "p.iter_bytes()", "items.read(i)", "p.read(path)")}
            for _ in range(args.rounds):  # interleaved, so host noise hits all alike
                runs["bare os.pread loop"].append(bare_pread(root))
                runs["p.iter_bytes()"].append(api_iter_bytes(p))
                runs["items.read(i)"].append(api_items_read(p))
                runs["p.read(path)"].append(api_read_path(p, paths))
        sdk = None
        if args.sdk_python:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            out = subprocess.run([args.sdk_python, "-c", SDK_CHILD, tmp, str(args.sdk_items)],
                                 capture_output=True, text=True, env=env)
            if out.returncode == 0:
                sdk = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                print(f"SDK run failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    def rate(name: str, k: int) -> float:
        return args.n / statistics.median(t[k] for t in runs[name])

    bare = "bare os.pread loop"
    print(f"{args.n} items of ~4 KiB, warm page cache, median of {args.rounds} interleaved rounds")
    print(f"{'reader':<34} {'items/s wall':>13} {'x bare':>7} {'items/s CPU':>12} {'x bare':>7}")
    for name in runs:
        w, c = rate(name, 0), rate(name, 1)
        print(f"{name:<34} {w:>13,.0f} {w / rate(bare, 0):>7.2f} {c:>12,.0f} {c / rate(bare, 1):>7.2f}")
    if sdk:
        r = sdk["n"] / sdk["s"]
        print(f"{'SDK get_blob_img_bytes (' + str(sdk['n']) + ' items)':<34} {r:>13,.1f} "
              f"{r / rate(bare, 0):>7.5f}")

if __name__ == "__main__":
    main()
