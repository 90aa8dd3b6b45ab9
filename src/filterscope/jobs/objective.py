"""Rendering one objective given in Python or as text (``filterscope render --objective``) into a run directory.

:func:`objective_for` reads the text form against a model: layer names are resolved (``default``),
channel and class numbers range-checked, and ``direction(layer, X)`` vectors read from an image (its mean
activation vector at the layer) or a ``.npy`` file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import Interrupted, RenderError, UsageError
from ..models.layers import get_layer
from ..models.model import Model
from ..optvis.objective_text import parse
from ..optvis.objectives import Objective
from ..optvis.presets import DEFAULT_METHOD, get_preset
from ..optvis.render import Renderer, RenderSettings, channel_seed
from ..outputs.naming import OBJECTIVE_PNG, objective_file
from ..outputs.rundir import RunDir


def objective_for(model: Model, text: str) -> Objective:
    """The objective that ``text`` names, checked against ``model``'s layers and sizes."""

    def resolve(name: str) -> str:
        return get_layer(model, name).name

    def vector(layer: str, arg: str) -> torch.Tensor:
        if arg.endswith(".npy"):
            import numpy as np

            try:
                vec = torch.tensor(np.load(arg)).float().flatten()
            except (OSError, ValueError) as e:
                raise UsageError(f"cannot read direction vector {arg}: {e}") from None
            n = get_layer(model, layer).channels
            if vec.numel() != n:
                raise UsageError(f"direction vector {arg} has {vec.numel()} values; {layer} has {n} channels")
            return vec
        from ..outputs.images import load_image
        from .inspect import inspect

        return inspect(model, load_image(arg), layer, top=1).means

    return parse(text, resolve, vector, channels=lambda name: get_layer(model, name).channels)


@dataclass
class ObjectiveRun:
    run_dir: Path
    objective: Objective
    file: str | None  # the PNG written (None when the render failed)
    record: dict  # this render's entry in run.json
    status: str  # complete | partial


def render_objective(
    model: Model,
    objective: Objective | str,
    *,
    method: str = DEFAULT_METHOD,
    settings: RenderSettings | None = None,
    seed: int = 0,
    out: str | Path = "filterscope-out/render",
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ObjectiveRun:
    """Render one objective (an :class:`Objective` or its text) into ``out``: its PNG (named for its target,
    e.g. ``logit_0967.png``, else ``objective.png``) and ``run.json``. Raises :class:`Interrupted` when
    stopped before the end (run.json is kept as ``partial``) and :class:`RenderError` when it fails."""
    t0 = time.perf_counter()
    obj = objective_for(model, objective) if isinstance(objective, str) else objective
    settings = settings or get_preset(method)
    fname = objective_file(obj.target)
    run = RunDir(
        out,
        "render",
        {
            "model": model.describe(),
            "objective": obj.name,
            "method": method,
            "render": settings.for_model(model).as_dict(),
            "seed": seed,
        },
        resume=resume,
    )
    res = Renderer(model, settings).render(obj, [channel_seed(seed, 0)], on_step=on_step, should_stop=should_stop)
    if res.interrupted:
        run.finish("partial")
        raise Interrupted("interrupted before the render finished; nothing was written but run.json")
    if res.status[0] == "ok":
        run.write_png(fname, res.images[0])
    rec = {
        "objective": obj.name,
        "file": fname,
        "activation_before": res.before[0],
        "activation_after": res.after[0],
        "status": res.status[0],
    }
    if fname != OBJECTIVE_PNG:
        rec.update(layer=obj.target.layer, channel=obj.target.index)
    run.result(obj.name, rec)
    run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    run.finish("complete")
    if res.status[0] != "ok":
        raise RenderError(f"the render failed: {res.status[0]}")
    return ObjectiveRun(run.path, obj, fname, rec, "complete")
