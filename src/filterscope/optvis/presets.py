"""Named render presets (``--method``); the README's "Methods (presets)" section gives the measurements behind them.

- ``seed``: the tutorial's method, the baseline: pixels from uniform grey noise (0.45-0.55, Chollet's
  "grey image with noise"), Adam, loss = -mean activation, no transforms, 48 steps at lr 0.02. High
  activations, high-frequency pictures.
- ``lucid``: Lucid/Lucent's defaults: Fourier + decorrelated colour with Lucid's own colour mapping
  (``rgb_gain`` 1), Lucid's standard transforms, Adam lr 0.05, 512 steps. The slow reference.
- ``maco``: Fel et al. 2023 (Horama): magnitude-constrained phase optimisation with NAdam lr 1.0 and one
  random crop (80-100 % of the side) with noise per step; 96 steps at 224 px. Its amplitude is fixed, so
  its contrast is set, not learnt: ``contrast`` 1.2 offsets the part of the fixed energy that the optimised
  phases put into sigmoid-saturated pixels (measured: the rendered contrast at ``blocks.3`` was ~15 % below a
  random-phase image's).
- ``maco-fused`` (default for class logits): MACO's fixed natural spectrum with ``fast``'s fused affine
  transforms instead of crops, 64 steps. Class renders that another model recognises: on 20 tuning classes
  (0, 50, …, 950) of efficientnet_lite0 classified by efficientnet_lite1, 100 % top-1 against 85 % for
  ``maco`` and 80 % for ``fast`` (``benchmarks/bench_classes.py``): the magnitude prior keeps the picture off
  the high-frequency patterns one network alone reads, the affine jitter keeps it off exact pixel positions.
- ``fast`` (default for channels): Fourier + decorrelated colour, Lucid's standard transforms fused into one random
  affine resample (``fused``: fewer resamplings, ~10 % faster per step and more robust renders), NAdam
  lr 0.12, 48 steps, and each image stops once its objective gains < 1 % over 8 steps. A Fourier image's
  amplitude grows by at most ~lr per step: 48 steps at 0.08 left renders at half of Lucid-512's contrast,
  while the robust ratio is flat from 0.08 to 0.16. It starts from a random-phase image with the natural
  spectrum at half a photo's contrast (``init_contrast`` 0.5, MACO's prior as the start, amplitudes free)
  instead of Lucid's near-grey noise: the loop need not first grow the picture, which is where a step-limited
  render spent its first steps (``benchmarks/bench_progress.py``: on tuning channels, median robust ratio at
  64 steps 4.99 → 5.19 at blocks.3 and 10.16 → 11.22 at blocks.6, colourfulness and contrast up too). The
  picture it returns is the running average of its steps' coefficients (``ema`` 0.8, an exponential moving
  average of the iterates: each step follows one random transform, and the average keeps what the last ~5
  agree on). It costs no network pass; held out it raised the median robust ratio at 4 of 5 layers (+2.0 to
  +5.1 %, −0.5 % at blocks.1).
  Its transforms anneal (``anneal`` 0.5): the affine's scale, angle and translation ranges shrink linearly to
  half their size at the last step, so early steps find structure that survives large shifts and late ones
  refine it under views closer to the picture itself. Chosen on tuning channels (of 1 → 0, 1 → 0.33, 1 → 0.5,
  1.33 → 0.33 and 0.33 → 1), then scored on channels it was not chosen on: median robust ratio +1.6 to +6.0 %
  at 4 of 5 layers (−0.9 % at blocks.6) on the benchmark's channels and +2.0 to +6.7 % at all 5 on six more
  per layer, at the same cost per step.

- ``fast-views``: ``fast`` with 8 independently transformed views per step and 64 steps (1/8 of Lucid's 512):
  up to 512 gradient samples, as many as ``lucid``, in an eighth of its sequential steps. Late in a render one
  view's gradient is mostly its own noise (two views' gradients: cosine 0.05-0.12, ``benchmarks/bench_noise.py``),
  and the views average it. On the benchmark's channels (4 a layer, one seed, held out, early exit on) its median
  robust ratio (bn2: robust pre-activation) is level with or above Lucid-512's at every benchmarked layer (+2.1 to
  +7.7 %; at blocks.5 and blocks.6 inside the seed noise). On 2 CPU cores every view is a network pass: ~0.54-0.69
  of Lucid's seconds in one run. Where a batch of 8 costs about one image (a GPU) it should take about 1/8; not
  measured.

``fast`` and ``maco`` map decorrelated colour to RGB with :data:`~filterscope.optvis.param.RGB_GAIN`, so a
unit-variance signal has natural-photo colour contrast (Lucid's mapping gives 0.54 of it: washed-out renders).

The readable presets optimise the pre-activation of a layer that ends in a ReLU/ReLU6 (``pre_relu``, as
Lucid targets ``*_pre_relu`` tensors): a saturated ReLU6 unit has no gradient, which froze renders of
``bn2`` after ~25 steps as pastel noise. ``seed`` keeps the tutorial's exact objective.
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
# Lucid-512's gradient samples in 1/8 of its steps (benchmarks/bench_noise.py, held_out)
PRESETS["fast-views"] = replace(PRESETS["fast"], views=8, steps=64)
PRESETS = {name: replace(s, preset=name) for name, s in PRESETS.items()}

DEFAULT_METHOD = "fast"
# the default preset per kind of target, chosen by benchmarks/bench_classes.py (class renders that another
# model recognises) and bench_targets.py; a named --method always wins
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
