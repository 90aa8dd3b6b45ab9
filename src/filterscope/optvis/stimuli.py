"""Synthetic stimuli for tuning curves, in [0, 1] at a model's input size.

Orientation convention (used everywhere in filterscope): an angle is **the angle of the stripes on screen,
counter-clockwise from horizontal**, in degrees. Image rows grow downwards, so stripes at θ run along the
screen direction (Δcol, Δrow) = (cos θ, −sin θ): 0° horizontal stripes, 90° vertical, 45° rising to the
right ("/"), 135° falling to the right ("\\"). A grating at θ is ``0.5 + 0.5·cos(2π·u/period + phase)`` with
``u = (col − c)·sin θ + (row − c)·cos θ`` (the coordinate across the stripes; c the image centre).

Curves (after Cammarata et al. 2020, "Curve Detectors"): an arc of a circle of radius r whose midpoint is
at the image centre, bulging towards direction φ (counter-clockwise from screen right, 0-360: φ = 90° is
an arch "∩"), drawn light or dark on mid-grey; radius ``inf`` is a straight segment through the centre
perpendicular to φ. Colour fields: uniform HSV colours (``matplotlib.colors.hsv_to_rgb``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

GREY = 0.5


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (size - 1) / 2.0
    r = torch.arange(size, dtype=torch.float32) - c
    return r.view(-1, 1).expand(size, size), r.view(1, -1).expand(size, size)  # row, col


def grating(size: int, orientation: float, period: float, phase: float = 0.0) -> torch.Tensor:
    """One sinusoidal grating ``[size, size]`` in [0, 1] (see the module docstring for the angles)."""
    row, col = _grid(size)
    t = math.radians(orientation)
    u = col * math.sin(t) + row * math.cos(t)
    return 0.5 + 0.5 * torch.cos(2 * math.pi * u / period + math.radians(phase))


def gratings(
    size: int, orientations: Sequence[float], periods: Sequence[float], phases: Sequence[float]
) -> torch.Tensor:
    """Every grating of orientation × period × phase: ``[O, P, F, size, size]``."""
    row, col = _grid(size)
    t = torch.tensor([math.radians(o) for o in orientations]).view(-1, 1, 1, 1, 1)
    u = col * torch.sin(t) + row * torch.cos(t)  # [O, 1, 1, S, S]
    per = torch.tensor(list(periods), dtype=torch.float32).view(1, -1, 1, 1, 1)
    ph = torch.tensor([math.radians(p) for p in phases]).view(1, 1, -1, 1, 1)
    return 0.5 + 0.5 * torch.cos(2 * math.pi * u / per + ph)


def colour_fields(size: int, hues: Sequence[float], saturations: Sequence[float], value: float) -> torch.Tensor:
    """Uniform colour fields of hue (degrees) × saturation at HSV value ``value``: ``[H, S, 3, size, size]``."""
    from matplotlib.colors import hsv_to_rgb

    hsv = np.array([[[h / 360.0 % 1.0, s, value] for s in saturations] for h in hues], dtype=np.float64)
    rgb = torch.from_numpy(hsv_to_rgb(hsv).astype(np.float32))  # [H, S, 3]
    return rgb[..., None, None].expand(*rgb.shape, size, size).contiguous()


def curve(
    size: int, orientation: float, radius: float, width: float, polarity: int = 1, length: float | None = None
) -> torch.Tensor:
    """One curve ``[size, size]``: an arc bulging towards ``orientation`` (degrees), light (``polarity`` 1)
    or dark (−1) on mid-grey; ``radius=inf`` a straight segment. ``length``: the arc's length in px
    (default ``size / 2``, at most a 120° arc)."""
    row, col = _grid(size)
    length = size / 2 if length is None else length
    f = math.radians(orientation)
    ucol, urow = math.cos(f), -math.sin(f)  # bulge direction on screen
    if math.isinf(radius):
        d = (col * ucol + row * urow).abs()
        along = (col * urow - row * ucol).abs()
        inside = along <= length / 2
    else:
        oc, orow = -radius * ucol, -radius * urow  # circle centre
        pc, pr = col - oc, row - orow
        dist = torch.sqrt(pc * pc + pr * pr)
        d = (dist - radius).abs()
        half = min(math.radians(60), length / (2 * radius))
        cosang = (pc * ucol + pr * urow) / dist.clamp_min(1e-6)
        inside = cosang >= math.cos(half)
    ink = (1.0 - (d - width / 2)).clamp(0, 1) * inside
    return GREY + polarity * (0.5 * ink)


def curves(
    size: int, orientations: Sequence[float], radii: Sequence[float], width: float, polarities=(1, -1)
) -> torch.Tensor:
    """Every curve of orientation × radius × polarity: ``[O, R, P, size, size]``."""
    return torch.stack(
        [
            torch.stack([torch.stack([curve(size, o, r, width, p) for p in polarities]) for r in radii])
            for o in orientations
        ]
    )


def to_channels(x: torch.Tensor, channels: int, rgb: bool = False) -> torch.Tensor:
    """Grey stimuli ``[..., S, S]`` (or, with ``rgb``, colour ones ``[..., 3, S, S]`` for a 3-channel model)
    as ``[N, channels, S, S]``, grey in every band."""
    if rgb:
        return x.reshape(-1, 3, *x.shape[-2:])
    flat = x.reshape(-1, 1, *x.shape[-2:])
    return flat.expand(-1, channels, -1, -1)


# ---------------------------------------------------------------- the tuning grid (jobs/tuning.py)

ORIENTATIONS = tuple(range(0, 180, 15))
PHASES = (0, 90, 180, 270)
N_PERIODS = 8
HUES = tuple(range(0, 360, 15))
SATURATIONS = (1 / 3, 2 / 3, 1.0)
VALUE = 0.8
CURVE_DIRECTIONS = tuple(range(0, 360, 30))
CURVE_RADII = (1 / 32, 1 / 16, 1 / 8, 1 / 4)  # of the input side
N_SHUFFLES = 1000
MIN_INDEX = 0.2
MIN_AMPLITUDE = 0.1
ALPHA = 0.01
BATCH = 32
RULE = (
    f"index >= {MIN_INDEX}, peak response above grey >= {MIN_AMPLITUDE:.0%} of the channel's natural range at the "
    f"centre, and p < {ALPHA} against {N_SHUFFLES} shuffles of the orientation/hue/direction labels done "
    "independently per phase/saturation/polarity"
)
HUE_NAMES = (
    (15, "red"),
    (45, "orange"),
    (70, "yellow"),
    (100, "yellow-green"),
    (150, "green"),
    (200, "cyan"),
    (250, "blue"),
    (290, "purple"),
    (335, "magenta"),
    (360, "red"),
)


def hue_name(h: float) -> str:
    """A colour word for a hue in degrees (HSV: 0 red, 60 yellow, 120 green, 180 cyan, 240 blue, 300 magenta)."""
    h = h % 360
    return next(n for lim, n in HUE_NAMES if h < lim)
