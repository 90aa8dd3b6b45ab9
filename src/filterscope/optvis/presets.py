"""Named render presets (``--method``): ``seed`` (the tutorial's loop, the baseline), ``lucid`` (Lucid's
defaults, the slow reference), ``maco`` (Fel et al. 2023), ``fast`` (the default for channels), ``fast-views``
(``fast`` with 8 views per step) and ``maco-fused`` (the default for class logits), with the default per kind of
target. What each preset sets and why is in ``docs/methods.md``; the measurements behind them in
``docs/research.md`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import UsageError, closest
from .render import RenderSettings

if TYPE_CHECKING:
    from ..models.model import Model

PRESETS: dict[str, RenderSettings] = {
    "seed": RenderSettings(
        param="pixel", decorrelate=False, transforms="none", steps=48, lr=0.02, param_options=(("noise", (0.45, 0.55)),)
    ),
    "lucid": RenderSettings(
        param="fourier",
        decorrelate=True,
        transforms="standard",
        steps=512,
        lr=0.05,
        pre_relu=True,
        param_options=(("rgb_gain", 1.0),),  # Lucid's own colour mapping: the reference stays Lucid's
    ),
    "maco": RenderSettings(
        param="maco",
        decorrelate=True,
        transforms="maco",
        steps=96,
        lr=1.0,
        optimizer="nadam",
        pre_relu=True,
        param_options=(("contrast", 1.2),),
    ),
    "fast": RenderSettings(
        param="fourier",
        decorrelate=True,
        transforms="fused",
        steps=48,
        lr=0.12,
        optimizer="nadam",
        converge=0.01,
        window=8,
        pre_relu=True,
        param_options=(("init_contrast", 0.5),),
        ema=0.8,
        anneal=0.5,
    ),
}

# MACO with fast's affine jitter instead of crops: the default for class logits (METHOD_BY_TARGET)
PRESETS["maco-fused"] = replace(PRESETS["maco"], transforms="fused", steps=64)
# Lucid-512's gradient samples in 1/8 of its steps (docs/research.md)
PRESETS["fast-views"] = replace(PRESETS["fast"], views=8, steps=64)
PRESETS = {name: replace(s, preset=name) for name, s in PRESETS.items()}

DEFAULT_METHOD = "fast"
# the default preset per kind of target (class renders that another model recognises: docs/research.md);
# a named --method always wins
METHOD_BY_TARGET: dict[str, str] = {"channel": DEFAULT_METHOD, "logit": "maco-fused"}


def get_preset(name: str) -> RenderSettings:
    """The preset called ``name`` (its :attr:`~RenderSettings.preset` is ``name``)."""
    if name not in PRESETS:
        raise UsageError(f"unknown method {name!r}", hint=closest(name, PRESETS) or "use " + ", ".join(PRESETS))
    return PRESETS[name]


def target_kind(layer: str | None) -> str:
    """``logit`` for the class-logit pseudo-layer, else ``channel``: the kinds of target with their own default."""
    from ..models.layers import LOGIT

    return "logit" if layer == LOGIT else "channel"


def photo_model(model: Model | None) -> bool:
    """Whether ``model`` reads RGB photos, where priors taken from photos (MACO's spectrum, the shipped colour
    matrix) apply; unknown (``None``) counts as yes."""
    return model is None or model.in_channels == 3


def default_method(layer: str | None = None, model: Model | None = None) -> str:
    """The preset a target at ``layer`` renders with when none is named (:data:`METHOD_BY_TARGET`). The logit
    default rests on a photo prior, so a model of other images (1-channel digits, multispectral bands) keeps
    :data:`DEFAULT_METHOD` (measured on the digits CNNs: ``maco-fused`` 6/10 classes recognised by the second
    net, ``fast`` 9/10)."""
    kind = target_kind(layer)
    return METHOD_BY_TARGET[kind] if kind == "channel" or photo_model(model) else DEFAULT_METHOD


def resolve_settings(
    method: str | None = None,
    settings: RenderSettings | None = None,
    *,
    layer: str | None = None,
    model: Model | None = None,
    batch: int | None = None,
    **overrides: Any,
) -> RenderSettings:
    """The settings a job renders with, resolved once: the preset ``method`` (default: :func:`default_method`
    of the target ``layer`` and ``model``) — or ``settings`` when given — with ``overrides`` (``None``
    values ignored; the changed fields are recorded in :attr:`~RenderSettings.changed`), completed for
    ``model`` (:meth:`~RenderSettings.for_model`) when one is given, and checked against the memory that
    ``batch`` images of them need. Giving ``method`` and ``settings`` of another preset is refused."""
    if settings is None:
        settings = get_preset(method or default_method(layer, model))
    elif method is not None and settings.preset not in (method, "custom"):
        raise UsageError(f"method {method!r} and settings from preset {settings.label!r} disagree: give one of them")
    settings = settings.with_(**overrides) if any(v is not None for v in overrides.values()) else settings
    if model is None:
        return settings
    from .memory import check_render_memory

    check_render_memory(settings.size, (batch or 1) * settings.views, model.device.type)
    return settings.for_model(model)
