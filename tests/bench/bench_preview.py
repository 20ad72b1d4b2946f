#!/usr/bin/env python3
"""Preview speed and memory on a large blob (issue #6: 10,000 of 300,000 items "in seconds").

Run by hand:  .venv/bin/python tests/bench/bench_preview.py [--n 300000] [--limit 10000]
                  [--dir /tmp/blobfs-bench-preview] [--images]

Builds (once; reused when --dir already holds it) a blob project of N real PNGs of ~4 KiB:
a few hundred distinct noisy images repeated under different names, each with an annotation
holding one rectangle. Then runs ``blobfs preview`` (random sample of --limit items, streamed
PNG) and, with --images, ``blobfs info --images`` as child processes and reports wall time and
the child's peak RSS.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tarfile
import time
from pathlib import Path

DISTINCT = 300


def _images(rnd: random.Random) -> list[tuple[bytes, int, int]]:
    from PIL import Image

    out = []
    for _ in range(DISTINCT):
        w, h = rnd.randint(40, 64), rnd.randint(30, 48)
        # Noise on a gradient: ~4 KiB PNGs that compress like small photos.
        im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        noise = Image.frombytes("RGB", (w, h), rnd.randbytes(w * h * 3)).point(lambda v: v // 4)
        im = Image.blend(im, noise, 0.35)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append((buf.getvalue(), w, h))
    return out


def build(root: Path, n: int) -> None:
    from blobfs.format.offsets_write import write_offsets
    from blobfs.format.tarindex import index_tar

    rnd = random.Random(6)
    images = _images(rnd)
    (root / "blob").mkdir(parents=True)
    ann_dir = root / "ds" / "ann"
    ann_dir.mkdir(parents=True)
    meta = {"classes": [{"title": "box", "shape": "rectangle", "color": "#FF00FF", "description": "",
                         "geometry_config": {}, "hotkey": ""}], "tags": []}
    (root / "meta.json").write_text(json.dumps(meta, indent=4))
    tar_path = root / "blob" / "images.tar"
    t0 = time.perf_counter()
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(n):
            data, w, h = images[i % DISTINCT]
            name = f"img_{i:07d}.png"
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            tf.addfile(info, io.BytesIO(data))
            ann = {"description": "", "size": {"height": h, "width": w}, "tags": [], "objects": [
                {"classTitle": "box", "description": "", "tags": [], "geometryType": "rectangle",
                 "points": {"exterior": [[w // 4, h // 4], [3 * w // 4, 3 * h // 4]], "interior": []}}],
                "customBigData": {}}
            (ann_dir / f"{name}.json").write_text(json.dumps(ann, indent=4))
    write_offsets(root / "ds" / "images_offsets.pkl", index_tar(tar_path))
    print(f"built {n} items in {time.perf_counter() - t0:.1f} s "
          f"({tar_path.stat().st_size / 2**20:.0f} MiB tar)", file=sys.stderr)


def run(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system) of the child.

    CPU time is reported too because wall time on a shared machine includes waiting for a core.
    """
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: exec so its RSS is measured alone (wait4 reports it)
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execv(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return dt, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--limit", type=int, default=10_000)
    ap.add_argument("--thumb", type=int, default=64)
    ap.add_argument("--columns", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/blobfs-bench-preview"))
    ap.add_argument("--images", action="store_true", help="also time info --images over every item")
    args = ap.parse_args()
    root = args.dir / f"p{args.n}"
    if not (root / "ds" / "images_offsets.pkl").exists():
        build(root, args.n)
    out = args.dir / "sheet.png"
    py = sys.executable
    dt, rss, cpu = run([py, "-m", "blobfs", "preview", str(root), "-o", str(out), "--limit", str(args.limit),
                      "--thumb", str(args.thumb), "--columns", str(args.columns), "--seed", "1"])
    from PIL import Image

    with Image.open(out) as im:
        size = im.size
    print(f"preview: {args.limit} of {args.n} items, thumb {args.thumb}, {args.columns} columns -> "
          f"{size[0]}x{size[1]} px, {out.stat().st_size / 2**20:.1f} MiB: {dt:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MiB")
    base_dt, base_rss, base_cpu = run([py, "-c", "import blobfs, blobfs.preview.sheet; "
                                f"blobfs.open_project({str(root)!r}).close()"])
    print(f"open_project alone: {base_dt:.1f} s wall, {base_cpu:.1f} s CPU, peak RSS {base_rss:.0f} MiB")
    if args.images:
        dt, rss, cpu = run([py, "-m", "blobfs", "info", str(root), "--images"])
        print(f"info --images over {args.n} items: {dt:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
