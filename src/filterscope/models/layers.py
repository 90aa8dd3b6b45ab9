"""Which layers of a model can be targeted, their output shapes, and the default layer.

One dummy forward pass with a hook on every module records each module's output shape, how often it
runs, and when it last runs. A layer is targetable when its output is a tensor with channels: ``N×C×H×W``
(filters with spatial maps) or ``N×C`` (units, e.g. pooled features or logits).

The default layer follows the tutorial's rule, "the last non-output layer"
(``list(model.children())[-2]``, which is ``avgpool`` on resnet18), generalised: walk the model's
top-level children; the last one is the output head; the default is the last child before it whose output
has channels and spatial maps (``N×C×H×W``). On ``efficientnet_lite0`` that is ``bn2`` (1280×7×7), because
timm's ``global_pool`` already flattens. Without any such child, the last targetable module before the
head is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..defaults import LOGIT
from ..errors import LayerError, closest
from .hooks import capture
from .model import Model


def _token_grid(net, n: int) -> tuple[int, int, int] | None:
    """(prefix, H, W) when ``n`` tokens are a vision transformer's prefix tokens plus an H×W patch grid
    (timm's ``num_prefix_tokens`` and ``patch_embed.grid_size``; a square grid otherwise)."""
    if not hasattr(net, "patch_embed"):
        return None
    prefix = int(getattr(net, "num_prefix_tokens", 0) or 0)
    grid = getattr(net.patch_embed, "grid_size", None)
    if grid is not None and n == prefix + int(grid[0]) * int(grid[1]) and (prefix or grid[0] * grid[1] == n):
        return prefix, int(grid[0]), int(grid[1])
    for p in dict.fromkeys((prefix, 0)):
        side = math.isqrt(max(n - p, 0))
        if side > 1 and side * side == n - p:
            return p, side, side
    return None


def _is_nhwc(net) -> bool:
    return str(getattr(net, "output_fmt", "")).upper().endswith("NHWC")


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    shape: tuple[int, ...]  # (C, H, W) or (C,)
    calls: int  # times the module runs in one forward pass; the last call's output is used
    order: int  # position of its last call in the forward pass
    tokens: tuple[int, int, int] | None = None  # a (B, N, C) token output: (prefix tokens dropped, H, W)
    nhwc: bool = False  # a (B, H, W, C) output (timm's Swin): permuted to (B, C, H, W)

    def to_maps(self, output: torch.Tensor) -> torch.Tensor:
        """The module's raw output as this layer's maps: tokens (B, N, C) → (B, C, H, W) with the class and
        register tokens dropped; NHWC → NCHW; anything else as it is."""
        if self.tokens is not None:
            prefix, h, w = self.tokens
            return output[:, prefix:, :].transpose(1, 2).reshape(output.shape[0], output.shape[-1], h, w)
        if self.nhwc:
            return output.permute(0, 3, 1, 2)
        return output

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3

    def shape_str(self) -> str:
        return "×".join(str(s) for s in self.shape)

    def check_channels(self, channels: Sequence[int]) -> None:
        """The one rule for channel numbers: each in 0…C−1 of this layer."""
        bad = [c for c in channels if not 0 <= c < self.channels]
        if bad:
            what, plural = ("class", "classes") if self.name == LOGIT else ("channel", "channels")
            raise LayerError(f"{what} {bad[0]} is out of range: layer {self.name} has {plural} 0-{self.channels - 1}")


def list_layers(model: Model) -> list[LayerInfo]:
    """Every targetable module in forward order (computed once per model, then cached)."""
    if model.layer_cache is not None:
        return model.layer_cache
    net = model.net
    if isinstance(net, torch.jit.ScriptModule):
        raise LayerError("TorchScript models have no hookable layers; use the objective logit:N")
    modules = [(n, m) for n, m in net.named_modules() if n]
    seen: dict[str, list] = {}
    counter = [0]
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            counter[0] += 1
            rec = seen.setdefault(name, [None, 0, 0])
            rec[0] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            rec[1] += 1
            rec[2] = counter[0]

        return hook

    try:
        for name, m in modules:
            handles.append(m.register_forward_hook(make_hook(name)))
        x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=model.device)
        with torch.inference_mode():
            try:
                model.forward(x)
            except Exception as e:
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise LayerError(
                    f"{model.name} cannot run on a {model.in_channels}×{model.input_size}×{model.input_size} "
                    f"input ({type(e).__name__}: {msg})",
                    hint="give the model's input with --in-channels and --input-size",
                ) from None
    finally:
        for h in handles:
            h.remove()
    types = dict(modules)
    nhwc = _is_nhwc(net)
    infos = []
    for name, (shape, calls, order) in seen.items():
        if shape is None or shape[0] != 1:
            continue
        kind = type(types[name]).__name__
        if len(shape) == 3 and (grid := _token_grid(net, shape[1])):
            infos.append(LayerInfo(name, kind, (shape[2], grid[1], grid[2]), calls, order, tokens=grid))
        elif len(shape) == 4 and nhwc:
            infos.append(LayerInfo(name, kind, (shape[3], shape[1], shape[2]), calls, order, nhwc=True))
        elif len(shape) in (2, 4):
            infos.append(LayerInfo(name, kind, tuple(shape[1:]), calls, order))
    infos.sort(key=lambda i: i.order)
    model.layer_cache = infos
    return infos


def default_layer(model: Model) -> str:
    """The tutorial's "last non-output layer", generalised (see the module docstring)."""
    infos = {i.name: i for i in list_layers(model)}
    children = [n for n, _ in model.net.named_children()]
    before_head = children[:-1]
    for name in reversed(before_head):
        if name in infos and infos[name].spatial:
            return name
    head_order = (
        max((i.order for i in infos.values() if i.name.split(".")[0] == children[-1]), default=None)
        if children
        else None
    )
    candidates = [i for i in infos.values() if head_order is None or i.order < head_order]
    spatial = [i for i in candidates if i.spatial]
    pick = spatial or candidates or list(infos.values())
    if not pick:
        raise LayerError(f"{model.name} has no layer with channels to target")
    return max(pick, key=lambda i: i.order).name


def logit_layer(model: Model) -> LayerInfo:
    """The pseudo-layer ``logit``: the model's output, one channel per class."""
    n = model.num_classes or 1000  # an output that is not [batch, classes]: ImageNet's count, as before
    return LayerInfo(LOGIT, "output", (n,), 1, 1 << 30)


def network_layer(model: Model, name: str = "default", use: str = "this") -> LayerInfo:
    """:func:`get_layer` for uses that need a module of the network (its activation maps), not the
    pseudo-layer ``logit``."""
    info = get_layer(model, name)
    if info.name == LOGIT:
        raise LayerError(
            f"{use} needs a layer of the network, not 'logit' "
            "(class logits are rendered with 'filterscope render --layer logit')"
        )
    return info


def get_layer(model: Model, name: str = "default") -> LayerInfo:
    """Resolve a layer name (``default`` and ``logit`` allowed) or raise with the closest names as a hint."""
    if name in (None, "", "default"):
        name = default_layer(model)
    if name == LOGIT:
        return logit_layer(model)
    for info in list_layers(model):
        if info.name == name:
            return info
    names = [i.name for i in list_layers(model)]
    if name in dict(model.net.named_modules()):
        raise LayerError(
            f"layer {name!r} of {model.name} has no output with channels to target", hint=closest(name, names)
        )
    raise LayerError(
        f"{model.name} has no layer {name!r}", hint=closest(name, names) or "run 'filterscope layers' to list them"
    )


def map_views(model: Model, names) -> dict:
    """For :class:`~filterscope.models.hooks.capture`: how each named layer's raw output becomes maps
    (only the layers that need it: token and NHWC outputs)."""
    if isinstance(model.net, torch.jit.ScriptModule):
        return {}
    infos = {i.name: i for i in list_layers(model)}
    return {n: infos[n].to_maps for n in names if n in infos and (infos[n].tokens or infos[n].nhwc)}


def capture_layers(
    model: Model, infos: Sequence[LayerInfo], *, stop: bool = False, inputs_of: Iterable[str] = ()
) -> capture:
    """A :class:`~filterscope.models.hooks.capture` of resolved layers: their call counts and map views come
    from the :class:`LayerInfo` objects, so no caller re-derives them from a name."""
    names = [i.name for i in infos]
    return capture(
        model.net, names, calls={i.name: i.calls for i in infos}, stop=stop, views=map_views(model, names),
        inputs_of=inputs_of,
    )  # fmt: skip


# ---------------------------------------------------------------- the outline a person reads


@dataclass(frozen=True)
class LayerEntry:
    """One targetable layer in the outline of :func:`layer_outline`.

    ``primary``: a stage or block output (a top-level child, or a numbered element of a stage), listed first;
    ``parent``: the primary layer a block's internal module is folded under; ``same_as``: the layer whose output
    is exactly this one's (the same tensor: ``blocks.0`` and its only block ``blocks.0.0``), or ``"input"`` for a
    module that only repeats its input (``Identity``: ``.drop``, ``.aa``, ``.se``) — both are dropped from the
    short list; ``relu``: the ReLU/ReLU6 module the layer ends in (its renders optimise the pre-activation).
    """

    info: LayerInfo
    primary: bool
    parent: str | None
    same_as: str | None
    relu: str | None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def duplicate(self) -> bool:
        return self.same_as is not None


def _same_outputs(model: Model, names: set[str]) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """One forward pass: for each named module, an id of the tensor it returned last and of its values (equal
    ids: the very same tensor, not changed in place since), and the modules that returned their input."""
    modules = [(n, m) for n, m in model.net.named_modules() if n in names]
    outs: dict[str, torch.Tensor] = {}
    versions: dict[str, int] = {}
    repeat: set[str] = set()
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                outs[name] = output  # held until the end, so no id is reused
                versions[name] = output._version  # an in-place op later (ReLU(inplace)) makes other values
                if any(output is i for i in inputs):
                    repeat.add(name)
                else:
                    repeat.discard(name)

        return hook

    try:
        for name, m in modules:
            handles.append(m.register_forward_hook(make_hook(name)))
        x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=model.device)
        with torch.no_grad():  # not inference_mode: its tensors keep no version counter
            model.forward(x)
    finally:
        for h in handles:
            h.remove()
    ids = {n: (id(t), versions[n]) for n, t in outs.items()}
    return ids, repeat


def _is_primary(name: str, depth: int) -> bool:
    parts = name.split(".")
    return len(parts) <= depth or all(p.isdigit() for p in parts[depth:])


def layer_outline(model: Model) -> list[LayerEntry]:
    """Every targetable layer (:func:`list_layers`, forward order) with what a layer picker needs: stage and
    block outputs first, each block's internals folded under it, exact duplicates marked, the layers that end
    in a ReLU marked (see :class:`LayerEntry`)."""
    from .relu import final_relus

    infos = list_layers(model)
    names = {i.name for i in infos}
    depth = 1
    if sum(_is_primary(n, 1) for n in names) < 4:  # one wrapper module around the whole network
        depth = 2
    primary = {n for n in names if _is_primary(n, depth)}
    ids, repeat = _same_outputs(model, names)
    groups: dict[tuple[int, int], list[LayerInfo]] = {}
    for i in infos:
        if i.name in ids:
            groups.setdefault(ids[i.name], []).append(i)

    def grandchildren(n: str) -> int:  # > 0 for a network's list of stages ("blocks"), 0 for a stage
        return sum(1 for p in primary if p.startswith(n + ".") and p[len(n) + 1 :].count(".") == 1)

    canonical: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda i: (i.name not in primary, i.name.count("."), i.order))
        keep = next((i for i in ranked if grandchildren(i.name) == 0), ranked[0])
        for i in members:
            if i is not keep:
                canonical[i.name] = keep.name
    relus = final_relus(model.net, {i.name: i.order for i in infos}, [i.name for i in infos])
    out = []
    for i in infos:
        parent = None
        if i.name not in primary:
            parts = i.name.split(".")
            parent = next(
                (".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1) if ".".join(parts[:k]) in primary), None
            )
        parent = canonical.get(parent, parent) if parent else None  # a duplicate block's internals: its twin's
        same = canonical.get(i.name) or ("input" if i.name in repeat else None)
        out.append(LayerEntry(i, i.name in primary, parent, same, relus.get(i.name)))
    return out
