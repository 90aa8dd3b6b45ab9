"""Named render presets (``--method``): ``seed`` (the tutorial's loop, the baseline), ``lucid`` (Lucid's
defaults, the slow reference), ``maco`` (Fel et al. 2023), ``fast`` (the default for channels), ``fast-views``
(``fast`` with 8 views per step) and ``maco-fused`` (the default for class logits), with the default per kind of
target. What each preset sets and why is in ``docs/methods.md``; the measurements behind them in
``docs/research.md`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

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


def for_target(settings: RenderSettings, layer: str | None, model: Model | None = None) -> RenderSettings:
    """``settings`` made from :data:`DEFAULT_METHOD` (with changes, e.g. ``fast+steps``) moved onto the default
    preset of ``layer``'s target kind with the same changes; other settings as they are. For callers that
    built settings before they knew the target and whose user named no method (the CLI)."""
    base, *changed = settings.preset.split("+")
    want = default_method(layer, model)
    if base != DEFAULT_METHOD or want == base:
        return settings
    return get_preset(want).with_(**{k: getattr(settings, k) for k in changed if k})


def resolve_settings(
    method: str | None = None,
    settings: RenderSettings | None = None,
    *,
    layer: str | None = None,
    model: Model | None = None,
) -> RenderSettings:
    """The settings a job renders with: ``settings`` when given (its preset label is what it records), else
    the preset ``method`` (default: :func:`default_method` of ``layer`` and ``model``). Giving both with
    different presets is refused."""
    if settings is None:
        return get_preset(method or default_method(layer, model))
    if method is not None and settings.preset.split("+")[0] not in (method, "custom"):
        raise UsageError(f"method {method!r} and settings from preset {settings.preset!r} disagree: give one of them")
    return settings
