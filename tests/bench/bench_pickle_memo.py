"""Peak RSS and wall time of ``read_offsets`` on memo floods and on a legit SDK file.

Usage: ``.venv/bin/python tests/bench/bench_pickle_memo.py [SDK_ENTRIES]`` (run by hand).

A hostile offsets pickle can be nothing but memo stores: ~10 MB of MEMOIZE opcodes is up
to 10M memo keys (``MAX_MEMO``). Each case is read in a fresh subprocess, so ru_maxrss counts
that read only (plus the interpreter and blobfs imports: the "import only" row). The files
are written by another subprocess, because a child's ru_maxrss starts from its parent's peak
RSS (Linux carries it over fork and exec), so this process must stay small. The SDK row
(``offsets_write``, byte-identical to ``save_blob_offsets_pkl``) checks that the fast path,
whose memo slots are synthesized and never stored, is not slowed down (best of three runs).
Prints one table.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

_CHILD = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[2])
from blobfs.errors import OffsetsError
from blobfs.format.offsets_read import read_offsets
t0 = time.perf_counter()
if sys.argv[1] == "-":
    got = "-"
else:
    try:
        r = read_offsets(sys.argv[1])
        got = f"{len(r.table)} entries, {len(r.problems)} problems"
    except OffsetsError as e:
        got = "refused: " + str(e).split("refused: ", 1)[-1]
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{dt:.2f}\t{peak / 1024:.0f}\t{got}")
"""

MB10 = 10_000_000
_P = b"\x80\x04"
#: name -> builder (the parent only needs the names: it must stay small, see above)
FLOODS = {
    "N MEMOIZE x5M": lambda: _P + b"N\x94" * (MB10 // 2) + b".",
    "K\\x01 MEMOIZE x3.3M": lambda: _P + b"K\x01\x94" * (MB10 // 3) + b".",
    "N MEMOIZE POP x3.3M": lambda: _P + b"N\x940" * (MB10 // 3) + b"N.",
    "N, MEMOIZE x10M": lambda: _P + b"N" + b"\x94" * (MB10 - 4) + b".",
    "PUT 1e9, MEMOIZE x10M": lambda: (_P + b"Nr" + struct.pack("<I", 10**9)
                                      + b"\x94" * (MB10 - 9) + b"."),
    "N, MEMOIZE x10M+1 (cap)": lambda: _P + b"N" + b"\x94" * (MB10 + 1) + b".",
    "BINPUT 0..255 cycled x1.4M": lambda: (_P + b"N" + b"".join(
        b"q" + bytes([i % 256]) for i in range(MB10 // 7)) + b"."),
}


def _sdk_entries(n: int):
    pos = 0
    for i in range(n):
        size = 3000 + (i * 7919) % 5000
        start = pos + 1536
        yield f"img_{i:07d}.jpg", start, start + size
        pos = start + (size + 511) // 512 * 512


def _run(path: str) -> tuple[float, int, str]:
    out = subprocess.run([sys.executable, "-c", _CHILD, path, str(REPO)], check=True,
                         capture_output=True, text=True, timeout=600).stdout.strip()
    dt, rss, got = out.split("\t")
    return float(dt), int(rss), got


def _generate(d: str, n: int) -> None:
    from blobfs.format.offsets_write import write_offsets

    for i, build in enumerate(FLOODS.values()):
        (Path(d) / f"{i}_offsets.pkl").write_bytes(build())
    write_offsets(Path(d) / "sdk_offsets.pkl", _sdk_entries(n))


def main() -> None:
    if sys.argv[1:2] == ["--generate"]:
        _generate(sys.argv[2], int(sys.argv[3]))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rows = [("import only", "-", *_run("-"))]
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, __file__, "--generate", d, str(n)], check=True)
        for i, name in enumerate(FLOODS):
            p = Path(d) / f"{i}_offsets.pkl"
            rows.append((name, f"{p.stat().st_size / 1e6:.1f}", *_run(str(p))))
        p = Path(d) / "sdk_offsets.pkl"
        best = min((_run(str(p)) for _ in range(3)), key=lambda r: r[0])
        rows.append((f"SDK {n} entries (best of 3)", f"{p.stat().st_size / 1e6:.1f}", *best))
    head = ("case", "MB", "wall s", "peak RSS MB", "result")
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip())


if __name__ == "__main__":
    main()
