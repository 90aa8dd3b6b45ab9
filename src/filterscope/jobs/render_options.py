"""The render options every rendering job shares (``--method``, ``--steps``, …, ``--precision``): one request
mixin, and the settings they resolve to for a model and a target
(:func:`~filterscope.optvis.presets.resolve_settings`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.model import Model
from ..optvis.presets import resolve_settings
from ..optvis.render import RenderSettings
from .contract import opt


@dataclass
class RenderOptions:
    """A job request's render fields: a preset and the changes to it, the seed and the batch. A job's request
    inherits them (``class BoostRequest(RenderOptions)``) and resolves them once with :meth:`render_settings`."""

    method: str | None = opt(None, "Preset (default: fast; maco-fused for class logits).", registry="method")
    steps: int | None = opt(None, "Optimisation steps (default: the method's).", min=1)
    lr: float | None = opt(None, "Learning rate (default: the method's).", positive=True)
    size: int | None = opt(None, "Side of the rendered image (default: the model's input).")
    seed: int = opt(0, "", min=0)
    batch: int | None = opt(None, "Images per step (default: 1 on CPU, from memory on GPU).", min=1)
    param: str | None = opt(None, "Override the method's parameterisation.", registry="param")
    transforms: str | None = opt(None, "Override the method's transforms.", registry="transforms")
    optimizer: str | None = opt(None, "Override the method's optimiser.", registry="optimizer")
    views: int | None = opt(
        None,
        "Transformed views of each image per step (default 1; costs ~N steps on a CPU, less on a GPU).",
        min=1,
        max=64,
    )
    precision: str | None = opt(
        None,
        "The network's arithmetic in the render loop (default float32; bfloat16 runs it under autocast).",
        registry="precision",
    )
    settings: RenderSettings | None = opt(None, "Settings to start from instead of a preset (API).", cli=False)

    def render_settings(self, model: Model, layer: str | None, **more) -> RenderSettings:
        """The settings these options ask for, for ``model`` and a target at ``layer`` (its kind's preset when
        no method is named), completed for the model: resolved once per job."""
        changes = {k: getattr(self, k) for k in ("steps", "lr", "size", "param", "transforms", "optimizer")}
        changes.update(views=self.views, precision=self.precision, **more)
        return resolve_settings(self.method, self.settings, layer=layer, model=model, batch=self.batch, **changes)
