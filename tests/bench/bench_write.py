"""Benchmark of the write side (not a test): blobfs pack / unpack against GNU tar and the SDK.

    .venv/bin/python tests/bench/bench_write.py [--n 300000] [--rounds 3] [--workdir DIR]
                                                [--sdk-python /path/to/venv/bin/python] [--sdk-rounds 1]
                                                [--no-unpack | --no-pack] [--src DIR]
                                                [--unpack-jobs N ...]

Generates N files of ~4 KB (random bytes, sizes 3-5 KiB, fixed seed) once in WORKDIR/src, then
runs interleaved rounds of:
  pack     blobfs pack SRC -o X.tar                       (tar + offsets in one pass)
  tar+idx  tar cf X.tar -C SRC . ; blobfs index X.tar     (GNU tar, then the offsets)
  sdk      sly.fs.archive_directory + save_blob_offsets_pkl (only with --sdk-python: a Python
           with supervisely installed; timed inside that process, import excluded)
  unpack   blobfs unpack X.tar OUT                        (bare tar → classic tree)
  tar xf   tar xf X.tar -C OUT
  unpack -jN  blobfs unpack --jobs N X.tar OUT            (one row per --unpack-jobs N)
(--no-pack: only the last two; X.tar is packed once, untimed, and kept in WORKDIR for the
next --no-pack run; --src: the input folder, default WORKDIR/src, e.g. on disk while WORKDIR
is a tmpfs too small for both) and prints one table: median wall seconds, files/s, the ratio to the GNU tar baseline
(ratio > 1 = blobfs faster), and median CPU seconds (user + sys of the command's processes,
from getrusage of the children) beside each, so a slow disk can be told from slow code. Outputs are deleted and ``sync``ed between runs (not timed); the
input of every run is read once just before it (untimed), so the page cache is warm for all. Every command runs as a subprocess, so interpreter start-up is included.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOBFS = [sys.executable, "-m", "blobfs"]

SDK_SCRIPT = """
import sys, time, logging
import supervisely as sly
logging.disable(logging.CRITICAL)
src, tar, out = sys.argv[1:4]
t0 = time.perf_counter()
sly.fs.archive_directory(src, tar)
sly.fs.save_blob_offsets_pkl(tar, out)
print(time.perf_counter() - t0)
"""


def generate(src: Path, n: int) -> None:
    marker = src.parent / f"{src.name}.generated"  # outside src: tar cf would pack it
    if marker.is_file() and marker.read_text() == str(n):
        return
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    rng = random.Random(1234)
    pool = rng.randbytes(1 << 20)
    t0 = time.perf_counter()
    for i in range(n):
        size = rng.randint(3072, 5120)
        off = rng.randint(0, len(pool) - size)
        with open(src / f"img_{i:07d}.png", "wb") as f:
            f.write(pool[off : off + size])
    os.utime(src, (1_700_000_000, 1_700_000_000))
    marker.write_text(str(n))
    print(f"generated {n} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def clean(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    subprocess.run(["sync"], check=False)


def warm(path: Path) -> None:
    """Read a folder or file once (untimed), so that no contender pays for a cold page cache.
    A pipe, not /dev/null: GNU tar skips reading files when it writes to /dev/null."""
    if path.is_dir():
        subprocess.run(f"tar cf - -C '{path}' . | cat > /dev/null", shell=True, check=True)
    else:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmds: list[list[str]], cpu: list[float]) -> float:
    """Wall seconds of the commands run one after another; appends their CPU seconds to cpu."""
    c0 = _children_cpu()
    t0 = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=REPO)
    wall = time.perf_counter() - t0
    cpu.append(_children_cpu() - c0)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/blobfs-bench"))
    ap.add_argument("--sdk-python", help="python of a venv with supervisely installed")
    ap.add_argument("--sdk-rounds", type=int, default=1,
                    help="rounds that also run the (slow) SDK way (default 1)")
    ap.add_argument("--no-unpack", action="store_true", help="time only the pack side")
    ap.add_argument("--no-pack", action="store_true",
                    help="time only the unpack side (X.tar packed once, untimed, and kept)")
    ap.add_argument("--src", type=Path, help="input folder (default WORKDIR/src)")
    ap.add_argument("--unpack-jobs", type=int, action="append", default=[], metavar="N",
                    help="also time 'blobfs unpack --jobs N' (repeatable)")
    args = ap.parse_args()

    w = args.workdir.resolve()
    src = args.src.resolve() if args.src else w / "src"
    w.mkdir(parents=True, exist_ok=True)
    generate(src, args.n)
    tar_a, tar_b, tar_c = w / "a.tar", w / "b.tar", w / "c.tar"
    out_a, out_b = w / "out_a", w / "out_b"
    sdk_out = w / "sdk_offsets"
    variants = [f"unpack -j{j}" for j in args.unpack_jobs]
    times: dict[str, list[float]] = {k: [] for k in ("pack", "tar+idx", "sdk", "unpack", "tar xf",
                                                     *variants)}
    cpus: dict[str, list[float]] = {k: [] for k in times}

    packed = w / f"a.tar.{args.n}"  # marker: tar_a holds a pack of this input
    if args.no_pack and not (packed.is_file() and packed.read_text() == str(src)):
        clean(tar_a, w / "a_offsets.pkl")
        subprocess.run([*BLOBFS, "pack", str(src), "-o", str(tar_a)], check=True, cwd=REPO)
        packed.write_text(str(src))
    for r in range(args.rounds):
        if not args.no_pack:
            clean(tar_a, w / "a_offsets.pkl")
            warm(src)
            times["pack"].append(timed([[*BLOBFS, "pack", str(src), "-o", str(tar_a)]],
                                       cpus["pack"]))
            clean(tar_b, w / "b_offsets.pkl")
            warm(src)
            times["tar+idx"].append(timed([["tar", "cf", str(tar_b), "-C", str(src), "."],
                                           [*BLOBFS, "index", str(tar_b)]], cpus["tar+idx"]))
        if args.sdk_python and r < args.sdk_rounds and not args.no_pack:
            clean(tar_c, sdk_out)
            sdk_out.mkdir()
            warm(src)
            res = subprocess.run([args.sdk_python, "-c", SDK_SCRIPT, str(src), str(tar_c),
                                  str(sdk_out)], check=True, capture_output=True, text=True)
            times["sdk"].append(float(res.stdout.strip().splitlines()[-1]))
        if not args.no_unpack:
            clean(out_a)
            warm(tar_a)
            times["unpack"].append(timed([[*BLOBFS, "unpack", str(tar_a), str(out_a)]],
                                         cpus["unpack"]))
            clean(out_b)
            out_b.mkdir()
            warm(tar_a)
            times["tar xf"].append(timed([["tar", "xf", str(tar_a), "-C", str(out_b)]],
                                         cpus["tar xf"]))
            for j, name in zip(args.unpack_jobs, variants):
                clean(out_a)
                warm(tar_a)
                times[name].append(timed([[*BLOBFS, "unpack", "--jobs", str(j), str(tar_a),
                                           str(out_a)]], cpus[name]))
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {v[-1]:.2f}s" + (f" (cpu {cpus[k][-1]:.2f}s)" if cpus[k] else "")
            for k, v in times.items() if v), file=sys.stderr)
    if args.no_pack:
        clean(out_a, out_b)
    else:
        clean(tar_a, tar_b, tar_c, out_a, out_b, sdk_out, w / "a_offsets.pkl",
              w / "b_offsets.pkl", packed)

    med = {k: statistics.median(v) for k, v in times.items() if v}
    base = {"pack": "tar+idx", "tar+idx": "tar+idx", "sdk": "tar+idx",
            "unpack": "tar xf", "tar xf": "tar xf", **{v: "tar xf" for v in variants}}
    cpu = {k: statistics.median(v) for k, v in cpus.items() if v}
    rows = [("method", "median s", "files/s", "vs GNU tar", "cpu s", "cpu vs GNU tar")]
    for k, t in med.items():
        c = (f"{cpu[k]:.2f}", f"{cpu[base[k]] / cpu[k]:.2f}x") if k in cpu else ("", "")
        rows.append((k, f"{t:.2f}", f"{args.n / t:,.0f}", f"{med[base[k]] / t:.2f}x", *c))
    if "sdk" in med:
        rows.append(("pack vs sdk", "", "", f"{med['sdk'] / med['pack']:.2f}x", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"N={args.n} files of ~4 KB in {w}, {args.rounds} interleaved rounds, medians "
          "(cpu: user + sys of the command's processes; the sdk row is timed in-process)")
    for row in rows:
        print("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))


if __name__ == "__main__":
    main()
