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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import UsageError
from ..models.inputs import list_images, load_image, model_input, sample_photos_dir
from ..models.layers import LayerInfo
from ..models.model import Model
from ..optvis.render import RenderSettings
from ..outputs.images import to_pil
from ..outputs.rundir import RunDir, json_bytes
from .backends import Backend, InProcess
from .channels import render_layer
from .contract import JobResult, open_run
from .dataset import collect_examples, peak_box
from .diversity import check_diversity
from .pool import RenderPool, choose_layout

EXAMPLES_FILE = "examples.json"
NAMES_VERSION = 1  # examples.json written before channels had names and scores is recomputed
THUMB = 96
CROP = 128


@dataclass
class AtlasSummary(JobResult):
    """:class:`~filterscope.jobs.contract.JobResult` of an atlas: channel counts and timings."""

    channels: int = 0
    rendered: int = 0
    skipped: int = 0
    interrupted: bool = False
    seconds: dict = field(default_factory=dict)


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


def build_atlas(
    model: Model,
    layers: Sequence[LayerInfo],
    channels: dict[str, list[int]],
    settings: RenderSettings,
    seed: int,
    out: str | Path,
    *,
    method: str | None = None,
    images: str | Path | None = None,
    n_top: int = 6,
    diversity: int = 0,
    batch: int | None = None,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop=None,
) -> AtlasSummary:
    """Render every requested channel, collect dataset examples, and write the site.

    ``backend="local"`` renders on this machine in the fastest layout (:func:`~filterscope.jobs.pool.choose_layout`:
    one single-threaded worker process per core when there are enough channels) unless ``workers`` /
    ``threads`` say otherwise; ``backend="ray"`` on a Ray cluster (``workers`` actors, default 2)."""
    from ..outputs.site import build_site

    check_diversity(diversity)
    if backend not in ("local", "ray"):
        raise UsageError(f"unknown backend {backend!r}: use local or ray")
    for info in layers:
        info.check_channels(channels[info.name])
    folder = Path(images) if images else sample_photos_dir()
    list_images(folder)  # fail early on a bad folder
    record = {
        "model": model.describe(),
        "layers": {i.name: channels[i.name] for i in layers},
        "method": method or settings.label,
        "render": settings.for_model(model).as_dict(),
        "seed": seed,
        "batch": batch,
        "diversity": diversity,
        "images": str(images) if images else None,
        "n_top": n_top,
        "backend": backend,
        "workers": workers,
        "threads": threads,
    }
    total = sum(len(channels[i.name]) for i in layers)
    layout = choose_layout(model, total, workers, threads) if backend == "local" else None
    with open_run("atlas", out, record, resume=resume, progress=progress, should_stop=should_stop) as ctx:
        run, stop = ctx.run, ctx.stop
        if layout is not None:
            run.record["layout"] = {"workers": layout.workers, "threads": layout.threads, "why": layout.why}
            if progress:
                print(f"layout: {layout.describe()}", file=sys.stderr)
        done_before = sum(1 for i in layers for c in channels[i.name] if run.done(f"{i.name}:{c}"))
        bar = ctx.progress(total, "atlas", unit="ch", initial=done_before)
        rendered, interrupted = 0, False
        own_threads = torch.get_num_threads()
        runner: Backend
        if layout is not None and layout.workers:
            runner = RenderPool(model, layout.workers, layout.threads)
        elif backend == "ray":
            from .ray_backend import RayBackend

            runner = RayBackend(model, address=address, workers=workers or 2, threads=threads)
        else:
            runner = InProcess(model, batch=batch, progress=progress)
        if layout is not None and not layout.workers:
            torch.set_num_threads(layout.threads)
        try:
            for info in layers:
                chans = channels[info.name]
                with ctx.timed(f"render_{info.name}"):
                    summary = render_layer(
                        model, info, chans, settings, seed, run, backend=runner, diversity=diversity, bar=bar,
                        should_stop=stop,
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
                examples = write_examples(run, model, layers, folder, n_top=n_top, progress=progress, should_stop=stop)
            interrupted = examples is None
            if examples is not None:
                run.record["names"] = examples.get("names")
        with ctx.timed("site"):
            layer_list = [{"name": i.name, "shape": i.shape_str(), "channels": channels[i.name]} for i in layers]
            build_site(run, layer_list, examples)
        if interrupted:
            done = sum(1 for i in layers for c in channels[i.name] if run.done(f"{i.name}:{c}"))
            ctx.mark_partial(done, total, "channels")
    r = ctx.result
    return AtlasSummary(
        r.run_dir, r.status, r.record, None, r.interruption, total, rendered, done_before, interrupted,
        dict(r.record["timings"]),
    )  # fmt: skip
