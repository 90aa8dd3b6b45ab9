"""Nets whose layer holds known features, and the images that show them (the map's tests and benchmark).

:func:`planted_net` builds a CNN by hand: its layer ``feat`` (after ``pool``) has one detector per colour class
— ``ReLU(u_k · x − 0.5)`` on the normalised pixel ``x`` ∈ [-1, 1]³, with the class directions ``u_k`` mutually
orthogonal or opposite (±R, ±G, ±B, turned by a random rotation for held-out nets), so a pixel of class ``k``'s
colour drives detector ``k`` and no other — plus ``distractors`` random 3×3 channels (edges and brightness
mixed), so the layer is not the planted features alone. The head averages the maps and reads the detectors
out as logits (class ``k`` ↔ detector ``k``, classes in the sorted order of their folder names, as
torchvision's ImageFolder numbers them). :func:`planted_folder` writes an ImageFolder: each image grey noise
with blobs of its class's colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

SIDE = 32
AXES = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=np.float32)


class PlantedNet(nn.Module):
    """RGB 32×32 → ``conv`` (planted detectors + distractors, 3×3) → ``act`` → ``pool`` (16×16 maps: the
    layer) → global average → ``fc`` (one logit per class)."""

    def __init__(self, n_classes: int, distractors: int):
        super().__init__()
        self.conv = nn.Conv2d(3, n_classes + distractors, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(n_classes + distractors, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.gap(self.pool(self.act(self.conv(x))))))


def directions(n_classes: int, seed: int | None) -> np.ndarray:
    """``[n, 3]`` class directions: the first ``n`` of ±R, ±G, ±B, rotated at random when ``seed`` is given."""
    u = AXES[:n_classes].copy()
    if seed is not None:
        q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
        u = u @ (q * np.sign(np.diag(r))).T.astype(np.float32)
    return u


def class_names(n_classes: int) -> list[str]:
    return [f"class_{k}" for k in range(n_classes)]


def planted_net(n_classes: int = 5, distractors: int = 4, seed: int | None = None):
    """The hand-built net as a filterscope Model (32 px, mean/std 0.5) and its class directions."""
    from filterscope.models.model import wrap_module

    u = directions(n_classes, seed)
    net = PlantedNet(n_classes, distractors)
    g = torch.Generator().manual_seed(1000 + (seed or 0))
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.zero_()
        for k in range(n_classes):
            net.conv.weight[k, :, 1, 1] = torch.from_numpy(u[k])
            net.conv.bias[k] = -0.5
        if distractors:
            net.conv.weight[n_classes:] = 0.15 * torch.randn(distractors, 3, 3, 3, generator=g)
            net.conv.bias[n_classes:] = 0.1
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        net.fc.weight[:, :n_classes] = 4.0 * torch.eye(n_classes)
    model = wrap_module(
        net.eval(), "planted_cnn", mean=(0.5,), std=(0.5,), input_size=SIDE, categories=class_names(n_classes)
    )
    model.resize_size = SIDE
    return model, u


def planted_image(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """Grey noise (0.35-0.65) with 2-4 blobs of ``colour`` (radius 4-7 px) and a little noise on them."""
    img = rng.uniform(0.35, 0.65, (SIDE, SIDE, 1)).repeat(3, 2)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.integers(0, SIDE, 2)
        r = rng.uniform(4, 7)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[blob] = colour + rng.normal(0, 0.03, (int(blob.sum()), 3))
    return np.clip(img, 0, 1).astype(np.float32)


def planted_folder(root: Path, u: np.ndarray, per_class: int = 8, seed: int = 0) -> Path:
    """An ImageFolder ``root/class_k/class_k_XX.png`` of ``per_class`` images per class; class ``k``'s colour
    is ``0.5 + 0.45 u_k`` (detector ``k``'s input ``0.9``, the others' ``≤ 0``)."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(class_names(len(u))):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        colour = 0.5 + 0.45 * u[k]
        for i in range(per_class):
            arr = planted_image(rng, colour)
            Image.fromarray((arr * 255).round().astype(np.uint8)).save(d / f"{name}_{i:02d}.png")
    return root


def cell_purity(cell: dict) -> tuple[str, float]:
    """A map.json cell's most common folder among its exemplars' images and its share (the test's 70 %
    rule reads the cell's points, see :func:`point_purity`)."""
    folders = [e["image"].split("/")[0] for e in cell["top"]]
    best = max(set(folders), key=folders.count)
    return best, folders.count(best) / len(folders)


def point_purity(amap, cell) -> tuple[str, float]:
    """The most common folder among a cell's points (an ``ActivationMap`` cell) and its share."""
    folders = [amap.files[int(amap.point_image[q])].split("/")[0] for q in cell.points]
    best = max(set(folders), key=folders.count)
    return best, folders.count(best) / len(folders)


def feature_cells(amap, n_classes: int, share: float = 0.7) -> dict[str, list]:
    """For every planted class, the cells whose points are at least ``share`` its folder's."""
    found: dict[str, list] = {name: [] for name in class_names(n_classes)}
    for c in amap.cells:
        best, s = point_purity(amap, c)
        if s >= share:
            found[best].append(c)
    return found
