"""Which filters carry a class: contribution scores, and ablation to check them.

``contribution[c]`` is the first-order (Taylor) estimate of how much the class logit falls when filter
``c`` is set to zero at the layer: a gate ``g`` (all ones) multiplies the layer's output, and
``∂ logit / ∂ g_c = Σ_{h,w} (∂ logit / ∂ a_{c,h,w}) · a_{c,h,w}`` — gradient × activation summed over the map.
For a layer that feeds global average pooling and a linear head (``bn2`` on EfficientNet) it is exact:
the logit is linear in the gate, so zeroing ``c`` lowers the logit by exactly ``contribution[c]``.

:func:`ablate` zeroes sets of filters for real (one batched forward from the layer on: the part of the
network before the layer runs once) and returns the class probabilities, which is how the rankings are
checked (:func:`deletion_curve`; ``benchmarks/bench_explain.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import UsageError
from ..models.layers import LayerInfo
from ..models.model import Model

RANKS = ("contribution", "activation")


def check_rank(rank: str) -> str:
    """The one rule for ranking names."""
    if rank not in RANKS:
        raise UsageError(f"unknown ranking {rank!r}", hint="use " + " or ".join(RANKS))
    return rank


def check_class(model: Model, cls: int | None, n_classes: int | None = None) -> None:
    """A class index must be in 0…N−1 of the model's output."""
    n = n_classes or model.num_classes
    if cls is not None and (cls < 0 or (n is not None and cls >= n)):
        raise UsageError(f"class {cls} is out of range: {model.name} has classes 0-{(n or 1) - 1}")


class _Gate:
    """A forward hook that multiplies the last call of a module's output by ``gate`` (broadcast over the
    batch: a batch-1 activation times an ``[N, C]`` gate continues as a batch of N)."""

    def __init__(self, gate: torch.Tensor, calls: int):
        self.gate, self.calls, self.seen = gate, calls, 0
        self.output: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        self.seen += 1
        if self.seen < self.calls:
            return None
        self.output = output
        shape = self.gate.shape + (1,) * (output.dim() - 2)
        return output * self.gate.view(shape).to(output.dtype)


def _forward_gated(model: Model, x: torch.Tensor, info: LayerInfo, gate: torch.Tensor) -> tuple[torch.Tensor, _Gate]:
    module = dict(model.net.named_modules())[info.name]
    hook = _Gate(gate, info.calls)
    handle = module.register_forward_hook(hook)
    try:
        logits = model.forward(x)
    finally:
        handle.remove()
    return logits, hook


def contributions(
    model: Model, x: torch.Tensor, info: LayerInfo, cls: int | None = None
) -> tuple[np.ndarray, torch.Tensor, int]:
    """Per-filter contribution to class ``cls`` (default: the prediction) for one image ``x`` ``[1,3,S,S]``.

    Returns (contribution ``[C]``, logits ``[1, K]``, the class used).
    """
    gate = torch.ones(1, info.channels, device=x.device, requires_grad=True)
    with torch.enable_grad():
        logits, _ = _forward_gated(model, x, info, gate)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise UsageError(f"{model.name} does not output class logits: cannot rank by contribution")
        check_class(model, cls, logits.shape[1])
        c = int(logits[0].argmax()) if cls is None else int(cls)
        (grad,) = torch.autograd.grad(logits[0, c], gate)
    return grad[0].detach().float().cpu().numpy(), logits.detach(), c


def ablate(model: Model, x: torch.Tensor, info: LayerInfo, masks: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Class probabilities ``[N, K]`` of image ``x`` ``[1,3,S,S]`` with the layer's output multiplied by each
    row of ``masks`` ``[N, C]`` (0 = filter set to zero). The network before the layer runs once per chunk."""
    out = []
    with torch.inference_mode():
        for start in range(0, masks.shape[0], chunk):
            m = masks[start : start + chunk].to(x.device)
            try:
                logits, _ = _forward_gated(model, x, info, m)
                if logits.shape[0] != m.shape[0]:
                    raise RuntimeError("batch did not broadcast")
            except RuntimeError:  # an op after the layer mixes in a batch-1 tensor it cannot broadcast
                logits, _ = _forward_gated(model, x.expand(m.shape[0], -1, -1, -1), info, m)
            out.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(out)


def deletion_curve(
    model: Model, x: torch.Tensor, info: LayerInfo, order: Sequence[int], cls: int, ks: Sequence[int]
) -> np.ndarray:
    """Drop of class ``cls``'s probability when the first ``k`` filters of ``order`` are zeroed, for each k."""
    base = ablate(model, x, info, torch.ones(1, info.channels))[0, cls]
    masks = torch.ones(len(ks), info.channels)
    for row, k in enumerate(ks):
        masks[row, list(order[:k])] = 0.0
    probs = ablate(model, x, info, masks)[:, cls]
    return (base - probs).numpy()
