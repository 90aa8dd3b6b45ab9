"""Objectives: what a render maximises, one composable type.

An :class:`Objective` maps a :class:`Context` (the hooked activations of the transformed batch, the
logits when needed, and the untransformed images) to one value per image, ``[B]``. Objectives add,
subtract and scale (``obj1 - 0.1 * tv()``); :func:`stack` gives every image of a batch its own objective
(the basis of whole-layer rendering). A new objective is one factory under :func:`register_objective`,
named after the function (as Lucid's ``wrap_objective``); its parameters' annotations (:data:`LayerName`,
:data:`ChannelIndex`, :data:`ClassIndex`, :data:`Position`, :data:`Vector`, or plain ``int``/``float``/``str``)
tell :mod:`~filterscope.optvis.objective_text` how to read its arguments from the CLI's text form. An
objective that maximises one unit carries it as a structured :class:`Target` (layer and channel, or class),
the way Captum's losses carry the module they target, so nobody has to parse its name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F

# Argument kinds for the text form: the parser resolves/checks each by its annotation.
LayerName = Annotated[str, "layer"]  # a layer of the network (``default`` allowed; not ``logit``)
ChannelIndex = Annotated[int, "channel"]  # a channel of the layer named by the previous LayerName argument
ClassIndex = Annotated[int, "class"]  # a class of the model's output
Position = Annotated[int, "position"]  # a spatial index ≥ 0
Vector = Annotated[torch.Tensor, "vector"]  # channel-space vector: an image path or a .npy file
ImagePath = Annotated[str, "image"]  # an image file (its path, checked to exist)


@dataclass(frozen=True)
class Target:
    """The one unit an objective maximises: ``kind`` is ``channel``, ``neuron`` or ``logit``; ``layer`` is
    ``"logit"`` for classes; ``index`` is one channel/class, or a tuple with one per image of a batch."""

    kind: str
    layer: str
    index: int | tuple[int, ...]


@dataclass
class Context:
    """What objectives see at one step. ``owner[r]`` is the image that activation row ``r`` came from
    (several rows per image when a transform takes several crops)."""

    acts: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    images: torch.Tensor
    owner: torch.Tensor

    @property
    def batch(self) -> int:
        return self.images.shape[0]

    def per_image(self, rows: torch.Tensor) -> torch.Tensor:
        """Average row values ``[R]`` over the rows of each image → ``[B]``."""
        k = rows.shape[0] // self.batch
        return rows.view(self.batch, k).mean(1) if k > 1 else rows

    def act(self, layer: str) -> torch.Tensor:
        return self.acts[layer]


@dataclass
class Objective:
    """A render's objective. ``name`` is the short label shown to people (``blocks.5:12 - 0.05*tv``);
    :attr:`key` the full description with every argument (``tv()``, ``blur(sigma=2.0)``, a vector's
    sha256), which the render cache keys on — two objectives with one key compute the same thing."""

    fn: Callable[[Context], torch.Tensor]
    name: str
    layers: frozenset[str] = field(default_factory=frozenset)
    needs_logits: bool = False
    target: Target | None = None  # set by single-unit objectives; sums and scalings have none
    full: str | None = None  # the full description when it is more than ``name`` (set by registered factories)

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    @property
    def key(self) -> str:
        """Every argument of every term (see the class docstring)."""
        return self.full or self.name

    def __add__(self, other: Objective | float) -> Objective:
        if not isinstance(other, Objective):
            c = float(other)
            return Objective(
                lambda ctx: self(ctx) + c,
                f"{self.name} + {c:g}",
                self.layers,
                self.needs_logits,
                full=f"{self.key} + {c!r}",
            )
        return Objective(
            lambda ctx: self(ctx) + other(ctx),
            f"{self.name} + {other.name}",
            self.layers | other.layers,
            self.needs_logits or other.needs_logits,
            full=f"{self.key} + {other.key}",
        )

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return Objective(
            lambda ctx: -self(ctx), f"-({self.name})", self.layers, self.needs_logits, full=f"-({self.key})"
        )

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other if isinstance(other, Objective) else -float(other))

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, c: float) -> Objective:
        if isinstance(c, Objective):
            raise TypeError("objectives can only be scaled by numbers")
        c = float(c)
        return Objective(
            lambda ctx: c * self(ctx),
            f"{c:g}*{_paren(self.name)}",
            self.layers,
            self.needs_logits,
            full=f"{c!r}*({self.key})",
        )

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> Objective:
        return self * (1.0 / float(c))


def _paren(name: str) -> str:
    return f"({name})" if any(op in name for op in " +-") else name


# ---------------------------------------------------------------- registry

OBJECTIVE_REGISTRY: dict[str, Callable[..., Objective]] = {}


def _arg_key(v: object) -> str:
    """An argument as it enters an objective's key: numbers and text exactly, tensors by their bytes."""
    if isinstance(v, torch.Tensor) or type(v).__module__ == "numpy":
        import hashlib

        t = torch.as_tensor(v).detach().cpu().contiguous()
        digest = hashlib.sha256(t.float().numpy().tobytes()).hexdigest()[:16]
        return f"tensor{tuple(t.shape)}:{digest}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_arg_key(x) for x in v) + "]"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v))  # blur(2) and blur(2.0) are one objective
    return repr(v)


def keyed(fn: Callable[..., Objective], name: str | None = None) -> Callable[..., Objective]:
    """``fn`` whose objectives carry their full description in :attr:`Objective.key`: the factory's name
    and every argument, defaults included (as Lucid's ``wrap_objective`` names objectives)."""
    import functools
    import inspect

    label = name or fn.__name__
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def make(*args, **kwargs) -> Objective:
        obj = fn(*args, **kwargs)
        if obj.full is None and obj.target is None:  # single units keep their name: blocks.5:12, logit:967
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            obj.full = f"{label}(" + ", ".join(f"{k}={_arg_key(v)}" for k, v in bound.arguments.items()) + ")"
        return obj

    return make


def register_objective(fn_or_name: Callable[..., Objective] | str | None = None, *, name: str | None = None):
    """Register an objective factory under its function's name: ``@register_objective`` (or
    ``@register_objective("other_name")``); the factory's objectives get their full :attr:`Objective.key`.
    Plugins register through the ``filterscope.objectives`` entry points instead (see :mod:`filterscope.plugins`)."""
    if callable(fn_or_name):
        label = name or fn_or_name.__name__
        OBJECTIVE_REGISTRY[label] = made = keyed(getattr(fn_or_name, "__wrapped__", fn_or_name), label)
        return made

    def deco(fn: Callable[..., Objective]) -> Callable[..., Objective]:
        label = fn_or_name or name or fn.__name__
        OBJECTIVE_REGISTRY[label] = made = keyed(fn, label)
        return made

    return deco


def objective_registry() -> dict[str, Callable[..., Objective]]:
    """Every registered objective factory, plugins included."""
    from .. import plugins

    plugins.load_group("filterscope.objectives", OBJECTIVE_REGISTRY)
    return OBJECTIVE_REGISTRY


def _spatial_mean(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(2).mean(2) if a.dim() == 4 else a


@register_objective
def channel(layer: LayerName, index: ChannelIndex | Sequence[int]) -> Objective:
    """Mean activation of a channel over all positions (the tutorial's objective). ``index`` may be a
    list with one channel per image of the batch."""
    many = not isinstance(index, int)
    idx = torch.tensor(list(index) if many else [index])

    def fn(ctx: Context) -> torch.Tensor:
        a = _spatial_mean(ctx.act(layer))
        ch = idx.to(a.device)[ctx.owner] if many else idx.to(a.device).expand(a.shape[0])
        return ctx.per_image(a.gather(1, ch[:, None])[:, 0])

    name = f"{layer}:{index}" if not many else f"{layer}:[{','.join(map(str, index))}]"
    return Objective(fn, name, frozenset([layer]), target=Target("channel", layer, tuple(index) if many else index))


@register_objective
def neuron(layer: LayerName, index: ChannelIndex, x: Position | None = None, y: Position | None = None) -> Objective:
    """Activation of one channel at one spatial position (default: the centre)."""

    def fn(ctx: Context) -> torch.Tensor:
        a = ctx.act(layer)
        if a.dim() == 2:
            return ctx.per_image(a[:, index])
        h, w = a.shape[-2:]
        yy = h // 2 if y is None else min(y, h - 1)
        xx = w // 2 if x is None else min(x, w - 1)
        return ctx.per_image(a[:, index, yy, xx])

    pos = "" if x is None and y is None else f"@{x},{y}"
    return Objective(fn, f"neuron({layer}:{index}{pos})", frozenset([layer]), target=Target("neuron", layer, index))


@register_objective
def layer(name: LayerName) -> Objective:
    """Mean square of a whole layer's activations: DeepDream's objective."""

    def fn(ctx: Context) -> torch.Tensor:
        a = ctx.act(name)
        return ctx.per_image(a.pow(2).flatten(1).mean(1))

    return Objective(fn, f"deepdream({name})", frozenset([name]))


register_objective(layer, name="deepdream")


@register_objective
def logit(index: ClassIndex | Sequence[int]) -> Objective:
    """A class logit of the model's output (pre-softmax)."""
    many = not isinstance(index, int)
    idx = torch.tensor(list(index) if many else [index])

    def fn(ctx: Context) -> torch.Tensor:
        z = ctx.logits
        ch = idx.to(z.device)[ctx.owner] if many else idx.to(z.device).expand(z.shape[0])
        return ctx.per_image(z.gather(1, ch[:, None])[:, 0])

    return Objective(
        fn, f"logit:{index}", needs_logits=True, target=Target("logit", "logit", tuple(index) if many else index)
    )


@register_objective
def direction(layer: LayerName, vector: Vector | Sequence[float], cossim_pow: float = 0.0) -> Objective:
    """Activation along a direction in channel space (e.g. an image's own mean activation vector),
    averaged over positions; ``cossim_pow > 0`` also rewards pointing the same way (Olah et al. 2018)."""
    v = torch.as_tensor(vector, dtype=torch.float32).flatten()
    v = v / (v.norm() + 1e-8)

    def fn(ctx: Context) -> torch.Tensor:
        a = ctx.act(layer)
        a = a if a.dim() == 4 else a[:, :, None, None]
        vv = v.to(a.device).view(1, -1, 1, 1)
        dot = (a * vv).sum(1)
        if cossim_pow:
            cos = dot / (a.norm(dim=1) + 1e-8)
            dot = dot * cos.clamp(min=0.1) ** cossim_pow
        return ctx.per_image(dot.flatten(1).mean(1))

    return Objective(fn, f"direction({layer})", frozenset([layer]))


@register_objective
def diversity(layer: LayerName) -> Objective:
    """Lucid's diversity term: minus the mean cosine similarity between an image's Gram matrix at
    ``layer`` and those of the other images in the batch (needs a batch of at least 2)."""

    def fn(ctx: Context) -> torch.Tensor:
        a = ctx.act(layer)
        if a.dim() == 2:
            a = a[:, :, None, None]
        flat = a.flatten(2)
        gram = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[-1]
        g = F.normalize(gram.flatten(1), dim=1)
        sim = g @ g.T
        other = ctx.owner[:, None] != ctx.owner[None, :]
        if not other.any():
            return torch.zeros(ctx.batch, device=a.device)
        rows = -(sim * other).sum(1) / other.sum(1).clamp(min=1)
        return ctx.per_image(rows)

    return Objective(fn, f"diversity({layer})", frozenset([layer]))


@register_objective
def tv() -> Objective:
    """Total variation of the image (mean absolute difference of neighbouring pixels): subtract it."""

    def fn(ctx: Context) -> torch.Tensor:
        x = ctx.images
        return (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1) + (
            x[..., :, 1:] - x[..., :, :-1]
        ).abs().flatten(1).mean(1)

    return Objective(fn, "tv")


@register_objective
def l1(constant: float = 0.5) -> Objective:
    """Mean absolute deviation of the image from grey: subtract it to keep images plain."""
    return Objective(lambda ctx: (ctx.images - constant).abs().flatten(1).mean(1), "l1")


@register_objective
def l2(constant: float = 0.5) -> Objective:
    """Root mean square deviation of the image from grey: subtract it."""
    return Objective(lambda ctx: (ctx.images - constant).pow(2).flatten(1).mean(1).sqrt(), "l2")


@register_objective
def blur(sigma: float = 1.0) -> Objective:
    """Lucid's ``blur_input_each_step`` as a penalty: distance to a blurred copy (held fixed). Subtract it."""
    from torchvision.transforms.v2 import functional as TF

    def fn(ctx: Context) -> torch.Tensor:
        x = ctx.images
        k = 2 * int(round(2 * sigma)) + 1
        target = TF.gaussian_blur(x.detach(), [k, k], [sigma, sigma])
        return 0.5 * (x - target).pow(2).flatten(1).mean(1)

    return Objective(fn, "blur")


@register_objective
def closeness(reference: ImagePath | torch.Tensor, strength: float = 1.0) -> Objective:
    """Minus ``strength`` × the mean squared pixel difference to ``reference`` (``[3, H, W]`` in [0, 1], or
    an image file from the text form): *add* it to keep a render near a photo (feature accentuation,
    Hamblin et al. 2024). 0 at the photo itself."""
    if isinstance(reference, str):
        import numpy as np
        from PIL import Image

        with Image.open(reference) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        reference = torch.from_numpy(arr).permute(2, 0, 1)
    ref = reference.detach().float()
    strength = float(strength)

    def fn(ctx: Context) -> torch.Tensor:
        x = ctx.images
        r = ref.to(x.device)
        if r.shape[-2:] != x.shape[-2:]:
            r = F.interpolate(r[None], size=x.shape[-2:], mode="bilinear", antialias=True)[0]
        return -strength * (x - r).pow(2).flatten(1).mean(1)

    return Objective(fn, f"{strength:g}*closeness")


def stack(objectives: Sequence[Objective]) -> Objective:
    """One objective per image: image ``i`` of the batch maximises ``objectives[i]``."""
    objectives = list(objectives)
    if len(objectives) == 1:
        return objectives[0]
    targets = [o.target for o in objectives]
    if (
        all(t is not None and t.kind == "channel" and isinstance(t.index, int) for t in targets)
        and len({t.layer for t in targets}) == 1
    ):
        return channel(targets[0].layer, [t.index for t in targets])  # one vectorised objective
    layers = frozenset().union(*(o.layers for o in objectives))
    needs = any(o.needs_logits for o in objectives)

    def fn(ctx: Context) -> torch.Tensor:
        return torch.stack([o(ctx)[i] for i, o in enumerate(objectives)])

    return Objective(
        fn, " | ".join(o.name for o in objectives), layers, needs, full=" | ".join(o.key for o in objectives)
    )
