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


def test_deal_round_robin_without_key():
    assert workers.deal(list(range(7)), 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert workers.deal([0, 1], 4) == [[0], [1]]  # never an empty worker


def test_deal_keeps_a_folder_on_one_worker_largest_first():
    chunks = [("img", 0), ("img", 1), ("img", 2), ("ann", 0), ("ann", 1), ("meta", 0)]
    plan = workers.deal(chunks, 2, key=lambda c: c[0])
    assert plan == [[("img", 0), ("img", 1), ("img", 2)], [("ann", 0), ("ann", 1), ("meta", 0)]]
    assert workers.deal(chunks, 8, key=lambda c: c[0]) == [
        [("img", 0), ("img", 1), ("img", 2)], [("ann", 0), ("ann", 1)], [("meta", 0)]]
    assert workers.deal(chunks[:3], 4, key=lambda c: c[0]) == [chunks[:3]]  # one folder: one worker


def test_keyed_chunks_of_one_folder_run_in_one_process():
    shared = mmap.mmap(-1, 8 * 12)
    chunks = [(k % 3, k) for k in range(12)]  # three folders, four chunks each

    def work(chunk: tuple[int, int]) -> tuple[int, int]:
        k = chunk[1]
        shared[8 * k : 8 * k + 8] = os.getpid().to_bytes(8, "little")
        return 1, 0

    assert workers.run_chunks(chunks, work, "test", jobs=2, key=lambda c: c[0]) == (12, 0)
    pid_of = [int.from_bytes(shared[8 * k : 8 * k + 8], "little") for k in range(12)]
    by_folder = {f: {pid_of[k] for k in range(12) if k % 3 == f} for f in range(3)}
    assert all(len(p) == 1 for p in by_folder.values())
    assert len(set().union(*by_folder.values())) == 2 and os.getpid() not in pid_of


@pytest.mark.parametrize("jobs", [1, 3])
def test_problem_lines_of_every_worker_reach_the_caller(jobs):
    """Work that skips files returns lines about them; from forked workers they come through
    the pipe, more than a pipe holds (the parent drains it while waiting), each one line."""
    def work(k: int):
        lines = [f"chunk {k} file {j}\nwith a newline" for j in range(400)]
        return 1, 0, lines if k % 2 else []

    problems: list[str] = []
    assert workers.run_chunks(list(range(12)), work, "test", jobs=jobs,
                               problems=problems) == (12, 0)
    assert sorted(problems) == sorted(f"chunk {k} file {j}\\nwith a newline"
                                      for k in range(1, 12, 2) for j in range(400))


def test_a_failure_among_problem_lines_is_raised():
    def work(k: int):
        if k == 5:
            raise workers.InputError("chunk 5: broken")
        return 1, 0, [f"chunk {k}: skipped one"]

    with pytest.raises(workers.InputError, match="chunk 5: broken"):
        workers.run_chunks(list(range(12)), work, "test", jobs=3, problems=[])
