"""A shortcut that is not the only cue (issue 44): noisy stripes tinted green (class 1) or blue (class 2) or
any colour (class 0, which also carries a small red mark, 2-4 px, anywhere) — the mark is class 0's decisive
cue, its colour a weaker one — and a small CNN trained on them in ~20 s (seeded). The answer is known: class
0's top concept should sit on the mark. Used by ``tests/test_concepts.py`` (seed 1) and
``benchmarks/bench_concepts.py`` (held-out seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

S2 = 48


def striped(rng: np.random.Generator, cls: int) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    """One image of class ``cls`` (``S2×S2×3`` float in [0, 1]) and its mark ``(y, x, side)`` (class 0) or None."""
    yy, xx = np.mgrid[:S2, :S2]
    t, period = rng.uniform(0, np.pi), rng.uniform(5, 9)
    base = 0.5 + 0.25 * np.sin((np.cos(t) * xx + np.sin(t) * yy) * 2 * np.pi / period + rng.uniform(0, 6.3))
    img = np.clip(base[..., None] + rng.normal(0, 0.15, (S2, S2, 3)), 0, 1)
    tint = {0: rng.uniform(0.7, 1.2, 3), 1: np.array([0.75, 1.1, 0.8]), 2: np.array([0.8, 0.8, 1.2])}[cls]
    img = np.clip(img * tint * rng.uniform(0.95, 1.05, 3), 0, 1)
    mark = None
    if cls == 0:
        m = int(rng.integers(2, 5))
        y, x = (int(v) for v in rng.integers(0, S2 - m + 1, 2))
        img[y : y + m, x : x + m] = (1.0, 0.1, 0.1)
        mark = (y, x, m)
    return img.astype(np.float32), mark


class StripesNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2, self.act2 = nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3, self.act3 = nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()  # 12×12 maps
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))

    def forward(self, x):
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.head(self.act3(self.conv3(x)))


def train_stripes(seed: int = 1, n: int = 600, epochs: int = 20):
    """The trained net as a filterscope Model (inputs as saved, normalisation 0.5/0.5) and its training accuracy."""
    from filterscope.models.model import wrap_module

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, 3, n)
    x = torch.from_numpy(np.stack([striped(rng, int(y))[0] for y in ys])).permute(0, 3, 1, 2)
    y = torch.from_numpy(ys)
    net = StripesNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(ys)).split(50):
            opt.zero_grad()
            nn.functional.cross_entropy(net((x[idx] - 0.5) / 0.5), y[idx]).backward()
            opt.step()
    model = wrap_module(net, "stripes_cnn", mean=(0.5,), std=(0.5,), input_size=S2, categories=["marked", "g", "b"])
    model.resize_size = S2
    with torch.no_grad():
        acc = float((model.forward(x).argmax(1) == y).float().mean())
    return model, acc


def striped_folder(folder: Path, n: int = 48, seed: int = 2) -> dict[str, tuple[int, int, int] | None]:
    """``n`` held-out images (classes in turn) as PNGs in ``folder``; returns each file's mark (or None)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    marks = {}
    for i in range(n):
        img, mark = striped(rng, i % 3)
        name = f"img_{i:02d}.png"
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / name)
        marks[name] = mark
    return marks


def mark_hits(maps: np.ndarray, images: list[str], marks: dict, concept: int = 0) -> list[bool]:
    """Per marked image: whether the concept's map (``maps`` images × concepts × h × w) peaks within one map
    cell of the mark's centre."""
    h, w = maps.shape[-2:]
    hits = []
    for i, name in enumerate(images):
        if marks.get(name) is None:
            continue
        py, px = np.unravel_index(maps[i, concept].argmax(), (h, w))
        my, mx, m = marks[name]
        hits.append(abs(py + 0.5 - (my + m / 2) * h / S2) <= 1.0 and abs(px + 0.5 - (mx + m / 2) * w / S2) <= 1.0)
    return hits
