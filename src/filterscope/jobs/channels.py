"""The render job (``filterscope render``, :func:`render_channels`) and the notebook's :func:`render`: a
layer's channels on a backend, then their diversity variants and grid.

The pieces live by idea: the channel stream and cache (:mod:`~filterscope.jobs.stream`), backends and the
per-channel write (:mod:`~filterscope.jobs.backends`), diversity (:mod:`~filterscope.jobs.diversity`) and
grids (:mod:`~filterscope.jobs.grids`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import RenderError
from ..models.layers import LayerInfo, get_layer
from ..models.model import Model
from ..optvis.objectives import Objective
from ..optvis.presets import default_method, get_preset, resolve_settings
from ..optvis.render import Renderer, RenderSettings, channel_seed
from ..outputs.images import png_bytes, to_pil
from ..outputs.naming import default_out
from .backends import Backend, InProcess, StreamSummary
from .contract import JobResult, open_run
from .diversity import check_diversity, render_diversity
from .grids import write_grid
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
    settings = get_preset(method or default_method(info.name, model)).with_(steps=steps, lr=lr, size=size, **overrides)
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
class RenderRun(JobResult):
    """:class:`~filterscope.jobs.contract.JobResult` of ``render_channels``: the layer, channels, summary."""

    layer: LayerInfo | None = None
    channels: list[int] = field(default_factory=list)
    summary: StreamSummary | None = None


def render_channels(
    model: Model,
    layer: str = "default",
    channels: Sequence[int] | None = None,
    *,
    method: str | None = None,
    settings: RenderSettings | None = None,
    seed: int = 0,
    out: str | Path = default_out("render"),
    batch: int | None = None,
    diversity: int = 0,
    penalty: Objective | str | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> RenderRun:
    """``filterscope render``: channels of ``layer`` (default: all) into ``out``, one PNG per channel, a
    grid and ``run.json``; ``penalty`` (an objective or its text, e.g. ``"0.05*tv"``) is subtracted from
    every channel's objective. An interrupted run is ``partial`` and resumable."""
    from .render_objective import objective_for

    info = get_layer(model, layer)
    chans = list(range(info.channels)) if channels is None else sorted(set(channels))
    info.check_channels(chans)
    check_diversity(diversity)
    settings = resolve_settings(method, settings, layer=info.name, model=model)
    text = penalty if isinstance(penalty, str) else (penalty.name if penalty is not None else None)
    pen = objective_for(model, penalty) if isinstance(penalty, str) else penalty
    record = {
        "model": model.describe(),
        "layer": info.name,
        "channels": chans,
        "method": settings.preset,
        "render": settings.for_model(model).as_dict(),
        "seed": seed,
        "batch": batch,
        "diversity": diversity,
        "penalty": text,
    }
    with open_run("render", out, record, resume=resume, progress=progress, should_stop=should_stop) as ctx:
        summary = render_layer(
            model,
            info,
            chans,
            settings,
            seed,
            ctx.run,
            batch=batch,
            diversity=diversity,
            penalty=pen,
            progress=progress,
            should_stop=ctx.stop,
        )
        if summary.interrupted:
            ctx.mark_partial(len(summary.rendered) + len(summary.skipped), len(chans), "channels")
    r = ctx.result
    return RenderRun(r.run_dir, r.status, r.record, None, r.interruption, info, chans, summary)
