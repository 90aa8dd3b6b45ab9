"""Named render presets (``--method``); the README's "Methods (presets)" section gives the measurements behind them.

- ``seed``: the tutorial's method, the baseline: pixels from uniform grey noise (0.45-0.55, Chollet's
  "grey image with noise"), Adam, loss = -mean activation, no transforms, 48 steps at lr 0.02. High
  activations, high-frequency pictures.
- ``lucid``: Lucid/Lucent's defaults: Fourier + decorrelated colour, Lucid's standard transforms, Adam
  lr 0.05, 512 steps. The slow reference.
- ``maco``: Fel et al. 2023 (Horama): magnitude-constrained phase optimisation with NAdam lr 1.0 and one
  random crop (80-100 % of the side) with noise per step; 96 steps at 224 px.
- ``fast`` (default): Fourier + decorrelated colour, Lucid's standard transforms fused into one random
  affine resample (``fused``: fewer resamplings, ~10 % faster per step and more robust renders), NAdam
  lr 0.08 (NAdam reached Adam's robustness in ~3/4 of the steps), 48 steps, and each image stops once its
  objective gains < 1 % over 8 steps.

The readable presets optimise the pre-activation of a layer that ends in a ReLU/ReLU6 (``pre_relu``, as
Lucid targets ``*_pre_relu`` tensors): a saturated ReLU6 unit has no gradient, which froze renders of
``bn2`` after ~25 steps as pastel noise. ``seed`` keeps the tutorial's exact objective.
"""

from __future__ import annotations

from ..errors import UsageError, closest
from .render import RenderSettings

PRESETS: dict[str, RenderSettings] = {
    "seed": RenderSettings(
        param="pixel", decorrelate=False, transforms="none", steps=48, lr=0.02, param_options=(("noise", (0.45, 0.55)),)
    ),
    "lucid": RenderSettings(
        param="fourier", decorrelate=True, transforms="standard", steps=512, lr=0.05, pre_relu=True
    ),
    "maco": RenderSettings(
        param="maco", decorrelate=True, transforms="maco", steps=96, lr=1.0, optimizer="nadam", pre_relu=True
    ),
    "fast": RenderSettings(
        param="fourier",
        decorrelate=True,
        transforms="fused",
        steps=48,
        lr=0.08,
        optimizer="nadam",
        converge=0.01,
        window=8,
        pre_relu=True,
    ),
}

DEFAULT_METHOD = "fast"


def get_preset(name: str) -> RenderSettings:
    if name not in PRESETS:
        raise UsageError(f"unknown method {name!r}", hint=closest(name, PRESETS) or "use " + ", ".join(PRESETS))
    return PRESETS[name]
