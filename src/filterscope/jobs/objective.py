"""The objective path of the render job (``filterscope render --objective``): one objective given in Python
or as text, read against a model, planned and rendered into the run.

:func:`objective_for` reads the text form against a model: layer names are resolved (``default``),
channel and class numbers range-checked, and ``direction(layer, X)`` vectors read from an image (its mean
activation vector at the layer) or a ``.npy`` file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import RenderError, UsageError
from ..models.layers import LOGIT, get_layer
from ..models.model import Model
from ..optvis.objective_text import parse
from ..optvis.objectives import Objective
from ..optvis.render import Renderer, RenderSettings, channel_seed
from ..outputs.naming import OBJECTIVE_PNG, objective_file
from .contract import RunContext


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
        from .inspect import inspect_image

        return inspect_image(model, load_image(arg), layer, top=1).means

    return parse(text, resolve, vector, channels=lambda name: get_layer(model, name).channels)


def target_layer(obj: Objective) -> str | None:
    """The layer of an objective's target (logits for any objective that needs them), for its default preset."""
    if obj.target is not None:
        return obj.target.layer
    return LOGIT if obj.needs_logits else None


@dataclass
class RenderedObjective:
    """One objective's render (a :class:`~filterscope.jobs.contract.JobResult`'s ``data``)."""

    objective: Objective
    file: str | None = None  # the PNG written (None when the render failed or was stopped)
    render: dict = field(default_factory=dict)  # this render's entry in run.json


@dataclass
class ObjectivePlan:
    """``render --objective``'s plan: the objective read against the model and its settings."""

    model: Model
    objective: Objective
    render: RenderSettings  # resolved once, for the model and the objective's kind of target
    seed: int
    settings: dict  # run.json's settings


def objective_plan(model: Model, req: Any, images: str | None = None) -> ObjectivePlan:
    """The plan of a render request (:class:`~filterscope.jobs.channels.RenderRequest`) with an objective."""
    obj = objective_for(model, req.objective) if isinstance(req.objective, str) else req.objective
    settings = req.render_settings(model, target_layer(obj), decorrelation_images=images)
    record = {
        "model": model.describe(),
        "objective": obj.name,
        "method": settings.label,
        "render": settings.as_dict(),
        "seed": req.seed,
    }
    return ObjectivePlan(model, obj, settings, req.seed, record)


def render_one(ctx: RunContext, p: ObjectivePlan) -> RenderedObjective:
    """Render the objective into the run: its PNG (named for its target, e.g. ``logit_0967.png``, else
    ``objective.png``) and its record. A stopped render ends ``partial`` (only run.json is written); a failed
    one is recorded, then raises :class:`RenderError`."""
    obj, fname = p.objective, objective_file(p.objective.target)
    with ctx.progress(p.render.steps, "render objective", unit="step") as bar:
        res = Renderer(p.model, p.render).render(
            obj, [channel_seed(p.seed, 0)], on_step=lambda i: bar.update(1), should_stop=ctx.stop
        )
    out = RenderedObjective(obj)
    if res.interrupted:
        ctx.status = "partial"
        ctx.interruption = "interrupted before the render finished; nothing was written but run.json"
        return out
    if res.status[0] == "ok":
        ctx.run.write_png(fname, res.images[0])
        out.file = fname
    else:
        ctx.error = RenderError(f"the render failed: {res.status[0]}")
    out.render = {
        "objective": obj.name,
        "file": fname,
        "activation_before": res.before[0],
        "activation_after": res.after[0],
        "status": res.status[0],
    }
    if fname != OBJECTIVE_PNG:
        out.render.update(layer=obj.target.layer, channel=obj.target.index)
    ctx.run.result(obj.name, out.render)
    return out
