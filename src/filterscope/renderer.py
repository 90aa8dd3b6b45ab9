"""The render loop: optimise images so that an objective rises (gradient ascent on the input).

model → hooked layer → objective → param/transform → this loop. Every step: the parameterisation makes
the images, transforms jitter them (possibly into several crops each), they are resized to the model's
input (or a smaller "octave" early on, coarse-to-fine), the network runs up to the deepest hooked layer
only (early exit), and the optimiser takes one step on ``-sum(objective)``. Each image of the batch has its
own objective, seed and random transforms; a NaN/Inf objective freezes only that image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from .errors import RenderError, UsageError
from .hooks import capture, run
from .layers import get_layer, list_layers
from .models import Model
from .objectives import Context, Objective, channel, stack
from .param import ImageParam, make_param
from .relu import is_relu, redirect_relu
from .transform import Transform, make_transform


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides a render besides the objective and the seed (a preset is one of these)."""

    param: str = "fourier"
    decorrelate: bool = True
    transforms: str | Transform = "standard"  # a preset name (transform.TRANSFORM_PRESETS) or a Transform
    steps: int = 128
    lr: float = 0.05
    optimizer: str = "adam"  # adam | nadam
    schedule: str = "constant"  # constant | cosine
    size: int | None = None  # side of the rendered image; None: the model's input size
    octaves: tuple[tuple[float, float], ...] = ()  # (fraction of steps, scale of the model input), coarse→fine
    param_options: tuple[tuple[str, object], ...] = ()
    early_exit: bool = True
    redirect_relu: bool = True  # Lucid's redirected ReLU gradients, see relu.py
    pre_relu: bool = False  # optimise a layer's pre-activation when it ends in a ReLU/ReLU6 (Lucid's _pre_relu)
    converge: float = 0.0  # stop an image once its objective gains less than this fraction per window
    window: int = 8

    def with_(self, **changes) -> RenderSettings:
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes)

    def as_dict(self) -> dict:
        d = asdict(self)
        if isinstance(self.transforms, Transform):
            d["transforms"] = self.transforms.describe()
        d["octaves"] = [list(o) for o in self.octaves]
        d["param_options"] = dict(self.param_options)
        return d


@dataclass
class RenderResult:
    images: torch.Tensor  # [B, 3, H, W] in [0, 1], on the CPU
    before: list[float]  # objective on the starting images
    after: list[float]  # objective on the final images
    curves: list[list[float]]  # objective (on transformed inputs) at every step, per image
    status: list[str]  # "ok", or why the image stopped ("nan at step 17")
    steps_done: int
    seconds: float
    interrupted: bool = False
    settings: RenderSettings = field(default_factory=RenderSettings)


def channel_seed(seed: int, key: int) -> int:
    """Seed of one image from the run seed and its channel (or other) key: independent of batching."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(key) & 0xFFFFFFFF]).generate_state(1)[0])


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr)
    raise UsageError(f"unknown optimizer {name!r}", hint="use adam or nadam")


def _lr_at(settings: RenderSettings, step: int) -> float:
    if settings.schedule == "constant":
        return settings.lr
    if settings.schedule == "cosine":
        t = step / max(1, settings.steps - 1)
        return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    raise UsageError(f"unknown lr schedule {settings.schedule!r}", hint="use constant or cosine")


def _octave_sizes(settings: RenderSettings, input_size: int) -> list[int]:
    """Model-input side for every step (coarse-to-fine when octaves are set)."""
    if not settings.octaves:
        return [input_size] * settings.steps
    fracs = np.array([f for f, _ in settings.octaves], dtype=float)
    ends = np.round(np.cumsum(fracs / fracs.sum()) * settings.steps).astype(int)
    sizes, start = [], 0
    for end, (_, scale) in zip(ends, settings.octaves):
        sizes += [max(32, int(round(input_size * scale / 8)) * 8)] * (end - start)
        start = end
    return sizes


def _converged(curve: list[float], window: int, tol: float) -> bool:
    """The mean of the last ``window`` values gained less than ``tol`` (relative) over the window before."""
    if len(curve) < 2 * window:
        return False
    last = sum(curve[-window:]) / window
    prev = sum(curve[-2 * window:-window]) / window
    return last - prev < tol * max(abs(prev), 1e-3)


def _fit(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return TF.resize(x, [side, side], antialias=x.shape[-1] > side)


class Renderer:
    """Renders objectives on one model; reuse it to render many batches with the same settings."""

    def __init__(self, model: Model, settings: RenderSettings = RenderSettings()):
        if settings.steps < 1:
            raise UsageError(f"steps must be at least 1, got {settings.steps}")
        if not (settings.lr > 0 and math.isfinite(settings.lr)):
            raise UsageError(f"lr must be a positive number, got {settings.lr}")
        self.model = model
        self.settings = settings
        self.size = settings.size or model.input_size
        if self.size < 16:
            raise UsageError(f"size must be at least 16 pixels, got {self.size}")
        self.calls = {i.name: i.calls for i in list_layers(model)} if not isinstance(
            model.net, torch.jit.ScriptModule) else {}
        self.orders = {i.name: i.order for i in list_layers(model)} if self.calls else {}
        _lr_at(settings, 0)
        _optimizer(settings.optimizer, [torch.zeros(1, requires_grad=True)], settings.lr)

    def _transform(self) -> Transform:
        t = make_transform(self.settings.transforms)
        if self.size > self.model.input_size and t.crops == 1:
            # renders larger than the model's input are seen through random crops
            from .transform import Compose, Crops

            t = Compose([t, Crops(n=1, box=(self.model.input_size / self.size, 1.0), spread=0.2, noise=0.0)])
        return t

    def _relus_before(self, layers) -> list[str]:
        """The last ReLU/ReLU6 module that runs up to each target layer (inside it or before it)."""
        modules = dict(self.model.net.named_modules())
        relus = sorted((o, n) for n, o in self.orders.items() if is_relu(modules[n]))
        picked = set()
        for layer in layers:
            before = [n for o, n in relus if o <= self.orders.get(layer, -1)]
            if before:
                picked.add(before[-1])
        return sorted(picked)

    def _final_relus(self, layers) -> dict[str, str]:
        """For each target layer whose last operation is a ReLU/ReLU6 module, that module's name.

        Optimising that module's input (the pre-activation) instead of its clamped output keeps a gradient
        where the unit is off or saturated (ReLU6 at 6), so the picture keeps improving; the values reported
        before/after are always the layer's real outputs.
        """
        modules = dict(self.model.net.named_modules())
        out = {}
        for layer in layers:
            inside = [(o, n) for n, o in self.orders.items() if n == layer or n.startswith(layer + ".")]
            inside = [(o, n) for o, n in inside if n != layer] or inside
            if inside:
                _, last = max(inside)
                if is_relu(modules[last]):
                    out[layer] = last
        return out

    def _evaluate(self, objective: Objective, images: torch.Tensor, cap: capture) -> torch.Tensor:
        x = _fit(images, self.model.input_size)
        logits = run(self.model.forward, x, cap)
        owner = torch.arange(images.shape[0], device=images.device)
        return objective(Context(cap.acts, logits, images, owner))

    def render(
        self,
        objective: Objective | Sequence[Objective],
        seeds: Sequence[int],
        *,
        on_step: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> RenderResult:
        """Render ``len(seeds)`` images; ``objective`` is one for all, or a list with one per image."""
        s = self.settings
        if not isinstance(objective, Objective):
            if len(objective) != len(seeds):
                raise UsageError("give one objective per seed")
            objective = stack(objective)
        options = dict(s.param_options)
        if s.param == "pixel":
            options.setdefault("decorrelate", s.decorrelate)
        else:
            options["decorrelate"] = s.decorrelate
        param = make_param(s.param, seeds, self.size, **options).to(self.model.device)
        pre = self._final_relus(objective.layers) if s.pre_relu else {}
        st = _State(
            objective=objective,
            param=param,
            opt=_optimizer(s.optimizer, list(param.tensors), s.lr),
            transform=self._transform(),
            gens=[torch.Generator().manual_seed(int(sd) ^ 0x5EED) for sd in seeds],
            cap=capture(self.model.net, sorted(objective.layers, key=lambda n: self.orders.get(n, 0)),
                        calls=self.calls, inputs_of=list(pre.values()),
                        stop=s.early_exit and not objective.needs_logits and bool(objective.layers)),
            pre=pre,
            sizes=_octave_sizes(s, self.model.input_size),
            batch=len(seeds),
        )
        t0 = time.perf_counter()
        with st.cap:
            with torch.no_grad():
                before = self._evaluate(objective, st.param(), st.cap).float().cpu()
            # only an objective that is exactly 0 (a ReLU off everywhere) needs redirected gradients
            dead = s.redirect_relu and bool((before == 0).any())
            with redirect_relu(self.model.net, self._relus_before(objective.layers) if dead else []):
                interrupted = self._optimise(st, on_step, should_stop)
            with torch.no_grad():
                final = st.param().detach()
                after = self._evaluate(objective, final, st.cap).float().cpu()
        return RenderResult(final.cpu(), before.tolist(), after.tolist(), st.curves, st.status, st.done,
                            time.perf_counter() - t0, interrupted, s)

    def _optimise(self, st: _State, on_step, should_stop) -> bool:
        """The optimisation steps; returns whether a stop request interrupted them."""
        s = self.settings
        b = st.batch
        for step in range(s.steps):
            for group in st.opt.param_groups:
                group["lr"] = _lr_at(s, step)
            st.opt.zero_grad(set_to_none=True)
            images = st.param()
            x = _fit(st.transform(images, st.gens, st.sizes[step]), st.sizes[step])
            logits = run(self.model.forward, x, st.cap)
            owner = torch.arange(b, device=x.device).repeat_interleave(x.shape[0] // b)
            acts = {**st.cap.acts, **{layer: st.cap.inputs[relu] for layer, relu in st.pre.items()}}
            values = st.objective(Context(acts, logits, images, owner))
            vals = values.detach().float().cpu()
            bad = ~torch.isfinite(vals) & st.alive
            for i in torch.nonzero(bad).flatten().tolist():
                st.status[i] = f"non-finite objective at step {step + 1}; stopped"
            st.alive &= ~bad
            st.active &= st.alive
            if not st.active.any():
                st.done = step + 1
                return False
            (-values[st.active.to(values.device)].sum()).backward()
            for i in torch.nonzero(~st.active).flatten().tolist():
                st.param.tensors[i].grad = None  # frozen images: optimisers skip parameters without gradient
            st.opt.step()
            st.param.project()
            for i in range(b):
                st.curves[i].append(float(vals[i]))
            st.done = step + 1
            if s.converge > 0:
                st.active &= ~torch.tensor([_converged(c, s.window, s.converge) for c in st.curves])
                if not st.active.any():
                    return False
            if on_step:
                on_step(st.done)
            if should_stop and should_stop():
                return st.done < s.steps
        return False


@dataclass
class _State:
    """Everything one ``Renderer.render`` call works on."""

    objective: Objective
    param: ImageParam
    opt: torch.optim.Optimizer
    transform: Transform
    gens: list[torch.Generator]
    cap: capture
    pre: dict[str, str]
    sizes: list[int]
    batch: int
    done: int = 0
    alive: torch.Tensor = field(init=False)
    active: torch.Tensor = field(init=False)  # alive and not yet converged
    status: list[str] = field(init=False)
    curves: list[list[float]] = field(init=False)

    def __post_init__(self) -> None:
        self.alive = torch.ones(self.batch, dtype=torch.bool)
        self.active = self.alive.clone()
        self.status = ["ok"] * self.batch
        self.curves = [[] for _ in range(self.batch)]


def render(
    model: Model,
    layer: str = "default",
    channel_index: int = 0,
    *,
    method: str = "fast",
    seed: int = 0,
    steps: int | None = None,
    lr: float | None = None,
    size: int | None = None,
    **overrides,
) -> ChannelRender:
    """Render one channel's boosted features (the tutorial's ``render``, any preset).

    Returns the image (PIL) and the channel's mean activation on the starting noise and on the result.
    """
    from .images import to_pil
    from .presets import get_preset

    info = get_layer(model, layer)
    check_channels(info, [channel_index])
    settings = get_preset(method).with_(steps=steps, lr=lr, size=size, **overrides)
    result = Renderer(model, settings).render(channel(info.name, channel_index), [channel_seed(seed, channel_index)])
    if result.status[0] != "ok":
        raise RenderError(f"channel {channel_index}: {result.status[0]}")
    return ChannelRender(to_pil(result.images[0]), info.name, channel_index, result.before[0], result.after[0],
                         result.curves[0], result.seconds, settings)


@dataclass
class ChannelRender:
    image: object  # PIL.Image.Image
    layer: str
    channel: int
    activation_before: float
    activation_after: float
    curve: list[float]
    seconds: float
    settings: RenderSettings

    @property
    def gain(self) -> float:
        return self.activation_after / self.activation_before if self.activation_before > 0 else float("inf")


def check_channels(info, channels: Sequence[int]) -> None:
    bad = [c for c in channels if not 0 <= c < info.channels]
    if bad:
        raise UsageError(f"channel {bad[0]} is out of range: layer {info.name} has channels 0-{info.channels - 1}")
