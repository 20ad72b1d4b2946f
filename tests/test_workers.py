"""blobfs.write.workers: how many processes do the work, and that all of it is done once."""
from __future__ import annotations

import mmap
import os

import pytest

from blobfs.write import workers


def _run(jobs: int | None, chunks: int) -> tuple[set[int], int]:
    """Run ``chunks`` chunks; returns the pids that did them and the summed units."""
    shared = mmap.mmap(-1, 8 * chunks)  # each chunk's slot: the pid of the process that did it

    def work(k: int) -> tuple[int, int]:
        shared[8 * k : 8 * k + 8] = os.getpid().to_bytes(8, "little")
        return k + 1, 1

    units, nbytes = workers.run_chunks(list(range(chunks)), work, "test", jobs=jobs)
    assert nbytes == chunks
    got = {int.from_bytes(shared[8 * k : 8 * k + 8], "little") for k in range(chunks)}
    assert 0 not in got  # every chunk was done
    return got, units


def test_one_job_works_in_this_process():
    pids, units = _run(1, 12)
    assert pids == {os.getpid()}
    assert units == sum(range(1, 13))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.parametrize("jobs", [2, 3])
def test_more_jobs_fork_that_many_workers(jobs):
    pids, units = _run(jobs, 12)
    assert os.getpid() not in pids
    assert len(pids) == jobs  # round-robin: every worker gets chunks
    assert units == sum(range(1, 13))


def test_default_is_one_per_cpu_at_most_four():
    assert 1 <= workers.worker_count() <= 4
    assert workers.worker_count() == min(4, len(os.sched_getaffinity(0)))
