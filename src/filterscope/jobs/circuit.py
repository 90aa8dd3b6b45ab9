"""How a filter is built: the channels of an earlier layer that make channel C of layer L.

The inputs are listed in the order the network confirms (:mod:`filterscope.jobs.circuit_rank`, chosen on
held-out photos by ``benchmarks/bench_circuits.py``):

1. **Measured effect**: per image, how much C's spatial mean falls when one input channel alone is set to
   zero (the network as it runs: ReLUs that are off, ReLU6 caps and squeeze-excite gates included), on at
   most ``effect_images`` of the images (:data:`EFFECT_IMAGES`, a seeded choice: the costliest step). The
   default order: the first k greedily on these effects (the set that moves C most together), then the
   others by their own effect; inputs that change nothing come last.
2. **Ablation check** of that order, on every circuit: zeroing the first k listed against k random inputs
   (``n_random`` seeded draws), with a warning when the first k move C less than :data:`MIN_RATIO` × as much;
   also the top-k by |attribution| and the k most excitatory.
3. **Attribution over images**: gradient × activation of each input channel on C's spatial mean, summed
   over the map and averaged over the images (the first-order estimate of the effect).
4. **Expanded weights**, a second view: the linear map from the earlier layer ``F`` to C at the centre
   position of L's map, the gradient of that output with respect to F's output in a copy of the network whose
   non-linearities are the identity (or their mean slope, ``gated``), max-pooling is average pooling and
   squeeze-excite gates are fixed (:mod:`filterscope.optvis.linearize`, Voss et al. 2021). Exact on a linear
   path; across non-linearities it can credit inputs the network never lets through, so it is normalised
   per circuit and its agreement with the measured effect is stated.

:func:`circuit` computes all of it with no files (a pure function of the model and its arguments, so a
worker can call it); with ``out`` it runs as a job (:func:`run_circuit`) and writes ``circuit.json``,
``circuit_weights.npz``, ``figure_circuit.png``, ``report.html``, the input renders and ``run.json``.
An interrupted job keeps its finished pieces (each batch of the attribution pass, each piece of the removal
effects, the ablation check, each render) for ``--resume``, which takes them back instead of redoing them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LayerError, UsageError
from ..models.hooks import StopForward
from ..models.inputs import list_images, load_image, model_input, sample_photos_dir
from ..models.layers import LayerInfo, list_layers, network_layer
from ..models.model import Model
from ..optvis.linearize import GateMeter, linear_copy
from ..optvis.presets import DEFAULT_METHOD
from .circuit_rank import DEFAULT_RANKING, RANKING_TEXT, effect_order, rank_agreement, removal_effects
from .contract import Job, JobResult, RunContext, opt, run_job
from .pieces import Pieces, bar, png_array

LINEARIZE = ("identity", "gated")
OTHER = {"identity": "gated", "gated": "identity"}
DEFAULT_TOP = 8
DEFAULT_K = 8
N_RANDOM = 8
MIN_RATIO = 1.5  # the first k listed must move the filter at least this much more than k random
BATCH = 12
EFFECT_IMAGES = 18  # images the removal effects are measured on by default (:func:`effect_images`)
# render steps of the inputs' thumbnails (at most the method's; the target gets the method's own): 16 steps of
# ``fast`` reach 0.8-0.9 of the 48-step activation with the same motifs, at a third of the time
INPUT_STEPS = 16


# ---------------------------------------------------------------- layers: which feeds which


def _maps_layer(model: Model, name: str, what: str) -> LayerInfo:
    info = network_layer(model, name, what)
    if not info.spatial:
        raise LayerError(f"{what} needs a layer with spatial maps (C×H×W); {info.name} is {info.shape_str()}")
    if info.tokens is not None or info.nhwc:
        raise LayerError(f"{what} needs convolutional maps (N×C×H×W); {info.name} is a token/NHWC output")
    return info


def feeding_layer(model: Model, info: LayerInfo) -> LayerInfo:
    """The layer whose output is the input of ``info``'s module: the output of the stage or block that feeds
    it (``blocks.4`` for ``blocks.5`` on EfficientNet; the outermost module when several return the same
    tensor). Without an exact match, the last layer with maps that finishes before ``info`` starts."""
    modules = dict(model.net.named_modules())
    spatial = [i for i in list_layers(model) if i.spatial and i.tokens is None and not i.nhwc]
    counter = [0]
    outs: dict[str, tuple[int, tuple, int]] = {}
    start: list = [None]

    def hook(name):
        def f(m, inp, out):
            counter[0] += 1
            if isinstance(out, torch.Tensor):
                outs[name] = (out.data_ptr(), tuple(out.shape), counter[0])

        return f

    def pre(m, inp):
        counter[0] += 1
        if inp and isinstance(inp[0], torch.Tensor):
            start[0] = (inp[0].data_ptr(), tuple(inp[0].shape), counter[0])

    handles = [modules[i.name].register_forward_hook(hook(i.name)) for i in spatial if i.name != info.name]
    handles.append(modules[info.name].register_forward_pre_hook(pre))
    try:
        x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=model.device)
        with torch.inference_mode():
            model.forward(x)
    finally:
        for h in handles:
            h.remove()
    if start[0] is None:
        raise LayerError(f"layer {info.name} is not reached in the forward pass")
    ptr, shape, t0 = start[0]
    inside = info.name + "."
    earlier = {n: o for n, o in outs.items() if o[2] < t0 and not n.startswith(inside)}
    exact = [n for n, o in earlier.items() if o[0] == ptr and o[1] == shape]
    pick = exact or list(earlier)
    if not pick:
        raise UsageError(f"{info.name} reads the model's input: it has no earlier layer with maps to build it from")
    best = max(pick, key=lambda n: earlier[n][2])
    return next(i for i in spatial if i.name == best)


class _Tap:
    """One forward pass with the output of ``src`` (its last call) passed through ``fn`` and the output of
    ``dst`` (its last call) kept, stopping the network there."""

    def __init__(
        self, net: torch.nn.Module, src: LayerInfo, dst: LayerInfo, fn: Callable[[torch.Tensor], torch.Tensor]
    ):
        self.modules = dict(net.named_modules())
        self.src, self.dst, self.fn = src, dst, fn
        self.out: torch.Tensor | None = None
        self.replaced = False
        self._n = {src.name: 0, dst.name: 0}
        self._handles: list = []

    def __enter__(self) -> _Tap:
        self._handles = [
            self.modules[self.src.name].register_forward_hook(self._src_hook),
            self.modules[self.dst.name].register_forward_hook(self._dst_hook),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def _src_hook(self, m, inp, out):
        self._n[self.src.name] += 1
        if self._n[self.src.name] == self.src.calls:
            self.replaced = True
            return self.fn(out)
        return None

    def _dst_hook(self, m, inp, out):
        self._n[self.dst.name] += 1
        if self._n[self.dst.name] == self.dst.calls:
            self.out = out
            raise StopForward

    def run(self, forward: Callable, x: torch.Tensor) -> torch.Tensor | None:
        self.out, self.replaced = None, False
        self._n = {k: 0 for k in self._n}
        try:
            forward(x)
        except StopForward:
            pass
        return self.out


def check_feeds(model: Model, src: LayerInfo, dst: LayerInfo) -> None:
    """``src``'s output must reach ``dst``'s: one forward with ``src``'s output as a leaf that needs a
    gradient; ``dst``'s output then needs one too, or ``src`` does not feed ``dst``."""
    if src.name == dst.name:
        raise UsageError(f"--from {src.name} is the layer itself: give an earlier layer that feeds {dst.name}")
    leaf: list = []

    def as_leaf(out):
        z = out.detach().clone().requires_grad_(True)
        leaf.append(z)
        return z * 1.0

    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=model.device)
    with torch.enable_grad(), _Tap(model.net, src, dst, as_leaf) as tap:
        out = tap.run(model.forward, x)
    if not leaf or out is None or not out.requires_grad:
        when = "runs after" if src.order > dst.order else "is not on a path into"
        raise UsageError(f"--from {src.name} does not feed {dst.name}: it {when} {dst.name}")


# ---------------------------------------------------------------- the three measurements


def image_batches(model: Model, files: list[Path], batch: int = BATCH) -> Iterator[torch.Tensor]:
    for i in range(0, len(files), batch):
        yield torch.cat([model_input(model, load_image(f)) for f in files[i : i + batch]]).to(model.device)


@dataclass
class Pass:
    """What one pass over the images gives: per-image attribution ``[N, C_src]`` and target mean ``[N]``,
    the source layer's outputs (reused by the ablation), squeeze-excite gates and activation slopes."""

    attribution: np.ndarray
    activation: np.ndarray
    sources: list[torch.Tensor]
    gates: dict[str, torch.Tensor]
    slopes: dict[str, torch.Tensor]


def attribution(
    model: Model,
    src: LayerInfo,
    dst: LayerInfo,
    channel: int,
    batches: list[torch.Tensor],
    should_stop: Callable[[], bool] | None = None,
    pieces: Pieces | None = None,
    on_batch: Callable[[], None] | None = None,
) -> Pass:
    """Gradient × activation of every ``src`` channel on ``dst``'s channel mean (summed over the map), per
    image; on the way, the gates of squeeze-excite modules and the mean slopes of activation modules.

    Stops after the batch during which ``should_stop`` turned true. ``pieces``: each finished batch is kept
    there (its rows, ``src``'s outputs and the meters' running sums), and the batches an interrupted run
    kept are taken back instead of run again, so the result is the same to the bit; ``on_batch()``: after
    each batch (kept ones included)."""
    from ..optvis.linearize import SlopeMeter

    lin = linear_copy(model.net)
    gates, slopes = GateMeter(model.net, lin.se), SlopeMeter(model.net, lin.activations)
    attrs, acts, sources = [], [], []
    leaf: list = []
    start = 0
    while pieces is not None and start < len(batches):
        got = pieces.get(f"attribution/{start:04d}")
        if got is None:
            break
        arrays, meta = got
        attrs.append(torch.from_numpy(arrays["attribution"]))
        acts.append(torch.from_numpy(arrays["activation"]))
        sources.append(torch.from_numpy(arrays["source"]).to(model.device))
        _restore_meters((gates, slopes), arrays, meta)
        start += 1
        if on_batch is not None:
            on_batch()

    def as_leaf(out):
        z = out.detach().clone().requires_grad_(True)
        leaf[:] = [z]
        return z * 1.0

    try:
        with torch.enable_grad(), _Tap(model.net, src, dst, as_leaf) as tap:
            for i in range(start, len(batches)):
                if i > start and should_stop and should_stop():
                    break
                out = tap.run(model.forward, batches[i])
                a = out[:, channel].flatten(1).mean(1)
                (g,) = torch.autograd.grad(a.sum(), leaf[0])
                attrs.append((g * leaf[0]).sum((2, 3)).detach().float().cpu())
                acts.append(a.detach().float().cpu())
                sources.append(leaf[0].detach())
                if pieces is not None:
                    arrays, meta = _meter_state((gates, slopes))
                    arrays.update(attribution=attrs[-1], activation=acts[-1], source=sources[-1].cpu())
                    pieces.put(f"attribution/{i:04d}", arrays, meta)
                if on_batch is not None:
                    on_batch()
    finally:
        gates.remove()
        slopes.remove()
    return Pass(torch.cat(attrs).numpy(), torch.cat(acts).numpy(), sources, gates.gates(), slopes.gains())


def _meter_state(meters: tuple) -> tuple[dict[str, np.ndarray], dict]:
    """The running sums and counts of the gate and slope meters (a piece of the attribution pass)."""
    arrays, meta = {}, {}
    for m, tag in zip(meters, ("gate", "slope")):
        names = sorted(m.sums)
        meta[tag] = [[n, int(m.count[n])] for n in names]
        arrays.update({f"{tag}_{j}": m.sums[n].numpy() for j, n in enumerate(names)})
    return arrays, meta


def _restore_meters(meters: tuple, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """The meters' sums and counts as :func:`_meter_state` kept them."""
    for m, tag in zip(meters, ("gate", "slope")):
        m.sums = {n: torch.from_numpy(arrays[f"{tag}_{j}"]) for j, (n, _) in enumerate(meta[tag])}
        m.count = {n: c for n, c in meta[tag]}


def expanded_weights(
    model: Model,
    src: LayerInfo,
    dst: LayerInfo,
    channel: int,
    gates: dict[str, torch.Tensor] | None = None,
    gains: dict[str, torch.Tensor] | None = None,
) -> tuple[np.ndarray, tuple[int, int], dict]:
    """The linear map from ``src``'s output to ``dst``'s ``channel`` at the centre of its map: ``[C_src, H, W]``
    (Voss et al. 2021), the centre position, and how linear the copy is (swapped modules and the measured
    affine error, 0 when every non-linearity between the layers is a module). ``gains``: per-channel gains
    for the activation modules instead of the identity (the data-gated variant); ``gates``: squeeze-excite."""
    lc = linear_copy(model.net)
    lin = lc.set(gains, gates)
    h, w = dst.shape[1], dst.shape[2]
    pos = (h // 2, w // 2)
    leaf: list = []

    def as_leaf(out):
        # one pass, five rows: 0 for the gradient, then 0, a, b, a + b for the affine check
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(out.shape[1:], generator=gen).to(out)
        b = torch.randn(out.shape[1:], generator=gen).to(out)
        z = torch.stack([torch.zeros_like(a), torch.zeros_like(a), a, b, a + b]).requires_grad_(True)
        leaf[:] = [z]
        return z * 1.0

    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=model.device)
    with torch.enable_grad(), _Tap(lin, src, dst, as_leaf) as tap:
        out = tap.run(lambda v: lin(model.normalize(v)), x)
        (g,) = torch.autograd.grad(out[0, channel, pos[0], pos[1]], leaf[0])
    maps = g[0].detach().float().cpu().numpy()
    f = out.detach().float()
    err = (f[4] - f[2] - f[3] + f[1]).abs().max().item()
    scale = max((f[2] - f[1]).abs().max().item(), (f[3] - f[1]).abs().max().item(), 1e-12)
    return maps, pos, {**lc.counts(), "affine_error": float(f"{err / scale:.3g}")}


class Masked:
    """``dst``'s channel mean with ``src``'s output times mask rows, per batch of images: ``run(masks, i)`` →
    ``[B_i, M]`` (one row per image of batch ``i``, one column per mask row).

    With ``sources`` (``src``'s outputs from :func:`attribution`) and their unmasked result ``base``, the
    network before ``src`` runs on one blank image and the stored outputs continue from ``src``; kept only
    when it reproduces ``base`` (nothing after ``src`` reads a tensor from before it), else every batch runs
    from its images. ``fold``: run through the copy of the network with its batch norms folded into their
    convolutions (:func:`~filterscope.optvis.fold.fold_batchnorm`, the render loop's copy: the same values up
    to float rounding, a quarter less work on a CPU); it falls back to the network itself where nothing folds."""

    def __init__(self, model, src, dst, channel, batches, sources=None, base=None, fold: bool = True):
        self.model, self.src, self.dst, self.channel = model, src, dst, channel
        self.batches = batches
        self.sources = None
        self.net = model.net
        if fold:
            from ..optvis.fold import fold_batchnorm

            example = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=model.device)
            self.net = fold_batchnorm(model.net, example, keep=(src.name, dst.name))
        if sources is not None and base is not None:
            self.sources = sources
            one = torch.ones(1, src.channels, device=model.device)
            with torch.inference_mode():
                got = torch.cat([self.run(one, i) for i in range(len(sources))]).numpy()[:, 0]
            if not np.allclose(got, base[: len(got)], rtol=1e-3, atol=1e-4):
                self.sources = None

    @property
    def sizes(self) -> list[int]:
        return [int(b.shape[0]) for b in (self.sources if self.sources is not None else self.batches)]

    def take(self, index: np.ndarray) -> Masked:
        """The same measurement on the images ``index`` only (positions among all images), in batches of
        :data:`BATCH`; ``self`` when ``index`` is every image in order."""
        n = sum(int(b.shape[0]) for b in self.batches)
        if len(index) == n and np.array_equal(index, np.arange(n)):
            return self
        sub = copy.copy(self)
        pick = torch.as_tensor(np.asarray(index, dtype=np.int64))
        sub.batches = list(torch.cat(self.batches)[pick.to(self.batches[0].device)].split(BATCH))
        if self.sources is not None:
            sub.sources = list(torch.cat(self.sources)[pick.to(self.sources[0].device)].split(BATCH))
        return sub

    def run(self, masks: torch.Tensor, i: int) -> torch.Tensor:
        with torch.inference_mode():
            if self.sources is not None:
                return _masked_means(self, None, masks, stored=self.sources[i])
            return _masked_means(self, self.batches[i], masks)


def effect_images(n: int, limit: int, seed: int) -> np.ndarray:
    """Positions of the images the removal effects are measured on: all ``n`` when ``n <= limit``, else
    ``limit`` of them drawn with ``seed`` (sorted). The removal of every input on every image is the
    costliest part of a circuit (images × inputs passes through the layers between ``from`` and the filter);
    ``benchmarks/bench_circuits.py`` validated the default order made on 18 photos against held-out ones."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def ablation(
    model: Model,
    src: LayerInfo,
    dst: LayerInfo,
    channel: int,
    batches: list[torch.Tensor],
    attr: np.ndarray,
    k: int,
    seed: int,
    n_random: int = N_RANDOM,
    sources: list[torch.Tensor] | None = None,
    base: np.ndarray | None = None,
    order: np.ndarray | None = None,
    effect: np.ndarray | None = None,
    masked: Masked | None = None,
) -> dict:
    """C's mean activation with sets of ``src`` channels set to zero: the first k of ``order`` (the order the
    circuit lists; default: by |attribution|), the top-k by |attribution|, the k most excitatory (largest
    ``effect``, default: attribution), and ``n_random`` draws of k random channels (``seed``). The check
    of a listing: ``change_ratio`` (first k / random k, mean |change|), with a ``warning`` below
    :data:`MIN_RATIO`. ``sources``/``base``/``masked``: see :class:`Masked`."""
    n = src.channels
    k = min(k, n)
    rng = np.random.default_rng(seed)
    top_abs = np.argsort(-np.abs(attr), kind="stable")[:k]
    first = np.asarray(order[:k]) if order is not None else top_abs
    top_pos = np.argsort(-(effect if effect is not None else attr), kind="stable")[:k]
    randoms = [np.sort(rng.choice(n, size=k, replace=False)) for _ in range(n_random)]
    sets = [first, top_pos, top_abs, *randoms]
    masks = torch.ones(len(sets) + 1, n)
    for i, s in enumerate(sets):
        masks[i + 1, torch.as_tensor(s)] = 0.0
    masks = masks.to(model.device)
    masked = masked or Masked(model, src, dst, channel, batches, sources, base)
    acts = torch.cat([masked.run(masks, i) for i in range(len(masked.sizes))]).numpy()
    base = acts[:, 0]
    change = np.abs(acts[:, 1:] - base[:, None]).mean(0)  # mean |Δ| per set
    drop = (base[:, None] - acts[:, 1:]).mean(0)  # mean (base − ablated) per set
    rnd_change, rnd_drop = change[3:], drop[3:]
    ratio = float(change[0] / max(rnd_change.mean(), 1e-12))
    comparable = k < n  # with every input zeroed, "random k" is the same set: nothing to check
    warning = (
        None
        if ratio >= MIN_RATIO or not comparable
        else f"the first {k} inputs listed move the filter only {ratio:.2f}× as much as {k} random ones "
        f"(< {MIN_RATIO}×): no small set of inputs carries it on these images"
    )
    return {
        "k": int(k),
        "n_random": int(n_random),
        "seed": int(seed),
        "activation": round(float(base.mean()), 6),
        "first": [int(c) for c in first],
        "top_abs": [int(c) for c in top_abs],
        "top_excitatory": [int(c) for c in top_pos],
        "random_sets": [[int(c) for c in s] for s in randoms],
        "change_top": round(float(change[0]), 6),
        "change_top_attribution": round(float(change[2]), 6),
        "change_random": round(float(rnd_change.mean()), 6),
        "change_random_each": [round(float(v), 6) for v in rnd_change],
        "change_ratio": round(ratio, 4),
        "min_ratio": MIN_RATIO,
        "passed": ratio >= MIN_RATIO if comparable else None,
        "warning": warning,
        "drop_excitatory": round(float(drop[1]), 6),
        "drop_random": round(float(rnd_drop.mean()), 6),
        "drop_random_each": [round(float(v), 6) for v in rnd_drop],
    }


def measured_effects(
    masked: Masked,
    base: np.ndarray,
    used: np.ndarray,
    should_stop: Callable[[], bool] | None = None,
    pieces: Pieces | None = None,
    progress: Callable[[int, int], Any] | None = None,
) -> np.ndarray | None:
    """The removal effects ``[len(used), C_src]`` (:func:`~filterscope.jobs.circuit_rank.removal_effects`) on
    the images ``used`` (:func:`effect_images`) of ``masked``, whose unmasked means are ``base``; None when
    stopped. What :func:`compute_circuit` ranks on, and ``benchmarks/bench_circuits.py`` checks.
    ``pieces``: each finished piece (a batch of images × a block of inputs) is kept there, and those an
    interrupted run kept are taken back; ``progress(total, initial)``: a progress bar over the pieces."""
    from .circuit_rank import mask_pieces

    some = masked.take(used)
    n = masked.src.channels
    todo = mask_pieces(some.sizes, n)
    kept: dict[tuple[int, int], torch.Tensor] = {}
    for i, c0, _ in todo if pieces is not None else ():
        got = pieces.get(f"effects/{i:03d}_{c0:04d}")
        if got is not None:
            kept[(i, c0)] = torch.from_numpy(got[0]["means"])
    shown = progress(len(todo), len(kept)) if progress is not None else None

    def on_piece(i: int, c0: int, means: torch.Tensor) -> None:
        if pieces is not None:
            pieces.put(f"effects/{i:03d}_{c0:04d}", {"means": means})
        if shown is not None:
            shown.update(1)

    try:
        return removal_effects(
            some.run, some.sizes, n, base[used], masked.model.device, should_stop, kept=kept, on_piece=on_piece
        )
    finally:
        if shown is not None:
            shown.close()


def _masked_means(m: Masked, x, masks, stored: torch.Tensor | None = None) -> torch.Tensor:
    """``m.dst``'s channel mean ``[B, M]`` for each image of ``x`` (or each stored ``m.src`` output) with
    ``m.src``'s output times each mask row, through ``m.net``."""
    model, net, src, dst, channel = m.model, m.net, m.src, m.dst, m.channel
    k = masks.shape[0]

    def forward(v):
        return net(model.normalize(v))

    def expand(out):
        o = stored if stored is not None else out
        return (o.unsqueeze(1) * masks.view(1, k, -1, 1, 1).to(o.dtype)).flatten(0, 1)

    if stored is not None:
        x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=model.device)
    b = stored.shape[0] if stored is not None else x.shape[0]
    try:
        with _Tap(net, src, dst, expand) as tap:
            out = tap.run(forward, x)
        if out is None or out.shape[0] != b * k:
            raise RuntimeError("batch did not expand")
        return out[:, channel].flatten(1).mean(1).view(b, k).float().cpu()
    except RuntimeError:
        if stored is not None:
            return torch.full((b, k), float("nan"))
        cols = []  # a later op mixes in a tensor from before src: one pass per mask
        for row in masks:
            with _Tap(net, src, dst, lambda o, r=row: o * r.view(1, -1, 1, 1).to(o.dtype)) as tap:
                out = tap.run(forward, x)
            cols.append(out[:, channel].flatten(1).mean(1).float().cpu())
        return torch.stack(cols, 1)


# ---------------------------------------------------------------- result


@dataclass
class CircuitInput:
    """One channel of the earlier layer and how it builds the target channel."""

    layer: str
    channel: int
    weight: float  # summed expanded weight (> 0 excites, < 0 inhibits on the linear copy)
    attribution: float  # mean gradient × activation over the images
    weight_map: np.ndarray  # [H, W] expanded weights over the earlier layer's map
    rank_weight: int
    rank_attribution: int
    weight_other: float = 0.0  # the summed weight by the other linearisation (identity ↔ gated)
    effect: float = 0.0  # measured: mean over images of C's mean minus C's mean with this input zeroed
    effect_abs: float = 0.0  # mean over images of |that change|
    rank: int = 0  # position in the default order (0 = strongest)
    weight_scale: float = 1.0  # max |summed weight| of the circuit (the normalisation of ``weight``)
    weight_other_scale: float = 1.0
    render: torch.Tensor | None = None
    render_png: bytes | None = None
    render_activation: float | None = None

    @property
    def sign(self) -> str:
        """What the network does with it as it runs: removing it lowers C (excites) or raises C (inhibits)."""
        if self.effect_abs == 0.0 and self.effect == 0.0:
            return "none"
        return "excites" if self.effect > 0 else "inhibits" if self.effect < 0 else "none"

    @property
    def weight_sign(self) -> str:
        return "excites" if self.weight > 0 else "inhibits" if self.weight < 0 else "none"

    @property
    def weight_norm(self) -> float:
        """The summed expanded weight over the circuit's largest |summed weight| (−1 … 1)."""
        return self.weight / self.weight_scale if self.weight_scale > 0 else 0.0

    @property
    def weight_other_norm(self) -> float:
        return self.weight_other / self.weight_other_scale if self.weight_other_scale > 0 else 0.0

    def record(self, render_file: str | None = None, linearize: str = "identity") -> dict:
        other = OTHER[linearize]
        return {
            "layer": self.layer,
            "channel": self.channel,
            "rank": self.rank,
            "effect": round(self.effect, 6),
            "effect_abs": round(self.effect_abs, 6),
            "attribution": round(self.attribution, 6),
            "weight": round(self.weight, 6),
            "weight_normalized": round(self.weight_norm, 4),
            f"weight_{other}": round(self.weight_other, 6),
            f"weight_{other}_normalized": round(self.weight_other_norm, 4),
            "sign": self.sign,
            "weight_sign": self.weight_sign,
            "weight_abs_max": round(float(np.abs(self.weight_map).max()), 6),
            "rank_weight": self.rank_weight,
            "rank_attribution": self.rank_attribution,
            "render": render_file,
            **({"render_activation": round(self.render_activation, 6)} if self.render_activation is not None else {}),
        }


@dataclass
class Circuit:
    """What :func:`circuit` found for one channel; shows itself as the report in Jupyter."""

    model: str
    layer: str
    channel: int
    source: str  # the earlier layer ("from")
    position: tuple[int, int]
    inputs: list[CircuitInput]  # in the default order (:attr:`ranking`): first = moves C most
    activation: float  # C's mean activation over the images
    n_images: int
    images: str
    ablation: dict
    linear: dict
    window: tuple[int, int, int, int]  # rows r0:r1, cols c0:c1 of the source map where weights are non-zero
    top: int
    ranking: dict = field(default_factory=dict)  # the order's method and the expanded weights' agreement with it
    settings: dict = field(default_factory=dict)
    target_render: torch.Tensor | None = None
    target_png: bytes | None = None
    timings: dict = field(default_factory=dict)
    status: str = "complete"
    stopped: tuple[int, int, str] | None = None  # a partial circuit: (done, total, what) of the stage it stopped in
    run_dir: Path | None = None
    _figure_png: bytes | None = field(default=None, repr=False)

    @property
    def shown(self) -> list[CircuitInput]:
        """The inputs the figure and report show: the first ``top`` of the default order."""
        return self.inputs[: self.top]

    def record(self) -> dict:
        """``circuit.json`` (``shared/README.md``): layer, channel, from, inputs in the default order (first =
        strongest), the ranking, the ablation check and the expanded weights (a second view)."""
        from ..outputs.naming import channel_file

        return {
            "model": self.model,
            "layer": self.layer,
            "channel": self.channel,
            "from": self.source,
            "position": list(self.position),
            "activation": round(self.activation, 6),
            "images": self.images,
            "n_images": self.n_images,
            "render": channel_file(self.layer, self.channel) if self.target_png else None,
            "inputs": [
                i.record(
                    channel_file(i.layer, i.channel) if i.render_png is not None else None, self.linear["linearize"]
                )
                for i in self.inputs
            ],
            "ranking": self.ranking,
            "ablation": self.ablation,
            "expanded_weights": {
                "method": "gradient through a linear copy: activations → "
                + ("identity" if self.linear["linearize"] == "identity" else "their mean slope on the images")
                + ", max → average pooling, squeeze-excite gates fixed at their mean over the images",
                **self.linear,
                "window": list(self.window),
                "file": "circuit_weights.npz",
            },
        }

    def weight_maps(self) -> np.ndarray:
        """``[C_src, H, W]`` expanded weights in source-channel order."""
        order = sorted(self.inputs, key=lambda i: i.channel)
        return np.stack([i.weight_map for i in order])

    def figure(self):
        from ..outputs.figures_circuits import circuit_figure

        return circuit_figure(self)

    def figure_png(self) -> bytes:
        """``figure_circuit.png``'s bytes, drawn once (the report embeds the same picture)."""
        if self._figure_png is None:
            import io

            import matplotlib.pyplot as plt

            fig = self.figure()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
            plt.close(fig)
            self._figure_png = buf.getvalue()
        return self._figure_png

    def html(self) -> str:
        from ..outputs.figures_circuits import circuit_report

        return circuit_report(self)

    def _repr_html_(self) -> str:
        return self.html()


# ---------------------------------------------------------------- the job


def validate(
    model: Model,
    layer: str | None,
    channel: int,
    from_layer: str | None,
    top: int,
    k: int | None,
    linearize: str = "identity",
) -> tuple[LayerInfo, LayerInfo]:
    """The checks the CLI and the API share, before any work: both layers have maps, the channel is in
    range, ``from_layer`` feeds ``layer``, ``top`` and ``k`` fit."""
    from .explain import explain_layer

    if linearize not in LINEARIZE:
        raise UsageError(f"unknown linearisation {linearize!r}", hint="use identity or gated")
    info = _maps_layer(model, layer or explain_layer(model), "circuit")
    info.check_channels([channel])
    src = _maps_layer(model, from_layer, "--from") if from_layer else feeding_layer(model, info)
    if from_layer:
        check_feeds(model, src, info)
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    if k is not None and not 1 <= k <= src.channels:
        raise UsageError(f"--k must be in 1-{src.channels} (the channels of {src.name}), got {k}")
    return info, src


def ablation_k(k: int | None, src: LayerInfo) -> int:
    """``k`` or, by default, 8 (at most the source layer's channels)."""
    return k if k is not None else min(DEFAULT_K, src.channels)


@dataclass
class CircuitRequest:
    """The arguments of ``filterscope circuit``."""

    layer: str | None = opt(None, "Layer [default: blocks.5 when the model has it, else its default layer].")
    channel: int = opt(0, "The channel of LAYER to explain.", min=0, required=True)
    from_layer: str | None = opt(None, "Earlier layer [default: the layer that feeds LAYER].", flag="--from")
    images: str | None = opt(None, "Folder of images for attribution (default: the bundled photos).")
    top: int = opt(DEFAULT_TOP, "Inputs shown with renders.", min=1)
    k: int | None = opt(None, "Inputs zeroed by ablation [default: 8].", min=1)
    effect_images: int = opt(
        EFFECT_IMAGES, "Images the measured effects are made on (a seeded choice when there are more).", min=1
    )
    linearize: str = opt(
        "identity",
        "Activations in the expanded weights: the identity (Voss et al.) or their mean slope on the images.",
        choices=LINEARIZE,
    )
    no_renders: bool = opt(False, "Skip the renders of the inputs (faster).")
    method: str | None = opt(None, "Render preset of the inputs [default: fast].", registry="method")
    input_steps: int = opt(
        INPUT_STEPS, "Render steps of the inputs' thumbnails (at most the method's; the filter gets all).", min=1
    )
    seed: int = opt(0, "", min=0)


@dataclass
class CircuitPlan:
    """A validated circuit request: both layers resolved, the images listed, ``k`` decided."""

    model: Model
    info: LayerInfo
    src: LayerInfo
    channel: int
    files: list[Path]
    label: str
    top: int
    k: int
    renders: bool
    linearize: str
    method: str | None
    seed: int
    settings: dict
    effect_images: int = EFFECT_IMAGES
    input_steps: int = INPUT_STEPS
    root: Path | None = None  # the images folder (names in the record are relative to it)


def _check_images(req: CircuitRequest) -> None:
    if req.images:
        list_images(req.images)


def _plan(model: Model, req: CircuitRequest) -> CircuitPlan:
    from ..optvis.presets import get_preset

    info, src = validate(model, req.layer, req.channel, req.from_layer, req.top, req.k, req.linearize)
    k = ablation_k(req.k, src)
    root = Path(req.images or sample_photos_dir())
    files = list_images(root)
    label = _label(req.images)
    renders = not req.no_renders
    method = req.method or DEFAULT_METHOD
    settings = {
        "model": model.describe(),
        "layer": info.name,
        "channel": req.channel,
        "from": src.name,
        "images": label,
        "top": req.top,
        "k": k,
        "n_random": N_RANDOM,
        "effect_images": req.effect_images,
        "renders": renders,
        "linearize": req.linearize,
        "method": method,
        "render": get_preset(method).for_model(model).as_dict() if renders else None,
        "input_steps": min(req.input_steps, get_preset(method).steps) if renders else None,
        "seed": req.seed,
    }
    return CircuitPlan(
        model,
        info,
        src,
        req.channel,
        files,
        label,
        req.top,
        k,
        renders,
        req.linearize,
        req.method,
        req.seed,
        settings,
        req.effect_images,
        req.input_steps,
        root,
    )


def _compute(ctx: RunContext, p: CircuitPlan) -> Circuit:
    res = compute_circuit(p, ctx.show_progress, ctx.stop, ctx)
    ctx.record["timings"].update(res.timings)
    if res.status == "partial":
        ctx.mark_partial(*(res.stopped or (0, 1, "stages")))
    res.run_dir = ctx.path
    return res


def _write(ctx: RunContext, res: Circuit) -> None:
    if not res.ablation:  # stopped before the inputs were measured: only the kept pieces (run.json says so)
        return
    with ctx.timed("write"):
        write_circuit(ctx.run, res)
    res.timings = ctx.record["timings"]


def _summary(r: JobResult) -> list[str]:
    c = r.data
    ab = c.ablation
    lines = [
        f"{c.model} · {c.layer}:{c.channel} built from {c.source} ({len(c.inputs)} inputs, {c.n_images} images; "
        f"effects measured on {c.ranking.get('n_images', c.n_images)})",
        f"zeroing the first {ab['k']} inputs listed changes it by {ab['change_top']:.4f} "
        f"vs {ab['change_random']:.4f} for {ab['k']} random ({ab['change_ratio']:.1f}×)",
        *([f"warning: {ab['warning']}"] if ab.get("warning") else []),
        f"inputs by measured effect (zeroed alone; expanded weight normalised to the circuit's largest, "
        f"Spearman {c.ranking['weights_agreement'][c.linear['linearize']]['spearman_effect']:+.2f} with |effect|):",
    ]
    for i in c.shown:
        lines.append(
            f"  {c.source}:{i.channel:<4d} {i.sign:<8} effect {i.effect:+.4f} (mean |Δ| {i.effect_abs:.4f})"
            f"  attribution {i.attribution:+.4f}  weight {i.weight_norm:+.2f}"
        )
    lines.append(f"wrote {r.run_dir}/circuit.json, figure_circuit.png, report.html, run.json")
    return lines


JOB = Job(
    "circuit",
    CircuitRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="The channels of an earlier layer that build CHANNEL, by measured effect, checked by ablation.",
    renders=True,
    resumable=True,
    precheck=_check_images,
)


def circuit(
    model: Model,
    layer: str | None = None,
    channel: int = 0,
    *,
    renders: bool = True,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    **options,
) -> JobResult:
    """The channels of ``from_layer`` (default: the layer that feeds ``layer``) that build ``channel`` of
    ``layer``: expanded weights, attribution over ``images`` (default: the bundled photos), ablation, and the
    top ``top`` inputs' renders (``options``: the fields of :class:`CircuitRequest`).

    Returns the job's :class:`~.contract.JobResult`; its ``data`` is the :class:`Circuit`. Without ``out`` it
    runs in memory and writes nothing; with ``out`` it writes ``circuit.json``, ``circuit_weights.npz``,
    ``figure_circuit.png``, ``report.html``, the renders and ``run.json`` there (the job :data:`JOB`;
    ``resume``: finish an interrupted run of ``out``, keeping its finished pieces)."""
    req = JOB.make_request(layer=layer, channel=channel, no_renders=not renders, **options)
    return run_job(
        JOB, model, req, out=out, in_memory=out is None, resume=resume, progress=progress, should_stop=should_stop
    )


def _label(images) -> str:
    return str(images) if images else "bundled photos"


def _relative(f: Path, root: Path | None) -> str:
    try:
        return f.relative_to(root).as_posix() if root is not None and root.is_dir() else f.name
    except ValueError:
        return f.name


def compute_circuit(
    plan: CircuitPlan,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    ctx: RunContext | None = None,
) -> Circuit:
    """The work of :func:`circuit` on a validated plan (no files).

    ``ctx``: the job's run, where the finished pieces are kept for ``--resume`` and, resuming, taken from:
    each batch of the attribution pass, each piece of the removal effects, the ablation check, the filter's
    render and the inputs' thumbnails. A stopped circuit is ``partial``; :attr:`Circuit.stopped` says how far
    it got."""
    pc = Pieces(ctx)
    p = plan
    model, info, src, channel, files, images_label = p.model, p.info, p.src, p.channel, p.files, p.label
    top, k, renders, method, seed, linearize = p.top, p.k, p.renders, p.method, p.seed, p.linearize
    timings: dict[str, float] = {}
    t = time.perf_counter()
    batches = list(image_batches(model, files))
    timings["load_images_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with bar(ctx, progress, len(files), f"circuit {info.name}:{channel}: attribution", "image") as shown:
        sizes = iter([int(x.shape[0]) for x in batches])
        p = attribution(model, src, info, channel, batches, should_stop, pc, lambda: shown.update(next(sizes)))
    attr = p.attribution.mean(0)
    timings["attribution_s"] = time.perf_counter() - t
    stopped = len(p.activation) < len(files)
    where = (len(p.activation), len(files), "images of the attribution pass")

    t = time.perf_counter()
    maps, pos, linear = expanded_weights(model, src, info, channel, p.gates)
    gated, _, lin_g = expanded_weights(model, src, info, channel, p.gates, p.slopes)
    linear["squeeze_excite_gates"] = len(p.gates)
    linear["affine_error_gated"] = lin_g["affine_error"]
    timings["expanded_weights_s"] = time.perf_counter() - t
    if linearize == "gated":
        maps, gated = gated, maps
    weights = maps.reshape(maps.shape[0], -1).sum(1)
    weights_g = gated.reshape(gated.shape[0], -1).sum(1)  # the other linearisation

    abl: dict = {}
    effects = None
    used = effect_images(len(p.activation), plan.effect_images, seed)
    if not stopped and not (should_stop and should_stop()):
        t = time.perf_counter()
        masked = Masked(model, src, info, channel, batches, p.sources, p.activation)
        counted = _Counted()

        def effects_bar(total: int, initial: int) -> _Counted:
            desc = f"circuit {info.name}:{channel}: removal effects"
            return counted.start(bar(ctx, progress, total, desc, "piece", initial), total, initial)

        effects = measured_effects(masked, p.activation, used, should_stop, pc, effects_bar)
        timings["removal_effects_s"] = time.perf_counter() - t
        where = (counted.done, counted.total, "pieces of the removal effects")
    if effects is None:  # stopped: no measured effect, the order falls back to the attribution
        stopped = True
        order = effect_order("attribution_image", None, p.attribution, weights, k)
        effect = np.zeros(src.channels)
        effect_abs = np.zeros(src.channels)
        ranking_method = "attribution_image"
    else:
        order = effect_order(DEFAULT_RANKING, effects, p.attribution, weights, k)
        effect, effect_abs = effects.mean(0), np.abs(effects).mean(0)
        ranking_method = DEFAULT_RANKING
        t = time.perf_counter()
        got = pc.get("ablation")
        if got is not None:
            abl = got[1]
        else:
            abl = ablation(model, src, info, channel, batches, attr, k, seed, order=order, effect=effect, masked=masked)
            pc.put("ablation", {}, abl)
        timings["ablation_s"] = time.perf_counter() - t
    acts = p.activation

    rank_w = np.empty(len(attr), dtype=int)
    rank_w[np.argsort(-np.abs(weights), kind="stable")] = np.arange(len(attr))
    rank_a = np.empty(len(attr), dtype=int)
    rank_a[np.argsort(-np.abs(attr), kind="stable")] = np.arange(len(attr))
    nz = np.abs(maps).max(0) > 1e-7 * max(float(np.abs(maps).max()), 1e-30)
    rows, cols = np.nonzero(nz) if nz.any() else (np.array([pos[0]]), np.array([pos[1]]))
    window = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
    scale, scale_g = float(np.abs(weights).max()), float(np.abs(weights_g).max())
    inputs = [
        CircuitInput(
            src.name,
            int(c),
            float(weights[c]),
            float(attr[c]),
            maps[c],
            int(rank_w[c]),
            int(rank_a[c]),
            weight_other=float(weights_g[c]),
            effect=float(effect[c]),
            effect_abs=float(effect_abs[c]),
            rank=r,
            weight_scale=scale,
            weight_other_scale=scale_g,
        )
        for r, c in enumerate(order.tolist())
    ]
    linear["linearize"] = linearize
    linear["max_abs_weight"] = {linearize: scale, OTHER[linearize]: scale_g}
    linear["agreement"] = agreement(weights, weights_g, attr, linearize)
    ranking = {
        "method": ranking_method,
        "description": RANKING_TEXT[ranking_method],
        "first": [int(c) for c in order[: min(top, len(order))]],
    }
    if effects is not None:
        ranking["n_images"] = len(used)
        ranking["images"] = [_relative(files[i], plan.root) for i in used.tolist()]
        ranking["weights_agreement"] = {
            linearize: rank_agreement(weights, effect_abs, order),
            OTHER[linearize]: rank_agreement(weights_g, effect_abs, order),
        }
        ranking["attribution_agreement"] = rank_agreement(attr, effect_abs, order)
    settings = {
        "layer": info.name,
        "channel": channel,
        "from": src.name,
        "images": images_label,
        "top": top,
        "k": k,
        "renders": renders,
        "linearize": linearize,
        "method": method or DEFAULT_METHOD,
        "seed": seed,
    }
    res = Circuit(
        model.name,
        info.name,
        channel,
        src.name,
        pos,
        inputs,
        float(acts.mean()),
        len(acts),
        images_label,
        abl,
        linear,
        window,
        top,
        ranking,
        settings,
    )
    if stopped or not abl:
        res.status, res.stopped = "partial", where
    if renders and res.status == "complete":
        t = time.perf_counter()
        res.status = _render(model, info, src, res, method, seed, progress, should_stop, plan.input_steps, ctx)
        timings["render_s"] = time.perf_counter() - t
    res.timings = {k_: round(v, 3) for k_, v in timings.items()}
    return res


class _Counted:
    """A progress bar that also counts (a hidden tqdm bar does not): how far a stopped stage got."""

    shown = None
    total = done = 0

    def start(self, shown, total: int, done: int) -> _Counted:
        self.shown, self.total, self.done = shown, total, done
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        self.shown.update(n)

    def close(self) -> None:
        self.shown.close()


def agreement(weights: np.ndarray, other: np.ndarray, attr: np.ndarray, linearize: str = "identity") -> dict:
    """Spearman rank correlation of each linearisation's summed weights with the attribution, and the share
    of the top-8 inputs by |attribution| that each puts in its own top 8."""
    from scipy.stats import spearmanr

    n = min(8, len(attr))
    top_a = set(np.argsort(-np.abs(attr), kind="stable")[:n].tolist())
    out = {}
    for name, w in ((linearize, weights), (OTHER[linearize], other)):
        rho = spearmanr(w, attr).statistic if np.std(w) > 0 and np.std(attr) > 0 else float("nan")
        top_w = set(np.argsort(-np.abs(w), kind="stable")[:n].tolist())
        out[name] = {"spearman_attribution": round(float(rho), 4), "top8_overlap": len(top_a & top_w) / n}
    return out


def _render(
    model, info, src, res: Circuit, method, seed, progress, should_stop, input_steps=INPUT_STEPS, ctx=None
) -> str:
    """The target channel's render (the method's steps) and the shown inputs' thumbnails (at most
    ``input_steps``, one batch), through the render cache; with ``ctx`` each kept as it finishes (the image
    exactly, for the figure) and, resuming, taken from there. Sets :attr:`Circuit.stopped` when stopped."""
    from ..optvis.presets import DEFAULT_METHOD, get_preset
    from .stream import render_stream

    pc = Pieces(ctx)
    settings = get_preset(method or DEFAULT_METHOD)
    thumbs = settings.with_(steps=min(settings.steps, input_steps))
    shown = {i.channel: i for i in res.shown}
    names = {c: f"render/{src.name}/channel_{c:04d}" for c in shown}
    kept = {c: got for c in shown if (got := pc.get(names[c])) is not None}
    target = pc.get(f"render/{info.name}/channel_{res.channel:04d}")
    todo = [c for c in shown if c not in kept]
    steps = (settings.steps if target is None else 0) + (thumbs.steps if todo else 0)
    step = [0]
    with bar(ctx, progress, steps, f"render {info.name}:{res.channel} and its inputs", "step") as shown_bar:

        def on_step(n: int) -> None:
            shown_bar.update(max(0, n - step[0]))
            step[0] = n

        if target is None:
            for r in render_stream(
                model, info, [res.channel], settings, seed, batch=1, on_step=on_step, should_stop=should_stop
            ):
                target = _kept_render(r)
                pc.put(f"render/{info.name}/channel_{res.channel:04d}", *target)
        if target is None:  # stopped before the filter's render finished
            res.stopped = (0, 1 + len(shown), "renders (the filter and its inputs)")
            return "partial"
        if target[1]["status"] == "ok":
            res.target_render, res.target_png = torch.from_numpy(target[0]["image"]), target[0]["png"].tobytes()
        step[0] = 0
        if todo:
            for r in render_stream(
                model, src, todo, thumbs, seed, batch=len(todo), on_step=on_step, should_stop=should_stop
            ):
                kept[r.channel] = _kept_render(r)
                pc.put(names[r.channel], *kept[r.channel])
    for c, (arrays, meta) in kept.items():
        if meta["status"] == "ok":
            inp = shown[c]
            inp.render, inp.render_png = torch.from_numpy(arrays["image"]), arrays["png"].tobytes()
            inp.render_activation = meta["activation"]
    if len(kept) < len(shown):
        res.stopped = (1 + len(kept), 1 + len(shown), "renders (the filter and its inputs)")
        return "partial"
    return "complete"


def _kept_render(r) -> tuple[dict[str, np.ndarray], dict]:
    """One render as a piece: the image and its PNG exactly, the activation it reached and its status."""
    if r.status != "ok":
        return {}, {"status": r.status}
    arrays = {"image": r.image.detach().float().cpu().numpy(), "png": png_array(r.png)}
    return arrays, {"status": "ok", "activation": float(r.after)}


def write_circuit(run, res: Circuit) -> None:
    """Every file of a circuit run, and its summary in ``run.json``."""
    import io

    from ..outputs.naming import REPORT, channel_file, figure_file
    from ..outputs.rundir import json_bytes

    if res.target_png is not None:
        run.write(channel_file(res.layer, res.channel), res.target_png)
    for i in res.inputs:
        if i.render_png is not None:
            run.write(channel_file(i.layer, i.channel), i.render_png)
    buf = io.BytesIO()
    chans = np.array(sorted(i.channel for i in res.inputs))
    np.savez_compressed(buf, maps=res.weight_maps().astype(np.float32), channels=chans, position=np.array(res.position))
    run.write("circuit_weights.npz", buf.getvalue())
    rec = res.record()
    run.write("circuit.json", json_bytes(rec))
    run.write(figure_file("circuit"), res.figure_png())
    run.write_text(REPORT, res.html())
    summary = {k: v for k, v in rec.items() if k != "inputs"}
    summary["top_inputs"] = rec["inputs"][: res.top]
    run.result("circuit", summary)
