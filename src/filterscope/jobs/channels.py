"""The render job (``filterscope render``, :func:`render_channels`) and the notebook's :func:`render`: a
layer's channels on a backend, then their diversity variants and grid.

The pieces live by idea: the channel stream and cache (:mod:`~filterscope.jobs.stream`), backends and the
per-channel write (:mod:`~filterscope.jobs.backends`), diversity (:mod:`~filterscope.jobs.diversity`) and
grids (:mod:`~filterscope.jobs.grids`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import RenderError, UsageError
from ..models.layers import LayerInfo, get_layer
from ..models.model import Model
from ..optvis.objectives import Objective
from ..optvis.presets import resolve_settings
from ..optvis.render import Renderer, RenderSettings, channel_seed
from ..outputs.images import png_bytes, to_pil
from ..outputs.naming import grid_file
from .backends import Backend, InProcess, StreamSummary
from .contract import Job, JobResult, RunContext, opt, run_job
from .diversity import check_diversity, render_diversity
from .grids import write_grid
from .objective import ObjectivePlan, RenderedObjective, objective_for, objective_plan, render_one
from .render_options import RenderOptions
from .stream import unit_objective


def render_layer(
    model: Model,
    layer: LayerInfo,
    channels: Sequence[int],
    settings: RenderSettings,
    seed: int,
    run,
    *,
    backend: Backend | None = None,
    batch: int | None = None,
    diversity: int = 0,
    diversity_weight: float = 1.0,
    penalty: Objective | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    bar=None,
) -> StreamSummary:
    """Render channels into ``run`` on ``backend`` (default: in this process, ``batch`` images per step, with
    ``penalty`` subtracted), then, with ``diversity=N``, N jointly optimised variants per channel (Lucid's
    diversity term at the same layer, in this process), and write ``grid_<layer>.png`` — the same steps
    after whichever backend rendered."""
    check_diversity(diversity)
    if backend is None:
        extra = (lambda c: -1.0 * penalty) if penalty is not None else None
        backend = InProcess(model, batch=batch, progress=progress, extra=extra)
    summary = backend.render_layer(layer, channels, settings, seed, run, bar=bar, should_stop=should_stop)
    if diversity > 1 and not summary.interrupted:
        summary.interrupted = render_diversity(
            model,
            layer,
            channels,
            settings,
            seed,
            run,
            diversity,
            weight=diversity_weight,
            penalty=penalty,
            should_stop=should_stop,
        )
    write_grid(run, layer.name, channels)
    return summary


@dataclass
class ChannelRender:
    """One channel's boosted features, as :func:`render` returns them (shows itself in Jupyter)."""

    image: Image.Image
    layer: str
    channel: int
    activation_before: float
    activation_after: float
    curve: list[float]
    seconds: float
    settings: RenderSettings

    @property
    def gain(self) -> float:
        return self.activation_after / self.activation_before if self.activation_before > 0 else float("inf")

    def _repr_png_(self) -> bytes:
        return png_bytes(self.image)


def render(
    model: Model,
    layer: str = "default",
    channel_index: int = 0,
    *,
    method: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    lr: float | None = None,
    size: int | None = None,
    **overrides,
) -> ChannelRender:
    """Render one channel's boosted features (the tutorial's ``render``, any preset; default: the layer's,
    :func:`~filterscope.optvis.presets.default_method`).

    Returns the image (PIL) and the channel's mean activation on the starting noise and on the result.
    """
    info = get_layer(model, layer)
    info.check_channels([channel_index])
    settings = resolve_settings(method, layer=info.name, model=model, steps=steps, lr=lr, size=size, **overrides)
    result = Renderer(model, settings).render(unit_objective(info, channel_index), [channel_seed(seed, channel_index)])
    if result.status[0] != "ok":
        raise RenderError(f"channel {channel_index}: {result.status[0]}")
    return ChannelRender(
        to_pil(result.images[0]),
        info.name,
        channel_index,
        result.before[0],
        result.after[0],
        result.curves[0],
        result.seconds,
        settings,
    )


@dataclass
class RenderedChannels:
    """What ``render`` of channels did (a :class:`~filterscope.jobs.contract.JobResult`'s ``data``)."""

    layer: LayerInfo
    channels: list[int]
    summary: StreamSummary


@dataclass
class RenderRequest(RenderOptions):
    """``render``'s arguments: channels of a layer (with a penalty, diverse variants), or one objective given
    as text (or an :class:`~filterscope.optvis.objectives.Objective` from Python); and the render options."""

    layer: str = opt("default", "Layer, or 'logit' for class logits.")
    channels: list[int] | None = opt(None, "e.g. 0-63, 1,5,9 or all.", channels=True, cli_default="0-15")
    objective: Any = opt(
        None, "Render one objective given as text instead, e.g. 'blocks.5:12 - 0.1*tv' or 'logit:967'."
    )
    penalty: Any = opt(None, "Regularisers subtracted from every channel, e.g. '0.05*tv'.")
    images: str | None = opt(
        None, "Folder of images to estimate the colour decorrelation from (models with 2 or 4+ input channels)."
    )
    diversity: int = opt(0, "Also render N ≥ 2 diverse variants per channel.", min=0)


@dataclass
class ChannelsPlan:
    model: Model
    info: LayerInfo
    channels: list[int]
    render: RenderSettings  # resolved once, for the model and the layer's kind of target
    seed: int
    batch: int | None
    diversity: int
    penalty: Objective | None
    settings: dict  # run.json's settings


def _has_objective(req: RenderRequest) -> bool:
    return isinstance(req.objective, Objective) or bool(req.objective)


def _precheck(req: RenderRequest) -> None:
    """Conflicting options, a bad image folder, a diversity of one or a bad render setting are refused
    before a model is loaded."""
    if _has_objective(req) and (req.penalty or req.diversity):  # an objective is the whole target
        raise UsageError(
            "--objective is the whole target: write a penalty into it ('blocks.5:12 - 0.05*tv'); "
            "--penalty and --diversity work with --layer/--channels"
        )
    check_diversity(req.diversity)
    if req.images:
        from ..models.inputs import list_images

        list_images(req.images)
    req.render_settings(None, None)


def _plan(model: Model, req: RenderRequest) -> ChannelsPlan | ObjectivePlan:
    """The path the request asks for: one objective, or channels of a layer."""
    images = str(req.images) if req.images else None
    if _has_objective(req):
        return objective_plan(model, req, images)
    info = get_layer(model, req.layer)
    chans = list(range(info.channels)) if req.channels is None else sorted(set(req.channels))
    info.check_channels(chans)
    check_diversity(req.diversity)
    settings = req.render_settings(model, info.name, decorrelation_images=images)
    penalty = req.penalty
    text = penalty if isinstance(penalty, str) else (penalty.name if penalty is not None else None)
    pen = objective_for(model, penalty) if isinstance(penalty, str) else penalty
    record = {
        "model": model.describe(),
        "layer": info.name,
        "channels": chans,
        "method": settings.label,
        "render": settings.as_dict(),
        "seed": req.seed,
        "batch": req.batch,
        "diversity": req.diversity,
        "penalty": text,
    }
    return ChannelsPlan(model, info, chans, settings, req.seed, req.batch, req.diversity, pen, record)


def _compute(ctx: RunContext, p: ChannelsPlan | ObjectivePlan) -> RenderedChannels | RenderedObjective:
    if isinstance(p, ObjectivePlan):
        return render_one(ctx, p)
    how = {"batch": p.batch, "diversity": p.diversity, "penalty": p.penalty, "progress": ctx.show_progress}
    summary = render_layer(p.model, p.info, p.channels, p.render, p.seed, ctx.run, **how, should_stop=ctx.stop)
    if summary.interrupted:
        ctx.mark_partial(len(summary.rendered) + len(summary.skipped), len(p.channels), "channels")
    return RenderedChannels(p.info, p.channels, summary)


def _write(ctx: RunContext, data: RenderedChannels | RenderedObjective) -> None:
    """The renders and the grid were written as they finished."""


def _summary(r: JobResult) -> list[str]:
    d = r.data
    if isinstance(d, RenderedObjective):
        rec = d.render
        gain = f"{rec['activation_before']:.3f} → {rec['activation_after']:.3f}"
        return [f"{d.objective.name}: {gain}; wrote {r.run_dir / d.file}"]
    s = d.summary
    lines = [
        f"rendered {len(s.rendered)} channels of {d.layer.name}"
        + (f" ({len(s.skipped)} already done)" if s.skipped else "")
        + f" in {r.record['timings']['total_s']:.1f} s → {r.run_dir / grid_file(d.layer.name)}"
    ]
    return lines + [f"  channel {c}: {why}" for c, why in s.failed.items()]


JOB = Job(
    "render",
    RenderRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="Render channels of a layer: one PNG per channel, a grid, and run.json.",
    renders=True,
    resumable=True,
    precheck=_precheck,
)


def render_channels(
    model: Model,
    layer: str = "default",
    channels: Sequence[int] | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> JobResult:
    """``filterscope render``: channels of ``layer`` (default: all) into ``out``, one PNG per channel, a
    grid and ``run.json``; options as :class:`RenderRequest` (``method`` or ``settings``, ``seed``, ``batch``,
    ``diversity``, ``penalty``: an objective or its text, e.g. ``"0.05*tv"``, subtracted from every channel's
    objective). ``data`` is the :class:`RenderedChannels`. An interrupted run is ``partial`` and resumable."""
    chans = None if channels is None else list(channels)
    return run_job(
        JOB,
        model,
        out=out,
        resume=resume,
        progress=progress,
        should_stop=should_stop,
        layer=layer,
        channels=chans,
        **options,
    )
