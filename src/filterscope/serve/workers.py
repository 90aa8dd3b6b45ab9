"""The explorer's jobs: renders and explanations in a pool of single-threaded worker processes (the
executor of the CLI's pool backend, ``jobs.pool.WorkerPool``).

- one worker per core by default (the layout that measured fastest on 2 cores, see ``jobs/pool.py``);
- identical requests share one job: a job's id is its cache key, so ten clients asking for the same filter
  wait on one render;
- every result goes into the render cache (atomic writes), so a finished job is a cache hit from then on;
- a job whose clients all stopped asking (no poll for ``abandon_s``) is cancelled: dropped from the queue,
  or stopped between optimisation steps in its worker;
- a client may have at most ``per_client`` unfinished jobs, and the server at most ``max_jobs`` queued and
  running ones in all (the app answers 429 with Retry-After past either).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..jobs.pool import WorkerPool, task_cancelled, task_progress, worker_model

_MODEL = None
_SHARED = None  # the pool's task channel (jobs.pool.WorkerPool(tasks=True)): progress and cancel flags
# this worker's tuning memo: a layer's stimulus and photo responses, kept for its other filters (the worker's
# model never changes); one process, one thread, so no lock. Behind it, the cache every worker shares
# (store.TuningMemo): a pool hands a layer's next filter to any worker
_TUNING_MEMO: dict = {}
WORKER_NICE = 10  # render workers yield the CPU to the server process that answers pages


def _setup_worker(shared, cache_root: str) -> None:
    """A worker's own start-up, after ``jobs.pool``'s (threads, Ctrl-C, the user's code, the model)."""
    global _MODEL, _SHARED
    from ..outputs.cache import configure

    configure(cache_root, enabled=True)
    try:
        os.nice(WORKER_NICE)  # on a busy laptop the pages are answered before the renders progress
    except OSError:
        pass
    _MODEL = worker_model()
    _SHARED = shared


def _cancelled(job: str) -> bool:
    return task_cancelled(_SHARED, job)


def _progress(job: str, value: Any) -> None:
    task_progress(_SHARED, job, value)


def run_render(job: str, layer: str, channel: int, method: str, seed: int, diversity: int) -> str:
    """Worker: render one channel (or its diversity variants) into the render cache; returns the status."""
    from ..jobs.stream import render_stream
    from ..models.layers import get_layer
    from ..optvis.presets import get_preset
    from ..outputs.cache import active_cache
    from .store import store_diversity

    info = get_layer(_MODEL, layer)
    settings = get_preset(method)
    every = max(1, settings.steps // 12)

    def on_step(i: int) -> None:
        if i % every == 0 or i == settings.steps:
            _progress(job, [i, settings.steps])

    def stop() -> bool:
        return _cancelled(job)

    if diversity:
        return store_diversity(_MODEL, info, channel, method, seed, diversity, active_cache(), should_stop=stop)
    cache = active_cache()  # explicitly: "auto" skips models with more than 3 bands, and the page reads the cache
    for r in render_stream(
        _MODEL, info, [channel], settings, seed, batch=1, on_step=on_step, should_stop=stop, cache=cache
    ):
        return r.status
    return "cancelled"


def run_explanation(job: str, image_path: str, layer: str) -> str:
    """Worker: the explanation of one photo at one layer, stored in the cache's results."""
    from ..models.inputs import load_image
    from ..outputs.cache import active_cache
    from . import compute
    from .store import store_explanation

    _progress(job, [0, 2])
    result, maps = compute.explanation(_MODEL, load_image(image_path), layer)
    _progress(job, [1, 2])
    store_explanation(active_cache(), job, result, maps)
    return "ok"


def run_accent(job: str, image_path: str, layer: str, channel: int, keys: tuple[str, str]) -> str:
    """Worker: one filter's accentuation of a photo and the map of where it changed, into the cache."""
    from ..models.inputs import load_image
    from ..outputs.cache import active_cache
    from . import compute

    _progress(job, [0, 1])
    accent, change, record = compute.accentuation(_MODEL, load_image(image_path), layer, channel)
    cache = active_cache()
    cache.put(keys[1], change, {**record, "picture": "change"})
    cache.put(keys[0], accent, {**record, "picture": "accentuation"})  # last: its presence means done
    _progress(job, [1, 1])
    return "ok"


def run_examples(job: str, layer: str) -> str:
    """Worker: every filter's mean activation on the bundled photos, stored in the cache's results."""
    from ..outputs.cache import active_cache
    from . import compute
    from .store import store_json

    store_json(active_cache(), job, compute.photo_examples(_MODEL, layer))
    return "ok"


def run_concepts(
    job: str, folder: str, layer: str, target_class: int, n_concepts: int, seed: int, crops: int | None
) -> str:
    """Worker: ``jobs.concepts.concepts`` over the server's photo set (``folder``: ``<sha256><suffix>`` files)
    for one class, renders off; its record, concept vectors and maps go into the cache's results (the JSON
    last), each concept's top crops into the render cache as PNGs."""
    from ..jobs.concepts import concepts
    from ..outputs.cache import active_cache, make_key
    from ..outputs.images import png_bytes
    from .store import store_explanation

    _progress(job, [0, 2])
    run = concepts(
        _MODEL, folder, layer=layer, n_concepts=n_concepts, target_class=target_class, seed=seed,
        crops=crops, render=False, progress=False, should_stop=lambda: _cancelled(job),
    )  # fmt: skip
    if run.status != "complete" or run.data is None:
        return "cancelled"
    res = run.data
    _progress(job, [1, 2])
    cache = active_cache()
    rows = []
    for c in res.concepts:
        rec = c.record()
        keys = []
        for i, crop in enumerate(c.crops):
            k = make_key({"concepts_job": job, "concept": c.concept, "crop": i})
            cache.put(k, png_bytes(crop), {"concepts_job": job, "concept": c.concept, "crop": i})
            keys.append(k)
        rec["crop_keys"] = keys
        rec["heat_rows"] = [int(r) for r, _ in c.heat]
        rec["vector"] = [float(v) for v in np.asarray(c.vector, dtype=np.float32)]
        rows.append(rec)
    record = {
        **res.record(),
        "images": [Path(n).stem for n in res.images],  # the photos' sha256s, in the maps' order
        "concepts": rows,
        "seed": seed,
        "timings": res.timings,
    }
    store_explanation(cache, job, record, res.maps.astype(np.float16))
    _progress(job, [2, 2])
    return "ok"


def run_concept_renders(job: str, layer: str, bank: list, method: str, seed: int) -> str:
    """Worker: each concept's render from noise by ``jobs.concepts.render_concepts`` (the ``direction``
    objective along its vector, the preset ``method``, the render cache)."""
    from ..jobs.concepts import render_concepts
    from ..models.layers import get_layer
    from ..optvis.presets import get_preset

    info = get_layer(_MODEL, layer)
    vectors = [np.asarray(v, dtype=np.float32) for v in bank]
    _progress(job, [0, len(vectors)])
    renders = render_concepts(_MODEL, info, vectors, get_preset(method), seed, should_stop=lambda: _cancelled(job))
    done = sum(image is not None for image, _ in renders)
    if done < len(vectors):
        return "cancelled" if _cancelled(job) else "render failed"
    return "ok"


def run_circuit(job: str, layer: str, channel: int, folder: str) -> str:
    """Worker: ``jobs.circuit.circuit`` for one channel (its inputs from the layer that feeds it: expanded
    weights, attribution over the photos in ``folder``, ablation), renders left to the render jobs; its
    record (``circuit.json``'s fields) goes into the cache's results."""
    from ..jobs.circuit import circuit
    from ..outputs.cache import active_cache
    from .store import store_json

    _progress(job, [0, 1])
    run = circuit(_MODEL, layer, channel, images=folder, renders=False, should_stop=lambda: _cancelled(job))
    if run.status != "complete":
        return "cancelled" if _cancelled(job) else f"circuit {run.status}"
    res = run.data
    store_json(active_cache(), job, {**res.record(), "timings": res.timings, "top": res.top})
    _progress(job, [1, 1])
    return "ok"


def run_tuning(job: str, layer: str, channel: int, folder: str, seed: int, figure_key: str) -> str:
    """Worker: ``jobs.tuning.tuning`` for one channel (gratings, colour fields, curves; the photos in
    ``folder`` give its natural maximum): the tuning-curve figure into the render cache, then the record
    into the cache's results (last: its presence means done)."""
    import io as _io

    import matplotlib.pyplot as plt

    from ..jobs.tuning import compute_tuning, memo_keys, validate
    from ..models.inputs import list_images
    from ..outputs.cache import active_cache
    from .store import TuningMemo, store_json

    _progress(job, [0, 1])
    info, chans = validate(_MODEL, layer, [channel])
    cache = active_cache()
    memo = TuningMemo(cache, _MODEL, _TUNING_MEMO)  # this worker's memo, then the cache every worker shares
    res = compute_tuning(_MODEL, info, chans, list_images(folder), folder, seed, lambda: _cancelled(job), memo=memo)
    if res.status != "complete" or not res.channels:
        return "cancelled" if _cancelled(job) else f"tuning {res.status}"
    fig = res.figure([channel])
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    plt.close(fig)
    cache.put(figure_key, buf.getvalue(), {"tuning_job": job, "layer": layer, "channel": channel})
    rec = res.record()
    row = {**rec["channels"][str(channel)], "layer": layer, "channel": channel, "significance": rec["significance"]}
    # where the layer's responses came from: "computed" (the stimuli ran), "process" or "cache"
    sources = [memo.source.get(k, "computed") for k in memo_keys(_MODEL, info, list_images(folder))]
    store_json(cache, job, {**row, "timings": res.timings, "figure": figure_key, "responses_from": sources})
    _progress(job, [1, 1])
    return "ok"


# the explorer's second model (``serve --model-b``), unpickled once per worker from the bytes a diff job carries:
# the pool's initializer stays as it is, and a server without a second model pays nothing
_MODEL_B: dict[str, Any] = {}
DIFF_UNITS = 12  # units of the diff page with exemplar tiles
DIFF_TILES = 4  # exemplar tiles per unit and side


def _second_model(model_bytes: bytes, code: str | None):
    """The second model from its pickle (a user's .py architecture imported first), kept for later jobs."""
    import hashlib

    from ..models.loaders import import_user_code

    key = hashlib.sha256(model_bytes).hexdigest()
    if key not in _MODEL_B:
        import_user_code(code)
        _MODEL_B.clear()  # one second model per server
        _MODEL_B[key] = pickle.loads(model_bytes)
    return _MODEL_B[key]


def run_diff(job: str, model_bytes: bytes, code: str | None, folder: str, layer: str, layer_b: str, out: str) -> str:
    """Worker: ``jobs.diff``'s ``JOB`` (``run_job``) of the explorer's model (A) against the second model (B)
    over the photos in ``folder``, renders off, its run folder at ``out``; the first units' exemplar tiles (B
    and its match in A) go into the render cache, then ``diff.json``'s record with their keys into the cache's
    results (last: its presence means done). Progress: the job's own bars."""
    import io as _io

    from PIL import Image

    from ..errors import Interrupted
    from ..jobs.contract import run_job
    from ..jobs.diff import JOB
    from ..outputs.cache import active_cache, make_key
    from ..outputs.figures_diff import Tiles
    from .store import store_json

    model_b = _second_model(model_bytes, code)

    def on_progress(desc: str, done: int, total: int) -> None:
        _progress(job, [done, max(total, 1), desc])

    _progress(job, [0, 1, "diff: starting"])
    try:
        res = run_job(
            JOB, _MODEL, out=out, should_stop=lambda: _cancelled(job), on_progress=on_progress,
            images=folder, model_b=model_b, layer=layer, layer_b=layer_b, no_renders=True,
        )  # fmt: skip
    except Interrupted:
        return "cancelled"
    if res.status != "complete" or res.data is None:
        return "cancelled" if _cancelled(job) else f"diff {res.status}"
    d = res.data
    rec = d.record()
    tiles = Tiles(d, d.images_root)
    cache = active_cache()
    live = [u for u in rec["units"] if not u["dead"]][:DIFF_UNITS]
    for n, u in enumerate(live, 1):
        for side, top in (("b", "top"), ("a", "top_a")):
            keys = []
            for ex in u[top][:DIFF_TILES]:
                k = make_key({"diff_job": job, "side": side, **ex})
                if not cache.has(k):
                    buf = _io.BytesIO()
                    Image.fromarray(tiles.tile(side, ex)).save(buf, format="PNG")
                    cache.put(k, buf.getvalue(), {"diff_job": job, "side": side, **ex})
                keys.append(k)
            u[f"tiles_{side}"] = keys
        _progress(job, [n, len(live), "diff: exemplar tiles"])
    store_json(cache, job, {**rec, "run_dir": str(res.run_dir), "timings": d.timings})
    return "ok"


@dataclass
class Job:
    id: str
    kind: str
    future: cf.Future
    started: float = field(default_factory=time.monotonic)
    waiters: dict[str, float] = field(default_factory=dict)  # client → last time it asked
    state: str = "queued"  # queued | running | done | error | cancelled
    error: str | None = None
    finished: float | None = None


class TooManyJobs(Exception):
    """A client already has its share of unfinished jobs (or the server its bound: :class:`ServerBusy`)."""

    retry_after = 5  # seconds a client is asked to wait


class ServerBusy(TooManyJobs):
    """The server already has ``max_jobs`` jobs queued or running."""


class JobManager:
    """The table of the explorer's jobs, deduplicated by id (the result's cache key), with its bounds per
    client and server; they run on the executor the CLI's pool backend runs on (:class:`WorkerPool`, with
    its task channel for progress and cancelling)."""

    def __init__(
        self, model, workers: int, cache_root, *, per_client: int = 4, max_jobs: int = 16, abandon_s: float = 10.0
    ):
        self.workers = workers
        self.per_client = per_client
        self.max_jobs = max_jobs
        self.abandon_s = abandon_s
        self.pool = WorkerPool(model, workers, 1, _setup_worker, (str(cache_root),), tasks=True)
        self.jobs: dict[str, Job] = {}
        self.started = 0  # jobs handed to the workers (identical requests share one)
        # re-entrant: cancelling a queued future runs its done-callback (which takes the lock) in this thread
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, daemon=True, name="filterscope-reaper")
        self._reaper.start()

    def warm(self) -> None:
        """Start every worker now (loading the model), so the first click does not pay for it."""
        self.pool.warm()

    def submit(self, job_id: str, kind: str, client: str, fn, *args) -> Job:
        """The job ``job_id`` (started now unless it runs already); ``client`` now waits for it."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None and job.state in ("queued", "running", "done"):
                job.waiters[client] = time.monotonic()
                return job
            active = [j for j in self.jobs.values() if j.state in ("queued", "running")]
            if len(active) >= self.max_jobs:
                raise ServerBusy(f"the server has {len(active)} jobs queued or running (its bound); try again soon")
            mine = sum(1 for j in active if client in j.waiters)
            if mine >= self.per_client:
                raise TooManyJobs(f"you have {mine} jobs running; wait for one to finish")
            fut = self.pool.start(job_id, fn, *args)
            self.started += 1
            job = Job(job_id, kind, fut, waiters={client: time.monotonic()})
            self.jobs[job_id] = job
            fut.add_done_callback(lambda f, j=job: self._finished(j, f))
            return job

    def _finished(self, job: Job, fut: cf.Future) -> None:
        with self.lock:
            job.finished = time.monotonic()
            if fut.cancelled():
                job.state = "cancelled"
                return
            exc = fut.exception()
            if exc is not None:
                job.state, job.error = "error", " ".join(str(exc).split())[:300] or type(exc).__name__
            else:
                status = fut.result()
                job.state = "done" if status == "ok" else "cancelled" if status == "cancelled" else "error"
                if job.state == "error":
                    job.error = f"render failed: {status}"
            self.pool.forget(job.id)

    def status(self, job_id: str, client: str | None = None) -> dict[str, Any] | None:
        """What a client sees when it polls (and the poll keeps the job alive for it)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if client is not None and job.state in ("queued", "running"):
                job.waiters[client] = time.monotonic()
            if job.state == "queued" and job.future.running():
                job.state = "running"
            step = self.pool.progress(job_id) if job.state == "running" else None
            return {
                "id": job.id,
                "kind": job.kind,
                "state": job.state,
                "progress": step,
                "seconds": round((job.finished or time.monotonic()) - job.started, 2),
                "error": job.error,
            }

    def cancel(self, job_id: str) -> None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.state not in ("queued", "running"):
                return
            self.pool.cancel(job_id, job.future)  # dropped from the queue, or the worker stops between two steps

    def _reap(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            with self.lock:
                stale = [
                    j.id
                    for j in self.jobs.values()
                    if j.state in ("queued", "running") and all(now - t > self.abandon_s for t in j.waiters.values())
                ]
                old = [j.id for j in self.jobs.values() if j.finished and now - j.finished > 600]
                for k in old:
                    del self.jobs[k]
            for k in stale:
                self.cancel(k)

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            for j in self.jobs.values():
                if j.state in ("queued", "running"):
                    self.pool.cancel(j.id, j.future)
        self.pool.close()


def run_map(job: str, folder: str, layer: str, target_class: int | None, grid: int, seed: int, out: str) -> str:
    """Worker: ``filterscope map`` over the server's photo set (``folder``), run through the job contract
    (``run_job`` of :data:`filterscope.jobs.activation_map.JOB`) into the run folder ``out``; progress is the
    job's own bars (``activation pass 3/5``, ``layout 120/500``, ``rendering cells 4/36``, …), then the
    exemplar tiles; a cancelled run resumes where it stopped. Each cell's exemplar crops go into the render
    cache, and a summary (the run folder, the crops' keys) into the cache's results under ``job`` (written
    last: its presence means done)."""
    import json as _json

    from ..errors import Interrupted
    from ..jobs.activation_map import JOB
    from ..jobs.contract import run_job
    from ..outputs.cache import active_cache, make_key
    from ..outputs.images import png_bytes
    from .store import store_json

    def on_progress(desc: str, done: int, total: int) -> None:
        _progress(job, [done, max(total, 1), desc])

    run_file = Path(out) / "run.json"
    try:
        prev = _json.loads(run_file.read_text()) if run_file.is_file() else None
    except (OSError, ValueError):
        prev = None
    _progress(job, [0, 1, "map: starting"])
    try:
        res = run_job(
            JOB, _MODEL, out=out, resume=bool(prev and prev.get("status") == "partial"), progress=False,
            should_stop=lambda: _cancelled(job), on_progress=on_progress, images=folder, layer=layer, grid=grid,
            seed=seed, class_=None if target_class is None else str(target_class),
        )  # fmt: skip
        res.raise_if_partial()
    except Interrupted:
        return "cancelled"
    cache = active_cache()
    crops = {}
    cells = res.data.cells
    for n, c in enumerate(cells, 1):
        k = c.index(res.data.grid)
        keys = []
        for i, crop in enumerate(c.crops):
            key = make_key({"map_job": job, "cell": k, "crop": i})
            cache.put(key, png_bytes(crop), {"map_job": job, "cell": k, "crop": i})
            keys.append(key)
        crops[str(k)] = keys
        _progress(job, [n, len(cells), "map: exemplar tiles"])
    store_json(cache, job, {"run": str(out), "crop_keys": crops, "timings": res.record["timings"]})
    return "ok"


def run_dictionary(job: str, folder: str, layer: str, options: dict, out: str) -> str:
    """Worker: ``filterscope dictionary`` over the server's photos (``folder``), run through the job contract
    (``run_job`` of :data:`filterscope.jobs.layer_dictionary.JOB`, its defaults unless ``options`` says
    otherwise) into the run folder ``out``; progress is the job's own bars; a cancelled run resumes (the
    learnt basis and the finished renders are kept). A summary (the run folder, the number of features, the
    timings) goes into the cache's results under ``job``, last: its presence means done."""
    import json as _json

    from ..errors import Interrupted
    from ..jobs.contract import run_job
    from ..jobs.layer_dictionary import JOB
    from ..outputs.cache import active_cache
    from .store import store_json

    def on_progress(desc: str, done: int, total: int) -> None:
        _progress(job, [done, max(total, 1), desc])

    run_file = Path(out) / "run.json"
    try:
        prev = _json.loads(run_file.read_text()) if run_file.is_file() else None
    except (OSError, ValueError):
        prev = None
    _progress(job, [0, 1, "dictionary: starting"])
    try:
        res = run_job(
            JOB, _MODEL, out=out, resume=bool(prev and prev.get("status") == "partial"),
            should_stop=lambda: _cancelled(job), on_progress=on_progress, images=folder, layer=layer, **options,
        )  # fmt: skip
    except Interrupted:
        return "cancelled"
    if res.data is None or (res.status != "complete" and _cancelled(job)):
        return "cancelled"  # a render that failed leaves the run partial but its pages whole: shown as it is
    rec = res.record.get("dictionary", {})
    store_json(active_cache(), job, {"run": str(out), "features": rec.get("features"), "timings": res.data.timings})
    return "ok"


def run_feature_render(job: str, layer: str, vector: list, method: str, seed: int) -> str:
    """Worker: one dictionary feature's render from noise along its decoder ``vector`` (the ``direction``
    objective, the preset ``method``, ``seed``), into the render cache under the key the dictionary job uses,
    so a feature the job rendered and one rendered here are the same cache entry."""
    import torch

    from ..models.layers import get_layer
    from ..optvis.objectives import direction
    from ..optvis.presets import get_preset
    from ..optvis.render import Renderer
    from ..outputs.cache import active_cache, render_key
    from ..outputs.images import png_bytes

    settings = get_preset(method)
    info = get_layer(_MODEL, layer)
    obj = direction(info.name, torch.as_tensor(np.asarray(vector, dtype=np.float32)))
    key, fields = render_key(_MODEL, obj, settings, seed, layer=info.name)
    cache = active_cache()
    if cache.has(key):
        return "ok"
    every = max(1, settings.steps // 12)

    def on_step(i: int) -> None:
        if i % every == 0 or i == settings.steps:
            _progress(job, [i, settings.steps])

    _progress(job, [0, settings.steps])
    out = Renderer(_MODEL, settings).render([obj], [seed], on_step=on_step, should_stop=lambda: _cancelled(job))
    if out.interrupted:
        return "cancelled"
    if out.status[0] != "ok":
        return out.status[0]
    rec = {"activation_before": round(out.before[0], 6), "activation_after": round(out.after[0], 6), "status": "ok"}
    cache.put(key, png_bytes(out.images[0]), {**fields, **rec})
    _progress(job, [settings.steps, settings.steps])
    return "ok"
