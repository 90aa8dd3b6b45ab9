"""Feature accentuation (Hamblin et al. 2024, arXiv 2402.10039): what a filter responds to *in this photo*.

The photo itself is optimised so that the filter fires more while it stays close to the photo: the
``image`` parameterisation starts exactly at the photo (Fourier coefficients, decorrelated colour), seen
through the ``fast`` preset's random affine jitter so that the change is not a pixel-exact adversarial
pattern. The *change map* (Horama's "transparency") is where the optimisation changed the photo: the
per-pixel colour change, smoothed and scaled to its maximum.

The objective (``method="adaptive"``, the default) balances the two terms the same way on every photo and
filter: the filter's mean activation divided by the norm of its gradient with respect to the pixels at the
photo (so the first step pulls equally hard whether the filter starts at 10, at 0.01 or below 0), minus
``strength`` × (1 − SSIM to the photo) (so a change is weighed against the photo's own local contrast: a
flat or dark photo is kept as close, in SSIM, as a busy one). ``strength`` is therefore one trade-off
knob for every photo: 0 is unconstrained, higher stays closer; the default 5 was chosen on
scikit-image's astronaut (its top-3 filters at blocks.5: SSIM 0.994 at gain 1.3× with strength 150, 0.99 at
2.0-2.5× with 30, 0.96-0.97 at 2.7-3.8× with 8) and measured on photos it was not tuned on
(``benchmarks/bench_accent.py``). ``method="fixed"`` is the earlier objective: the activation divided by
its size on the photo (at least 0.1 × the layer's mean |activation|) minus ``strength`` × the mean squared
pixel change, strength 1000, whose balance depends on the filter's value on the photo and on the photo's
contrast.

Measured per filter: the filter's mean activation on the photo and on the accentuation, ``gain`` =
1 + (after − before) / max(|before|, 0.1 × the layer's mean |activation| on the photo) (= after / before
when the photo activates the filter), and the SSIM between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..errors import RenderError, UsageError
from ..models.hooks import run
from ..models.inputs import load_image, model_input
from ..models.layers import LayerInfo, capture_layers, list_layers, network_layer
from ..models.model import Model
from ..models.relu import final_relus
from ..optvis.objectives import Objective, channel, closeness
from ..optvis.render import Renderer, RenderSettings, channel_seed
from ..outputs.images import png_bytes
from ..outputs.naming import accent_change_file, accent_file
from .contract import Job, JobResult, RunContext, opt, run_job
from .evaluate import layer_means
from .inspect import given_image
from .similarity import ssim, ssim_batch

DEFAULT_STRENGTH = 5.0  # ``adaptive``: weight of 1 − SSIM against the gradient-normalised objective
FIXED_STRENGTH = 1000.0  # ``fixed`` (before 0.x): weight of the mean squared pixel change
DEFAULT_STEPS = 24
METHODS = ("adaptive", "fixed")
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
    scale: float = 0.0  # what the gain is measured in: max(|before|, 0.1 × the layer's mean |activation|)
    method: str = "adaptive"

    @property
    def gain(self) -> float:
        """1 + (after − before)/scale, scale = max(|before|, 0.1 × the layer's mean |activation| on the photo):
        after/before when the photo activates the filter; for a filter that starts near zero or below, the
        rise in tenths of the layer's typical activation (so a filter at 0.001 is not "gained" 1000×)."""
        b = self.activation_photo
        return 1.0 + (self.activation_accent - b) / max(self.scale, abs(b), 1e-6)

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
            "method": self.method,
            "gain_scale": round(self.scale, 6),
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


def gradient_norms(
    model: Model, info: LayerInfo, x: torch.Tensor, channels: Sequence[int], pre_relu: bool = True
) -> list[float]:
    """‖∂ mean activation / ∂ pixels‖₂ of each of ``channels`` at the photo ``x`` ``[3,S,S]`` (of the
    pre-activation when ``pre_relu`` and the layer ends in a ReLU, as the render optimises): one forward,
    one backward per channel. Dividing a filter's objective by it makes its first step the same size for
    every photo and filter, so the closeness term meets the same pull everywhere."""
    orders = {i.name: i.order for i in list_layers(model)} if pre_relu else {}
    relu = final_relus(model.net, orders, [info.name]).get(info.name) if pre_relu else None
    xx = x[None].to(model.device).detach().clone().requires_grad_(True)
    with (
        torch.enable_grad(),
        capture_layers(model, [info], stop=True, inputs_of=[relu] if relu else []) as cap,
    ):
        run(model.forward, xx, cap)
        a = cap.inputs[relu] if relu else cap.acts[info.name]
        means = a.flatten(2).mean(2)[0] if a.dim() == 4 else a[0]
        norms = []
        for k, c in enumerate(channels):
            (g,) = torch.autograd.grad(means[c], xx, retain_graph=k < len(channels) - 1)
            norms.append(float(g.norm()))
    return norms


def ssim_closeness(reference: torch.Tensor, strength: float) -> Objective:
    """Minus ``strength`` × (1 − SSIM to ``reference`` ``[3,S,S]``): 0 at the photo. Unlike the mean squared
    change, it weighs a change against the photo's own local contrast, so a flat or dark photo is kept as
    close (in what SSIM reports) as a busy one."""
    ref = reference.detach().float()
    strength = float(strength)

    def fn(ctx):
        x = ctx.images
        r = ref.to(x.device)
        if r.shape[-2:] != x.shape[-2:]:
            r = torch.nn.functional.interpolate(r[None], size=x.shape[-2:], mode="bilinear", antialias=True)[0]
        return -strength * (1.0 - ssim_batch(x, r))

    return Objective(fn, f"{strength:g}*(1-ssim)")


def check_method(method: str) -> str:
    """The one rule for accentuation method names."""
    if method not in METHODS:
        raise UsageError(f"unknown accentuation method {method!r}", hint="use " + " or ".join(METHODS))
    return method


def accentuate(
    model: Model,
    image: str | Path | Image.Image | torch.Tensor | None = None,
    layer: str = "default",
    channels: Sequence[int] | None = (0,),
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    **options,
) -> JobResult:
    """Accentuate each of ``channels`` of ``layer`` (``None``: all) in ``image`` (a file, a PIL image or the
    model's input tensor; default: the bundled cup); ``options``: ``strength``, ``steps``, ``seed``,
    ``method`` (:class:`AccentuateRequest`, :func:`accentuate_image`).

    Returns the job's :class:`~.contract.JobResult`; its ``data`` is the list of :class:`Accentuation` in
    channel order. Without ``out`` it runs in memory and writes nothing; with ``out`` it writes
    ``<layer>/accent_0042.png``, the change maps and ``run.json`` there (the job :data:`JOB`; ``resume``
    keeps the channels an interrupted run of ``out`` finished)."""
    return run_job(
        JOB, model, out=out, in_memory=out is None, resume=resume, progress=progress, should_stop=should_stop,
        image=image, layer=layer, channels=None if channels is None else list(channels), **options,
    )  # fmt: skip


def accentuate_image(
    model: Model,
    image: Image.Image | torch.Tensor,
    layer: str = "default",
    channels: Sequence[int] = (0,),
    *,
    strength: float | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    method: str = "adaptive",
    settings: RenderSettings | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_done: Callable[[Accentuation], None] | None = None,
) -> list[Accentuation]:
    """The work of :func:`accentuate` (no run, no files; what other jobs call): accentuate each of
    ``channels`` of ``layer`` in ``image`` (a PIL image, or the model's input ``[3,S,S]``/``[1,3,S,S]``);
    ``on_done`` sees each finished one; stops after the current filter when
    ``should_stop()``.

    ``method``: ``adaptive`` (default) maximises the filter's mean activation divided by its gradient norm
    at the photo (:func:`gradient_norms`) minus ``strength`` × (1 − SSIM to the photo), so the balance
    between the two terms is the same for every photo and filter; ``fixed`` is the earlier objective: the
    activation divided by its size on the photo minus ``strength`` × the mean squared pixel change.
    ``strength`` defaults to the method's own (:data:`DEFAULT_STRENGTH`, :data:`FIXED_STRENGTH`)."""
    from tqdm import tqdm

    check_method(method)
    strength = (DEFAULT_STRENGTH if method == "adaptive" else FIXED_STRENGTH) if strength is None else strength
    if not (isinstance(strength, (int, float)) and np.isfinite(strength) and strength >= 0):
        raise UsageError(f"strength must be a finite number ≥ 0, got {strength}")
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
        if method == "adaptive":
            (g,) = gradient_norms(model, info, x, [c], settings.pre_relu)
            objective = channel(info.name, c) / max(g, 1e-8) + ssim_closeness(x, strength)
        else:
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
                scale=max(abs(b), scale_floor),
                method=method,
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
class AccentuateRequest:
    """The arguments of ``filterscope accentuate``."""

    image: str | Path | Image.Image | torch.Tensor | None = opt(
        None, "Image file [default: the bundled photo].", argument=True, optional=True
    )
    layer: str = opt("default", "Layer.")
    channels: list[int] | None = opt([0], "e.g. 12 or 3,17,42.", channels=True, cli_default="0-2")
    strength: float | None = opt(
        None,
        "Closeness to the photo: the weight of 1 − SSIM to it against the filter's activation divided by its "
        "gradient norm at the photo, so one value holds for every photo and filter; higher stays closer "
        f"[default: {DEFAULT_STRENGTH:g}].",
        min=0,
    )
    steps: int = opt(DEFAULT_STEPS, f"Optimisation steps [default: {DEFAULT_STEPS}].", min=1, cli_default=None)
    seed: int = opt(0, "Seed.", min=0)
    method: str = opt("adaptive", "adaptive or fixed (the closeness before 0.x).", choices=METHODS, cli=False)


@dataclass
class AccentuatePlan:
    model: Model
    image: Image.Image | torch.Tensor
    info: LayerInfo
    channels: list[int]
    strength: float
    request: AccentuateRequest
    settings: dict


def _check_image(req: AccentuateRequest) -> None:
    if isinstance(req.image, (str, Path)) and str(req.image):
        load_image(req.image)


def _plan(model: Model, req: AccentuateRequest) -> AccentuatePlan:
    pil, name = given_image(req.image)
    info = network_layer(model, req.layer, "accentuate")
    chans = list(range(info.channels)) if req.channels is None else [int(c) for c in req.channels]
    info.check_channels(chans)
    check_method(req.method)
    steps = req.steps or DEFAULT_STEPS
    strength = req.strength
    if strength is None:
        strength = DEFAULT_STRENGTH if req.method == "adaptive" else FIXED_STRENGTH
    if not (strength >= 0 and steps >= 1):
        raise UsageError(f"strength must be ≥ 0 and steps ≥ 1, got {strength}, {steps}")
    req = replace(req, steps=steps)
    settings = {
        "model": model.describe(),
        "image": name,
        "layer": info.name,
        "channels": chans,
        "method": req.method,
        "strength": float(strength),
        "render": SETTINGS.with_(steps=steps).as_dict(),
        "seed": req.seed,
    }
    return AccentuatePlan(model, pil, info, chans, float(strength), req, settings)


def load_accentuation(run, rec: dict, photo: torch.Tensor) -> Accentuation:
    """An accentuation a run already wrote (``--resume``), from its record and its PNG (the change map
    recomputed from the 8-bit image: what the summary and the returned data show, never rewritten)."""
    import io

    with Image.open(io.BytesIO(run.file(rec["file"]).read_bytes())) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    return Accentuation(
        rec["layer"],
        int(rec["channel"]),
        photo,
        image,
        change_map(photo, image),
        float(rec["activation_photo"]),
        float(rec["activation_accent"]),
        float(rec["ssim"]),
        float(rec["strength"]),
        0.0,
        scale=float(rec["gain_scale"]),
        method=rec["method"],
    )


def _compute(ctx: RunContext, p: AccentuatePlan) -> list[Accentuation]:
    r = p.request
    key = f"accent:{p.info.name}:{{}}"
    done = [c for c in p.channels if ctx.resume and ctx.run.done(key.format(c))]  # finished before: kept
    todo = [c for c in p.channels if c not in done]
    accs = (
        accentuate_image(
            p.model,
            p.image,
            p.info.name,
            todo,
            strength=p.strength,
            method=r.method,
            steps=r.steps,
            seed=r.seed,
            progress=ctx.show_progress,
            should_stop=ctx.stop,
            on_done=lambda a: write_accentuation(ctx.run, a),
        )
        if todo
        else []
    )
    if done:
        x = p.image if isinstance(p.image, torch.Tensor) else model_input(p.model, p.image)
        photo = accs[0].photo if accs else (x[0] if x.dim() == 4 else x).detach().float().cpu()
        kept = {c: load_accentuation(ctx.run, ctx.run.record["results"][key.format(c)], photo) for c in done}
        new = {a.channel: a for a in accs}
        accs = [kept.get(c) or new[c] for c in p.channels if c in kept or c in new]
    if len(accs) < len(p.channels):
        ctx.mark_partial(len(accs), len(p.channels), "channels")
    return accs


def _write(ctx: RunContext, accs: list[Accentuation]) -> None:
    """Every accentuation was written as it finished (:func:`write_accentuation`)."""


def _summary(r: JobResult) -> list[str]:
    s = r.record["settings"]
    photo = "the bundled photo" if s["image"] == "bundled:coffee.jpg" else s["image"]
    lines = [f"{s['model']['name']} · {s['layer']} · accentuations of {photo}"]
    lines += [
        f"  filter {a.channel:5d}: photo {a.activation_photo:.3f} → accentuation {a.activation_accent:.3f} "
        f"(gain {a.gain:.2f}×), SSIM {a.ssim:.3f}"
        for a in r.data
    ]
    lines.append(f"wrote {r.run_dir}/{s['layer']}/accent_*.png, run.json")
    return lines


JOB = Job(
    "accentuate",
    AccentuateRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="Feature accentuation: IMAGE pushed to excite each filter while it stays close to the photo.",
    resumable=True,
    precheck=_check_image,
)
