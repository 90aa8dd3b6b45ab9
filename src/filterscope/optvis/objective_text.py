"""The text form of objectives (the CLI's ``--objective``): ``blocks.5:12``, ``logit:967``,
``blocks.5:12 - 0.1*tv``, ``neuron(blocks.5, 12)``, ``deepdream(blocks.3)``, ``direction(blocks.5, 'cup.jpg')``,
and any registered objective (plugins included) as ``name(arg, …)``.

A call's arguments are converted by the factory's signature: each parameter's annotation
(:data:`~filterscope.optvis.objectives.LayerName`, ``ChannelIndex``, ``ClassIndex``, ``Position``, ``Vector``,
``int``, ``float``, ``str``) says how to read its text; a plain annotation is read by the parameter's name
(``layer`` → a layer, ``channel``/``index`` after a layer → its channel). Channel and class numbers are
range-checked when the caller says how many there are.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable

import torch

from ..errors import UsageError, closest
from .objectives import Objective, channel, logit, objective_registry

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][\w.]*)|(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>[-+*/():,]))"
)

_BY_NAME = {
    "layer": "layer",
    "layer_name": "layer",
    "channel": "channel",
    "index": "channel",
    "unit": "channel",
    "klass": "class",
    "class_index": "class",
    "x": "position",
    "y": "position",
}
_PLAIN = {"int": "int", "float": "float", "str": "str", int: "int", float: "float", str: "str"}


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


def argument_kinds(factory: Callable[..., Objective]) -> list[tuple[str, str, bool]]:
    """``(parameter, kind, required)`` for each parameter of an objective factory; ``kind`` is one of
    layer, channel, class, position, vector, image, int, float, str (``number``: unannotated)."""
    try:
        hints = typing.get_type_hints(factory, include_extras=True)
    except Exception:
        hints = {}
    out = []
    for p in inspect.signature(factory).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind = _kind(hints.get(p.name, p.annotation), p.name)
        out.append((p.name, kind, p.default is p.empty))
    return out


def _kind(annotation, name: str) -> str:
    for arg in _flatten(annotation):
        meta = getattr(arg, "__metadata__", None)
        if meta and isinstance(meta[0], str):
            return meta[0]
    if name in _BY_NAME:
        return _BY_NAME[name]
    for arg in _flatten(annotation):
        if arg in _PLAIN:
            return _PLAIN[arg]
    return "number"


def _flatten(annotation) -> list:
    """The members of a union annotation (``X | None``), or the annotation itself."""
    if isinstance(annotation, str):
        return [a.strip() for a in annotation.split("|")]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


class _Parser:
    def __init__(
        self,
        text: str,
        resolve_layer: Callable[[str], str],
        load_vector: Callable[[str, str], torch.Tensor],
        channels: Callable[[str], int] | None = None,
    ):
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
        registry = objective_registry()
        if name not in registry:
            raise UsageError(f"unknown objective {name!r}", hint=closest(name, registry))
        factory = registry[name]
        kinds = argument_kinds(factory)
        wrong = UsageError(f"objective {name} got the wrong arguments: ({', '.join(args)})")
        if len(args) > len(kinds) or len(args) < sum(req for _, _, req in kinds):
            raise wrong
        values: list[object] = []
        last_layer: str | None = None
        for text, (_, kind, _) in zip(args, kinds):
            values.append(self.convert(name, text, kind, last_layer))
            if kind == "layer":
                last_layer = values[-1]
        try:
            return factory(*values)
        except TypeError:
            raise wrong from None

    def convert(self, name: str, text: str, kind: str, layer: str | None):
        """One argument's text as the factory's parameter ``kind`` wants it."""
        if kind == "layer":
            return self.resolve_layer(text)
        if kind == "channel":
            if layer is None:
                raise UsageError(f"objective {name}: a channel number needs a layer before it")
            return self.index(text, layer)
        if kind == "class":
            return self.index(text, "logit", "class")
        if kind == "vector":
            if layer is None:
                raise UsageError(f"objective {name}: a direction vector needs a layer before it")
            return self.load_vector(layer, text)
        if kind == "str":
            return text
        if kind == "image":
            import os

            if not os.path.isfile(text):
                raise UsageError(f"objective {name}: image not found: {text}")
            return text
        try:
            v = float(text)
        except ValueError:
            raise UsageError(f"objective {name}: {text!r} is not a number") from None
        if kind in ("int", "position"):
            if not v.is_integer():
                raise UsageError(f"objective {name}: {text} is not a whole number")
            if kind == "position" and v < 0:
                raise UsageError(f"objective {name}: positions must be ≥ 0, got {text}")
            return int(v)
        return v


def parse(
    text: str,
    resolve_layer: Callable[[str], str] = lambda s: s,
    load_vector: Callable[[str, str], torch.Tensor] | None = None,
    channels: Callable[[str], int] | None = None,
) -> Objective:
    """Read an objective from text. ``resolve_layer`` checks/expands layer names (``default``);
    ``load_vector(layer, arg)`` gives ``direction``'s vector (an image path or a ``.npy`` file);
    ``channels(layer)`` (``logit`` for classes) lets channel numbers be range-checked."""

    def no_vectors(layer_name: str, arg: str) -> torch.Tensor:
        raise UsageError("direction objectives need a model to read their vector")

    return _Parser(text, resolve_layer, load_vector or no_vectors, channels).parse()
