"""Diversity: ``n`` jointly optimised variants of a channel, pushed apart by Lucid's diversity term."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import UsageError
from ..models.layers import LOGIT, LayerInfo
from ..models.model import Model
from ..optvis.objectives import Objective
from ..optvis.render import Renderer, RenderResult, RenderSettings, channel_seed
from ..outputs.naming import channel_file
from .stream import unit_objective


def check_diversity(n: int) -> int:
    """Diverse variants are pushed away from each other, so there must be none or at least 2."""
    if n == 1:
        raise UsageError("--diversity needs at least 2 variants (each is pushed away from the others); 0 turns it off")
    return n


def diversity_seeds(seed: int, c: int, n: int) -> list[int]:
    return [channel_seed(seed, c + (v + 1) * 1_000_003) for v in range(n)]


def diversity_objective(model: Model, layer: LayerInfo, c: int, weight: float = 1.0) -> Objective:
    """Channel ``c`` plus Lucid's diversity term at its layer (the default layer for class logits)."""
    from ..models.layers import default_layer
    from ..optvis.objectives import diversity as diversity_term

    div_layer = layer.name if layer.name != LOGIT else default_layer(model)
    return unit_objective(layer, c) + weight * diversity_term(div_layer)


def diversity_variants(
    model: Model,
    layer: LayerInfo,
    c: int,
    settings: RenderSettings,
    seed: int,
    n: int,
    *,
    weight: float = 1.0,
    penalty: Objective | None = None,
    should_stop: Callable[[], bool] | None = None,
    renderer: Renderer | None = None,
) -> RenderResult:
    """``n`` jointly optimised variants of channel ``c`` (``render --diversity``, the explorer's diversity
    view): one render of :func:`diversity_objective` (minus ``penalty``) from :func:`diversity_seeds`."""
    obj = diversity_objective(model, layer, c, weight)
    if penalty is not None:
        obj = obj - penalty
    renderer = renderer or Renderer(model, settings)
    return renderer.render(obj, diversity_seeds(seed, c, n), should_stop=should_stop)


def render_diversity(
    model: Model,
    layer: LayerInfo,
    channels: Sequence[int],
    settings: RenderSettings,
    seed: int,
    run,
    n: int,
    *,
    weight: float = 1.0,
    penalty: Objective | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """``n`` jointly optimised variants per channel into ``diversity_<v>/``; returns whether it was stopped."""
    renderer = Renderer(model, settings)
    for c in channels:
        key = f"{layer.name}:{c}:diversity"
        if run.done(key):
            continue
        if should_stop and should_stop():
            return True
        res = diversity_variants(
            model,
            layer,
            c,
            settings,
            seed,
            n,
            weight=weight,
            penalty=penalty,
            should_stop=should_stop,
            renderer=renderer,
        )
        if res.interrupted:
            return True
        files = []
        for v in range(n):
            if res.status[v] == "ok":
                files.append(channel_file(layer.name, c, v + 1))
                run.write_png(files[-1], res.images[v])
        run.result(
            key,
            {
                "layer": layer.name,
                "channel": c,
                "files": files,
                "activation_after": [round(a, 6) for a in res.after],
                "status": res.status,
            },
        )
    return False
