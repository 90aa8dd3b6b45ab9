"""Batch norm folded into the convolution that feeds it: a cheaper copy of a frozen net for the render loop.

In eval mode a ``BatchNorm2d`` is a per-channel affine map, so ``bn(conv(x))`` is one convolution with
rescaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``). Rendering runs the network
forward and backward at every step, and the norms cost as much as a quarter of it on a CPU (measured on
``efficientnet_lite0``: 25-30 % of forward+backward up to ``blocks.1``-``blocks.5``). The folded copy keeps
every module name, so hooks, early exit and ReLU redirection work on it unchanged; a folded norm still runs
(and is hooked) but only applies what comes after the affine map (timm's ``BatchNormAct2d`` activation).

Pairs are found by running the net once and matching a norm's input tensor with a convolution's output;
a convolution whose own output is observed (``keep``) is not folded. The copy is used only when its
logits equal the original's on a random input (relative error below 1e-4); otherwise the net itself is.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

TOLERANCE = 1e-4

_PAIRS: weakref.WeakKeyDictionary[nn.Module, list[tuple[str, str]]] = weakref.WeakKeyDictionary()
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[frozenset[str], nn.Module]] = weakref.WeakKeyDictionary()


def _rest_of_norm(bn: nn.Module):
    """What a norm module still has to do after its affine map was folded away, or None if unknown."""
    if type(bn) is nn.BatchNorm2d:
        return lambda x: x
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    if type(bn) is BatchNormAct2d:
        return lambda x: bn.act(bn.drop(x))
    return None


def conv_norm_pairs(net: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, norm name)`` for each eval-mode batch norm whose input is a convolution's output."""
    names = {m: n for n, m in net.named_modules()}
    outputs: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            outputs[id(output)] = names[module]
        elif inputs and id(inputs[0]) in outputs:
            pairs.append((outputs[id(inputs[0])], names[module]))

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.BatchNorm2d) and not m.training)
    ]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
    calls: dict[str, int] = {}
    for conv, bn in pairs:
        calls[conv] = calls.get(conv, 0) + 1
        calls[bn] = calls.get(bn, 0) + 1
    return list(dict.fromkeys(p for p in pairs if calls[p[0]] == 1 and calls[p[1]] == 1))  # modules run once


def fold_batchnorm(net: nn.Module, example: torch.Tensor, keep: Iterable[str] = ()) -> nn.Module:
    """A copy of ``net`` with its conv → batch-norm pairs folded (except convolutions named in ``keep``),
    or ``net`` itself when nothing folds or the copy's logits differ. Cached per net and ``keep``."""
    if isinstance(net, torch.jit.ScriptModule) or net.training:
        return net
    if net not in _PAIRS:
        try:
            _PAIRS[net] = conv_norm_pairs(net, example)
        except Exception:  # a net that cannot run on the example is not folded; rendering reports its own error
            _PAIRS[net] = []
    pairs = _PAIRS[net]
    keep = set(keep)
    pairs = [(c, b) for c, b in pairs if c not in keep]
    key = frozenset(c for c, _ in pairs)
    cached = _CACHE.setdefault(net, {})
    if key in cached:
        return cached[key]
    folded = copy.deepcopy(net) if pairs else net
    modules = dict(folded.named_modules())
    done = 0
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        rest = _rest_of_norm(bn)
        if rest is None or bn.running_mean is None or bn.num_features != conv.out_channels:
            continue
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        conv.weight = nn.Parameter(w.detach().contiguous(memory_format=_format(conv.weight)), requires_grad=False)
        conv.bias = nn.Parameter(b.detach(), requires_grad=False)
        bn.forward = rest
        done += 1
    if done == 0 or not _same_logits(net, folded, example):
        folded = net
    cached[key] = folded
    return folded


def _format(w: torch.Tensor) -> torch.memory_format:
    nhwc = w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


def _same_logits(net: nn.Module, folded: nn.Module, example: torch.Tensor) -> bool:
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example.device)
    with torch.no_grad():
        a, b = net(x), folded(x)
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape):
        return False
    return bool((a - b).abs().max() <= TOLERANCE * a.abs().max().clamp(min=1e-6))
