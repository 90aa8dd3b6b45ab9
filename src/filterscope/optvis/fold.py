"""Batch norm folded into the convolution that feeds it: a cheaper copy of a frozen net for the render loop.

In eval mode a ``BatchNorm2d`` is a per-channel affine map, so ``bn(conv(x))`` is one convolution with
rescaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``). Rendering runs the network
forward and backward at every step, and the norms cost as much as a quarter of it on a CPU (measured on
``efficientnet_lite0``: 17-27 % of forward+backward up to ``blocks.1``-``bn2``). The folded copy keeps
every module name, so hooks, early exit and ReLU redirection work on it unchanged; a folded norm still runs
(and is hooked) but only applies what comes after the affine map (timm's ``BatchNormAct2d`` activation).

Pairs are found by running the net once and matching a norm's input tensor with a plain convolution's
output (``nn.Conv2d`` or timm's ``Conv2dSame``, each run once); a convolution whose own output is observed
(``keep``) is not folded. The copy is used only when its logits equal the original's on a random input
(relative error below 1e-4 on a CPU, 5e-3 on a GPU, whose TF32 convolutions round more); otherwise the net
itself is. Copies are cached per net (two per net at most) and rebuilt when the net's parameters, buffers,
device or dtype change. Hooks registered on the net are not carried over to the copy.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

TOLERANCE, GPU_TOLERANCE = 1e-4, 5e-3  # relative, on the logits
MAX_COPIES = 2  # per net: one per set of kept convolutions, the least recently made is dropped

_LOCK = threading.Lock()
_UNFOLDED = object()  # cached: this net does not fold (never store the net itself: the cache keys it weakly)
_STATE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _conv_types() -> tuple[type, ...]:
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return (nn.Conv2d,)
    return (nn.Conv2d, Conv2dSame)


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
    """``(conv name, norm name)`` for each eval-mode batch norm whose input is, unchanged, the output of a
    plain convolution; both modules must run exactly once per forward pass."""
    names = {m: n for n, m in net.named_modules()}
    convs = _conv_types()
    outputs: dict[int, tuple[str, torch.Tensor, int]] = {}  # the tensors stay alive: ids cannot be reused
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if type(module) in convs:
            outputs[id(output)] = (name, output, output._version)
        elif inputs and isinstance(inputs[0], torch.Tensor):
            seen = outputs.get(id(inputs[0]))
            if seen is not None and seen[1] is inputs[0] and seen[2] == inputs[0]._version:
                pairs.append((seen[0], name))

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if type(m) in convs or (isinstance(m, nn.BatchNorm2d) and not m.training)
    ]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for c, b in dict.fromkeys(pairs) if calls.get(c) == 1 and calls.get(b) == 1]


def _fingerprint(net: nn.Module) -> tuple:
    """Changes when the net's weights change in place, or it moves to another device or dtype."""
    tensors = list(net.parameters()) + list(net.buffers())
    first = tensors[0] if tensors else None
    return (
        len(tensors),
        sum(t._version for t in tensors),
        None if first is None else (first.device, first.dtype, first.data_ptr()),
    )


def fold_batchnorm(net: nn.Module, example: torch.Tensor, keep: Iterable[str] = ()) -> nn.Module:
    """A copy of ``net`` with its conv → batch-norm pairs folded (except convolutions named in ``keep``),
    or ``net`` itself when nothing folds or the copy's logits differ."""
    if isinstance(net, torch.jit.ScriptModule) or net.training:
        return net
    with _LOCK:
        state = _STATE.get(net)
        fp = _fingerprint(net)
        if state is None or state["fingerprint"] != fp:
            try:
                pairs = conv_norm_pairs(net, example)
            except Exception:  # a net that cannot run on the example is not folded; rendering reports the error
                pairs = []
            state = _STATE[net] = {"fingerprint": fp, "pairs": pairs, "copies": {}}
        kept = set(keep)
        pairs = [(c, b) for c, b in state["pairs"] if c not in kept]
        key = frozenset(c for c, _ in pairs)
        copies: dict = state["copies"]
        if key not in copies:
            while len(copies) >= MAX_COPIES:
                copies.pop(next(iter(copies)))
            copies[key] = _make_copy(net, pairs, example) if pairs else _UNFOLDED
        folded = copies[key]
        return net if folded is _UNFOLDED else folded


def _make_copy(net: nn.Module, pairs: list[tuple[str, str]], example: torch.Tensor):
    folded = copy.deepcopy(net)
    for m in folded.modules():  # a user's hooks (or an open capture) on the net do not belong to the copy
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m._backward_hooks.clear()
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
        return _UNFOLDED
    return folded


def _format(w: torch.Tensor) -> torch.memory_format:
    nhwc = w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


def _same_logits(net: nn.Module, folded: nn.Module, example: torch.Tensor) -> bool:
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example.device, example.dtype)
    with torch.no_grad():
        a, b = net(x), folded(x)
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape):
        return False
    tol = TOLERANCE if example.device.type == "cpu" else GPU_TOLERANCE
    return bool((a.float() - b.float()).abs().max() <= tol * a.float().abs().max().clamp(min=1e-6))
