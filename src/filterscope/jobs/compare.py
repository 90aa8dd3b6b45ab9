"""The same channels rendered with several presets, side by side in one figure (``figure_compare.png``).

Each preset renders into its own sub-run (``<out>/<method>/``, a normal render run with its grid), so an
interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import UsageError
from ..models.inputs import to_tensor
from ..models.layers import get_layer
from ..models.model import Model
from ..optvis.presets import get_preset
from ..outputs.figures import compare_figure
from ..outputs.naming import channel_file, default_out, figure_file
from ..outputs.rundir import RunDir
from .channels import render_layer
from .contract import JobResult, open_run

DEFAULT_METHODS = ("seed", "lucid", "maco", "fast")


@dataclass
class CompareRun(JobResult):
    """:class:`~filterscope.jobs.contract.JobResult` of a comparison: its methods, channels and figure."""

    methods: list[str] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    figure: str | None = None  # None when stopped before the figure


def compare_tile(path: Path, size: int) -> torch.Tensor:
    """A finished render as a tensor; a channel that failed (no PNG) shows as a grey tile."""
    if not path.is_file():
        return torch.full((3, size, size), 0.5)
    with Image.open(path) as im:
        return to_tensor(im.convert("RGB"))


def compare(
    model: Model,
    layer: str = "default",
    channels: Sequence[int] = range(6),
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    steps: int | None = None,
    seed: int = 0,
    out: str | Path = default_out("compare"),
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> CompareRun:
    """Render ``channels`` of ``layer`` with every preset in ``methods`` (``steps`` for all of them, or each
    preset's own) and write ``figure_compare.png``. A stopped comparison ends ``partial`` (finished channels
    are kept for ``resume``)."""
    info = get_layer(model, layer)
    chans = list(channels)
    info.check_channels(chans)
    if not methods:
        raise UsageError("give at least one method to compare")
    settings = {n: get_preset(n).with_(steps=steps) for n in methods}
    record = {
        "model": model.describe(),
        "layer": info.name,
        "channels": chans,
        "methods": {n: s.for_model(model).as_dict() for n, s in settings.items()},
        "seed": seed,
    }
    name = None
    with open_run("compare", out, record, resume=resume, progress=progress, should_stop=should_stop) as ctx:
        run = ctx.run
        rows, notes = {}, {}
        finished = 0
        for n, st in settings.items():
            sub = RunDir(
                run.path / n,
                "render",
                {
                    "model": model.describe(),
                    "layer": info.name,
                    "channels": chans,
                    "method": n,
                    "render": st.for_model(model).as_dict(),
                    "seed": seed,
                    "batch": None,
                    "diversity": 0,
                    "penalty": None,
                },
                resume=resume,
            )
            with ctx.timed(n):
                summary = render_layer(model, info, chans, st, seed, sub, progress=progress, should_stop=ctx.stop)
                sub.finish("partial" if summary.interrupted else "complete")
            finished += len(summary.rendered) + len(summary.skipped)
            if summary.interrupted:
                ctx.mark_partial(finished, len(chans) * len(settings), "channels")
                break
            rows[n] = [compare_tile(sub.file(channel_file(info.name, c)), st.size or model.input_size) for c in chans]
            notes[n] = f"{st.views} views × {st.steps} steps" if st.views > 1 else f"{st.steps} steps"
            run.record["results"][n] = {"dir": n, "steps": st.steps, "views": st.views}
        else:
            name = figure_file("compare")
            run.write_figure(name, compare_figure(rows, chans, info.name, notes))
    r = ctx.result
    return CompareRun(r.run_dir, r.status, r.record, None, r.interruption, list(settings), chans, name)
