"""A CNN whose layer stores more features than it has channels, and an ImageFolder of what it detects.

``detect`` (8 channels, after a ReLU): hand-set detectors of eight patterns — stripes at 0°, 45°, 90° and
135° (zero-mean Gabor kernels at the stripes' period, on grey) and red, green, blue and yellow patches
(colour-opponent 1×1 weights). ``mix`` (4 channels): a fixed 1×1 convolution that mixes the eight detectors
into four channels (superposition: each channel answers to several patterns, each pattern to several
channels). A fixed linear head after global average pooling gives 8 logits. The images are the eight
patterns (``stripes_000`` … ``yellow``), each with position jitter and pixel noise, one sub-folder per class.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

SIZE = 32
PERIOD = 6.0
ANGLES = (0, 45, 90, 135)
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.1, 0.2, 0.9), "yellow": (0.9, 0.85, 0.1)}
CLASSES = [f"stripes_{a:03d}" for a in ANGLES] + list(COLOURS)


def _gabor(angle: float, size: int = 7) -> torch.Tensor:
    """A zero-mean, unit-norm cosine Gabor kernel for stripes at ``angle`` degrees (counter-clockwise from
    horizontal stripes), period :data:`PERIOD`."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    t = math.radians(angle)
    u = -x * math.sin(t) + y * math.cos(t)  # across the stripes
    g = torch.cos(2 * math.pi * u / PERIOD) * torch.exp(-(x**2 + y**2) / (2 * 2.5**2))
    g = g - g.mean()
    return g / g.norm()


class PlantedNet(nn.Module):
    """RGB 32×32 → ``detect`` (8 pattern detectors, ReLU) → ``mix`` (4 channels, 1×1, fixed) → pool → ``fc``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 7, padding=3)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            grey = torch.tensor([0.299, 0.587, 0.114])
            for i, a in enumerate(ANGLES):
                self.conv.weight[i] = grey[:, None, None] * _gabor(a)[None] * 4.0
                self.conv.bias[i] = -6.5  # above the cross-orientation and edge responses
            for i, rgb in enumerate(COLOURS.values()):
                w = torch.tensor(rgb) - 0.5
                w = w - w.mean()  # colour-opponent: zero on grey
                self.conv.weight[4 + i, :, 3, 3] = w / w.norm() * 8.0
                self.conv.bias[4 + i] = -3.2  # above the neighbouring colours
        self.detect = nn.ReLU()
        self.mix = nn.Conv2d(8, 4, 1, bias=False)
        # a randomly rotated cross-polytope: detector i and i + 4 write along ±r_i (r_i orthonormal), so every
        # channel mixes all eight patterns while the eight directions stay apart (orthogonal or opposite)
        r = torch.linalg.qr(torch.randn(4, 4, generator=g))[0]
        with torch.no_grad():
            self.mix.weight.copy_(torch.cat([r, -r], 1)[:, :, None, None])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 8)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(8, 4, generator=g))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.mix(self.detect(self.conv(x)))).flatten(1))


class SlowPlantedNet(PlantedNet):
    """The planted net taking ``delay`` seconds more per batch of images: a job's passes long enough to watch."""

    def __init__(self, seed: int = 0, delay: float = 0.3) -> None:
        super().__init__(seed)
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            time.sleep(self.delay)
        return super().forward(x)


def pattern(cls: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One image of class ``cls`` (``H×W×3`` uint8): the pattern in a jittered square on grey, with noise."""
    img = np.full((size, size, 3), 0.5)
    side = int(rng.integers(14, 20))
    top, left = rng.integers(0, size - side + 1, 2)
    ys, xs = np.mgrid[0:side, 0:side].astype(float)
    if cls.startswith("stripes_"):
        t = math.radians(int(cls.split("_")[1]))
        u = -xs * math.sin(t) + ys * math.cos(t) + rng.uniform(0, PERIOD)
        v = 0.5 + 0.45 * np.sign(np.cos(2 * math.pi * u / PERIOD))
        img[top : top + side, left : left + side] = v[..., None]
    else:
        img[top : top + side, left : left + side] = COLOURS[cls]
    img = img + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_folder(root: Path, per_class: int = 6, seed: int = 0, classes=CLASSES) -> Path:
    """An ImageFolder ``root/<class>/<class>_00.png`` of ``per_class`` images per class."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern(cls, rng)).save(root / cls / f"{cls}_{i:02d}.png")
    return root


def planted_model(seed: int = 0, delay: float | None = None):
    """The planted net as a filterscope Model (32 px input, no normalisation); with ``delay``, the slow one."""
    from filterscope.models import load_model

    net = PlantedNet(seed) if delay is None else SlowPlantedNet(seed, delay)
    name = f"planted_{seed}" if delay is None else f"planted_slow_{seed}"
    return load_model(net.eval(), name=name, input_size=32, mean=(0.0,) * 3, std=(1.0,) * 3)
