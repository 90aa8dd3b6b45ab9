"""Transformation robustness: random transforms applied to the image before every step.

A transform takes images ``[B,C,H,W]`` (any number of channels; grey fill 0.5 in every channel) and one
random generator per image, and returns transformed images
(it may return several rows per image: MACO's crops). Randomness is drawn per image from its own generator,
so an image's render does not depend on its batch. Resampling uses torchvision's transform functionals and
``resized_crop``. Named presets live in :data:`TRANSFORM_PRESETS`; each takes a ``scale`` for its pixel
amounts (pad, jitter, translate are set for 224 px; a 112 px canvas for a 28 px model uses half of them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _choice(gen: torch.Generator, values: Sequence[float]) -> float:
    return values[int(torch.randint(len(values), (), generator=gen))]


class Transform:
    """Base class; ``crops`` is how many rows per image the transform outputs."""

    crops = 1
    _strength = 1.0  # set by anneal

    def __call__(self, x: torch.Tensor, gens: Sequence[torch.Generator], out_size: int | None = None) -> torch.Tensor:
        """``out_size`` is the side the model will see (crops resample straight to it)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": type(self).__name__.lower(), **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def anneal(self, strength: float) -> None:
        """Draw from ``strength`` × the set ranges from now on (1: as set). The render loop's transform
        annealing (``RenderSettings.anneal``) lowers it over the steps; the random draws stay the same, only
        their sizes scale, so a seed gives the same sequence of views at any strength. Transforms without a
        random size (pads, crops) ignore it."""
        self._strength = float(strength)


@dataclass
class Pad(Transform):
    """Constant padding (grey by default), so edges can be jittered in."""

    width: int = 12
    fill: float = 0.5

    def __call__(self, x, gens, out_size=None):
        return TF.pad(x, [self.width], fill=self.fill)


@dataclass
class Jitter(Transform):
    """Random translation by up to ``d`` pixels (a random crop ``d`` pixels smaller)."""

    d: int = 8

    def __call__(self, x, gens, out_size=None):
        h, w = x.shape[-2:]
        f = self._strength
        out = []
        for i, g in enumerate(gens):
            dy, dx = (int(torch.randint(self.d + 1, (), generator=g)) for _ in range(2))
            if f != 1:  # offsets shrink towards the centre crop, the output keeps its size
                dy, dx = (round(self.d / 2 + f * (v - self.d / 2)) for v in (dy, dx))
            out.append(x[i : i + 1, :, dy : dy + h - self.d, dx : dx + w - self.d])
        return torch.cat(out)


@dataclass
class RandomAffine(Transform):
    """Random scale, rotation (and translation by up to ``translate`` pixels) about the centre, one draw per
    image, same output size, grey outside."""

    scales: Sequence[float] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: Sequence[float] = tuple(range(-10, 11)) + (0,) * 5
    translate: int = 0

    def __call__(self, x, gens, out_size=None):
        f = self._strength
        out = []
        for i, g in enumerate(gens):
            s, a = _choice(g, self.scales), _choice(g, self.angles)
            t = (
                [int(torch.randint(-self.translate, self.translate + 1, (), generator=g)) for _ in range(2)]
                if self.translate
                else [0, 0]
            )
            if f != 1:
                s, a, t = 1 + f * (s - 1), f * a, [round(f * v) for v in t]
            if s == 1 and a == 0 and t == [0, 0]:
                out.append(x[i : i + 1])
                continue
            # torchvision's ``fill`` path is not autograd-safe: shift so that its zero fill is grey
            out.append(
                TF.affine(
                    x[i : i + 1] - 0.5,
                    angle=float(a),
                    translate=t,
                    scale=float(s),
                    shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR,
                )
                + 0.5
            )
        return out[0] if len(out) == 1 else torch.cat(out)

    def describe(self) -> dict:
        return {
            "name": "randomaffine",
            "scales": [min(self.scales), max(self.scales)],
            "angles": [min(self.angles), max(self.angles)],
            "translate": self.translate,
        }


@dataclass
class Crops(Transform):
    """MACO-style random square crops resized to the model's input side plus Gaussian and uniform noise.

    Each image gives ``n`` crops; a crop's side is a fraction ``box`` of the image side, its centre is drawn
    around the image centre with standard deviation ``spread``.
    """

    n: int = 6
    box: tuple[float, float] = (0.2, 0.3)
    spread: float = 0.15
    noise: float = 0.05

    @property
    def crops(self) -> int:  # type: ignore[override]
        return self.n

    def __call__(self, x, gens, out_size=None):
        _, _, h, w = x.shape
        side_out = out_size or round(min(h, w) * sum(self.box) / 2)
        out = []
        for i, g in enumerate(gens):
            for _ in range(self.n):
                frac = _uniform(g, *self.box)
                cx = min(max(0.5 + self.spread * torch.randn((), generator=g).item(), frac / 2), 1 - frac / 2)
                cy = min(max(0.5 + self.spread * torch.randn((), generator=g).item(), frac / 2), 1 - frac / 2)
                ch, cw = max(2, round(frac * h)), max(2, round(frac * w))
                top = min(max(0, round(cy * h - ch / 2)), h - ch)
                left = min(max(0, round(cx * w - cw / 2)), w - cw)
                out.append(TF.resized_crop(x[i : i + 1], top, left, ch, cw, [side_out, side_out], antialias=True))
        out = torch.cat(out)
        if self.noise:
            noise = torch.cat(
                [
                    torch.randn(self.n, *out.shape[1:], generator=g) * self.noise
                    + (torch.rand(self.n, *out.shape[1:], generator=g) - 0.5) * self.noise
                    for g in gens
                ]
            )
            out = out + noise.to(out.device)
        return out

    def describe(self) -> dict:
        return {"name": "crops", "n": self.n, "box": list(self.box), "spread": self.spread, "noise": self.noise}


@dataclass
class Compose(Transform):
    steps: list[Transform] = field(default_factory=list)

    @property
    def crops(self) -> int:  # type: ignore[override]
        return math.prod(t.crops for t in self.steps)

    def __call__(self, x, gens, out_size=None):
        for t in self.steps:
            k = x.shape[0] // len(gens)
            x = t(x, [g for g in gens for _ in range(k)] if k > 1 else gens, out_size)
        return x

    def describe(self) -> dict:
        return {"name": "compose", "steps": [t.describe() for t in self.steps]}

    def anneal(self, strength: float) -> None:  # see Transform.anneal
        for t in self.steps:
            t.anneal(strength)


@dataclass
class Views(Transform):
    """``n`` independent draws of ``transform`` per image, image by image (a step's gradient then averages
    over ``n`` random views: less noise per step for ``n`` times the images through the network; on 2 CPU
    cores that costs ~``n`` steps, on a GPU with room for the batch far less)."""

    n: int = 2
    transform: Transform = field(default_factory=lambda: Compose([]))

    @property
    def crops(self) -> int:  # type: ignore[override]
        return self.n * self.transform.crops

    def __call__(self, x, gens, out_size=None):
        rows = [self.transform(x[i : i + 1], [g], out_size) for i, g in enumerate(gens) for _ in range(self.n)]
        return torch.cat(rows)

    def describe(self) -> dict:
        return {"name": "views", "n": self.n, "transform": self.transform.describe()}

    def anneal(self, strength: float) -> None:  # see Transform.anneal
        self.transform.anneal(strength)


def _px(n: int, scale: float) -> int:
    """A pixel amount set for 224 px, scaled (at least 1 when it was not 0)."""
    return n if scale == 1 else max(1, round(n * scale))


def standard(scale: float = 1.0) -> Compose:
    """Lucid's ``standard_transforms``: pad 12, jitter 8, scale ±10 %, rotate ±10°, jitter 4."""
    return Compose([Pad(_px(12, scale)), Jitter(_px(8, scale)), RandomAffine(), Jitter(_px(4, scale))])


def fused(scale: float = 1.0) -> Compose:
    """Lucid's standard transforms in one resample: translate ±12 px (pad 12 + jitter 8 + jitter 4),
    scale 0.9-1.1, rotate ±10°, grey outside, output at the input size (no crop/resize afterwards)."""
    return Compose([RandomAffine(translate=_px(12, scale))])


def light(scale: float = 1.0) -> Compose:
    """Jitter and small scale/rotation, no padding: cheaper, for few-step renders."""
    p = _px(4, scale)
    return Compose([Pad(p), Jitter(p), RandomAffine(scales=(0.95, 1.0, 1.05), angles=(-5, 0, 5)), Jitter(p)])


def maco(scale: float = 1.0) -> Compose:
    """MACO's crops with Gaussian + uniform noise, adapted to renders at the model's input size: one crop of
    80-100 % of the side per step (Horama crops 20-30 % of a 1280 px image six times per step)."""
    return Compose([Crops(n=1, box=(0.8, 1.0), spread=0.1, noise=0.05)])


def maco_horama(scale: float = 1.0) -> Compose:
    """Horama's own setting, for large renders (``size`` 512 or more): six crops of 20-30 %."""
    return Compose([Crops(n=6, box=(0.2, 0.3), spread=0.15, noise=0.05)])


TRANSFORM_PRESETS: dict[str, Callable[..., Transform]] = {
    "none": lambda scale=1.0: Compose([]),
    "standard": standard,
    "fused": fused,
    "light": light,
    "maco": maco,
    "maco_horama": maco_horama,
}


def make_transform(spec: str | Transform | None, scale: float = 1.0) -> Transform:
    """A preset by name (its pixel amounts times ``scale``), or a given :class:`Transform` as it is."""
    from ..errors import UsageError, closest

    if spec is None:
        return Compose([])
    if isinstance(spec, Transform):
        return spec
    if spec not in TRANSFORM_PRESETS:
        raise UsageError(f"unknown transform preset {spec!r}", hint=closest(spec, TRANSFORM_PRESETS))
    return TRANSFORM_PRESETS[spec](scale) if scale != 1 else TRANSFORM_PRESETS[spec]()
