"""A tiny third-party filterscope plugin, as a package would ship it (used by tests/test_plugins.py)."""

import torch
from torch import nn

from filterscope.optvis.objectives import Context, Objective
from filterscope.optvis.param import PixelParam


def halfchan(layer: str, channel: int, fraction: float) -> Objective:
    """Mean of one channel over the left ``fraction`` of the map's width."""

    def fn(ctx: Context) -> torch.Tensor:
        a = ctx.act(layer)[:, channel]
        w = max(1, int(round(a.shape[-1] * fraction)))
        return ctx.per_image(a[..., :w].flatten(1).mean(1))

    return Objective(fn, f"halfchan({layer}:{channel}, {fraction:g})", frozenset([layer]))


class GreyPixels(PixelParam):
    """Pixels starting from flat grey (a parameterisation registered by entry point)."""

    def __init__(self, seeds, size, decorrelate=False):
        super().__init__(seeds, size, decorrelate=False, noise=(0.5, 0.5))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, 10))

    def forward(self, x):
        return self.head(self.features(x))


def tiny(weights=None, trust_checkpoint=False):
    from filterscope.models import Model

    torch.manual_seed(0)
    return Model(TinyNet(), "tiny_plugin_net", input_size=32, resize_size=36, weights="random (plugin)")
