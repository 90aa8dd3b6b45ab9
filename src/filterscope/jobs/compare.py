"""The same channels rendered with several presets, side by side in one figure (``figure_compare.png``).

Each preset renders into its own sub-run (``<out>/<method>/``, a normal render run with its grid), so an
interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import UsageError
from ..models.inputs import to_tensor
from ..models.layers import LayerInfo, get_layer
from ..models.model import Model
from ..optvis.presets import get_preset
from ..optvis.render import RenderSettings
from ..outputs.figures import compare_figure
from ..outputs.naming import channel_file, figure_file
from ..outputs.rundir import RunDir
from .channels import render_layer
from .contract import Job, JobResult, RunContext, opt, run_job

DEFAULT_METHODS = ("seed", "lucid", "maco", "fast")


@dataclass
class Comparison:
    """What a comparison made: its methods, channels and figure (None when stopped before the figure)."""

    methods: list[str]
    channels: list[int]
    figure: str | None = None


@dataclass
class CompareRequest:
    """The arguments of ``filterscope compare``."""

    layer: str = opt("default", "Layer.")
    channels: list[int] | None = opt([0, 1, 2, 3, 4, 5], "e.g. 0-5 or 1,5,9.", channels=True, cli_default="0-5")
    methods: list[str] = opt(list(DEFAULT_METHODS), "Comma-separated presets.", names="method")
    steps: int | None = opt(None, "Steps for every method [default: each preset's own].", min=1)
    seed: int = opt(0, "Seed.", min=0)


@dataclass
class ComparePlan:
    model: Model
    info: LayerInfo
    channels: list[int]
    presets: dict[str, RenderSettings]
    seed: int
    settings: dict


def compare_tile(path: Path, size: int) -> torch.Tensor:
    """A finished render as a tensor; a channel that failed (no PNG) shows as a grey tile."""
    if not path.is_file():
        return torch.full((3, size, size), 0.5)
    with Image.open(path) as im:
        return to_tensor(im.convert("RGB"))


def _plan(model: Model, req: CompareRequest) -> ComparePlan:
    info = get_layer(model, req.layer)
    chans = list(range(info.channels)) if req.channels is None else [int(c) for c in req.channels]
    info.check_channels(chans)
    if not req.methods:
        raise UsageError("give at least one method to compare")
    presets = {n: get_preset(n).with_(steps=req.steps).for_model(model) for n in req.methods}
    record = {
        "model": model.describe(),
        "layer": info.name,
        "channels": chans,
        "methods": {n: s.as_dict() for n, s in presets.items()},
        "seed": req.seed,
    }
    return ComparePlan(model, info, chans, presets, req.seed, record)


def _compute(ctx: RunContext, p: ComparePlan) -> Comparison:
    """Every preset renders into its own sub-run; the figure once all have finished."""
    model, info, chans, seed = p.model, p.info, p.channels, p.seed
    run = ctx.run
    rows, notes = {}, {}
    finished = 0
    res = Comparison(list(p.presets), chans)
    for n, st in p.presets.items():
        sub = RunDir(
            run.path / n,
            "render",
            {
                "model": model.describe(),
                "layer": info.name,
                "channels": chans,
                "method": n,
                "render": st.as_dict(),
                "seed": seed,
                "batch": None,
                "diversity": 0,
                "penalty": None,
            },
            resume=ctx.resume,
        )
        with ctx.timed(n):
            summary = render_layer(model, info, chans, st, seed, sub, progress=ctx.show_progress, should_stop=ctx.stop)
            sub.finish("partial" if summary.interrupted else "complete")
        finished += len(summary.rendered) + len(summary.skipped)
        if summary.interrupted:
            ctx.mark_partial(finished, len(chans) * len(p.presets), "channels")
            return res
        rows[n] = [compare_tile(sub.file(channel_file(info.name, c)), st.size or model.input_size) for c in chans]
        notes[n] = f"{st.views} views × {st.steps} steps" if st.views > 1 else f"{st.steps} steps"
        run.record["results"][n] = {"dir": n, "steps": st.steps, "views": st.views}
    res.figure = figure_file("compare")
    run.write_figure(res.figure, compare_figure(rows, chans, info.name, notes))
    return res


def _write(ctx: RunContext, res: Comparison) -> None:
    """The sub-runs and the figure were written as they finished."""


def _summary(r: JobResult) -> list[str]:
    c = r.data
    return [f"wrote {r.run_dir}/{c.figure} ({len(c.methods)} methods × {len(c.channels)} channels)"]


JOB = Job(
    "compare",
    CompareRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="The same channels rendered with every preset, side by side in one figure.",
    renders=True,
    resumable=True,
)


def compare(
    model: Model,
    layer: str = "default",
    channels: Sequence[int] = range(6),
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    steps: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    """Render ``channels`` of ``layer`` with every preset in ``methods`` (``steps`` for all of them, or each
    preset's own) and write ``figure_compare.png``; ``data`` is the :class:`Comparison`. A stopped
    comparison ends ``partial`` (finished channels are kept for ``resume``)."""
    req = CompareRequest(layer, list(channels), list(methods), steps, seed)
    return run_job(JOB, model, req, out=out, resume=resume, progress=progress, should_stop=should_stop)
