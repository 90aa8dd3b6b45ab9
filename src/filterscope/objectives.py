"""Objectives: what a render maximises, one composable type.

An :class:`Objective` maps a :class:`Context` (the hooked activations of the transformed batch, the
logits when needed, and the untransformed images) to one value per image, ``[B]``. Objectives add,
subtract and scale (``obj1 - 0.1 * tv()``); :func:`stack` gives every image of a batch its own objective
(the basis of whole-layer rendering). A new objective is one factory registered with
:func:`register_objective`; :func:`parse` reads the CLI's text form, e.g. ``blocks.5:12``, ``logit:967``,
``blocks.5:12 - 0.1*tv``, ``neuron(blocks.5, 12)``, ``deepdream(blocks.3)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import UsageError, closest


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
    fn: Callable[[Context], torch.Tensor]
    name: str
    layers: frozenset[str] = field(default_factory=frozenset)
    needs_logits: bool = False

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def __add__(self, other: Objective | float) -> Objective:
        if not isinstance(other, Objective):
            c = float(other)
            return Objective(lambda ctx: self(ctx) + c, f"{self.name} + {c:g}", self.layers, self.needs_logits)
        return Objective(lambda ctx: self(ctx) + other(ctx), f"{self.name} + {other.name}",
                         self.layers | other.layers, self.needs_logits or other.needs_logits)

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return Objective(lambda ctx: -self(ctx), f"-({self.name})", self.layers, self.needs_logits)

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other if isinstance(other, Objective) else -float(other))

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, c: float) -> Objective:
        if isinstance(c, Objective):
            raise TypeError("objectives can only be scaled by numbers")
        c = float(c)
        return Objective(lambda ctx: c * self(ctx), f"{c:g}*{_paren(self.name)}", self.layers, self.needs_logits)

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> Objective:
        return self * (1.0 / float(c))


def _paren(name: str) -> str:
    return f"({name})" if any(op in name for op in " +-") else name


# ---------------------------------------------------------------- registry

OBJECTIVE_REGISTRY: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str):
    def deco(fn: Callable[..., Objective]) -> Callable[..., Objective]:
        OBJECTIVE_REGISTRY[name] = fn
        return fn

    return deco


def _spatial_mean(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(2).mean(2) if a.dim() == 4 else a


@register_objective("channel")
def channel(layer: str, index: int | Sequence[int]) -> Objective:
    """Mean activation of a channel over all positions (the tutorial's objective). ``index`` may be a
    list with one channel per image of the batch."""
    many = not isinstance(index, int)
    idx = torch.tensor(list(index) if many else [index])

    def fn(ctx: Context) -> torch.Tensor:
        a = _spatial_mean(ctx.act(layer))
        ch = idx.to(a.device)[ctx.owner] if many else idx.to(a.device).expand(a.shape[0])
        return ctx.per_image(a.gather(1, ch[:, None])[:, 0])

    name = f"{layer}:{index}" if not many else f"{layer}:[{','.join(map(str, index))}]"
    obj = Objective(fn, name, frozenset([layer]))
    obj.channel_spec = (layer, list(index) if many else [index])  # lets stack() vectorise
    return obj


@register_objective("neuron")
def neuron(layer: str, index: int, x: int | None = None, y: int | None = None) -> Objective:
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
    return Objective(fn, f"neuron({layer}:{index}{pos})", frozenset([layer]))


@register_objective("layer")
def layer(name: str) -> Objective:
    """Mean square of a whole layer's activations: DeepDream's objective."""

    def fn(ctx: Context) -> torch.Tensor:
        a = ctx.act(name)
        return ctx.per_image(a.pow(2).flatten(1).mean(1))

    return Objective(fn, f"deepdream({name})", frozenset([name]))


register_objective("deepdream")(layer)


@register_objective("logit")
def logit(index: int | Sequence[int]) -> Objective:
    """A class logit of the model's output (pre-softmax)."""
    many = not isinstance(index, int)
    idx = torch.tensor(list(index) if many else [index])

    def fn(ctx: Context) -> torch.Tensor:
        z = ctx.logits
        ch = idx.to(z.device)[ctx.owner] if many else idx.to(z.device).expand(z.shape[0])
        return ctx.per_image(z.gather(1, ch[:, None])[:, 0])

    return Objective(fn, f"logit:{index}", needs_logits=True)


@register_objective("direction")
def direction(layer: str, vector: torch.Tensor | Sequence[float], cossim_pow: float = 0.0) -> Objective:
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


@register_objective("diversity")
def diversity(layer: str) -> Objective:
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


@register_objective("tv")
def tv() -> Objective:
    """Total variation of the image (mean absolute difference of neighbouring pixels): subtract it."""

    def fn(ctx: Context) -> torch.Tensor:
        x = ctx.images
        return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
                + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1))

    return Objective(fn, "tv")


@register_objective("l1")
def l1(constant: float = 0.5) -> Objective:
    """Mean absolute deviation of the image from grey: subtract it to keep images plain."""
    return Objective(lambda ctx: (ctx.images - constant).abs().flatten(1).mean(1), "l1")


@register_objective("l2")
def l2(constant: float = 0.5) -> Objective:
    """Root mean square deviation of the image from grey: subtract it."""
    return Objective(lambda ctx: (ctx.images - constant).pow(2).flatten(1).mean(1).sqrt(), "l2")


@register_objective("blur")
def blur(sigma: float = 1.0) -> Objective:
    """Lucid's ``blur_input_each_step`` as a penalty: distance to a blurred copy (held fixed). Subtract it."""
    from torchvision.transforms.v2 import functional as TF

    def fn(ctx: Context) -> torch.Tensor:
        x = ctx.images
        k = 2 * int(round(2 * sigma)) + 1
        target = TF.gaussian_blur(x.detach(), [k, k], [sigma, sigma])
        return 0.5 * (x - target).pow(2).flatten(1).mean(1)

    return Objective(fn, "blur")


def stack(objectives: Sequence[Objective]) -> Objective:
    """One objective per image: image ``i`` of the batch maximises ``objectives[i]``."""
    objectives = list(objectives)
    if len(objectives) == 1:
        return objectives[0]
    specs = [getattr(o, "channel_spec", None) for o in objectives]
    if all(s is not None and len(s[1]) == 1 for s in specs) and len({s[0] for s in specs}) == 1:
        return channel(specs[0][0], [s[1][0] for s in specs])
    layers = frozenset().union(*(o.layers for o in objectives))
    needs = any(o.needs_logits for o in objectives)

    def fn(ctx: Context) -> torch.Tensor:
        return torch.stack([o(ctx)[i] for i, o in enumerate(objectives)])

    return Objective(fn, " | ".join(o.name for o in objectives), layers, needs)


# ---------------------------------------------------------------- text form

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
                    r"|(?P<name>[A-Za-z_][\w.]*)|(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>[-+*/():,]))")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise UsageError(f"cannot read objective {text!r} at {text[pos:]!r}")
        kind = m.lastgroup
        val = m.group(kind)
        out.append(("name", val[1:-1]) if kind == "str" else (kind, val))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


class _Parser:
    def __init__(self, text: str, resolve_layer: Callable[[str], str], load_vector: Callable[[str, str], torch.Tensor],
                 channels: Callable[[str], int] | None = None):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.resolve = resolve_layer
        self.load_vector = load_vector
        self.channels = channels

    def resolve_layer(self, name: str) -> str:
        """A real layer of the network: ``logit`` is only valid as ``logit:N``."""
        out = self.resolve(name)
        if out == "logit":
            raise UsageError(f"cannot read objective {self.text!r}: 'logit' is not a layer here; use logit:N")
        return out

    def index(self, tok: str, layer: str, what: str = "channel") -> int:
        """An integer channel/class number, checked against the layer's size when it is known."""
        try:
            v = float(tok)
        except ValueError:
            raise UsageError(f"cannot read objective {self.text!r}: {tok!r} is not a {what} number") from None
        if not v.is_integer():
            raise UsageError(f"cannot read objective {self.text!r}: {what} {tok} is not a whole number")
        n = self.channels(layer) if self.channels else None
        if v < 0 or (n is not None and v >= n):
            limit = f"0-{n - 1}" if n is not None else "≥ 0"
            raise UsageError(f"objective {self.text!r}: {what} {tok} is out of range for {layer} ({limit})")
        return int(v)

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            want = f"{value!r}" if value else "more"
            raise UsageError(f"cannot read objective {self.text!r}: expected {want}")
        self.i += 1
        return tok

    def parse(self):
        val = self.expr()
        if self.peek() is not None:
            raise UsageError(f"cannot read objective {self.text!r}: unexpected {self.peek()[1]!r}")
        if not isinstance(val, Objective):
            raise UsageError(f"objective {self.text!r} is only a number")
        return val

    def expr(self):
        val = self.term()
        while self.peek() and self.peek()[1] in "+-":
            op = self.take()[1]
            rhs = self.term()
            val = val + rhs if op == "+" else val - rhs
        return val

    def term(self):
        val = self.unary()
        while self.peek() and self.peek()[1] in "*/":
            op = self.take()[1]
            rhs = self.unary()
            if op == "/":
                if isinstance(rhs, Objective) or rhs == 0:
                    raise UsageError(f"cannot read objective {self.text!r}: divide only by a non-zero number")
                val = val / rhs
            else:
                if isinstance(val, Objective) and isinstance(rhs, Objective):
                    raise UsageError(f"cannot read objective {self.text!r}: objectives multiply only with numbers")
                val = val * rhs
        return val

    def unary(self):
        if self.peek() and self.peek()[1] == "-":
            self.take()
            return -self.unary()
        if self.peek() and self.peek()[1] == "+":
            self.take()
        return self.atom()

    def atom(self):
        kind, val = self.take()
        if kind == "num":
            return float(val)
        if val == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if kind != "name":
            raise UsageError(f"cannot read objective {self.text!r}: unexpected {val!r}")
        if self.peek() and self.peek()[1] == ":":
            self.take(":")
            if not (self.peek() and self.peek()[0] == "num"):
                raise UsageError(f"cannot read objective {self.text!r}: expected a channel number after ':'")
            tok = self.take()[1]
            if val == "logit":
                return logit(self.index(tok, "logit", "class"))
            lay = self.resolve_layer(val)
            return channel(lay, self.index(tok, lay))
        args: list[str] = []
        if self.peek() and self.peek()[1] == "(":
            self.take("(")
            while self.peek() and self.peek()[1] != ")":
                _, v = self.take()
                if v == ",":
                    continue
                if v == "-" and self.peek() and self.peek()[0] == "num":
                    v = "-" + self.take()[1]
                args.append(v)
            self.take(")")
        return self.call(val, args)

    def call(self, name: str, args: list[str]) -> Objective:
        if name not in OBJECTIVE_REGISTRY:
            raise UsageError(f"unknown objective {name!r}", hint=closest(name, OBJECTIVE_REGISTRY))

        def num(s: str) -> float:
            try:
                return float(s)
            except ValueError:
                raise UsageError(f"objective {name}: {s!r} is not a number") from None

        try:
            if name in ("channel", "neuron"):
                layer_name = self.resolve_layer(args[0])
                position = [int(num(a)) for a in args[2:]]
                if any(p < 0 for p in position):
                    raise UsageError(f"objective {name}: positions must be ≥ 0, got ({', '.join(args)})")
                return OBJECTIVE_REGISTRY[name](layer_name, self.index(args[1], layer_name), *position)
            if name in ("layer", "deepdream", "diversity"):
                return OBJECTIVE_REGISTRY[name](self.resolve_layer(args[0]))
            if name == "logit":
                return logit(self.index(args[0], "logit", "class"))
            if name == "direction":
                layer_name = self.resolve_layer(args[0])
                return direction(layer_name, self.load_vector(layer_name, args[1]),
                                 *(num(a) for a in args[2:]))
            return OBJECTIVE_REGISTRY[name](*(num(a) for a in args))
        except (IndexError, TypeError):
            raise UsageError(f"objective {name} got the wrong arguments: ({', '.join(args)})") from None


def parse(text: str, resolve_layer: Callable[[str], str] = lambda s: s,
          load_vector: Callable[[str, str], torch.Tensor] | None = None,
          channels: Callable[[str], int] | None = None) -> Objective:
    """Read an objective from text. ``resolve_layer`` checks/expands layer names (``default``);
    ``load_vector(layer, arg)`` gives ``direction``'s vector (an image path or a ``.npy`` file);
    ``channels(layer)`` (``logit`` for classes) lets channel numbers be range-checked."""

    def no_vectors(layer_name: str, arg: str) -> torch.Tensor:
        raise UsageError("direction objectives need a model to read their vector")

    return _Parser(text, resolve_layer, load_vector or no_vectors, channels).parse()
