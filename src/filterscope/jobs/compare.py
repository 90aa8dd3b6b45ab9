"""The same channels rendered with several presets, side by side in one figure (``figure_compare.png``).

Each preset renders into its own sub-run (``<out>/<method>/``, a normal render run with its grid), so an
interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import Interrupted
from ..models.layers import get_layer
from ..models.model import Model
from ..optvis.presets import get_preset
from ..outputs.figures import compare_figure
from ..outputs.images import to_tensor
from ..outputs.naming import channel_file, figure_file
from ..outputs.rundir import RunDir
from .channels import render_layer

DEFAULT_METHODS = ("seed", "lucid", "maco", "fast")


@dataclass
class CompareRun:
    run_dir: Path
    methods: list[str]
    channels: list[int]
    figure: str


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
    out: str | Path = "filterscope-out/compare",
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> CompareRun:
    """Render ``channels`` of ``layer`` with every preset in ``methods`` (``steps`` for all of them, or each
    preset's own) and write ``figure_compare.png``. Raises :class:`Interrupted` when stopped (finished
    channels are kept for ``resume``)."""
    t0 = time.perf_counter()
    info = get_layer(model, layer)
    chans = list(channels)
    info.check_channels(chans)
    settings = {n: get_preset(n).with_(steps=steps) for n in methods}
    run = RunDir(
        out,
        "compare",
        {
            "model": model.describe(),
            "layer": info.name,
            "channels": chans,
            "methods": {n: s.for_model(model).as_dict() for n, s in settings.items()},
            "seed": seed,
        },
        resume=resume,
    )
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
        t = time.perf_counter()
        summary = render_layer(model, info, chans, st, seed, sub, progress=progress, should_stop=should_stop)
        sub.finish("partial" if summary.interrupted else "complete")
        finished += len(summary.rendered) + len(summary.skipped)
        if summary.interrupted:
            run.finish("partial")
            raise Interrupted.kept(run.path, finished, len(chans) * len(settings))
        rows[n] = [compare_tile(sub.file(channel_file(info.name, c)), st.size or model.input_size) for c in chans]
        notes[n] = f"{st.steps} steps"
        run.record["timings"][n + "_s"] = round(time.perf_counter() - t, 3)
        run.record["results"][n] = {"dir": n, "steps": st.steps}
    name = figure_file("compare")
    run.write_figure(name, compare_figure(rows, chans, info.name, notes))
    run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    run.finish("complete")
    return CompareRun(run.path, list(settings), chans, name)
