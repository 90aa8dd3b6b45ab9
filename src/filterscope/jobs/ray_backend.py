"""Scale-out with Ray: the channel list is split into small tasks on a pool of actors.

Each actor receives the model once, renders its shards with the same code and seeds as the local backend,
and returns PNG bytes plus the channel records; the driver writes the files and the resume record as each
shard arrives, so an interrupted run keeps everything finished. Results are byte-identical to the local
backend when both use the same number of CPU threads per render (``threads``): the float sums of a
convolution depend on how it is split across threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import UsageError
from ..models.layers import LayerInfo
from ..models.model import Model
from ..optvis.render import RenderSettings
from .backends import StreamSummary, finish_channel, pending


def require_ray():
    """The ray module, or a usage error naming the extra that installs it (``filterscope[ray]``)."""
    try:
        import ray
    except ImportError:
        raise UsageError("the Ray backend needs Ray", hint="pip install 'filterscope[ray]'") from None
    return ray


def init_ray(address: str | None, workers: int) -> bool:
    """Connect to the Ray cluster at ``address``, or without one start a new local Ray of ``workers`` CPUs
    (even when another cluster runs on this machine); nothing when Ray is already initialised. Returns
    whether this call started it (so the caller can shut it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs = {"address": address} if address else {"address": "local", "num_cpus": workers}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot start or reach Ray{' at ' + address if address else ''}: {e}") from None
    return True


def _worker_class(ray):
    # a worker process that dies (a lost node, an OOM kill) is restarted and its task retried
    @ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3)
    class RenderWorker:
        def __init__(self, model: Model, threads: int):
            import torch

            torch.set_num_threads(threads)
            self.model = model

        def render(self, layer: LayerInfo, channels: Sequence[int], settings: RenderSettings, seed: int):
            from filterscope.jobs.stream import render_records

            return render_records(self.model, layer, channels, settings, seed, cache=None)

    return RenderWorker


def render_layer_ray(
    model: Model,
    layer: LayerInfo,
    channels: Sequence[int],
    settings: RenderSettings,
    seed: int,
    run,
    *,
    address: str | None = None,
    workers: int = 2,
    threads: int | None = None,
    shard: int = 1,
    bar=None,
    should_stop: Callable[[], bool] | None = None,
) -> StreamSummary:
    """Render ``channels`` of ``layer`` on Ray into ``run`` (a RunDir)."""
    import time

    import torch

    ray = require_ray()
    init_ray(address, workers)
    t0 = time.perf_counter()
    todo, skipped = pending(run, layer.name, channels)
    summary = StreamSummary([], skipped, {}, False, 0.0)
    if todo:
        threads = threads or torch.get_num_threads()
        model_ref = ray.put(model)
        actors = [_worker_class(ray).remote(model_ref, threads) for _ in range(max(1, min(workers, len(todo))))]
        pool = ray.util.ActorPool(actors)
        shards = [todo[i : i + shard] for i in range(0, len(todo), shard)]
        submitted = 0
        for _ in actors:
            if submitted < len(shards):
                pool.submit(lambda a, s: a.render.remote(layer, s, settings, seed), shards[submitted])
                submitted += 1
        while pool.has_next():
            for rec, png, seconds, bands in pool.get_next_unordered():
                finish_channel(run, rec, png, seconds, summary, bands)
                if bar is not None:
                    bar.update(1)
            if should_stop and should_stop():
                summary.interrupted = True
                continue  # let in-flight shards finish, submit no more
            if submitted < len(shards):
                pool.submit(lambda a, s: a.render.remote(layer, s, settings, seed), shards[submitted])
                submitted += 1
        for a in actors:
            ray.kill(a)
        summary.interrupted = summary.interrupted and submitted < len(shards)
    summary.seconds = time.perf_counter() - t0
    return summary


@dataclass
class RayBackend:
    """The backend that renders on a Ray cluster (``address``; default: a local Ray) with ``workers`` actors."""

    model: Model
    address: str | None = None
    workers: int = 2
    threads: int | None = None

    def render_layer(self, layer, channels, settings, seed, run, *, bar=None, should_stop=None) -> StreamSummary:
        return render_layer_ray(
            self.model,
            layer,
            channels,
            settings,
            seed,
            run,
            address=self.address,
            workers=self.workers,
            threads=self.threads,
            bar=bar,
            should_stop=should_stop,
        )

    def close(self) -> None:
        pass
