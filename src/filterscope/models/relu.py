"""Which modules of a network are its ReLUs, and where they sit relative to a layer: questions about the
network's structure, asked by the render loop (the pre-activation it optimises, the ReLU whose gradient it
redirects), by the layer picker (a layer that ends in a ReLU) and by the jobs that score a pre-activation.

``orders`` below maps module names to the position of their last call in a forward pass (``LayerInfo.order``).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def is_relu(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.ReLU`` or ``nn.ReLU6`` (subclasses may change the forward)."""
    return type(module) in (nn.ReLU, nn.ReLU6)


def relus_before(net: nn.Module, orders: dict[str, int], layers: Iterable[str]) -> list[str]:
    """The last ReLU/ReLU6 module that runs up to each target layer (inside it or before it); ``orders``
    maps module names to the position of their last call (``LayerInfo.order``)."""
    modules = dict(net.named_modules())
    relus = sorted((o, n) for n, o in orders.items() if is_relu(modules[n]))
    picked = set()
    for layer in layers:
        before = [n for o, n in relus if o <= orders.get(layer, -1)]
        if before:
            picked.add(before[-1])
    return sorted(picked)


def final_relus(net: nn.Module, orders: dict[str, int], layers: Iterable[str]) -> dict[str, str]:
    """For each target layer whose last operation is a ReLU/ReLU6 module, that module's name.

    Optimising that module's input (the pre-activation) instead of its clamped output keeps a gradient
    where the unit is off or saturated (ReLU6 at 6), so the picture keeps improving; the values reported
    before/after are always the layer's real outputs.
    """
    modules = dict(net.named_modules())
    out = {}
    for layer in layers:
        inside = [(o, n) for n, o in orders.items() if n == layer or n.startswith(layer + ".")]
        inside = [(o, n) for o, n in inside if n != layer] or inside
        if inside:
            _, last = max(inside)
            if is_relu(modules[last]):
                out[layer] = last
    return out
