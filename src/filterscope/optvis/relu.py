"""Redirected ReLU gradients (Lucid's ``redirected_relu_grad``) for rendering.

A channel behind a ReLU/ReLU6 that is inactive everywhere on the starting noise gets exactly zero gradient,
so plain gradient ascent never moves it. While rendering, :func:`redirect_relu` swaps the backward pass of
the model's ``nn.ReLU``/``nn.ReLU6`` modules: an image whose ordinary ReLU gradient is all zero instead gets
the gradient components that push inputs back into the active range. Forward values are unchanged, so
activations and objective values are exactly the model's. Which module is a ReLU, and which one precedes or
ends a layer, is the network's structure: :mod:`filterscope.models.relu`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..models.relu import is_relu


class _RedirectedClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float | None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(min=lo) if hi is None else x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        below = x < ctx.lo
        outside = below if ctx.hi is None else below | (x > ctx.hi)
        normal = g.masked_fill(outside, 0.0)
        dead = normal.flatten(1).abs().amax(1) == 0
        if dead.any():
            # descent moves x by -g: keep g < 0 below the range (x rises), g > 0 above it (x falls)
            redirected = g.masked_fill(outside & (below == (g > 0)), 0.0)
            shape = (-1,) + (1,) * (g.dim() - 1)
            normal = torch.where(dead.view(shape), redirected, normal)
        return normal, None, None


def _patched_forward(module: nn.Module):
    hi = 6.0 if isinstance(module, nn.ReLU6) else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:
            return module.__class__.forward(module, x)
        return _RedirectedClamp.apply(x, 0.0, hi)

    return forward


@contextlib.contextmanager
def redirect_relu(net: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Within the block, the named ReLU/ReLU6 modules of ``net`` use redirected gradients.

    The render loop names the last ReLU that runs before each target layer: that is where a channel can be
    dead on the whole image (earlier ReLUs rarely block every path, and patching all of them costs time).
    """
    modules = dict(net.named_modules())
    patched = []
    for name in names:
        m = modules[name]
        if is_relu(m):
            m.forward = _patched_forward(m)
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
