"""A linear copy of a network for expanded weights (Voss et al. 2021, "Visualizing Weights", Distill).

:func:`linear_copy` deep-copies a network and swaps modules so that what is left between two layers is
linear: every activation module (ReLU, ReLU6, SiLU, GELU, sigmoid, timm's activations, …) becomes the
identity, max-pooling becomes average pooling with the same window, and a squeeze-excite module becomes a
fixed per-channel scale (its gate, measured on images by :func:`se_gates`; a gate is a function of the
input, so a linear map must hold it at one value). Convolutions (1×1, depthwise, grouped), batch-norm in
eval mode, residual sums and zero padding are linear already. The gradient of one output of the copy with
respect to an earlier layer's output is then the linear map between them, the expanded weights.

Non-linearities applied as functions inside a module's ``forward`` (``F.relu(x)``) cannot be swapped;
:func:`affine_error` measures how far the copy is from affine so a job can say so.
"""

from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Callable

import torch
from torch import nn

_NOT_ACTIVATIONS = {"Softmax", "Softmax2d", "LogSoftmax", "Softmin", "MultiheadAttention", "Threshold"}
_SE_NAME = re.compile(r"squeeze|excit|^(effective)?se(module|layer|block)?$", re.IGNORECASE)


def is_activation(m: nn.Module) -> bool:
    """A point-wise activation module: torch's ``nn.modules.activation`` or timm's ``layers.activations``."""
    mod = type(m).__module__
    own = mod == "torch.nn.modules.activation" or ".activations" in mod and mod.startswith("timm.")
    return own and type(m).__name__ not in _NOT_ACTIVATIONS


def is_squeeze_excite(m: nn.Module) -> bool:
    """A squeeze-excite module (timm's ``SqueezeExcite``/``SEModule``/``EffectiveSEModule``, torchvision's
    ``SqueezeExcitation``), recognised by its class name."""
    return bool(_SE_NAME.search(type(m).__name__)) and any(True for _ in m.children())


class FrozenGate(nn.Module):
    """A squeeze-excite module held at a fixed gate: ``x * gate`` (``gate`` ``[C]``; 1 until it is set)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("gate", torch.ones(1))

    def set(self, gate: torch.Tensor | None) -> None:
        self.gate = (
            torch.ones(1, device=self.gate.device) if gate is None else gate.detach().float().to(self.gate.device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate if self.gate.numel() == 1 else self.gate.view(1, -1, *([1] * (x.dim() - 2)))
        return x * g.to(x.dtype)


class ChannelGain(FrozenGate):
    """An activation module replaced by a per-channel gain: 1 (the identity, Voss et al.) or its mean slope
    on images (:class:`SlopeMeter`)."""


def _avg_pool(m: nn.Module) -> nn.Module:
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return nn.AdaptiveAvgPool2d(m.output_size)
    if isinstance(m, nn.AdaptiveMaxPool1d):
        return nn.AdaptiveAvgPool1d(m.output_size)
    if type(m).__name__ == "MaxPool2dSame":  # timm: "same" padding computed in forward
        from timm.layers import AvgPool2dSame

        return AvgPool2dSame(m.kernel_size, m.stride, ceil_mode=m.ceil_mode)
    cls = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
    for mx, av in cls.items():
        if isinstance(m, mx):
            return av(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)
    return m


def _is_max_pool(m: nn.Module) -> bool:
    return isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d))


class LinearCopy:
    """A copy of a network with every activation module → :class:`ChannelGain`, max-pooling → average
    pooling and every squeeze-excite module → :class:`FrozenGate`. :meth:`set` chooses the gains (default 1:
    activations are the identity) and gates; the copy is made once per network (:func:`linear_copy`)."""

    def __init__(self, net: nn.Module):
        self.se = squeeze_excite_modules(net)
        self.net = copy.deepcopy(net).eval()
        self.activations: list[str] = []
        self.max_pools = 0
        for name, module in list(self.net.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if full in self.se:
                    setattr(module, child_name, FrozenGate())
                elif any(full.startswith(s + ".") for s in self.se):
                    continue
                elif is_activation(child):
                    setattr(module, child_name, ChannelGain())
                    self.activations.append(full)
                elif _is_max_pool(child):
                    setattr(module, child_name, _avg_pool(child))
                    self.max_pools += 1
        for p in self.net.parameters():
            p.requires_grad_(False)
        self._modules = dict(self.net.named_modules())

    def set(self, gains: dict[str, torch.Tensor] | None = None, gates: dict[str, torch.Tensor] | None = None):
        """Activation gains (missing: 1) and squeeze-excite gates (missing: 1); returns the network."""
        gains, gates = gains or {}, gates or {}
        for n in self.activations:
            self._modules[n].set(gains.get(n))
        for n in self.se:
            self._modules[n].set(gates.get(n))
        return self.net

    def counts(self) -> dict[str, int]:
        return {"activations": len(self.activations), "max_pools": self.max_pools, "squeeze_excite": len(self.se)}


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def linear_copy(net: nn.Module) -> LinearCopy:
    """The :class:`LinearCopy` of ``net`` (made on first use, kept while ``net`` lives)."""
    lin = _COPIES.get(net)
    device = next((p.device for p in net.parameters()), None)
    if lin is None or next((p.device for p in lin.net.parameters()), None) != device:
        lin = _COPIES[net] = LinearCopy(net)  # first use, or the network moved to another device
    return lin


def squeeze_excite_modules(net: nn.Module) -> list[str]:
    """Names of the squeeze-excite modules of ``net`` (outermost only)."""
    names: list[str] = []
    for name, m in net.named_modules():
        if name and is_squeeze_excite(m) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


class SlopeMeter:
    """Forward pre-hooks that measure each activation module's mean slope per channel on real inputs,
    ``(f(x + h) − f(x − h)) / 2h`` averaged over positions and images (1 where a ReLU passes, 0 where it
    is off or saturated): the gains of the data-gated linear copy."""

    H = 1e-3

    def __init__(self, net: nn.Module, names: list[str]):
        self.sums: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        modules = dict(net.named_modules())
        self.handles = [modules[n].register_forward_pre_hook(self._hook(n)) for n in names if n in modules]

    def _hook(self, name: str) -> Callable:
        def hook(module, inputs):
            x = inputs[0] if inputs else None
            if not isinstance(x, torch.Tensor) or x.dim() < 2:
                return
            with torch.no_grad():
                x = x.detach()
                if type(module) in (nn.ReLU, nn.ReLU6):  # the slope is 1 where it passes: one comparison
                    s = (x > 0) if type(module) is nn.ReLU else (x > 0) & (x < 6)
                else:
                    s = (module.forward(x + self.H) - module.forward(x - self.H)) / (2 * self.H)
                dims = [0] + list(range(2, s.dim()))
                self.sums[name] = self.sums.get(name, 0) + s.float().mean(dims).cpu() * x.shape[0]
                self.count[name] = self.count.get(name, 0) + x.shape[0]

        return hook

    def gains(self) -> dict[str, torch.Tensor]:
        return {n: self.sums[n] / self.count[n] for n in self.sums}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class GateMeter:
    """Forward hooks that measure each squeeze-excite module's gate on real inputs: for ``y = x · g`` the
    per-channel least-squares ``g = Σ x·y / Σ x·x`` (exact when the module is a gate), averaged over images."""

    def __init__(self, net: nn.Module, names: list[str]):
        self.sums: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        modules = dict(net.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            x, y = inputs[0].detach().float(), output.detach().float()
            if x.dim() != 4 or x.shape != y.shape:
                return
            g = (x * y).sum((2, 3)) / (x * x).sum((2, 3)).clamp_min(1e-12)  # [B, C]
            self.sums[name] = self.sums.get(name, 0) + g.sum(0).cpu()
            self.count[name] = self.count.get(name, 0) + g.shape[0]

        return hook

    def gates(self) -> dict[str, torch.Tensor]:
        return {n: self.sums[n] / self.count[n] for n in self.sums}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
