"""Directions for more progress per step (issue 25, item 1) that need code filterscope does not ship: a patched
optimiser, param, activation backward, colour mapping, transform or objective. None was kept, so the patches live
here, applied only while their own variant renders; each runs through bench_progress.py's measure on its tuning
channels, beside ``fast`` in the same process.

    python benchmarks/bench_screens.py                        # every screen and HELD_OUT, ~50 min on 2 idle cores
    python benchmarks/bench_screens.py --screens "fast (default),coarse-first g1 (first half)" --held-out ""
    python benchmarks/bench_screens.py --screens "" --held-out "fast (default),replicated edges in the affine"

Writes benchmarks/results/screens.json and screens.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_progress as bp  # noqa: E402
import bench_render as br  # noqa: E402

STEPS = {"total": 48}  # the render's step count, for the schedules below (set per measured point)
CALLS = {"patched": 0}  # how often a patched function ran: a patch that never runs measures nothing


def _cycles(shape) -> np.ndarray:
    """Radial frequency in cycles per image of each coefficient of a square Fourier param ``[1, C, H, W//2+1, 2]``."""
    from filterscope.optvis.param import rfft_freqs

    return rfft_freqs(shape[2], shape[2])[:, : shape[3]] * shape[2]


def _with_grads(opt: torch.optim.Optimizer) -> list[tuple[dict, torch.Tensor]]:
    """(group, parameter) for each of ``opt``'s parameters that the last backward pass reached."""
    return [(g, p) for g in opt.param_groups for p in g["params"] if p.grad is not None]


class BandAdam(torch.optim.Optimizer):
    """NAdam whose second moment is shared by the coefficients of one radial frequency band (``per`` bands per
    octave, per colour channel), so a step keeps the gradient's relative sizes within a band."""

    def __init__(self, params, lr: float = 0.12, betas=(0.9, 0.999), eps: float = 1e-8, per: int = 2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, per=per))

    @staticmethod
    def _bands(shape, per: int):
        b = np.floor(np.log2(np.maximum(_cycles(shape), 0.5)) * per).astype(np.int64)
        b -= b.min()
        return torch.from_numpy(b.reshape(-1)), int(b.max()) + 1

    @torch.no_grad()
    def step(self, closure=None):
        CALLS["patched"] += 1
        for gr, p in _with_grads(self):
            b1, b2 = gr["betas"]
            g, st = p.grad, self.state[p]
            c, h, wf = p.shape[1], p.shape[2], p.shape[3]
            if not st:
                st["t"], st["m"], st["mp"] = 0, torch.zeros_like(p), 1.0
                st["idx"], st["nb"] = self._bands(p.shape, gr["per"])
                st["cnt"] = torch.bincount(st["idx"], minlength=st["nb"]).float() * 2
                st["v"] = torch.zeros(c, st["nb"])
            st["t"] += 1
            t = st["t"]
            st["m"].mul_(b1).add_(g, alpha=1 - b1)
            g2 = (g * g).sum(-1).reshape(c, h * wf)
            st["v"].mul_(b2).add_(torch.zeros(c, st["nb"]).index_add_(1, st["idx"], g2) / st["cnt"], alpha=1 - b2)
            v = st["v"][:, st["idx"]].reshape(1, c, h, wf, 1)
            mu = b1 * (1 - 0.5 * 0.96 ** (t * 0.004))  # NAdam's momentum schedule
            mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * 0.004))
            st["mp"] *= mu
            denom = (v / (1 - b2**t)).sqrt().add_(gr["eps"])
            p.addcdiv_(g, denom, value=-gr["lr"] * (1 - mu) / (1 - st["mp"]))
            p.addcdiv_(st["m"], denom, value=-gr["lr"] * mu_next / (1 - st["mp"] * mu_next))


class CoarseFirst(torch.optim.NAdam):
    """NAdam whose step on a coefficient at f cycles per image is scaled by min(1, (f/4)^-g), g falling linearly
    from ``g0`` to 0 over the first ``frac`` of the steps: coarse structure first, detail let in later."""

    def __init__(self, params, lr: float, g0: float = 1.0, frac: float = 0.5):
        super().__init__(params, lr=lr)
        self.g0, self.frac, self.t, self._f = g0, frac, 0, {}

    @torch.no_grad()
    def step(self, closure=None):
        ps = [p for _, p in _with_grads(self)]
        old = [p.detach().clone() for p in ps]
        super().step()
        g = self.g0 * max(0.0, 1.0 - self.t / max(1.0, self.frac * STEPS["total"]))
        self.t += 1
        for p, o in zip(ps, old):
            if g <= 0 or p.dim() != 5:  # fourier coefficients: [1, C, H, W//2+1, 2]
                continue
            CALLS["patched"] += 1
            if p.shape not in self._f:
                f = np.maximum(_cycles(p.shape), 1.0)
                self._f[p.shape] = torch.tensor(f, dtype=p.dtype).reshape(1, 1, p.shape[2], p.shape[3], 1)
            p.copy_(o + (self._f[p.shape] / 4.0).pow(-g).clamp(max=1.0) * (p - o))


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): the sign of the interpolated momentum, so every coordinate moves by lr."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99)):
        super().__init__(params, dict(lr=lr, betas=betas))

    @torch.no_grad()
    def step(self, closure=None):
        CALLS["patched"] += 1
        for g, p in _with_grads(self):
            b1, b2 = g["betas"]
            m = self.state[p].setdefault("m", torch.zeros_like(p))
            p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-g["lr"])
            m.mul_(b2).add_(p.grad, alpha=1 - b2)


class LBFGSStep(torch.optim.LBFGS):
    """One L-BFGS iteration per render step on the gradient the loop already computed (history 10, no line
    search): its curvature pairs come from gradients under different random transforms."""

    def __init__(self, params, lr: float = 2.0):
        super().__init__(params, lr=lr, max_iter=1, history_size=10, line_search_fn=None)

    def step(self, closure=None):
        CALLS["patched"] += 1
        return super().step(lambda: torch.zeros(()))  # max_iter 1: the closure's value is never compared


class NAdamW(torch.optim.NAdam):
    """NAdam with decoupled weight decay (torch's ``decoupled_weight_decay``): every step also shrinks each
    coefficient by lr × ``decay``, so what the gradients do not keep pushing (the random walk that a noisy step
    leaves, benchmarks/bench_noise.py) fades instead of piling up as contrast."""

    def __init__(self, params, lr: float = 0.12, decay: float = 0.1):
        super().__init__(params, lr=lr, weight_decay=decay, decoupled_weight_decay=True)

    def step(self, closure=None):
        CALLS["patched"] += 1
        return super().step(closure)


class Lookahead(torch.optim.NAdam):
    """NAdam with Lookahead (Zhang et al. 2019): every ``k`` steps the slow weights move ``alpha`` of the way to
    the fast ones and the fast ones restart there."""

    def __init__(self, params, lr: float, k: int = 5, alpha: float = 0.5):
        super().__init__(params, lr=lr)
        self.k, self.alpha, self.n = k, alpha, 0
        self.slow = [p.detach().clone() for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        CALLS["patched"] += 1
        super().step()
        self.n += 1
        if self.n % self.k == 0:
            for p, s in zip((p for g in self.param_groups for p in g["params"]), self.slow):
                s.lerp_(p, self.alpha)
                p.copy_(s)


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief (Zhuang et al. 2020) with Nesterov momentum: Adam whose second moment is the variance of the
    gradient around its running mean, so coordinates whose gradient agrees from step to step (across random
    transforms) take larger steps and noisy ones smaller."""

    def __init__(self, params, lr: float = 0.12, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        CALLS["patched"] += 1
        for g, p in _with_grads(self):
            b1, b2 = g["betas"]
            st = self.state[p]
            if not st:
                st["k"], st["m"], st["s"] = 0, torch.zeros_like(p), torch.zeros_like(p)
            st["k"] += 1
            k, m, v = st["k"], st["m"], st["s"]
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad - m, p.grad - m, value=1 - b2).add_(g["eps"])
            nesterov = (b1 * m + (1 - b1) * p.grad) / (1 - b1 ** (k + 1))
            p.addcdiv_(nesterov, (v / (1 - b2**k)).sqrt().add_(g["eps"]), value=-g["lr"])


def _antithetic_affine():
    """``fused``'s random affine whose every second draw mirrors the one before (translation −t, angle −a,
    scale 2 − s), so pairs of steps cancel the transforms' first-order effect on the gradient."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from filterscope.optvis import transform as T

    class Antithetic(T.RandomAffine):
        def __call__(self, x, gens, out_size=None):
            CALLS["patched"] += 1
            last = getattr(self, "_last", None)
            if last is None:
                draws = []
                for g in gens:
                    s, a = T._choice(g, self.scales), T._choice(g, self.angles)
                    t = [int(torch.randint(-self.translate, self.translate + 1, (), generator=g)) for _ in range(2)]
                    draws.append((s, a, t))
                self._last = draws
            else:
                draws = [(2 - s, -a, [-v for v in t]) for s, a, t in last]
                self._last = None
            f = self._strength
            out = [
                TF.affine(
                    x[i : i + 1] - 0.5,
                    angle=float(f * a),
                    translate=[round(f * v) for v in t],
                    scale=float(1 + f * (s - 1)),
                    shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR,
                )
                + 0.5
                for i, (s, a, t) in enumerate(draws)
            ]
            return torch.cat(out)

    return lambda scale=1.0: T.Compose([Antithetic(translate=T._px(12, scale))])


def _strong_affine(scale: float = 1.0):
    """A wider random affine than ``fused``'s: translate ±24 px, scale 0.8-1.2, rotate ±20°."""
    from filterscope.optvis import transform as T

    class Counted(T.RandomAffine):
        def __call__(self, x, gens, out_size=None):
            CALLS["patched"] += 1
            return super().__call__(x, gens, out_size)

    scales = tuple(1 + (i - 10) / 50 for i in range(21))
    angles = tuple(range(-20, 21)) + (0,) * 10
    return T.Compose([Counted(scales=scales, angles=angles, translate=T._px(24, scale))])


def _polar_param():
    """A polar Fourier param: spectrum = the photos' mean magnitude · exp(ka·a) · e^{i·kp·φ}, from random phases
    at ``init_contrast``; amplitudes change multiplicatively and phases rotate."""
    from filterscope.optvis import param as P

    class PolarParam(P.ImageParam):
        def __init__(self, seeds, size, decorrelate=True, init_contrast=0.5, kp=4.0, ka=1.0, **kwargs):
            self.init_contrast, self.kp, self.ka = float(init_contrast), float(kp), float(ka)
            super().__init__(seeds, size, decorrelate, **kwargs)
            mag = P.natural_magnitude(self.size, self.size, self.channels)[None]
            phase = torch.rand(mag.shape, generator=P.generator(0)) * 2 * math.pi
            ref = torch.fft.irfft2(torch.polar(mag, phase), s=(self.size, self.size), norm="ortho")
            self.register_buffer("mag", mag * (self.init_contrast / ref.std()))

        def init(self, gen):
            phase = torch.rand(1, self.channels, self.size, self.size // 2 + 1, generator=gen) * 2 * math.pi / self.kp
            return torch.stack([phase, torch.zeros_like(phase)], -1)

        def images(self, t):
            CALLS["patched"] += 1
            spec = torch.polar(self.mag * torch.exp(self.ka * t[..., 1]), self.kp * t[..., 0])
            return self.to_valid_rgb(torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho"))

    return PolarParam


class _Leaky(torch.autograd.Function):
    """ReLU / ReLU6 forward exactly; backward passes ``leak`` of the gradient where the unit is clamped."""

    @staticmethod
    def forward(ctx, x, lo, hi, leak):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi, ctx.leak = lo, hi, leak
        return x.clamp(min=lo) if hi is None else x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = (x < ctx.lo) if ctx.hi is None else (x < ctx.lo) | (x > ctx.hi)
        return torch.where(out, g * ctx.leak, g), None, None, None


class _BlurredGrad(torch.autograd.Function):
    """Identity forward; backward convolves the gradient with a normalised binomial kernel (``taps``, e.g. 1 2 1
    in each direction): at a strided convolution's input, the checkerboard its backward scatters is smoothed."""

    @staticmethod
    def forward(ctx, x, taps):
        ctx.taps = taps
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        CALLS["patched"] += 1
        t = torch.tensor(ctx.taps, dtype=g.dtype, device=g.device)
        k = (t[:, None] * t[None, :] / t.sum() ** 2).expand(g.shape[1], 1, len(t), len(t))
        pad = len(t) // 2
        return torch.nn.functional.conv2d(
            torch.nn.functional.pad(g, [pad] * 4, mode="replicate"), k, groups=g.shape[1]
        ), None


class _FlooredSigmoid(torch.autograd.Function):
    """The sigmoid forward exactly; its backward slope floored, so saturated pixels keep a gradient."""

    @staticmethod
    def forward(ctx, x, floor):
        y = torch.sigmoid(x)
        ctx.save_for_backward(y)
        ctx.floor = floor
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (y * (1 - y)).clamp(min=ctx.floor), None


def _optimiser(name: str, make: Callable) -> Callable[[], contextlib.AbstractContextManager]:
    from filterscope.optvis import render as R

    return lambda: mock.patch.dict(R.OPTIMIZERS, {name: make})


@contextlib.contextmanager
def _blurred_backward(taps: tuple[int, ...]) -> Iterator[None]:
    """The loop's net with the gradient blurred (:class:`_BlurredGrad`) at the input of every strided convolution
    (efficientnet_lite0: the stem and four depthwise convolutions): the forward pass is exact, the backward is the
    smoother one a blurred-downsampling (anti-aliased) net would give. A step's gradient is mostly the view's own
    (benchmarks/bench_noise.py: two views' gradients have cosine ~0.06 at blocks.6 late in a render); a stride's
    aliasing is one source of that, and this removes its checkerboard."""
    from filterscope.optvis import render as R

    net_for = R.Renderer.net_for
    hooked: dict[torch.nn.Module, torch.utils.hooks.RemovableHandle] = {}  # the folded copies are cached: unhook

    def blurred(self, layers):
        net = net_for(self, layers)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1) and m not in hooked:
                hooked[m] = m.register_forward_pre_hook(lambda mod, a: (_BlurredGrad.apply(a[0], taps), *a[1:]))
        return net

    try:
        with mock.patch.object(R.Renderer, "net_for", blurred):
            yield
    finally:
        for handle in hooked.values():
            handle.remove()


def _polar() -> contextlib.AbstractContextManager:
    from filterscope.optvis import param as P

    cls = _polar_param()
    cls.name = "polar"
    return mock.patch.dict(P.PARAM_REGISTRY, {"polar": cls})


@contextlib.contextmanager
def _leaky(leak: float) -> Iterator[None]:
    from torch import nn

    def leaky(lo, hi, orig):
        def forward(self, x):
            if torch.is_grad_enabled() and x.requires_grad:
                CALLS["patched"] += 1
                return _Leaky.apply(x, lo, hi, leak)
            return orig(self, x)

        return forward

    # mock puts ReLU6 back as it was: its forward is Hardtanh's, inherited
    with (
        mock.patch.object(nn.ReLU, "forward", leaky(0.0, None, nn.ReLU.forward)),
        mock.patch.object(nn.ReLU6, "forward", leaky(0.0, 6.0, nn.ReLU6.forward)),
    ):
        yield


def _sigmoid_floor(floor: float) -> contextlib.AbstractContextManager:
    from filterscope.optvis import param as P

    def to_valid_rgb(self, x):
        CALLS["patched"] += 1
        return _FlooredSigmoid.apply(self.recolour(x), floor)

    return mock.patch.object(P.ImageParam, "to_valid_rgb", to_valid_rgb)


@contextlib.contextmanager
def _schedule_free() -> Iterator[None]:
    import schedulefree  # the [bench] extra

    from filterscope.optvis import render as R

    orig = R.Renderer._optimise

    def optimise(self, st, *args, **kwargs):  # train mode while stepping, then eval: the params become the average
        opt = args[3]  # (on_step, should_stop, param, opt, side, first, last), passed by position
        CALLS["patched"] += 1
        opt.train()
        try:
            return orig(self, st, *args, **kwargs)
        finally:
            opt.eval()

    def make(params, lr):
        return schedulefree.AdamWScheduleFree(params, lr=lr, betas=(0.9, 0.999), warmup_steps=0, r=4.0)

    with mock.patch.object(R.Renderer, "_optimise", optimise), mock.patch.dict(R.OPTIMIZERS, {"schedule-free": make}):
        yield


def _transform(name: str, preset: Callable[[], Callable]) -> Callable[[], contextlib.AbstractContextManager]:
    """A transform preset registered as ``name`` while the screen renders (``preset()`` makes its factory)."""
    from filterscope.optvis import transform as T

    return lambda: mock.patch.dict(T.TRANSFORM_PRESETS, {name: preset()})


@contextlib.contextmanager
def _wrapped(pad: int) -> Iterator[None]:
    """A wrapped canvas: the periodic Fourier image fed ``pad`` px larger than the model's input (wrapped round),
    then ``fused``'s affine, and the whole frame goes to the network: its central 224 px are picture at every shift
    (grey from the affine can still enter at the frame's edges)."""
    import torch.nn.functional as F

    from filterscope.optvis import render as R
    from filterscope.optvis import transform as T

    class Wrap(T.Transform):
        def __call__(self, x, gens, out_size=None):
            CALLS["patched"] += 1
            return F.pad(x, [pad // 2] * 4, mode="circular")

    fit = R._fit

    def wrapped_fit(x, side):  # the larger canvas goes to the network as it is
        if x.shape[-1] == side + pad:
            CALLS["patched"] += 1
            return x
        return fit(x, side)

    preset = {"wrapped": lambda scale=1.0: T.Compose([Wrap(), *T.fused(scale).steps])}
    with mock.patch.object(R, "_fit", wrapped_fit), mock.patch.dict(T.TRANSFORM_PRESETS, preset):
        yield


def _objective(fn: Callable[[torch.Tensor], torch.Tensor]) -> contextlib.AbstractContextManager:
    """The loop's objective values mapped by ``fn`` while it steps (the start and the end are scored as they are)."""
    from filterscope.optvis import render as R

    orig = R.Renderer._optimise

    def optimise(self, st, *args, **kwargs):
        objective = st.objective

        def mapped(ctx):
            CALLS["patched"] += 1
            return fn(objective(ctx))

        st.objective = mapped
        try:
            return orig(self, st, *args, **kwargs)
        finally:
            st.objective = objective

    return mock.patch.object(R.Renderer, "_optimise", optimise)


@contextlib.contextmanager
def _windows(frac: float) -> Iterator[None]:
    """With ``coarse`` 0.99 (every step at 32 steps, all but the last at 64), each view is a random window of ``frac``
    of its side, at the same pixel scale, instead of ``coarse``'s half-side one: a cheaper view (~``frac``² of the
    network's pixels) that still moves every Fourier coefficient; with ``views`` 2, two of them per step."""
    from filterscope.optvis import render as R

    windows = R._windows

    def wider(x, gens, batch):
        CALLS["patched"] += 1
        return windows(x, gens, batch, frac)

    with mock.patch.object(R, "_windows", wider):
        yield


def _edges(mode: str) -> contextlib.AbstractContextManager:
    """``fused``'s random affine (the same draws) resampled with ``grid_sample``'s ``mode`` padding (reflection or
    border) instead of grey outside: the views keep picture at their edges, as the evaluator's crops do."""
    import torch.nn.functional as F

    from filterscope.optvis import transform as T

    tf = T.TF

    class Shim:  # transform.py's torchvision functional, with affine replaced
        def __getattr__(self, name):
            return getattr(tf, name)

        @staticmethod
        def affine(img, angle, translate, scale, shear, interpolation):
            CALLS["patched"] += 1
            assert list(shear) == [0.0, 0.0] and img.shape[-1] == img.shape[-2], "square, no shear"
            h, w = img.shape[-2:]
            a = math.radians(-angle)  # torchvision turns the other way
            m = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / scale
            t = torch.tensor([2.0 * translate[0] / w, 2.0 * translate[1] / h])
            theta = torch.cat([m, -(m @ t)[:, None]], 1).to(img)
            grid = F.affine_grid(theta.expand(img.shape[0], 2, 3), list(img.shape), align_corners=False)
            return F.grid_sample(img, grid, mode="bilinear", padding_mode=mode, align_corners=False)

    return mock.patch.object(T, "TF", Shim())


@contextlib.contextmanager
def _layer_start(steps: int = 64) -> Iterator[None]:
    """Every channel of a layer starts from one shared picture instead of its own random natural one: a ``fast``
    render of DeepDream's objective on the whole layer (``steps`` steps, made once per layer in each measured point,
    its seconds shared by that point's channels), so a render begins among the structures the layer answers to."""
    from filterscope.optvis import param as P
    from filterscope.optvis import render as R
    from filterscope.optvis.objectives import Objective, stack
    from filterscope.optvis.objectives import layer as deepdream

    starts: dict[str, torch.Tensor] = {}
    render = R.Renderer.render

    def start_for(self, name: str) -> torch.Tensor:
        if name not in starts:
            with bp.made_params() as made:
                render(R.Renderer(self.model, self.settings.with_(steps=steps)), deepdream(name), [12345])
            starts[name] = made[-1].tensors[0].detach().clone()
        return starts[name]

    def started(self, objective, seeds, **kwargs):
        one = objective if isinstance(objective, Objective) else stack(objective)  # a batch (GPU) gives a list
        (name,) = one.layers
        start = start_for(self, name)

        def init(param, gen):
            CALLS["patched"] += 1
            return start.clone()

        with mock.patch.object(P.FourierParam, "init", init):
            return render(self, objective, seeds, **kwargs)

    with mock.patch.object(R.Renderer, "render", started):
        yield


# name → (round, patch (a context manager factory, or None), preset, RenderSettings changes, param options)
SCREENS: dict[str, tuple[str, Callable | None, str, dict, dict]] = {
    "fast (default)": ("", None, "fast", {}, {}),
    "schedule-free AdamW (lr 0.24 r 4)": (
        "8",
        _schedule_free,
        "fast",
        {"optimizer": "schedule-free", "lr": 0.24, "ema": 0.0},
        {},
    ),
    "Lion (lr 0.03)": ("8", _optimiser("lion", Lion), "fast", {"optimizer": "lion", "lr": 0.03}, {}),
    "leaky ReLU backward (0.1)": ("8", lambda: _leaky(0.1), "fast", {}, {}),
    "floored sigmoid slope (0.05)": ("8", lambda: _sigmoid_floor(0.05), "fast", {}, {}),
    "moment shared per half octave": (
        "9",
        _optimiser("band2", lambda p, lr: BandAdam(p, lr=lr, per=2)),
        "fast",
        {"optimizer": "band2"},
        {},
    ),
    "moment shared per quarter octave": (
        "9",
        _optimiser("band4", lambda p, lr: BandAdam(p, lr=lr, per=4)),
        "fast",
        {"optimizer": "band4"},
        {},
    ),
    "polar param (kp 2)": ("9", _polar, "fast", {"param": "polar"}, {"kp": 2.0, "ka": 1.0}),
    "polar param (kp 4)": ("9", _polar, "fast", {"param": "polar"}, {"kp": 4.0, "ka": 1.0}),
    "coarse-first g1 (first half)": (
        "10",
        _optimiser("cf1", lambda p, lr: CoarseFirst(p, lr, 1.0, 0.5)),
        "fast",
        {"optimizer": "cf1"},
        {},
    ),
    "coarse-first g2 (first half)": (
        "10",
        _optimiser("cf2", lambda p, lr: CoarseFirst(p, lr, 2.0, 0.5)),
        "fast",
        {"optimizer": "cf2"},
        {},
    ),
    "coarse-first g1 (all steps)": (
        "10",
        _optimiser("cf1all", lambda p, lr: CoarseFirst(p, lr, 1.0, 1.0)),
        "fast",
        {"optimizer": "cf1all"},
        {},
    ),
    "flatter spectrum (decay 0.85)": ("10", None, "fast", {}, {"decay_power": 0.85}),
    # the seventh round's and earlier screens, first run with code that was not kept, here again
    "L-BFGS (lr 2 history 10)": ("7", _optimiser("lbfgs", LBFGSStep), "fast", {"optimizer": "lbfgs", "lr": 2.0}, {}),
    "antithetic transforms": (
        "7",
        _transform("antithetic", _antithetic_affine),
        "fast",
        {"transforms": "antithetic"},
        {},
    ),
    "stronger transforms (±24 px 0.8-1.2 ±20°)": (
        "7",
        _transform("strong", lambda: _strong_affine),
        "fast",
        {"transforms": "strong"},
        {},
    ),
    "wrapped canvas (32 px)": ("7", lambda: _wrapped(32), "fast", {"transforms": "wrapped"}, {}),
    "objective ×100": ("≤6", lambda: _objective(lambda v: v * 100), "fast", {}, {}),
    "log objective (÷ current value)": (
        "≤6",
        lambda: _objective(lambda v: v / v.detach().abs().clamp(min=1e-6)),
        "fast",
        {},
        {},
    ),
    "AdaBelief (lr 0.12)": ("11", _optimiser("adabelief", AdaBelief), "fast", {"optimizer": "adabelief"}, {}),
    "AdaBelief (lr 0.06)": (
        "11",
        _optimiser("adabelief", AdaBelief),
        "fast",
        {"optimizer": "adabelief", "lr": 0.06},
        {},
    ),
    "Lookahead NAdam (k 5 α 0.5)": ("11", _optimiser("lookahead", Lookahead), "fast", {"optimizer": "lookahead"}, {}),
    "75 % windows every step": ("12", lambda: _windows(0.75), "fast", {"coarse": 0.99}, {}),
    "two 75 % windows per step": ("12", lambda: _windows(0.75), "fast", {"coarse": 0.99, "views": 2}, {}),
    "two 60 % windows per step": ("12", lambda: _windows(0.6), "fast", {"coarse": 0.99, "views": 2}, {}),
    "lr 0.24 with a slower average (ema 0.9)": ("12", None, "fast", {"lr": 0.24, "ema": 0.9}, {}),
    "one DeepDream start per layer": ("12", _layer_start, "fast", {}, {}),
    "reflected edges in the affine": ("12", lambda: _edges("reflection"), "fast", {}, {}),
    "replicated edges in the affine": ("12", lambda: _edges("border"), "fast", {}, {}),
    "NAdamW (decoupled weight decay 0.1)": ("13", _optimiser("nadamw", NAdamW), "fast", {"optimizer": "nadamw"}, {}),
    "blurred backward at strided convs (1 2 1)": ("13", lambda: _blurred_backward((1, 2, 1)), "fast", {}, {}),
}
assert not any("," in name for name in SCREENS), "--screens splits on commas"
# the screens also checked held out (--held-out): those level or better at blocks.6 on the tuning channels
HELD_OUT = ["fast (default)", "reflected edges in the affine", "replicated edges in the affine"]


def markdown(res: dict) -> str:
    """The screens as one table: robust ratio and seconds per channel at each step count, per layer."""
    steps = res["steps"]
    head = ["screen", "round"] + [f"{layer} @{s}" for layer in res["layers"] for s in steps]
    out = [
        "# Screened with patched code (not kept)",
        "",
        f"Machine: {res['machine']}. {len(res['channels'][res['layers'][0]])} tuning channels per layer "
        f"({', '.join(f'{k}: {v}' for k, v in res['channels'].items())}), no early exit. Each cell: median robust "
        "ratio @ seconds per channel; colourfulness and RMS contrast in the JSON.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    by = {(r["screen"], r["layer"], r["steps"]): r for r in res["rows"]}
    for name in dict.fromkeys(r["screen"] for r in res["rows"]):
        cells = []
        for layer in res["layers"]:
            for s in steps:
                r = by.get((name, layer, s))
                cells.append(f"{r['median_robust_ratio']:.2f} @ {r['s_per_channel']:.2f} s" if r else "—")
        rnd = next(r["round"] for r in res["rows"] if r["screen"] == name)
        out.append(f"| {name} | {rnd or 'reference'} | " + " | ".join(cells) + " |")
    for line in _other_machines(res["rows"], "screen", "Measured on"):
        out += ["", line]
    if res.get("held_out"):
        out += ["", *bp.held_out_table(res["held_out"])]
        for line in _other_machines(res["held_out"], "start", "Held out on"):
            out += [line, ""]
    return "\n".join(out) + "\n"


def _other_machines(rows: list[dict], name: str, says: str) -> list[str]:
    """One line per machine that rows were stamped with (not the table's), naming those rows' ``name``."""
    machines = dict.fromkeys(r["machine"] for r in rows if r.get("machine"))
    return [
        f"{says} {m}: " + "; ".join(dict.fromkeys(r[name] for r in rows if r.get("machine") == m)) + "."
        for m in machines
    ]


def _merged(old: list[dict], new: list[dict], key: tuple[str, ...]) -> list[dict]:
    """``old`` rows without those ``new`` measures again, then ``new``."""
    again = {tuple(r[k] for k in key) for r in new}
    return [r for r in old if tuple(r[k] for k in key) not in again] + new


def _merge_into(old: dict, new: dict, reference: str | None) -> dict:
    """``new``'s rows added to the table ``old``. With ``reference`` (--merge of a round): the run's ``fast`` rows
    are renamed to it and the table's earlier rows of the same rounds, with their reference, give way (so a round
    is merged whole: all its screens, run again together). Rows from another machine than the table's are stamped
    with theirs."""
    rows, held = new["rows"], new.get("held_out", [])
    if new["machine"] != old["machine"]:
        for r in rows + held:
            r["machine"] = new["machine"]
    kept = old["rows"]
    if reference is not None:
        for r in rows:
            if r["screen"] == bp.DEFAULT:
                r["screen"] = reference
        rounds = {r["round"] for r in rows if r["round"]}
        kept = [r for r in kept if r["round"] not in rounds and r["screen"] != reference]
    return {
        **old,
        "rows": _merged(kept, rows, ("screen", "layer", "steps")),
        "held_out": _merged(old.get("held_out", []), held, ("start", "layer")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--screens", default=",".join(SCREENS))
    p.add_argument("--steps", default="32,64")
    p.add_argument("--layers", default=",".join(bp.LAYERS))
    p.add_argument("--n-channels", type=int, default=8)
    p.add_argument(
        "--held-out",
        default=None,
        help="screens also checked on the benchmark's channels (default: HELD_OUT; none with --merge)",
    )
    p.add_argument("--out", default=str(bp.RESULTS / "screens"))
    p.add_argument(
        "--merge",
        action="store_true",
        help="add this run's rows to the JSON's (a row measured again replaces its old one); this run's "
        "'fast (default)' rows are kept as the run's own reference, named for the round of its other screens",
    )
    args = p.parse_args()
    import os

    os.environ["FILTERSCOPE_NO_CACHE"] = "1"  # every point rendered and timed here
    if args.held_out is None:  # a merged round leaves the held-out table the figures on the page were read from
        args.held_out = "" if args.merge else ",".join(HELD_OUT)
    screens, checked = ([n for n in a.split(",") if n] for a in (args.screens, args.held_out))
    unknown = [s for s in screens + checked if s not in SCREENS]
    if unknown:
        p.error(f"unknown screen(s) {unknown}; choose from {list(SCREENS)}")
    model = br.load("efficientnet_lite0", "cpu")
    layers, steps = args.layers.split(","), [int(x) for x in args.steps.split(",")]
    chans = {layer: bp.tuning_channels(model, layer, args.n_channels) for layer in layers}
    before = Path(args.out).with_suffix(".json")
    old, reference = None, None
    if before.exists() and (args.merge or not screens):  # a held-out check alone keeps the screens measured before
        old = json.loads(before.read_text())
    if args.merge and screens:
        rounds = sorted({SCREENS[n][0] for n in screens if SCREENS[n][0]})
        if old is None:
            p.error(f"--merge adds to {before}, which does not exist")
        if bp.DEFAULT not in screens or not rounds:
            p.error("--merge adds a round to the table: give its screens and 'fast (default)', its reference")
        if (old["layers"], old["steps"], old["channels"]) != (layers, steps, chans):
            p.error("--merge needs the table's layers, steps and channels (--layers, --steps, --n-channels)")
        reference = f"{bp.DEFAULT} in the run of round {', '.join(rounds)}"
    rows = []
    for layer in layers:
        bp.measure(model, layer, chans[layer][:1], bp.settings_for("fast", {}, {}, 2))  # warm-up
        for name in screens:
            rnd, patch, preset, changes, options = SCREENS[name]
            for n in steps:
                STEPS["total"], CALLS["patched"] = n, 0
                with patch() if patch else contextlib.nullcontext():
                    r = bp.measure(model, layer, chans[layer], bp.settings_for(preset, changes, options, n))
                if patch and not CALLS["patched"]:
                    raise RuntimeError(f"the patch of {name!r} never ran")
                rows.append({"screen": name, "round": rnd, "layer": layer, "steps": n, **r})
                print(json.dumps(rows[-1]), flush=True)
    held = []
    for name in checked:  # each under its patch, scored as bench_progress.py's held-out check
        rnd, patch, preset, changes, options = SCREENS[name]
        CALLS["patched"] = 0
        with patch() if patch else contextlib.nullcontext():  # a patched optimiser's name exists only in here
            STEPS["total"] = bp.settings_for(preset, changes, options, None, early_exit=True).steps
            held += bp.held_out(model, variants=[name], table={name: (preset, changes, options)})
        if patch and not CALLS["patched"]:
            raise RuntimeError(f"the patch of {name!r} never ran")
    res = {"machine": br.machine(), "layers": layers, "steps": steps, "channels": chans, "rows": rows}
    if held:
        res["held_out"] = held
    if old is not None:
        res = _merge_into(old, res, reference)
    br.write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
