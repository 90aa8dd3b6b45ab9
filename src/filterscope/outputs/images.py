"""Writing images: tensors in [0, 1] to PIL images and deterministic PNG bytes, by channel count.

Renders are saved by channel count (:func:`to_pil`): 1 → grayscale PNG, 3 → RGB, more → an RGB composite of
bands 1-3 (and a per-band grid, :func:`band_grid`). Reading images is :mod:`filterscope.models.inputs`.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def display_rgb(x: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` → ``[3, H, W]`` for figures: grey for 1 channel, bands 0-2 for more than 3."""
    if x.shape[0] == 3:
        return x
    if x.shape[0] < 3:
        return x[:1].expand(3, -1, -1)
    return x[:3]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float image ``[C, H, W]`` in [0, 1] → ``H×W×3`` uint8 (rounded; see :func:`display_rgb`)."""
    x = display_rgb(x)
    return x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def to_pil(x: torch.Tensor) -> Image.Image:
    """A grayscale image for 1 channel, RGB for 3, the RGB composite of bands 0-2 for more."""
    if x.shape[0] == 1:
        a = x[0].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(a, "L")
    return Image.fromarray(to_uint8(x), "RGB")


def band_grid(x: torch.Tensor, gap: int = 2) -> Image.Image:
    """Every band of ``[C, H, W]`` side by side as grayscale tiles (white gaps), for renders of C > 3."""
    c, h, w = x.shape
    a = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    out = np.full((h, c * w + (c - 1) * gap), 255, dtype=np.uint8)
    for i in range(c):
        out[:, i * (w + gap) : i * (w + gap) + w] = a[i]
    return Image.fromarray(out, "L")


def png_bytes(x: torch.Tensor | Image.Image) -> bytes:
    """PNG encoding with no timestamps or varying metadata, so equal images give equal bytes."""
    im = x if isinstance(x, Image.Image) else to_pil(x)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
