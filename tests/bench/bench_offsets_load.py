"""Load time and peak RSS of ``read_offsets`` on a 1,000,000-entry SDK-identical offsets file.

Usage: ``.venv/bin/python tests/bench/bench_offsets_load.py [N]``

The file is written with ``offsets_write.write_offsets`` (byte-identical to the SDK's
``save_blob_offsets_pkl``: protocol 4, batches of 10,000, frames, MEMOIZE) with names like a
real tar's (``img_0000123.jpg``) and tar-like offsets (512-aligned, crossing 2 GiB so the
LONG1 encoding is exercised). The load runs in a fresh subprocess so that ru_maxrss only
counts the reader, not the generation.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

_CHILD = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[2])
from blobfs.format.offsets_read import read_offsets
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
r = read_offsets(sys.argv[1])
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = r.table
table_mb = (len(t.names) + 8 * (len(t.name_ends) + len(t.starts) + len(t.ends))) / 1e6
print(f"entries={len(t)} problems={len(r.problems)} load_s={dt:.3f} cpu_s={cpu:.3f} "
      f"peak_rss_mb={peak / 1024:.1f} rss_before_load_mb={base / 1024:.1f} "
      f"table_payload_mb={table_mb:.1f}")
"""


def entries(n: int):
    pos = 0
    for i in range(n):
        size = 3000 + (i * 7919) % 5000
        start = pos + 1536  # PAX header + PAX data + ustar header, as archive_directory does
        yield f"img_{i:07d}.jpg", start, start + size
        pos = start + (size + 511) // 512 * 512


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    from blobfs.format.offsets_write import write_offsets

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big_offsets.pkl"
        write_offsets(path, entries(n))
        logging.info("file: %d entries, %.1f MB", n, path.stat().st_size / 1e6)
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(REPO)],
                                 check=True, capture_output=True, text=True)
            logging.info(out.stdout.strip())


if __name__ == "__main__":
    main()
