"""Rendering on a pool of single-threaded worker processes on this machine.

On a few CPU cores, N processes with one thread each render more channels per second than one process
with N threads (measured by ``benchmarks/bench_render.py --layout``: a convolution split across threads
waits on its slowest part; separate processes do not). Each worker receives the model once, renders its
channels with the same code and seeds as the in-process backend and returns PNG bytes plus the channel
records; the driver writes the files and the resume record as each channel arrives, so an interrupted run
keeps everything finished. Files equal the in-process backend's when both use the same number of threads
per render (``--threads 1``).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.layers import LayerInfo
from ..models.model import Model
from ..optvis.render import RenderSettings
from .backends import StreamSummary, finish_channel, pending

_MODEL: Model | None = None
MIN_CHANNELS_PER_WORKER = 8


def _init_worker(
    model_bytes: bytes, threads: int, code: str | None = None, setup: Callable[..., None] | None = None, args=()
) -> None:
    global _MODEL
    from ..models.loaders import import_user_code

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops submitting
    torch.set_num_threads(threads)
    import_user_code(code)  # a user's .py architecture, before its pickled model is loaded
    _MODEL = pickle.loads(model_bytes)
    if setup is not None:
        setup(*args)


def worker_model() -> Model:
    """The model of this worker process of a :func:`worker_pool` (loaded once, when the worker started)."""
    if _MODEL is None:
        raise RuntimeError("worker_model() is called in a worker_pool process only")
    return _MODEL


def worker_pool(
    model: Model, workers: int, threads: int = 1, setup: Callable[..., None] | None = None, args: tuple = ()
) -> cf.ProcessPoolExecutor:
    """``workers`` spawned processes (no fork of a process that holds torch threads), each with ``threads``
    torch threads, Ctrl-C left to the driver, a user's architecture imported and the model unpickled once
    (:func:`worker_model`), then ``setup(*args)`` (a module-level function: it is pickled). The executor of
    :class:`WorkerPool`."""
    return cf.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(pickle.dumps(model), threads, model.code, setup, args),
    )


# A task's channel (``WorkerPool(tasks=True)``): one dict shared with the workers (a multiprocessing Manager's),
# "<task>:step" → the task's progress as it reports it, "<task>:cancel" → True once the driver cancelled it.


def task_progress(shared, task: str, value: Any) -> None:
    """Worker: report ``task``'s progress (any picklable value, e.g. ``[done, total]``) to the driver."""
    try:
        shared[f"{task}:step"] = value
    except Exception:  # the driver went away: nobody is asking
        pass


def task_cancelled(shared, task: str) -> bool:
    """Worker: whether the driver cancelled ``task`` (checked between steps; a task then returns early)."""
    try:
        return bool(shared.get(f"{task}:cancel"))
    except Exception:  # the driver went away: stop
        return True


class WorkerPool:
    """The one executor of filterscope's worker processes: the CLI's pool backend (:class:`RenderPool`) and
    the explorer's jobs (``serve.workers.JobManager``) both run on it, one instance per process that needs
    workers. Started by :func:`worker_pool`; with ``tasks=True`` it also keeps a task channel (see
    :func:`task_progress`, :func:`task_cancelled`), handed to the workers as ``setup``'s first argument,
    through which a running task reports progress and learns it was cancelled; without it, a task already
    running always finishes (what a render pool wants: a finished channel is kept)."""

    def __init__(
        self,
        model: Model,
        workers: int,
        threads: int = 1,
        setup: Callable[..., None] | None = None,
        args: tuple = (),
        *,
        tasks: bool = False,
    ) -> None:
        self.workers = workers
        self._manager = multiprocessing.get_context("spawn").Manager() if tasks else None
        self.shared = self._manager.dict() if self._manager is not None else None
        if self.shared is not None:
            args = (self.shared, *args)
        self.executor = worker_pool(model, workers, threads, setup, args)

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        """Run ``fn(*args)`` (module-level, picklable) in a worker."""
        return self.executor.submit(fn, *args)

    def start(self, task: str, fn: Callable[..., Any], *args: Any) -> cf.Future:
        """Run ``fn(task, *args)`` in a worker, with a clean channel for ``task`` (``tasks=True``)."""
        self.shared.pop(f"{task}:cancel", None)
        self.shared.pop(f"{task}:step", None)
        return self.executor.submit(fn, task, *args)

    def progress(self, task: str) -> Any:
        """What ``task`` last reported (None before its first report)."""
        return self.shared.get(f"{task}:step")

    def forget(self, task: str) -> None:
        """Drop ``task``'s progress once it is over."""
        self.shared.pop(f"{task}:step", None)

    def cancel(self, task: str, future: cf.Future) -> None:
        """Stop ``task``: dropped from the queue if it has not started, else told to stop between two steps."""
        if not future.cancel():
            self.shared[f"{task}:cancel"] = True

    def warm(self) -> None:
        """Start every worker now (each loads the model), so the first task does not pay for it."""
        cf.wait([self.executor.submit(os.getpid) for _ in range(self.workers)])

    def close(self) -> None:
        """Stop the workers: queued tasks are dropped, running ones finish first (cancel them before)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._manager is not None:
            self._manager.shutdown()


def _render_shard(layer: LayerInfo, channels: list[int], settings: RenderSettings, seed: int) -> list[tuple]:
    from .stream import render_records

    return render_records(worker_model(), layer, channels, settings, seed)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Layout:
    """How renders share the CPU: ``workers`` processes (0: this process) × ``threads`` each."""

    workers: int
    threads: int
    why: str

    def describe(self) -> str:
        where = "this process" if self.workers == 0 else f"{self.workers} worker processes"
        return f"{where} × {self.threads} thread{'s' if self.threads > 1 else ''} ({self.why})"


def choose_layout(model: Model, n_channels: int, workers: int | None, threads: int | None) -> Layout:
    """The fastest layout for ``n_channels`` renders on this machine, unless the user chose one.

    Several single-threaded processes pay off on a CPU with ≥ 2 cores when each worker gets at least
    :data:`MIN_CHANNELS_PER_WORKER` channels: starting the workers costs ~4-6 s (measured on 2 cores: 12
    channels of blocks.3 took 16.1 s in 2 processes against 13.6 s in one; 40 channels of blocks.5 took
    56.8 s against 87.2 s, 1.54× faster). A GPU, or explicit ``threads`` alone, keep one process."""
    cores = cpu_cores()
    if workers is not None:
        return Layout(workers, threads or 1, "chosen")
    if threads is not None:
        return Layout(0, threads, "chosen")
    if model.device.type == "cpu" and cores > 1 and n_channels >= MIN_CHANNELS_PER_WORKER * cores:
        return Layout(cores, 1, f"auto: {cores} cores, {n_channels} channels")
    reason = "GPU" if model.device.type != "cpu" else f"auto: {cores} core(s), {n_channels} channels"
    return Layout(0, torch.get_num_threads(), reason)


class RenderPool:
    """The CLI's pool backend: a layer's channels rendered on a :class:`WorkerPool` holding the model, one
    channel per task, written here as each arrives; :meth:`close` it when done."""

    def __init__(self, model: Model, workers: int, threads: int = 1):
        self.workers = workers
        self.threads = threads
        self.pool = WorkerPool(model, workers, threads)

    def close(self) -> None:
        """Stop the workers (a channel a worker is still rendering is finished first)."""
        self.pool.close()

    def render_layer(
        self,
        layer: LayerInfo,
        channels: Sequence[int],
        settings: RenderSettings,
        seed: int,
        run,
        *,
        bar=None,
        should_stop: Callable[[], bool] | None = None,
    ) -> StreamSummary:
        """Render ``channels`` of ``layer`` into ``run`` (a RunDir), one channel per task."""
        t0 = time.perf_counter()
        todo, skipped = pending(run, layer.name, channels)
        summary = StreamSummary([], skipped, {}, False, 0.0)
        queue = list(todo)
        running: set[cf.Future] = set()
        while queue or running:
            stopping = bool(should_stop and should_stop())
            while queue and not stopping and len(running) < 2 * self.workers:
                running.add(self.pool.submit(_render_shard, layer, [queue.pop(0)], settings, seed))
            if not running:
                break
            done, running = cf.wait(running, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                for rec, png, seconds, bands in fut.result():
                    finish_channel(run, rec, png, seconds, summary, bands)
                    if bar is not None:
                        bar.update(1)
        summary.interrupted = bool(queue)
        summary.seconds = time.perf_counter() - t0
        return summary
