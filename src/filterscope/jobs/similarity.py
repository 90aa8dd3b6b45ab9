"""Measures that say whether to trust a picture: SSIM to a photo, and path similarity.

``ssim``: the structural similarity of Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5),
K1 = 0.01, K2 = 0.03, data range 1, averaged over the RGB channels and the valid window positions: the same
definition as scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`` (a test checks them against each other). It lives here, in
torch, so filterscope needs no extra dependency at run time (scikit-image is a dev dependency).

``path similarity`` (after Geirhos et al., ICML 2024, "Don't trust your eyes: on the (un)reliability of
feature visualizations"): a faithful visualisation should be processed along the same path as the natural
images that excite the filter. For each stage of the network before the target layer we take the vector of
per-channel mean activations of the render and the mean of the same vectors over the filter's top natural
images, and report the mean Pearson correlation over the stages (1: the render travels the same path; an
adversarial pixel pattern that reaches the filter by another route scores lower).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..models.hooks import run
from ..models.layers import LayerInfo, capture_layers, list_layers
from ..models.model import Model

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim_batch(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """SSIM of each image ``[B, C, H, W]`` to one ``reference`` ``[C, H, W]`` (values in [0, 1]): ``[B]``,
    differentiable (feature accentuation keeps it as its closeness term), in the images' dtype."""
    if images.shape[-2:] != reference.shape[-2:]:
        raise ValueError("ssim needs images of the same size")
    c = images.shape[1]
    w = _gaussian_window().to(images).expand(c, 1, -1, -1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    xa, xb = images, reference.to(images)[None]
    mu_a, mu_b = filt(xa), filt(xb)
    var_a = filt(xa * xa) - mu_a**2
    var_b = filt(xb * xb) - mu_b**2
    cov = filt(xa * xb) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM between two images ``[3, H, W]`` in [0, 1] (see the module docstring), in double precision."""
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError("ssim needs images of the same size")
    return float(ssim_batch(a.double()[None], b.double())[0])


def path_layers(model: Model, info: LayerInfo, most: int = 6) -> list[LayerInfo]:
    """The network's stages before ``info``: spatial top-level children and the children of top-level
    containers (``blocks.0``…, ``layer1``…), at most the last ``most`` of them."""
    names = {n for n, _ in model.net.named_children()}
    for n, m in model.net.named_children():
        if isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList)):
            names |= {f"{n}.{k}" for k, _ in m.named_children()}
    stages = [
        i for i in list_layers(model) if i.name in names and i.spatial and i.order < info.order and i.channels > 3
    ]
    return stages[-most:]


def path_profiles(model: Model, images: torch.Tensor, layers: Sequence[LayerInfo]) -> list[torch.Tensor]:
    """Per-channel mean activations of ``images`` ``[N,3,S,S]`` at each of ``layers``: a list of ``[N, C_l]``."""
    names = [i.name for i in layers]
    if not names:
        return []
    x = images.to(model.device)
    if x.shape[-1] != model.input_size:
        x = F.interpolate(x, size=(model.input_size,) * 2, mode="bilinear", antialias=True)
    with (
        capture_layers(model, layers, stop=True) as cap,
        torch.inference_mode(),
    ):
        run(model.forward, x, cap)
        return [cap.acts[n].float().flatten(2).mean(2).cpu() for n in names]


def path_similarity(render: list[torch.Tensor], natural: list[torch.Tensor]) -> float:
    """Mean over stages of the Pearson correlation between a render's profile (``[1, C]`` per stage) and
    the mean profile of the natural images (``[N, C]`` per stage). NaN without stages."""
    if not render:
        return float("nan")
    cors = []
    for r, n in zip(render, natural):
        a = r.reshape(-1).double()
        b = n.double().mean(0)
        a, b = a - a.mean(), b - b.mean()
        cors.append(float((a * b).sum() / (a.norm() * b.norm() + 1e-12)))
    return sum(cors) / len(cors)
