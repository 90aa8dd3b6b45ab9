"""The main job: inspect an image, then render the boosted features of the filters it excites most.

Writes into one run directory: ``figure_boost.png`` (input | activation chart | boosted features with their
gain), ``figure_activations.png`` (the bar chart), ``figure_heatmaps.png`` (where the top filters fire),
``activations.csv``, one PNG per rendered filter (``<layer>/channel_NNNN.png``) and ``run.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..models.layers import get_layer
from ..models.model import Model
from ..optvis.presets import DEFAULT_METHOD, get_preset
from ..optvis.render import RenderSettings
from ..outputs import figures
from ..outputs.images import load_image, sample_image_path
from ..outputs.naming import channel_file, figure_file
from ..outputs.rundir import RunDir
from .channels import render_to_dir
from .inspect import Inspection, inspect, inspection_record, write_inspection


@dataclass
class BoostResult:
    run_dir: Path
    inspection: Inspection
    renders: list[dict]
    status: str  # complete | partial


def boost(
    model: Model,
    image: str | Path | Image.Image | None = None,
    *,
    layer: str = "default",
    top: int = 3,
    method: str = DEFAULT_METHOD,
    settings: RenderSettings | None = None,
    seed: int = 0,
    out: str | Path = "filterscope-out/boost",
    batch: int | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop=None,
) -> BoostResult:
    """Inspect ``image`` (default: the bundled cup) at ``layer`` and render its ``top`` filters."""
    t0 = time.perf_counter()
    if isinstance(image, Image.Image):
        pil, image_name = image, "<PIL image>"
    else:
        path = Path(image) if image else sample_image_path()
        pil, image_name = load_image(path), str(image or "bundled:coffee.jpg")
    info = get_layer(model, layer)
    settings = settings or get_preset(method)
    record_settings = {
        "model": model.describe(),
        "image": image_name,
        "layer": info.name,
        "top": top,
        "method": method,
        "render": settings.for_model(model).as_dict(),
        "seed": seed,
        "batch": batch,
    }
    run = RunDir(out, "boost", record_settings, resume=resume)
    ins = inspect(model, pil, info.name, top=top)
    write_inspection(run, ins)
    run.record["inspection"] = inspection_record(ins)
    t1 = time.perf_counter()
    summary = render_to_dir(
        model, info, ins.top, settings, seed, run, batch=batch, progress=progress, should_stop=should_stop
    )
    t2 = time.perf_counter()
    renders = [run.record["results"][f"{info.name}:{c}"] for c in ins.top if run.done(f"{info.name}:{c}")]
    ok = [r for r in renders if r["status"] == "ok"]
    if ok:
        pics = [
            (
                r["channel"],
                Image.open(run.file(channel_file(info.name, r["channel"]))).convert("RGB"),
                r["activation_before"],
                r["activation_after"],
            )
            for r in ok
        ]
        title = (
            f"{model.name} · {info.name} · top {top} filters for {Path(image_name).name} · "
            f"method {method}, {settings.steps} steps, seed {seed}"
        )
        run.write_figure(figure_file("boost"), figures.boost_figure(ins, pics, title))
    status = "partial" if summary.interrupted else "complete"
    run.record["timings"].update(
        {"inspect_s": round(t1 - t0, 3), "render_s": round(t2 - t1, 3), "total_s": round(time.perf_counter() - t0, 3)}
    )
    run.finish(status)
    return BoostResult(run.path, ins, renders, status)
