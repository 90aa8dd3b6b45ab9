"""The concepts' activation pass on Ray Data: the batches of the local pass, run by actors that each load the
model once, streamed back in order into the same tally on the driver.

``ray.data.from_items`` holds one item per batch of the local pass (its first file's index;
:func:`~.concepts.activation_units`), ``map_batches`` with a callable class runs
:func:`~.concepts.activation_batch` on each (the file reading, the random crops seeded per image, the model)
on a pool of ``workers`` actors, and the driver feeds the results, in the batches' order, to the
:class:`~.concepts.ActivationTally` the local pass fills. The items are batches of files rather than
``read_images`` rows so that every batch has the local pass's make-up: the network's float sums depend on
it, and with the same batches, order and CPU threads the vectors are bit-identical. The driver holds at
most the results that arrived ahead of the next batch in order, and the tally (a fixed-size sample).
The image files must be readable at the same path on every node (a shared file system).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable

import numpy as np

from ..errors import FilterscopeError, UsageError

INSTALL = 'pip install "filterscope[ray]"'


def ray_data():
    """The ``ray`` module with Ray Data importable, else a one-line :class:`UsageError` naming the extra."""
    try:
        import ray
        import ray.data  # needs pandas and pyarrow
    except ImportError as e:
        raise UsageError(f"--backend ray needs Ray Data ({e})", hint=INSTALL) from None
    return ray


def _by_value(model) -> None:
    """The model's classes defined outside installed packages (a script, a notebook, a folder on
    ``sys.path`` of this process only) travel by value, so the workers need not import their module."""
    import site
    import sys
    import sysconfig
    from pathlib import Path

    import ray.cloudpickle as cloudpickle

    installed = [Path(p).resolve() for p in [*site.getsitepackages(), sysconfig.get_paths()["stdlib"]]]
    for name in {type(m).__module__ for m in model.net.modules()}:
        mod = sys.modules.get(name)
        f = getattr(mod, "__file__", None)
        if mod is None or f is None or name == "__main__" or name.split(".")[0] == "filterscope":
            continue  # __main__ already goes by value; filterscope is installed on every node
        if not any(Path(f).resolve().is_relative_to(p) for p in installed):
            cloudpickle.register_pickle_by_value(mod)


def check_shippable(model) -> None:
    """The model must pickle (it is put in Ray's object store for the workers): else a one-line refusal."""
    import ray.cloudpickle as cloudpickle

    _by_value(model)
    try:
        cloudpickle.dumps(model)
    except Exception as e:  # whatever pickling raises, the answer is the same
        raise UsageError(
            f"the model cannot be sent to Ray workers ({type(e).__name__}: {e})", hint="use --backend local"
        ) from None


class ActivationWorker:
    """A Ray Data actor: the model (from the object store, once per actor) and the pass's settings; each call
    runs the batches whose starts it is given."""

    def __init__(self, model, info, src, n_crops: int, seed: int, threads: int, batch_fn: Callable):
        import ray
        import torch

        torch.set_num_threads(threads)
        self.batch_fn = batch_fn
        self.model = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.info, self.src, self.n_crops, self.seed = info, src, n_crops, seed
        self.memo: dict = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [
            pickle.dumps(
                self.batch_fn(self.model, self.info, self.src, int(s), self.n_crops, self.seed, memo=self.memo),
                protocol=5,
            )
            for s in batch["start"]
        ]
        return {"start": np.asarray(batch["start"]), "result": np.array(out, dtype=object)}


def connect(ray_settings: dict) -> bool:
    """Connect to the cluster at ``ray_settings["address"]`` or start a local Ray of ``workers`` CPUs
    (:func:`~.ray_backend.init_ray`); returns whether a Ray was started here. A ``HOST:PORT`` that does not
    answer within 5 s is refused in one line (Ray itself retries for minutes)."""
    import socket

    from .ray_backend import init_ray

    ray = ray_data()
    address = ray_settings["address"]
    if address and not ray.is_initialized() and "://" not in address and address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"a Ray address is HOST:PORT (or auto, or ray://HOST:PORT), got {address!r}")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise UsageError(f"cannot reach Ray at {address}: {e.strerror or e}") from None
    return init_ray(address, ray_settings["workers"])


def collect_ray(
    model,
    info,
    src,
    n_crops: int,
    seed: int,
    tally,
    units: list[int],
    batch_fn: Callable,
    ray_settings: dict,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
    shutdown: bool = False,
    bars: Callable | None = None,
    desc: str = "activations (ray)",
):
    """The activation pass of :func:`~.concepts.concepts` on Ray Data: ``batch_fn`` (the local pass's
    :func:`~.concepts.activation_batch`) run on the batches starting at ``units``, added in order to
    ``tally`` (an empty :class:`~.concepts.ActivationTally`); returns it, filled as the local pass would
    (stops early, keeping what arrived, when ``stop()``). Connects first when not connected; ``shutdown``:
    shut Ray down at the end (a local Ray the caller started), as it does a Ray it starts itself. ``bars``: the
    job's bar factory (:func:`~.activations.pass_bar`), so the pass's batches reach its ``on_progress``."""
    from .activations import pass_bar

    ray = ray_data()
    stop = stop if stop is not None else (lambda: False)  # a StopRequest is falsy until signalled
    threads = ray_settings["threads"]
    workers = ray_settings["workers"]
    started = connect(ray_settings) or shutdown
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    level = logging.getLogger("ray.data").level
    bar = pass_bar(len(units), desc, progress, bars)
    try:
        ctx.execution_options.preserve_order = True  # the driver also re-orders, should a batch overtake
        ctx.enable_progress_bars = False  # one bar: ours
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes are not ours
        ds = ray.data.from_items([{"start": s} for s in units], override_num_blocks=max(1, min(len(units), 200)))
        ds = ds.map_batches(
            ActivationWorker,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(units)))),
            num_cpus=1,
            fn_constructor_kwargs={
                "model": model,
                "info": info,
                "src": src,
                "n_crops": n_crops,
                "seed": seed,
                "threads": threads,
                "batch_fn": batch_fn,
            },
        )
        ahead: dict[int, bytes] = {}
        nxt = 0  # index in units of the next batch to add
        try:
            for row in ds.iter_rows():
                ahead[int(row["start"])] = row["result"]
                while nxt < len(units) and units[nxt] in ahead:
                    tally.add(*pickle.loads(ahead.pop(units[nxt])))
                    nxt += 1
                    bar.update(1)
                if stop():
                    break
        except FilterscopeError:
            raise
        except Exception as e:  # Ray Data wraps a worker's failure in its own exceptions
            if stop():  # Ctrl-C reached the workers too: the caller reports the stop
                return tally
            cause = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise FilterscopeError(
                f"the Ray activation pass failed: {cause[-1].strip() if cause else type(e).__name__}"
            ) from None
        if nxt < len(units) and not stop():
            raise FilterscopeError(f"the Ray activation pass returned {nxt} of {len(units)} batches")
    finally:
        bar.close()
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        logging.getLogger("ray.data").setLevel(level)
        if started:
            ray.shutdown()
    return tally
