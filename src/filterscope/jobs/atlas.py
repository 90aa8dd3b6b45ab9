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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..models.layers import LayerInfo
from ..models.model import Model
from ..optvis.render import RenderSettings
from ..outputs.images import list_images, load_image, model_input, sample_photos_dir, to_pil
from ..outputs.rundir import RunDir, json_bytes
from .channels import check_diversity, render_diversity, render_layer, write_grid
from .dataset import collect_examples, peak_box
from .pool import RenderPool, choose_layout

EXAMPLES_FILE = "examples.json"
THUMB = 96
CROP = 128


@dataclass
class AtlasSummary:
    run_dir: Path
    channels: int
    rendered: int
    skipped: int
    interrupted: bool
    seconds: dict


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
    }
    path = run.file(EXAMPLES_FILE)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if old.get("key") == sig:
                return old
        except ValueError:
            pass
    files, stats = collect_examples(model, layers, folder, n_top=n_top, progress=progress, should_stop=should_stop)
    if should_stop and should_stop():
        return None
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
            }
        out["layers"][info.name] = {"map_shape": list(s.map_shape), "channels": chans}
    run.write(EXAMPLES_FILE, json_bytes(out))
    return out


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
    method: str = "fast",
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
    from tqdm import tqdm

    from ..outputs.site import build_site

    t0 = time.perf_counter()
    check_diversity(diversity)
    for info in layers:
        info.check_channels(channels[info.name])
    folder = Path(images) if images else sample_photos_dir()
    list_images(folder)  # fail early on a bad folder
    record = {
        "model": model.describe(),
        "layers": {i.name: channels[i.name] for i in layers},
        "method": method,
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
    run = RunDir(out, "atlas", record, resume=resume)
    total = sum(len(channels[i.name]) for i in layers)
    layout = choose_layout(model, total, workers, threads) if backend == "local" else None
    if layout is not None:
        run.record["layout"] = {"workers": layout.workers, "threads": layout.threads, "why": layout.why}
        if progress:
            print(f"layout: {layout.describe()}", file=sys.stderr)
    done_before = sum(1 for i in layers for c in channels[i.name] if run.done(f"{i.name}:{c}"))
    bar = tqdm(total=total, initial=done_before, unit="ch", desc="atlas", disable=not progress, dynamic_ncols=True)
    rendered, interrupted = 0, False
    timings = {}
    own_threads = torch.get_num_threads()
    pool = RenderPool(model, layout.workers, layout.threads) if layout is not None and layout.workers else None
    if layout is not None and not layout.workers:
        torch.set_num_threads(layout.threads)
    try:
        for info in layers:
            t = time.perf_counter()
            chans = channels[info.name]
            if backend == "ray" or pool is not None:
                if pool is not None:
                    summary = pool.render_layer(info, chans, settings, seed, run, bar=bar, should_stop=should_stop)
                else:
                    from .ray_backend import render_layer_ray

                    summary = render_layer_ray(
                        model,
                        info,
                        chans,
                        settings,
                        seed,
                        run,
                        address=address,
                        workers=workers or 2,
                        threads=threads,
                        bar=bar,
                        should_stop=should_stop,
                    )
                if diversity > 1 and not summary.interrupted:  # variants render in this process
                    summary.interrupted = render_diversity(
                        model, info, chans, settings, seed, run, diversity, should_stop=should_stop
                    )
                write_grid(run, info.name, chans)
            else:
                summary = render_layer(
                    model,
                    info,
                    chans,
                    settings,
                    seed,
                    run,
                    batch=batch,
                    diversity=diversity,
                    progress=progress,
                    should_stop=should_stop,
                    bar=bar,
                )
            rendered += len(summary.rendered)
            timings[f"render_{info.name}_s"] = round(time.perf_counter() - t, 3)
            if summary.interrupted:
                interrupted = True
                break
    finally:
        bar.close()
        if pool is not None:
            pool.close()
        torch.set_num_threads(own_threads)
    examples = None
    if not interrupted:
        t = time.perf_counter()
        examples = write_examples(run, model, layers, folder, n_top=n_top, progress=progress, should_stop=should_stop)
        interrupted = examples is None
        timings["examples_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    build_site(run, [{"name": i.name, "shape": i.shape_str(), "channels": channels[i.name]} for i in layers], examples)
    timings["site_s"] = round(time.perf_counter() - t, 3)
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    run.record["timings"].update(timings)
    run.finish("partial" if interrupted else "complete")
    return AtlasSummary(run.path, total, rendered, done_before, interrupted, timings)
