"""What the daemon keeps per item JSON file it is asked about: RSS and node-log bytes.

Run by hand (root, /dev/fuse), never by pytest:

    .venv/bin/python tests/bench/bench_ann_nodes.py --workdir /tmp/bm --n 300000 [--folder img_info]

Mounts the generated project twice: one process (``-o workers=1,nouring``), and worker
processes on ``/dev/fuse`` (``-o nouring``). Each time it reads every file of ``ds/FOLDER``
once (``ann``, the default, or ``img_info``/``meta``, which the generator leaves out: those
get a project of their own beside it, ``nN/proj_FOLDER``, sharing the tar by hard link), so the
kernel sends one LOOKUP per file. Then it prints the daemon's VmRSS before and after, and the
bytes in the workers' node logs (the ``blobfs-nodes-*`` memfds, :mod:`blobfs.fuse.nodelog`).
A file whose node id is made from its item (:mod:`blobfs.model.numbering`) costs neither.
``--source DIR`` mounts with the blobfs of another checkout instead, to compare versions.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mountbench_setup import BIG, BLOBFS, System, build, daemon_pids, names_for, rss_mib  # noqa: E402


def side_project(base: Path, n: int, folder: str) -> Path:
    """``base/proj_FOLDER``: the generated project's tar and offsets (hard links), no
    annotations, and ``ds/FOLDER/NAME.json`` for every item."""
    proj = base / f"proj_{folder}"
    done = proj / ".complete"
    if done.exists():
        return proj
    src = base / "proj"
    for d in ("blob", "ds/ann", f"ds/{folder}"):
        (proj / d).mkdir(parents=True, exist_ok=True)
    for f in ("blob/images.tar", "ds/images_offsets.pkl", "meta.json"):
        if not (proj / f).exists():
            os.link(src / f, proj / f)
    for name in [*names_for(n), BIG]:
        (proj / "ds" / folder / f"{name}.json").write_text("{}")
    done.touch()
    return proj


def node_log_bytes(pids: list[int]) -> int:
    """Bytes in the node-log memfds the daemon processes hold (each counted once)."""
    seen: dict[str, int] = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
                if "blobfs-nodes" in target:
                    seen[target] = os.stat(fd).st_size
            except OSError:
                continue
    return sum(seen.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/blobfs-bench"))
    ap.add_argument("--n", type=int, default=300000)
    ap.add_argument("--source", type=Path, help="a checkout whose blobfs package mounts instead")
    ap.add_argument("--folder", choices=("ann", "img_info", "meta"), default="ann")
    args = ap.parse_args()

    base = build(args.workdir.resolve(), args.n)
    proj = base / "proj" if args.folder == "ann" else side_project(base, args.n, args.folder)
    mnt = args.workdir.resolve() / "mnt" / "ann-nodes"
    rows = []
    for label, opts in (("one process", "workers=1,nouring"), ("worker processes", "nouring")):
        s = System("blobfs", mnt / "ds" / "img", mnt, [*BLOBFS, "mount", "-o", opts, str(proj), str(mnt)])
        if args.source:  # PYTHONSAFEPATH: ``-m`` must not put this checkout (the cwd) first
            s.env = {"PYTHONPATH": str(args.source.resolve()), "PYTHONSAFEPATH": "1"}
        s.mount()
        try:
            before = rss_mib(s.pid)
            folder = mnt / "ds" / args.folder
            n = 0
            for name in os.listdir(folder):
                with open(folder / name, "rb") as f:
                    f.read()
                n += 1
            rows.append((label, opts, n, before, rss_mib(s.pid), node_log_bytes(daemon_pids(mnt))))
        finally:
            s.umount()
    print(f"{args.n:,} images; every file of ds/{args.folder} read once through the mount; blobfs "
          f"from {args.source or 'this checkout'}")
    print("| daemon | options | files read | VmRSS before (MiB) | VmRSS after (MiB) | node-log bytes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, opts, n, before, after, logged in rows:
        print(f"| {label} | `-o {opts}` | {n:,} | {before:.1f} | {after:.1f} | {logged:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
