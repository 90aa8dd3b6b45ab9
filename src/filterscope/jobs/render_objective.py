"""Rendering one objective given in Python or as text (``filterscope render --objective``) into a run directory.

:func:`objective_for` reads the text form against a model: layer names are resolved (``default``),
channel and class numbers range-checked, and ``direction(layer, X)`` vectors read from an image (its mean
activation vector at the layer) or a ``.npy`` file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import RenderError, UsageError
from ..models.layers import LOGIT, get_layer
from ..models.model import Model
from ..optvis.objective_text import parse
from ..optvis.objectives import Objective
from ..optvis.presets import resolve_settings
from ..optvis.render import Renderer, RenderSettings, channel_seed
from ..outputs.naming import OBJECTIVE_PNG, default_out, objective_file
from .contract import JobResult, open_run


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
        from ..models.inputs import load_image
        from .inspect import inspect

        return inspect(model, load_image(arg), layer, top=1).means

    return parse(text, resolve, vector, channels=lambda name: get_layer(model, name).channels)


def target_layer(obj: Objective) -> str | None:
    """The layer of an objective's target (logits for any objective that needs them), for its default preset."""
    if obj.target is not None:
        return obj.target.layer
    return LOGIT if obj.needs_logits else None


@dataclass
class ObjectiveRun(JobResult):
    """:class:`~filterscope.jobs.contract.JobResult` of one objective's render."""

    objective: Objective | None = None
    file: str | None = None  # the PNG written (None when the render failed or was stopped)
    render: dict = field(default_factory=dict)  # this render's entry in run.json


def render_objective(
    model: Model,
    objective: Objective | str,
    *,
    method: str | None = None,
    settings: RenderSettings | None = None,
    seed: int = 0,
    out: str | Path = default_out("render"),
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ObjectiveRun:
    """Render one objective (an :class:`Objective` or its text) into ``out``: its PNG (named for its target,
    e.g. ``logit_0967.png``, else ``objective.png``) and ``run.json``. A stopped render ends ``partial``
    (only run.json is written); a failed one raises :class:`RenderError` after recording it."""
    obj = objective_for(model, objective) if isinstance(objective, str) else objective
    settings = resolve_settings(method, settings, layer=target_layer(obj), model=model)
    fname = objective_file(obj.target)
    record = {
        "model": model.describe(),
        "objective": obj.name,
        "method": settings.preset,
        "render": settings.for_model(model).as_dict(),
        "seed": seed,
    }
    rec: dict = {}
    with open_run("render", out, record, resume=resume, progress=progress, should_stop=should_stop) as ctx:
        res = Renderer(model, settings).render(obj, [channel_seed(seed, 0)], on_step=on_step, should_stop=ctx.stop)
        if res.interrupted:
            ctx.status = "partial"
            ctx.interruption = "interrupted before the render finished; nothing was written but run.json"
        else:
            if res.status[0] == "ok":
                ctx.run.write_png(fname, res.images[0])
            rec = {
                "objective": obj.name,
                "file": fname,
                "activation_before": res.before[0],
                "activation_after": res.after[0],
                "status": res.status[0],
            }
            if fname != OBJECTIVE_PNG:
                rec.update(layer=obj.target.layer, channel=obj.target.index)
            ctx.run.result(obj.name, rec)
    r = ctx.result
    if rec and rec["status"] != "ok":
        raise RenderError(f"the render failed: {rec['status']}")
    written = fname if rec.get("status") == "ok" else None
    return ObjectiveRun(r.run_dir, r.status, r.record, None, r.interruption, obj, written, rec)
