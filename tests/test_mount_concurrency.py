"""16 concurrent readers (8 threads + 8 processes) compare every byte of the mount: zero mismatches."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import threading

import pytest

from mount_helpers import libfuse_params, mounted, requires_fuse

pytestmark = [pytest.mark.mount, pytest.mark.timeout(120), requires_fuse]


def _read_all(root: str, files: dict[str, str], seed: int) -> list[str]:
    """Read every file (shuffled; odd seeds in random-sized preads); return mismatching paths."""
    rng = random.Random(seed)
    names = sorted(files)
    rng.shuffle(names)
    bad = []
    for rel in names:
        path = os.path.join(root, rel)
        if seed % 2:
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                chunks, off = [], 0
                while off < size:
                    n = rng.choice((1, 7, 512, 4096, 65536))
                    data = os.pread(fd, n, off)
                    if not data:
                        break
                    chunks.append(data)
                    off += len(data)
                data = b"".join(chunks)
            finally:
                os.close(fd)
        else:
            with open(path, "rb") as f:
                data = f.read()
        if hashlib.sha256(data).hexdigest() != files[rel]:
            bad.append(rel)
    return bad


@pytest.mark.parametrize("threads", [False, True], ids=["single", "multithreaded"])
@pytest.mark.parametrize("libfuse", libfuse_params())
def test_16_concurrent_readers_zero_mismatches(blob_project, fixtures_dir, tmp_path, libfuse, threads):
    expected = json.loads((fixtures_dir / "expected_mount.json").read_text())["files"]
    files = {rel: w["sha256"] for rel, w in expected.items()}
    args = ("--threads",) if threads else ()
    with mounted(blob_project, tmp_path, libfuse=libfuse, args=args):
        root = str(tmp_path)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(8) as pool:
            procs = [pool.apply_async(_read_all, (root, files, 100 + i)) for i in range(8)]
            results: list[list[str]] = []
            lock = threading.Lock()

            def worker(seed: int) -> None:
                bad = _read_all(root, files, seed)
                with lock:
                    results.append(bad)

            ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(timeout=90)
            results.extend(p.get(timeout=90) for p in procs)
    assert len(results) == 16
    assert [bad for bad in results if bad] == []
