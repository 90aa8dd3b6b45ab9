"""The main job: inspect an image, then render the boosted features of the filters it excites most.

Writes into one run directory: ``figure_boost.png`` (input | activation chart | boosted features with their
gain), ``figure_activations.png`` (the bar chart), ``figure_heatmaps.png`` (where the top filters fire),
``activations.csv``, one PNG per rendered filter (``<layer>/channel_NNNN.png``) and ``run.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import RenderError, UsageError
from ..models.inputs import load_image, sample_image_path
from ..models.layers import LayerInfo, network_layer
from ..models.model import Model
from ..optvis.presets import resolve_settings
from ..optvis.render import RenderSettings
from ..outputs import figures
from ..outputs.naming import channel_file, default_out, figure_file
from .backends import render_to_dir
from .contract import JobResult, open_run
from .inspect import Inspection, inspect, inspection_record, write_inspection


@dataclass
class BoostResult(JobResult):
    """:class:`~filterscope.jobs.contract.JobResult` plus the inspection and the render records."""

    inspection: Inspection | None = None
    renders: list[dict] = field(default_factory=list)


def check_top(top: int, info: LayerInfo) -> None:
    """``top`` filters must exist in the layer (checked before any model work)."""
    if top > info.channels:
        raise UsageError(f"--top {top} is more than the {info.channels} filters of {info.name}")
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")


def boost(
    model: Model,
    image: str | Path | Image.Image | None = None,
    *,
    layer: str = "default",
    top: int = 3,
    method: str | None = None,
    settings: RenderSettings | None = None,
    seed: int = 0,
    out: str | Path = default_out("boost"),
    batch: int | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop=None,
) -> BoostResult:
    """Inspect ``image`` (default: the bundled cup) at ``layer`` and render its ``top`` filters.

    Raises :class:`~filterscope.errors.RenderError` when every render failed (the run folder is kept)."""
    if isinstance(image, Image.Image):
        pil, image_name = image, "<PIL image>"
    else:
        path = Path(image) if image else sample_image_path()
        pil, image_name = load_image(path), str(image or "bundled:coffee.jpg")
    info = network_layer(model, layer, "boost")
    check_top(top, info)
    settings = resolve_settings(method, settings)
    method = settings.preset
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
    with open_run("boost", out, record_settings, resume=resume, progress=progress, should_stop=should_stop) as ctx:
        run = ctx.run
        with ctx.timed("inspect"):
            ins = inspect(model, pil, info.name, top=top)
            write_inspection(run, ins)
            run.record["inspection"] = inspection_record(ins)
        with ctx.timed("render"):
            summary = render_to_dir(
                model, info, ins.top, settings, seed, run, batch=batch, progress=progress, should_stop=ctx.stop
            )
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
        if summary.interrupted:
            ctx.mark_partial(len(renders), top, "channels")
    res = ctx.result
    out_res = BoostResult(res.run_dir, res.status, res.record, None, res.interruption, ins, renders)
    if renders and not ok and not summary.interrupted:
        raise RenderError(f"every render failed: {renders[0]['status']}")
    return out_res
