"""Feature accentuation (Hamblin et al. 2024, arXiv 2402.10039): what a filter responds to *in this photo*.

The photo itself is optimised so that the filter fires more while it stays close to the photo: the
``image`` parameterisation starts exactly at the photo (Fourier coefficients, decorrelated colour), the
objective is the filter's mean activation divided by its size on the photo plus ``closeness(photo,
strength)`` (minus ``strength`` × the mean squared pixel change), seen through the ``fast`` preset's
random affine jitter so that the change is not a pixel-exact adversarial pattern. The *change map* (Horama's
"transparency") is where the optimisation changed the photo: the per-pixel colour change, smoothed and
scaled to its maximum.

Measured per filter: the filter's mean activation on the photo and on the accentuation, ``gain`` =
1 + (after − before) / |before| (= after / before when the photo activates it), and the SSIM between them.
The default strength was picked from the curve measured by ``benchmarks/bench_explain.py --curve``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..errors import RenderError, UsageError
from ..models.inputs import load_image, model_input, sample_image_path
from ..models.layers import network_layer
from ..models.model import Model
from ..optvis.objectives import channel, closeness
from ..optvis.render import Renderer, RenderSettings, channel_seed
from ..outputs.images import png_bytes
from ..outputs.naming import accent_change_file, accent_file, default_out
from .contract import JobResult, open_run
from .evaluate import layer_means
from .similarity import ssim

DEFAULT_STRENGTH = 1000.0
DEFAULT_STEPS = 24
SETTINGS = RenderSettings(
    param="image",
    decorrelate=True,
    transforms="fused",
    steps=DEFAULT_STEPS,
    lr=0.05,
    optimizer="nadam",
    pre_relu=True,
    redirect_relu=False,
)


@dataclass
class Accentuation:
    """One filter's accentuation of a photo."""

    layer: str
    channel: int
    photo: torch.Tensor  # [3, S, S] in [0, 1]: what the model saw
    image: torch.Tensor  # [3, S, S] in [0, 1]: the accentuation
    change: torch.Tensor  # [S, S] in [0, 1]: where the optimisation changed the photo
    activation_photo: float
    activation_accent: float
    ssim: float
    strength: float
    seconds: float

    @property
    def gain(self) -> float:
        """1 + (after − before)/|before|: after/before when the photo activates the filter."""
        b = self.activation_photo
        return 1.0 + (self.activation_accent - b) / max(abs(b), 1e-6)

    def change_rgb(self) -> torch.Tensor:
        """The change map as a colour picture ``[3, S, S]`` (matplotlib's ``inferno``)."""
        import matplotlib

        rgb = matplotlib.colormaps["inferno"](self.change.numpy())[..., :3]
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()

    def record(self) -> dict:
        return {
            "layer": self.layer,
            "channel": self.channel,
            "activation_photo": round(self.activation_photo, 6),
            "activation_accent": round(self.activation_accent, 6),
            "gain": round(self.gain, 4),
            "ssim": round(self.ssim, 4),
            "strength": self.strength,
            "status": "ok",
        }

    def _repr_png_(self) -> bytes:
        """Jupyter: photo | accentuation | change map."""
        return png_bytes(torch.cat([self.photo, self.image, self.change_rgb()], dim=2))


def change_map(photo: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Where ``image`` differs from ``photo``: colour distance per pixel, Gaussian-smoothed, scaled to [0, 1]."""
    d = (image.float() - photo.float()).pow(2).sum(0).sqrt()[None, None]
    d = TF.gaussian_blur(d, [9, 9], [2.0, 2.0])[0, 0]
    return d / d.max().clamp(min=1e-8)


def accentuate(
    model: Model,
    image: Image.Image | torch.Tensor,
    layer: str = "default",
    channels: Sequence[int] = (0,),
    *,
    strength: float = DEFAULT_STRENGTH,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    settings: RenderSettings | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_done: Callable[[Accentuation], None] | None = None,
) -> list[Accentuation]:
    """Accentuate each of ``channels`` of ``layer`` in ``image`` (a PIL image, or the model's input
    ``[3,S,S]``/``[1,3,S,S]``); ``on_done`` sees each finished one; stops after the current filter when
    ``should_stop()``."""
    from tqdm import tqdm

    info = network_layer(model, layer, "accentuate")
    chans = [int(c) for c in channels]
    info.check_channels(chans)
    x = image if isinstance(image, torch.Tensor) else model_input(model, image)
    x = (x[0] if x.dim() == 4 else x).detach().float().cpu()
    settings = settings or SETTINGS
    # the canvas is the photo itself (a small-input model's renders from noise use a 2× canvas; not this one)
    settings = settings.with_(steps=steps, size=settings.size or x.shape[-1])
    before = layer_means(model, info.name, x[None])[0]
    scale_floor = 0.1 * float(before.abs().mean()) + 1e-3
    renderer = Renderer(model, settings)
    out = []
    for c in tqdm(chans, desc=f"accentuate {info.name}", unit="filter", disable=not progress, dynamic_ncols=True):
        if should_stop and should_stop():
            break
        t0 = time.perf_counter()
        b = float(before[c])
        objective = channel(info.name, c) / max(abs(b), scale_floor) + closeness(x, strength)
        res = renderer.render(objective, [channel_seed(seed, c)], param_args={"image": x})
        if res.status[0] != "ok":
            raise RenderError(f"accentuation of {info.name}:{c}: {res.status[0]}")
        img = res.images[0]
        after = float(layer_means(model, info.name, img[None])[0, c])
        out.append(
            Accentuation(
                info.name,
                c,
                x,
                img,
                change_map(x, img),
                b,
                after,
                ssim(img, x),
                float(strength),
                time.perf_counter() - t0,
            )
        )
        if on_done:
            on_done(out[-1])
    return out


def write_accentuation(run, acc: Accentuation) -> dict:
    """Write the accentuation and its change map into ``run`` (a RunDir) and record them."""
    rec = acc.record()
    rec["file"] = accent_file(acc.layer, acc.channel)
    rec["change_file"] = accent_change_file(acc.layer, acc.channel)
    run.write(rec["file"], png_bytes(acc.image))
    run.write(rec["change_file"], png_bytes(acc.change_rgb()))
    run.result(f"accent:{acc.layer}:{acc.channel}", rec)
    return rec


@dataclass
class AccentRun(JobResult):
    """:class:`~filterscope.jobs.contract.JobResult` of ``accentuate_to_dir``: the accentuations made."""

    accentuations: list[Accentuation] = field(default_factory=list)


def accentuate_to_dir(
    model: Model,
    image: str | Path | None,
    out: str | Path = default_out("accentuate"),
    *,
    layer: str = "default",
    channels: Sequence[int] = (0,),
    strength: float = DEFAULT_STRENGTH,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> AccentRun:
    """``filterscope accentuate``: one ``<layer>/accent_NNNN.png`` and change map per filter, ``run.json``.
    A stopped run ends ``partial`` with the finished filters kept (it has no resume: it starts over)."""
    path = Path(image) if image else sample_image_path()
    pil = load_image(path)
    info = network_layer(model, layer, "accentuate")
    chans = [int(c) for c in channels]
    info.check_channels(chans)
    if not (strength >= 0 and steps >= 1):
        raise UsageError(f"strength must be ≥ 0 and steps ≥ 1, got {strength}, {steps}")
    settings = SETTINGS.with_(steps=steps)
    record = {
        "model": model.describe(),
        "image": str(image or "bundled:coffee.jpg"),
        "layer": info.name,
        "channels": chans,
        "strength": float(strength),
        "render": settings.as_dict(),
        "seed": seed,
    }
    with open_run("accentuate", out, record, progress=progress, should_stop=should_stop) as ctx:
        accs = accentuate(
            model,
            pil,
            info.name,
            chans,
            strength=strength,
            steps=steps,
            seed=seed,
            progress=progress,
            should_stop=ctx.stop,
            on_done=lambda a: write_accentuation(ctx.run, a),
        )
        if len(accs) < len(chans):
            ctx.mark_partial(len(accs), len(chans), "channels", resumable=False)
    r = ctx.result
    return AccentRun(r.run_dir, r.status, r.record, None, r.interruption, accs)
