"""The one executor of worker processes (jobs.pool.WorkerPool): the CLI's pool backend and the explorer's jobs
run on it; its task channel carries a running task's progress and its cancel flag."""

import time

import pytest

from filterscope.jobs.pool import RenderPool, WorkerPool, task_cancelled, task_progress, worker_model

_SHARED = None
_TAG = None


def _keep(shared, tag: str) -> None:
    """The worker's setup: the task channel comes first, then the caller's arguments."""
    global _SHARED, _TAG
    _SHARED, _TAG = shared, tag


def _count(task: str, n: int) -> str:
    """A task in a worker: n steps, each reported; stops when cancelled."""
    for i in range(n):
        if task_cancelled(_SHARED, task):
            return "cancelled"
        task_progress(_SHARED, task, [i + 1, n])
        time.sleep(0.02)
    return f"{worker_model().name} {_TAG} {n}"


@pytest.mark.slow
def test_worker_pool_reports_progress_and_stops_a_running_task(tiny_model):
    pool = WorkerPool(tiny_model, 1, setup=_keep, args=("x",), tasks=True)
    running = None
    try:
        assert pool.start("a", _count, 3).result(timeout=120) == "tiny_cnn x 3"  # the model and the setup's args
        assert pool.progress("a") == [3, 3]
        running = pool.start("b", _count, 3000)
        handed, queued = pool.start("c", _count, 1), pool.start("d", _count, 1)  # one worker: c and d wait
        t0 = time.monotonic()
        while pool.progress("b") is None and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        assert pool.progress("b")[1] == 3000 and pool.progress("c") is None
        pool.cancel("d", queued)
        pool.cancel("c", handed)  # perhaps handed to the worker's call queue already: then it stops at its first check
        pool.cancel("b", running)
        assert running.result(timeout=30) == "cancelled"  # stopped between two steps
        assert handed.cancelled() or handed.result(timeout=30) == "cancelled"
        # still in the executor's queue: dropped; or already in the worker's call queue (the executor hands on one
        # task more than it has workers, and under load may have handed d too): then it stops at its first check
        assert queued.cancelled() or queued.result(timeout=30) == "cancelled"
        pool.forget("b")
        assert pool.progress("b") is None
        assert pool.start("b", _count, 2).result(timeout=30) == "tiny_cnn x 2"  # a fresh channel: not cancelled
    finally:
        if running is not None:
            pool.cancel("b", running)  # a failed check does not wait for the long task
        pool.close()


@pytest.mark.slow
def test_cli_pool_backend_and_explorer_share_the_executor(tiny_model, tmp_path):
    from filterscope.serve.workers import JobManager

    render = RenderPool(tiny_model, 1)
    jobs = JobManager(tiny_model, 1, tmp_path)
    try:
        assert type(render.pool) is WorkerPool and type(jobs.pool) is WorkerPool
        assert render.pool.shared is None and jobs.pool.shared is not None  # a render pool keeps finished channels
    finally:
        render.close()
        jobs.close()
