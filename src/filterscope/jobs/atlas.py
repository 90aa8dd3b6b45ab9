"""The layer atlas: every channel of the chosen layers rendered, with dataset examples, as a static site.

Resumable: each finished channel is recorded in ``run.json`` at once and skipped on a rerun; the dataset
examples are computed in one streamed pass and kept in ``examples.json`` (recomputed only when the image
folder or layers change). Rendering runs locally or on a Ray cluster (``backend="ray"``) with identical
files for the same seed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import UsageError
from ..models.inputs import list_images, load_image, model_input, sample_photos_dir
from ..models.layers import LayerInfo, network_layer
from ..models.model import Model
from ..optvis.render import RenderSettings
from ..outputs.images import to_pil
from ..outputs.rundir import RunDir, json_bytes
from .backends import Backend, InProcess
from .channels import render_layer
from .contract import Job, JobResult, RunContext, opt, run_job
from .dataset import collect_examples, peak_box
from .diversity import check_diversity
from .pool import RenderPool, choose_layout
from .render_options import RenderOptions

EXAMPLES_FILE = "examples.json"
NAMES_VERSION = 1  # examples.json written before channels had names and scores is recomputed
THUMB = 96
CROP = 128


def folder_signature(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def write_examples(
    run: RunDir,
    model: Model,
    layers: Sequence[LayerInfo],
    folder: Path,
    *,
    n_top: int,
    progress: bool,
    should_stop=None,
) -> dict | None:
    """Top-N images per channel with peak crops and histograms → ``examples.json`` plus small JPEGs."""
    files = list_images(folder)
    sig = {
        "folder": str(folder),
        "signature": folder_signature(files),
        "layers": [i.name for i in layers],
        "n_top": n_top,
        "names": NAMES_VERSION,
    }
    path = run.file(EXAMPLES_FILE)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if old.get("key") == sig:
                return old
        except ValueError:
            pass
    preds: dict[int, int] = {}
    files, stats = collect_examples(
        model, layers, folder, n_top=n_top, progress=progress, should_stop=should_stop, keep_means=True,
        predictions=preds,
    )  # fmt: skip
    if should_stop and should_stop():
        return None
    units, names_rec = _names(model, layers, folder, files, stats, preds)
    size = model.input_size
    used = sorted({int(i) for s in stats.values() for i in s.top_index.flatten().tolist() if i >= 0})
    seen: dict[int, Image.Image] = {}
    thumbs = {}
    for i in used:
        im = to_pil(model_input(model, load_image(files[i]))[0])
        seen[i] = im
        thumbs[i] = f"examples/images/img_{i:05d}.jpg"
        buf = _jpeg(im.resize((THUMB, THUMB), Image.Resampling.LANCZOS))
        run.write(thumbs[i], buf)
    out = {"key": sig, "n_images": len(files), "layers": {}}
    for info in layers:
        s = stats[info.name]
        chans = {}
        for c in range(info.channels):
            top = []
            for k in range(s.n_top):
                i = int(s.top_index[c, k])
                if i < 0:
                    continue
                box = peak_box(int(s.top_pos[c, k]), s.map_shape, size)
                crop = f"examples/{info.name}/{c:04d}_{k + 1}.jpg"
                run.write(crop, _jpeg(seen[i].crop(box).resize((CROP, CROP), Image.Resampling.LANCZOS)))
                top.append(
                    {
                        "image": i,
                        "name": files[i].name,
                        "value": round(float(s.top_values[c, k]), 5),
                        "box": list(box),
                        "thumb": thumbs[i],
                        "crop": crop,
                    }
                )
            counts, edges = s.histogram(c)
            chans[str(c)] = {
                "top": top,
                "hist": {"counts": counts.tolist(), "edges": [round(float(e), 5) for e in edges]},
                "min": float(s.minimum[c]),
                "max": float(s.maximum[c]),
                "mean": float(s.total[c] / max(1, s.count)),
                **units[info.name][c],
            }
        out["layers"][info.name] = {"map_shape": list(s.map_shape), "channels": chans}
    out["names"] = names_rec
    run.write(EXAMPLES_FILE, json_bytes(out))
    return out


def _names(model, layers, folder, files, stats, preds) -> tuple[dict[str, list[dict]], dict]:
    """Every channel's name, purity and MIS score (:mod:`.names`) from its mean activation on each image,
    the images labelled by their class sub-folders or the model's predictions."""
    from .names import default_similarity, describe_units, image_labels, mis_min_images, scoring_record

    idx, _ = stats[layers[0].name].mean_matrix()
    used = [files[int(i)] for i in idx]
    labels, source = image_labels(used, folder, model, predictions=[preds[int(i)] for i in idx])
    sim = default_similarity() if len(used) >= mis_min_images() else None
    embed = sim.embed(used) if sim is not None else None
    units = {}
    for info in layers:
        _, acts = stats[info.name].mean_matrix()
        units[info.name] = describe_units(acts, labels, top=stats[info.name].n_top, embed=embed)
    return units, scoring_record(source, sim, len(used))


def _jpeg(im: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


BACKENDS = ("local", "ray")


@dataclass
class AtlasRequest(RenderOptions):
    """The arguments of ``filterscope atlas``: layers and channels, the render options, dataset examples and
    where the renders run."""

    layers: Any = opt(
        "default",
        "Comma-separated layers, e.g. blocks.3,blocks.5 (API: also a list of names or LayerInfo, or a dict "
        "layer → channels).",
        flag="--layers",
    )
    channels: list[int] | None = opt(
        None, "Channels of every layer: all, 0-63, 1,5,9.", channels=True, cli_default="all"
    )
    images: str | None = opt(None, "Folder of images for dataset examples (default: bundled photos).")
    n_top: int = opt(6, "Dataset examples per channel.", min=1, max=50, flag="--top")
    diversity: int = opt(0, "N ≥ 2 diverse variants per channel.", min=0)
    backend: str = opt("local", "Where the renders run: worker processes here, or Ray actors.", choices=BACKENDS)
    address: str | None = opt(None, "Ray cluster address (default: start a local Ray).")
    workers: int | None = opt(
        None,
        "Worker processes (local; default: one per core when there are enough channels) or Ray actors (default 2).",
        min=1,
    )
    threads: int | None = opt(
        None,
        "CPU threads per render (default: 1 in worker processes, torch's otherwise); the same value gives "
        "identical files on any backend.",
        min=1,
    )


@dataclass
class AtlasPlan:
    model: Model
    layers: list[LayerInfo]
    channels: dict[str, list[int]]
    render: RenderSettings
    req: AtlasRequest
    folder: Path
    total: int
    layout: Any  # the local backend's worker layout (None on Ray)
    settings: dict


@dataclass
class Atlas:
    """What an atlas run did: channel counts (the data of its :class:`JobResult`)."""

    channels: int
    rendered: int
    skipped: int  # channels finished by an earlier run of the folder (resume)
    interrupted: bool
    layer_list: list[dict]  # name, shape, channels of each layer: the site's index
    examples: dict | None = None


def _precheck(req: AtlasRequest) -> None:
    """Before a model is loaded: the diversity, the images folder, the backend (and Ray when asked for)."""
    check_diversity(req.diversity)
    if req.backend not in BACKENDS:
        raise UsageError(f"unknown backend {req.backend!r}: use local or ray")
    if req.images:
        list_images(req.images)
    if req.backend == "ray":
        from .ray_backend import require_ray

        require_ray()


def _layers(model: Model, layers: Any, channels: list[int] | None) -> dict[LayerInfo, list[int] | None]:
    """The request's layers resolved once, in order, without duplicates, each with its channels."""
    if isinstance(layers, dict):
        given = list(layers.items())
    else:
        names = [n.strip() for n in layers.split(",")] if isinstance(layers, str) else list(layers)
        given = [(n, channels) for n in names if not isinstance(n, str) or n]
    out: dict[str, tuple[LayerInfo, list[int] | None]] = {}
    for name, chans in given:
        info = name if isinstance(name, LayerInfo) else network_layer(model, name, "atlas")
        if info.name not in out:
            out[info.name] = (info, chans)
    if not out:
        raise UsageError("--layers is empty")
    return {info: chans for info, chans in out.values()}


def _plan(model: Model, req: AtlasRequest) -> AtlasPlan:
    from ..optvis.presets import DEFAULT_METHOD

    _precheck(req)
    method = req.method or (None if req.settings is not None else DEFAULT_METHOD)
    more = {"decorrelation_images": str(req.images)} if req.images and model.in_channels not in (1, 3) else {}
    render = replace(req, method=method).render_settings(model, None, **more)
    layers = _layers(model, req.layers, req.channels)
    infos = list(layers)
    chans = {i.name: list(range(i.channels)) if c is None else list(c) for i, c in layers.items()}
    for info in infos:
        info.check_channels(chans[info.name])
    folder = Path(req.images) if req.images else sample_photos_dir()
    list_images(folder)  # fail early on a bad folder
    settings = {
        "model": model.describe(),
        "layers": {i.name: chans[i.name] for i in infos},
        "method": method or render.label,
        "render": render.as_dict(),
        "seed": req.seed,
        "batch": req.batch,
        "diversity": req.diversity,
        "images": str(req.images) if req.images else None,
        "n_top": req.n_top,
        "backend": req.backend,
        "workers": req.workers,
        "threads": req.threads,
    }
    total = sum(len(chans[i.name]) for i in infos)
    layout = choose_layout(model, total, req.workers, req.threads) if req.backend == "local" else None
    return AtlasPlan(model, infos, chans, render, req, folder, total, layout, settings)


def _compute(ctx: RunContext, p: AtlasPlan) -> Atlas:
    model, layers, channels, layout, req = p.model, p.layers, p.channels, p.layout, p.req
    run, stop, progress = ctx.run, ctx.stop, ctx.show_progress
    if layout is not None:
        run.record["layout"] = {"workers": layout.workers, "threads": layout.threads, "why": layout.why}
        if progress:
            print(f"layout: {layout.describe()}", file=sys.stderr)
    done_before = sum(1 for i in layers for c in channels[i.name] if run.done(f"{i.name}:{c}"))
    bar = ctx.progress(p.total, "atlas", unit="ch", initial=done_before)
    rendered, interrupted = 0, False
    own_threads = torch.get_num_threads()
    runner: Backend
    if layout is not None and layout.workers:
        runner = RenderPool(model, layout.workers, layout.threads)
    elif req.backend == "ray":
        from .ray_backend import RayBackend

        runner = RayBackend(model, address=req.address, workers=req.workers or 2, threads=req.threads)
    else:
        runner = InProcess(model, batch=req.batch, progress=progress)
    if layout is not None and not layout.workers:
        torch.set_num_threads(layout.threads)
    try:
        for info in layers:
            with ctx.timed(f"render_{info.name}"):
                summary = render_layer(
                    model, info, channels[info.name], p.render, req.seed, run, backend=runner,
                    diversity=req.diversity, bar=bar, should_stop=stop,
                )  # fmt: skip
            rendered += len(summary.rendered)
            if summary.interrupted:
                interrupted = True
                break
    finally:
        bar.close()
        runner.close()
        torch.set_num_threads(own_threads)
    examples = None
    if not interrupted:
        with ctx.timed("examples"):
            examples = write_examples(
                run, model, layers, p.folder, n_top=req.n_top, progress=progress, should_stop=stop
            )
        interrupted = examples is None
        if examples is not None:
            run.record["names"] = examples.get("names")
    if interrupted:
        done = sum(1 for i in layers for c in channels[i.name] if run.done(f"{i.name}:{c}"))
        ctx.mark_partial(done, p.total, "channels")
    layer_list = [{"name": i.name, "shape": i.shape_str(), "channels": channels[i.name]} for i in layers]
    return Atlas(p.total, rendered, done_before, interrupted, layer_list, examples)


def _write(ctx: RunContext, a: Atlas) -> None:
    from ..outputs.site import build_site

    with ctx.timed("site"):
        build_site(ctx.run, a.layer_list, a.examples)


def _summary(r: JobResult) -> list[str]:
    a = r.data
    return [
        f"atlas of {a.channels} channels ({a.rendered} rendered now, {a.skipped} kept) "
        f"in {r.record['timings']['total_s']:.1f} s → {r.run_dir}/index.html"
    ]


JOB = Job(
    "atlas",
    AtlasRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="Every channel of the chosen layers, with dataset examples, as a static site (DIR/index.html).",
    renders=True,
    resumable=True,
    precheck=_precheck,
)


def atlas(
    model: Model,
    layers: Any = "default",
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    **options,
) -> JobResult:
    """Render every channel of ``layers`` (comma-separated names, a list, or a dict layer → channels), collect
    dataset examples and write the static site ``out/index.html`` (the job :data:`JOB`; ``options``: the
    fields of :class:`AtlasRequest`). ``backend="local"`` renders on this machine in the fastest layout
    (:func:`~filterscope.jobs.pool.choose_layout`: one single-threaded worker process per core when there are
    enough channels) unless ``workers`` / ``threads`` say otherwise; ``backend="ray"`` on a Ray cluster
    (``workers`` actors, default 2). ``resume`` keeps the channels an interrupted run of ``out`` finished."""
    return run_job(
        JOB, model, out=out, resume=resume, progress=progress, should_stop=should_stop, layers=layers, **options
    )
