"""The render loop: optimise images so that an objective rises (gradient ascent on the input).

model → hooked layer → objective → param/transform → this loop. Every step: the parameterisation makes
the images, transforms jitter them (possibly into several crops each), they are resized to the model's
input, the network runs up to the deepest hooked layer only (early exit), and the optimiser takes one step
on ``-sum(objective)``. Each image of the batch has its own objective, seed and random transforms; a NaN/Inf
objective freezes only that image.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import UsageError, closest
from ..models.hooks import capture, run
from ..models.layers import list_layers, map_views
from ..models.model import Model
from ..models.relu import final_relus, relus_before
from .fold import fold_batchnorm
from .memory import reuse_freed_memory
from .objectives import Context, Objective, stack
from .param import ImageParam, estimate_color_sqrt, make_param, param_options, param_registry
from .relu import redirect_relu
from .transform import TRANSFORM_PRESETS, Compose, Crops, Transform, Views, make_transform

OptimizerFactory = Callable[[Sequence[torch.Tensor], float], torch.optim.Optimizer]
# the optimisers by name (``--optimizer``): each a factory ``(params, lr) -> Optimizer``; an experiment registers
# its own with :func:`register_optimizer` or gives the factory itself as ``RenderSettings(optimizer=...)``
OPTIMIZERS: dict[str, OptimizerFactory] = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam}


def register_optimizer(name: str, factory: OptimizerFactory) -> OptimizerFactory:
    """Register ``factory`` (``(params, lr) -> torch.optim.Optimizer``) as ``--optimizer name``."""
    OPTIMIZERS[name] = factory
    return factory


# fields added later stay out of records and cache keys at their default (older records and keys still match)
_LATER_FIELDS = {"views": 1, "precision": "float32", "ema": 0.0, "anneal": 0.0}
# the network's arithmetic in the loop: float32, or bfloat16 under torch.autocast (the image, its
# parameterisation, the objective and the optimiser stay float32)
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
MIN_SIZE = 16  # the smallest rendered side: a CNN's stem divides by 16-32
SMALL_INPUT = 96  # models with a smaller input render on a larger canvas seen through random crops
CANVAS_FACTOR = 2  # the canvas of a small-input model: 2× its input side (4× and 50-100 % crops: digits 6/10)


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides a render besides the objective and the seed (a preset is one of these).

    Checked when made (and by every :meth:`with_`), so a bad value fails before any work starts.
    """

    param: str = "fourier"
    decorrelate: bool = True
    transforms: str | Transform = "standard"  # a preset name (transform.TRANSFORM_PRESETS) or a Transform
    steps: int = 128
    lr: float = 0.05
    optimizer: str | OptimizerFactory = "adam"  # a name in OPTIMIZERS, or a factory (params, lr) -> Optimizer
    size: int | None = None  # side of the rendered image; None: the model's input size
    param_options: tuple[tuple[str, object], ...] = ()
    redirect_relu: bool = True  # Lucid's redirected ReLU gradients, see relu.py
    pre_relu: bool = False  # optimise a layer's pre-activation when it ends in a ReLU/ReLU6 (Lucid's _pre_relu)
    converge: float = 0.0  # stop an image once its objective gains less than this fraction per window
    window: int = 8
    views: int = 1  # independently transformed views of each image per step; the step follows their mean
    # the result is the exponential moving average of the steps' parameters with this decay (iterate
    # averaging: each step follows one random transform, the average cancels part of that noise); 0: the last
    # step's
    ema: float = 0.0
    # transform annealing: the random transforms' ranges (affine scale, angle, translation; jitter) shrink
    # linearly over the steps to (1 - anneal) of their size at the last step; 0: constant
    anneal: float = 0.0
    precision: str = "float32"  # a name in PRECISIONS
    transform_scale: float | None = None  # transforms' pixel amounts ×; None: from the input size (for_model)
    crop_min: float | None = None  # smallest crop of a canvas larger than the input; None: input/size
    decorrelation_images: str | None = None  # folder to estimate a C×C colour matrix from (C ≠ 1, 3)
    decorrelation: str | None = None  # what for_model resolved: natural-rgb | estimated from DIR | none
    # the preset these settings came from and the fields changed from it: run.json's ``method`` is their
    # :attr:`label` (``lucid+steps``); not part of the settings' meaning (not compared, not in as_dict or any
    # cache key)
    preset: str = field(default="custom", compare=False)
    changed: tuple[str, ...] = field(default=(), compare=False)
    # the model (input side, channels) :meth:`for_model` completed these settings for; None: not yet
    bound_to: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps must be at least 1, got {self.steps}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"lr must be a positive finite number, got {self.lr}")
        if self.size is not None and self.size < MIN_SIZE:
            raise UsageError(f"size must be at least {MIN_SIZE} pixels, got {self.size}")
        if not callable(self.optimizer) and self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}", hint="use " + " or ".join(OPTIMIZERS))
        if self.param not in param_registry():
            raise UsageError(f"unknown parameterisation {self.param!r}", hint=closest(self.param, param_registry()))
        if isinstance(self.transforms, str) and self.transforms not in TRANSFORM_PRESETS:
            raise UsageError(
                f"unknown transforms {self.transforms!r}", hint=closest(self.transforms, TRANSFORM_PRESETS)
            )
        if isinstance(self.views, bool) or not isinstance(self.views, int) or not 1 <= self.views <= 64:
            raise UsageError(f"views must be a whole number from 1 to 64, got {self.views}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}", hint="use " + " or ".join(PRECISIONS))
        param_registry()[self.param].check_options(dict(self.param_options))
        if isinstance(self.ema, bool) or not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            raise UsageError(f"ema must be in [0, 1), got {self.ema}")
        if isinstance(self.anneal, bool) or not (isinstance(self.anneal, (int, float)) and 0 <= self.anneal <= 1):
            raise UsageError(f"anneal must be in [0, 1], got {self.anneal}")
        if not (self.converge >= 0 and self.window >= 1):
            raise UsageError(f"converge must be ≥ 0 and window ≥ 1, got {self.converge}, {self.window}")

    @property
    def label(self) -> str:
        """The preset and the fields changed from it, e.g. ``lucid+steps`` (run.json's ``method``)."""
        return "+".join([self.preset, *self.changed])

    @property
    def make_optimizer(self) -> OptimizerFactory:
        """The optimiser's factory ``(params, lr) -> torch.optim.Optimizer`` (:data:`OPTIMIZERS` by name)."""
        return self.optimizer if callable(self.optimizer) else OPTIMIZERS[self.optimizer]

    def with_(self, **changes) -> RenderSettings:
        """These settings with ``changes`` (``None`` values ignored); :attr:`changed` gains the names of the
        fields that really changed (``lucid`` → ``lucid+steps``). The result is no longer model-bound."""
        changes = {k: v for k, v in changes.items() if v is not None and k not in ("preset", "changed", "bound_to")}
        changed = {k for k, v in changes.items() if getattr(self, k) != v}
        return replace(self, **changes, changed=tuple(sorted(set(self.changed) | changed)), bound_to=None)

    def for_model(self, model: Model) -> RenderSettings:
        """These settings with the model-dependent defaults filled in (idempotent), so a run records what ran:

        - small inputs (< 96 px, e.g. 28 px digits or 32 px CIFAR): render on a canvas 2× the input, seen
          whole, resampled to the input after the random transforms, whose pixel amounts are scaled to the
          canvas (a 12 px translation is set for 224 px); 96 px and larger: unchanged;
        - decorrelation: ``natural-rgb`` (the shipped matrix) for 3 channels, ``none`` for 1 channel (a
          scalar) or without ``decorrelate``, ``estimated from DIR`` for other counts when
          ``decorrelation_images`` is given, else ``none``;
        - the ``fourier`` natural start (``init_contrast``) only with ``natural-rgb``: it is a photo prior.

        Settings already completed for a model of the same input side and channels are returned as they are.
        """
        if self.bound_to == (model.input_size, model.in_channels):
            return self
        size, scale, crop_min = self.size, self.transform_scale, self.crop_min
        if model.input_size < SMALL_INPUT:
            if size is None:
                size = max(MIN_SIZE, CANVAS_FACTOR * model.input_size)
                crop_min = 1.0 if crop_min is None else crop_min
            if scale is None:
                scale = round(size / 224, 4)
        scale = 1.0 if scale is None else scale
        c = model.in_channels
        if not self.decorrelate or c == 1:
            how = "none"
        elif c == 3:
            how = "natural-rgb"
        elif self.decorrelation_images:
            how = f"estimated from {self.decorrelation_images}"
        else:
            how = "none"
        options = self.param_options
        if how != "natural-rgb" and dict(options).get("init_contrast", 0) > 0:
            # the natural start is a photo's spectrum in the natural-RGB colour space: elsewhere, Lucid's start
            options = tuple((k, 0.0 if k == "init_contrast" else v) for k, v in options)
        return replace(
            self,
            size=size,
            transform_scale=scale,
            crop_min=crop_min,
            decorrelation=how,
            param_options=options,
            bound_to=(model.input_size, model.in_channels),
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("preset", "changed", "bound_to"):
            del d[k]
        if callable(self.optimizer):
            d["optimizer"] = getattr(self.optimizer, "__qualname__", repr(self.optimizer))
        for k, default in _LATER_FIELDS.items():  # fields added later stay out of records/keys at their default
            if d[k] == default:
                del d[k]
        if isinstance(self.transforms, Transform):
            d["transforms"] = self.transforms.describe()
        d["param_options"] = dict(self.param_options)
        return d


@dataclass
class RenderResult:
    images: torch.Tensor  # [B, C, H, W] in [0, 1], on the CPU (C: the model's input channels)
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


def _converged(curve: list[float], window: int, tol: float) -> bool:
    """The mean of the last ``window`` values gained less than ``tol`` (relative) over the window before."""
    if len(curve) < 2 * window:
        return False
    last = sum(curve[-window:]) / window
    prev = sum(curve[-2 * window : -window]) / window
    return last - prev < tol * max(abs(prev), 1e-3)


def _color(model: Model, settings: RenderSettings) -> torch.Tensor | None:
    """The C×C colour matrix estimated from ``settings.decorrelation_images`` when that is the resolved
    decorrelation (channel counts without a shipped matrix); else None."""
    if not (settings.decorrelation or "").startswith("estimated"):
        return None
    from ..models.inputs import load_channel_images

    images = load_channel_images(settings.decorrelation_images, model.in_channels, min(model.input_size, 64))
    return estimate_color_sqrt(images)


def _fit(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return TF.resize(x, [side, side], antialias=x.shape[-1] > side)


def _float(acts: dict[str, torch.Tensor], logits: torch.Tensor | None):
    """Activations and logits in float32 for the objective (a no-op unless the net ran in lower precision)."""
    acts = {k: v.float() if v.is_floating_point() else v for k, v in acts.items()}
    return acts, logits.float() if isinstance(logits, torch.Tensor) and logits.is_floating_point() else logits


class Renderer:
    """Renders objectives on one model; reuse it to render many batches with the same settings
    (completed for the model by :meth:`RenderSettings.for_model`)."""

    def __init__(self, model: Model, settings: RenderSettings = RenderSettings(), *, fold: bool | None = None):
        """``fold``: run the loop through a copy of the net with its batch norms folded into their
        convolutions (:mod:`.fold`; the same picture up to float rounding, like a different thread count, so
        it is not a setting); default on, ``FILTERSCOPE_NO_FOLD=1`` turns it off."""
        reuse_freed_memory()
        self.fold = os.environ.get("FILTERSCOPE_NO_FOLD") != "1" if fold is None else bool(fold)
        self.model = model
        self.settings = settings = settings.for_model(model)
        self.size = settings.size or model.input_size
        self.color = _color(model, settings)
        scripted = isinstance(model.net, torch.jit.ScriptModule)
        infos = [] if scripted else list_layers(model)
        self.calls = {i.name: i.calls for i in infos}
        self.orders = {i.name: i.order for i in infos}

    def _transform(self) -> Transform:
        t = make_transform(self.settings.transforms, self.settings.transform_scale or 1.0)
        t.anneal(1.0)  # a Transform object passed in may still hold an earlier render's strength
        if self.size > self.model.input_size and t.crops == 1:
            # renders larger than the model's input are seen through random crops
            low = self.settings.crop_min or self.model.input_size / self.size
            t = Compose([t, Crops(n=1, box=(low, 1.0), spread=0.2, noise=0.0)])
        return Views(self.settings.views, t) if self.settings.views > 1 else t

    def net_for(self, layers: Sequence[str]) -> torch.nn.Module:
        """The network the loop runs: the model's, or its batch-norm-folded copy (outputs of the
        ``layers`` themselves are never folded away)."""
        if not self.fold:
            return self.model.net
        m = self.model
        example = torch.zeros(1, m.in_channels, m.input_size, m.input_size, device=m.device)
        return fold_batchnorm(m.net, example, keep=layers)

    def _forward(self, net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: net(self.model.normalize(x))

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The network's precision (:data:`PRECISIONS`) for one forward pass (float32: no autocast at all)."""
        dtype = PRECISIONS[self.settings.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.model.device.type, dtype=dtype)

    def _evaluate(self, st: _State, images: torch.Tensor) -> torch.Tensor:
        x = _fit(images, self.model.input_size)
        with self._autocast():
            logits = run(st.forward, x, st.cap)
        owner = torch.arange(images.shape[0], device=images.device)
        acts, logits = _float(st.cap.acts, logits)
        return st.objective(Context(acts, logits, images, owner))

    def render(
        self,
        objective: Objective | Sequence[Objective],
        seeds: Sequence[int],
        *,
        on_step: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        param_args: dict | None = None,
    ) -> RenderResult:
        """Render ``len(seeds)`` images; ``objective`` is one for all, or a list with one per image.

        ``param_args`` go to the parameterisation besides the settings' options (e.g. the ``image`` param's
        starting photo, which does not belong in the settings record)."""
        s = self.settings
        if not isinstance(objective, Objective):
            if len(objective) != len(seeds):
                raise UsageError("give one objective per seed")
            objective = stack(objective)
        # a preset's options for its own param (maco's contrast) do not apply to an overriding --param
        accepted = param_options(param_registry()[s.param])
        given = {**dict(s.param_options), "decorrelate": s.decorrelate, "channels": self.model.in_channels}
        if self.color is not None:
            given["color"] = self.color
        options = {k: v for k, v in given.items() if k in accepted}
        options.update(param_args or {})
        param = make_param(s.param, seeds, self.size, **options).to(self.model.device)
        net = self.net_for(objective.layers)
        pre = final_relus(net, self.orders, objective.layers) if s.pre_relu else {}
        st = _State(
            objective=objective,
            param=param,
            opt=s.make_optimizer(list(param.tensors), lr=s.lr),
            transform=self._transform(),
            gens=[torch.Generator().manual_seed(int(sd) ^ 0x5EED) for sd in seeds],
            cap=capture(
                net,
                sorted(objective.layers, key=lambda n: self.orders.get(n, 0)),
                calls=self.calls,
                inputs_of=list(pre.values()),
                stop=not objective.needs_logits and bool(objective.layers),
                views=map_views(self.model, objective.layers),
            ),
            pre=pre,
            batch=len(seeds),
            forward=self._forward(net),
        )
        t0 = time.perf_counter()
        with st.cap:
            with torch.no_grad():
                before = self._evaluate(st, st.param()).float().cpu()
            # only an objective that is exactly 0 (a ReLU off everywhere) needs redirected gradients
            dead = s.redirect_relu and bool((before == 0).any())
            relus = relus_before(net, self.orders, objective.layers) if dead else []
            with redirect_relu(net, relus):
                interrupted = self._optimise(st, on_step, should_stop)
            with torch.no_grad():
                if st.ema is not None:
                    for t, avg in zip(param.tensors, st.ema):
                        t.copy_(avg)
                final = st.param().detach()
                after = self._evaluate(st, final).float().cpu()
        return RenderResult(
            final.cpu(),
            before.tolist(),
            after.tolist(),
            st.curves,
            st.status,
            st.done,
            time.perf_counter() - t0,
            interrupted,
            s,
        )

    def _optimise(self, st: _State, on_step, should_stop) -> bool:
        """The steps, each image stopping once it converges (as the settings say) or its objective turns
        non-finite; returns whether a stop request interrupted them."""
        s = self.settings
        b = st.batch
        param, opt, side = st.param, st.opt, self.model.input_size
        for step in range(s.steps):
            opt.zero_grad(set_to_none=True)
            if s.anneal:  # the transforms' ranges fall linearly over the steps
                st.transform.anneal(1 - s.anneal * step / max(1, s.steps - 1))
            images = param()
            x = _fit(st.transform(images, st.gens, side), side)
            with self._autocast():
                logits = run(st.forward, x, st.cap)
            owner = torch.arange(b, device=x.device).repeat_interleave(x.shape[0] // b)
            acts = {**st.cap.acts, **{layer: st.cap.inputs[relu] for layer, relu in st.pre.items()}}
            acts, logits = _float(acts, logits)
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
                param.tensors[i].grad = None  # frozen images: optimisers skip parameters without gradient
            opt.step()
            param.project()
            if s.ema:
                with torch.no_grad():
                    if st.ema is None:
                        st.ema = [t.detach().clone() for t in param.tensors]
                    else:
                        # only the images this step moved: a converged or frozen one keeps its average, so
                        # its picture does not depend on how long its batchmates run
                        for i in torch.nonzero(st.active).flatten().tolist():
                            st.ema[i].lerp_(param.tensors[i], 1 - s.ema)
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
    batch: int
    forward: Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] → logits, through the net the loop runs
    ema: list[torch.Tensor] | None = None  # running average of the parameters (settings.ema)
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
