"""A layer's activation vectors at every spatial position, and forward passes with them changed.

- :func:`random_crops`: CRAFT-style random square crops of an image, each resized to the model's input
  (Fel et al. 2023 learn concepts on crops, so a concept can be a part of an object, not only a whole photo).
- :class:`PositionSample`: a fixed-size uniform sample (reservoir, Algorithm R) of the ``C``-vectors at every
  position of every image streamed through it: memory is ``cap × C`` floats however large the folder is.
- :func:`pass_bar`: the progress bar of an activation pass: a job's own bar (``ctx.progress``) when the pass
  runs inside a job, so the job's ``on_progress`` (the explorer's status) follows the pass too.
- :func:`forward_variants`: in one pass, the layer's maps, the logits when they are followed by ``m``
  variants per image (an ablation, a reconstruction), and the gradient of a class logit with respect to the
  unchanged maps; the network before the layer runs once per image when what follows the layer broadcasts
  over the batch (a pooled head), else once per variant.

Only layers whose output is already ``N×C×H×W`` are handled (CNN layers; not ViT tokens or NHWC outputs,
whose replacement would need the inverse of the token view).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import LayerError
from ..models.layers import LayerInfo
from ..models.model import Model

CROP_SIDE = (0.3, 0.6)  # a crop's side as a fraction of the input side

# a progress-bar factory with RunContext.progress's signature: (total, desc, unit=..., initial=...) -> tqdm bar
Bars = Callable[..., Any]


def pass_bar(total: int, desc: str, progress: bool, bars: Bars | None = None, initial: int = 0, unit: str = "batch"):
    """The bar of an activation pass (or any stage) over ``total`` steps: made by ``bars`` when given (a job
    passes its ``ctx.progress``, whose bars reach the job's ``on_progress`` shown or not), else a tqdm bar
    shown only when ``progress``."""
    if bars is not None:
        return bars(total, desc, unit=unit, initial=initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not progress, unit=unit)


def check_maps_layer(info: LayerInfo, use: str = "concepts") -> None:
    """``use`` needs a layer with spatial maps whose output is ``N×C×H×W`` as it stands."""
    if not info.spatial:
        raise LayerError(
            f"{use} needs a layer with spatial maps; {info.name} is {info.shape_str()} (one value per channel)"
        )
    if info.tokens is not None or info.nhwc:
        raise LayerError(f"{use} needs a CNN layer with N×C×H×W output; {info.name} is a token/NHWC output")


def random_crops(
    x: torch.Tensor, n: int, gen: torch.Generator, side: tuple[float, float] = CROP_SIDE
) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """``n`` random square crops of ``x`` ``[1, C, S, S]`` with sides in ``side`` × S, each resized to S:
    ``([n, C, S, S], boxes)`` with each box ``(left, top, right, bottom)`` in the input's pixels."""
    s = x.shape[-1]
    out, boxes = [], []
    for _ in range(n):
        f = side[0] + (side[1] - side[0]) * float(torch.rand((), generator=gen))
        c = max(8, int(round(s * f)))
        top = int(torch.randint(s - c + 1, (), generator=gen))
        left = int(torch.randint(s - c + 1, (), generator=gen))
        out.append(TF.resize(x[0, :, top : top + c, left : left + c], [s, s], antialias=True))
        boxes.append((left, top, left + c, top + c))
    return (torch.stack(out) if out else x[:0]), boxes


def positions(maps: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → the ``[B·H·W, C]`` activation vectors, image-major then row-major positions."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def to_maps(rows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`positions`: ``[B·H·W, K]`` → ``[B, K, H, W]``."""
    return rows.reshape(b, h, w, -1).permute(0, 3, 1, 2)


class PositionSample:
    """A uniform sample of at most ``cap`` activation vectors out of all those streamed through :meth:`add`
    (Algorithm R, vectorised per batch; the same seed and order give the same sample).

    ``meta`` > 0 keeps that many int32 columns beside each vector (its provenance: image, view, row, column),
    chosen by the same draws, so a kept vector keeps its own provenance."""

    def __init__(self, cap: int, channels: int, seed: int = 0, meta: int = 0):
        self.cap = int(cap)
        self.rows = np.empty((self.cap, channels), dtype=np.float32)
        self.meta = np.empty((self.cap, meta), dtype=np.int32) if meta else None
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray, meta: np.ndarray | None = None) -> None:
        n = rows.shape[0]
        free = max(0, min(n, self.cap - self.seen))
        keep_meta = self.meta is not None and meta is not None
        if free:
            self.rows[self.seen : self.seen + free] = rows[:free]
            if keep_meta:
                self.meta[self.seen : self.seen + free] = meta[:free]
        rest = rows[free:]
        if len(rest):
            t = self.seen + free + np.arange(len(rest))  # 0-based index of each row in the stream
            j = (self.rng.random(len(rest)) * (t + 1)).astype(np.int64)
            keep = j < self.cap
            # numpy assigns repeated indices in order, so a later row wins as in the sequential algorithm
            self.rows[j[keep]] = rest[keep]
            if keep_meta:
                self.meta[j[keep]] = meta[free:][keep]
        self.seen += n

    @property
    def data(self) -> np.ndarray:
        return self.rows[: min(self.seen, self.cap)]

    @property
    def provenance(self) -> np.ndarray | None:
        """The kept vectors' meta columns, in the order of :attr:`data` (``None`` without meta)."""
        return None if self.meta is None else self.meta[: min(self.seen, self.cap)]


def _module(model: Model, info: LayerInfo) -> torch.nn.Module:
    return dict(model.net.named_modules())[info.name]


class _Swap:
    """A forward hook on the last call of a module per pass that hands its output to ``fn`` and returns what
    ``fn`` returns (``None``: unchanged)."""

    def __init__(self, calls: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
        self.calls, self.fn, self.seen = calls, fn, 0

    def __call__(self, module, inputs, output):
        self.seen += 1
        if self.seen < self.calls:
            return None
        return self.fn(output)


def _run(model: Model, info: LayerInfo, x: torch.Tensor, fn) -> torch.Tensor:
    hook = _Swap(info.calls, fn)
    handle = _module(model, info).register_forward_hook(hook)
    try:
        return model.forward(x)
    finally:
        handle.remove()


def forward_variants(
    model: Model,
    info: LayerInfo,
    x: torch.Tensor,
    variants: Callable[[torch.Tensor], torch.Tensor],
    m: int,
    grad_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Run images ``x`` with the layer's maps ``A`` ``[B, C, H, W]`` followed by ``m`` variants of them,
    ``variants(A)`` ``[B, m, C, H, W]``: returns ``(A, d grad_of(logits) / dA or None, logits [B, 1 + m, K])``
    (row 0 of the logits: the unchanged maps; ``grad_of`` maps the unchanged logits ``[B, K]`` to one value
    per image, e.g. a class's logit or log-probability)."""
    b = x.shape[0]
    x = x.to(model.device)
    kept: dict[str, torch.Tensor] = {}

    def swap(out: torch.Tensor, grouped: bool) -> torch.Tensor:
        a = (out.view(b, m + 1, *out.shape[1:])[:, 0] if grouped else out).detach()
        if grad_of is not None:
            a = a.clone().requires_grad_(True)
        kept["a"] = a
        with torch.no_grad():
            v = variants(a.detach()).to(out.device, out.dtype)
        return torch.cat([a[:, None], v], 1).flatten(0, 1)

    with torch.enable_grad() if grad_of is not None else torch.inference_mode():
        try:
            logits = _run(model, info, x, lambda o: swap(o, False))
            ok = logits.dim() == 2 and logits.shape[0] == b * (m + 1)
        except RuntimeError:  # something after the layer mixes in a batch-B tensor (a residual connection)
            ok = False
        if not ok:
            logits = _run(model, info, x.repeat_interleave(m + 1, 0), lambda o: swap(o, True))
        logits = logits.view(b, m + 1, -1)
        grad = None
        if grad_of is not None:
            (grad,) = torch.autograd.grad(grad_of(logits[:, 0]).sum(), kept["a"])
    return kept["a"].detach(), grad, logits.detach()
