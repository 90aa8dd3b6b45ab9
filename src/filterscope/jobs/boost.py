"""The main job: inspect an image, then render the boosted features of the filters it excites most.

Writes into one run directory: ``figure_boost.png`` (input | activation chart | boosted features with their
gain), ``figure_activations.png`` (the bar chart), ``figure_heatmaps.png`` (where the top filters fire),
``activations.csv``, one PNG per rendered filter (``<layer>/channel_NNNN.png``) and ``run.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import RenderError, UsageError
from ..models.inputs import load_image, sample_image_path
from ..models.layers import LayerInfo, network_layer
from ..models.model import Model
from ..optvis.render import RenderSettings
from ..outputs import figures
from ..outputs.naming import channel_file, figure_file
from .backends import render_to_dir
from .contract import Job, JobResult, RunContext, opt, run_job
from .inspect import Inspection, inspect_image, inspection_record, write_inspection
from .render_options import RenderOptions


@dataclass
class Boost:
    """What boost found and rendered (a :class:`~filterscope.jobs.contract.JobResult`'s ``data``)."""

    model: str
    inspection: Inspection
    renders: list[dict] = field(default_factory=list)  # the top filters' render records, in rank order
    figure: str | None = None  # figure_boost.png when at least one render succeeded


def check_top(top: int, info: LayerInfo) -> None:
    """``top`` filters must exist in the layer (checked before any model work)."""
    if top > info.channels:
        raise UsageError(f"--top {top} is more than the {info.channels} filters of {info.name}")
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")


@dataclass
class BoostRequest(RenderOptions):
    """boost's arguments: the image, the layer, how many filters, and the render options."""

    image: Any = opt(None, "Image file (default: the bundled cup).", argument=True, optional=True)
    layer: str = opt("default", "")
    top: int = opt(3, "", min=1)


@dataclass
class BoostPlan:
    model: Model
    pil: Image.Image
    image_name: str
    info: LayerInfo
    top: int
    render: RenderSettings  # resolved once, for the model
    seed: int
    batch: int | None
    settings: dict  # run.json's settings


def _precheck(req: BoostRequest) -> None:
    """A bad image file or render setting is refused before a model is loaded."""
    if req.image is not None and not isinstance(req.image, Image.Image):
        load_image(req.image)
    req.render_settings(None, None)


def _plan(model: Model, req: BoostRequest) -> BoostPlan:
    if isinstance(req.image, Image.Image):
        pil, image_name = req.image, "<PIL image>"
    else:
        path = Path(req.image) if req.image else sample_image_path()
        pil, image_name = load_image(path), str(req.image or "bundled:coffee.jpg")
    info = network_layer(model, req.layer, "boost")
    check_top(req.top, info)
    settings = req.render_settings(model, None)
    record = {
        "model": model.describe(),
        "image": image_name,
        "layer": info.name,
        "top": req.top,
        "method": settings.label,
        "render": settings.as_dict(),
        "seed": req.seed,
        "batch": req.batch,
    }
    return BoostPlan(model, pil, image_name, info, req.top, settings, req.seed, req.batch, record)


def _compute(ctx: RunContext, p: BoostPlan) -> Boost:
    run, info, model, settings = ctx.run, p.info, p.model, p.render
    with ctx.timed("inspect"):
        ins = inspect_image(model, p.pil, info.name, top=p.top)
        write_inspection(run, ins)
        run.record["inspection"] = inspection_record(ins)
    with ctx.timed("render"):
        summary = render_to_dir(
            model, info, ins.top, settings, p.seed, run, batch=p.batch, progress=ctx.show_progress, should_stop=ctx.stop
        )
    renders = [run.record["results"][f"{info.name}:{c}"] for c in ins.top if run.done(f"{info.name}:{c}")]
    data = Boost(model.name, ins, renders)
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
            f"{model.name} · {info.name} · top {p.top} filters for {Path(p.image_name).name} · "
            f"method {settings.label}, {settings.steps} steps, seed {p.seed}"
        )
        data.figure = figure_file("boost")
        run.write_figure(data.figure, figures.boost_figure(ins, pics, title))
    if summary.interrupted:
        ctx.mark_partial(len(renders), p.top, "channels")
    elif renders and not ok:
        ctx.error = RenderError(f"every render failed: {renders[0]['status']}")
    return data


def _write(ctx: RunContext, data: Boost) -> None:
    """The inspection, the renders and the figure were written as they finished."""


def _summary(r: JobResult) -> list[str]:
    b: Boost = r.data
    ins = b.inspection
    lines = [
        f"{b.model} · {ins.layer.name} ({ins.layer.shape_str()}) · prediction: "
        f"{ins.predictions[0][1]} ({ins.predictions[0][2]:.1%})"
    ]
    for x in b.renders:
        lines.append(
            f"  filter {x['channel']:5d}: image {ins.means[x['channel']]:.3f} · noise "
            f"{x['activation_before']:.3f} → boosted {x['activation_after']:.3f}  [{x['status']}]"
        )
    lines.append(
        f"wrote {r.run_dir}/figure_boost.png and {len(b.renders)} renders in {r.record['timings']['total_s']:.1f} s"
    )
    return lines


JOB = Job(
    "boost",
    BoostRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="The main job: IMAGE's top filters at LAYER and their boosted features (default: bundled cup).",
    renders=True,
    resumable=True,
    precheck=_precheck,
)


def boost(
    model: Model,
    image: str | Path | Image.Image | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> JobResult:
    """Inspect ``image`` (default: the bundled cup) at ``layer`` and render its ``top`` filters (options:
    :class:`BoostRequest`: ``layer``, ``top``, ``method`` or ``settings``, ``seed``, ``batch``, …); ``data`` is
    the :class:`Boost`. Raises :class:`~filterscope.errors.RenderError` when every render failed (the run
    folder is kept)."""
    return run_job(
        JOB, model, out=out, resume=resume, progress=progress, should_stop=should_stop, image=image, **options
    )
