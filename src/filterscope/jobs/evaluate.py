"""Measuring what a render achieves, instead of claiming it.

For a channel render: ``ratio`` = act(render) / the highest act over a set of natural photos (the bundled
photos or a user's folder) — above 1 means the render excites the channel more than any photo does;
``robust_ratio`` = the same under 8 random crops that keep 90-100 % of the side, each rescaled to the model
input (a render that only works pixel-perfectly, like an adversarial pattern, loses most of it). For a class
logit render: the same ratios on the logit, and whether a second model (``eval_model``) puts the class in
its top 1 / top 5 (transferability). Every render also gets two picture measures: ``colourfulness``
(Hasler & Süsstrunk 2003) and ``rms_contrast`` (std of the grey image in [0, 1]); the bundled photos give
≈ 56 and ≈ 0.18, a flat image 0 and 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import UsageError
from ..models.hooks import run
from ..models.inputs import image_tensor, list_images, load_image, model_input, sample_photos_dir
from ..models.layers import LOGIT, capture_layers, get_layer, list_layers
from ..models.model import Model
from ..models.relu import final_relus
from ..outputs.rundir import json_bytes, read_run
from .contract import Job, JobResult, RunContext, opt, run_job

ROBUST_CROPS = 8


def _rgb255(img) -> np.ndarray:
    """``[3,H,W]`` / ``[1,3,H,W]`` tensor in [0, 1], or a PIL image / ``[H,W,3]`` uint8 array: float ``[H,W,3]``
    in 0-255."""
    if isinstance(img, torch.Tensor):
        x = img.detach().float().cpu()
        x = x[0] if x.dim() == 4 else x
        x = x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x[:3]  # grey → RGB; extra bands: the RGB part
        return x.permute(1, 2, 0).clamp(0, 1).numpy().astype(np.float64) * 255.0
    a = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)
    a = np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a
    return a[..., :3].astype(np.float64) * (255.0 if a.dtype.kind == "f" else 1.0)


def colourfulness(img) -> float:
    """Hasler & Süsstrunk (2003) colourfulness on 0-255 RGB: σ_rgyb + 0.3·μ_rgyb, with rg = R − G,
    yb = (R + G)/2 − B. 0 for any grey image; ~56 for the bundled photos."""
    a = _rgb255(img)
    rg = a[..., 0] - a[..., 1]
    yb = 0.5 * (a[..., 0] + a[..., 1]) - a[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def rms_contrast(img) -> float:
    """RMS contrast: the standard deviation of the grey image in [0, 1], grey = ITU-R BT.601 luma
    (0.299 R + 0.587 G + 0.114 B)."""
    a = _rgb255(img) / 255.0
    return float((a @ np.array([0.299, 0.587, 0.114])).std())


def layer_means(model: Model, layer: str, x: torch.Tensor, pre_relu: bool = False) -> torch.Tensor:
    """Per-channel mean activation ``[N, C]`` (or logits for ``logit``) for images ``x`` in [0, 1].

    ``pre_relu``: of the layer's pre-activation when it ends in a ReLU/ReLU6 (what the readable presets
    optimise): not capped, so it still tells renders apart where the ReLU6 output saturates at 6."""
    x = x.to(model.device)
    if layer == LOGIT:
        with torch.inference_mode():
            return model.forward(x).float().cpu()
    info = get_layer(model, layer)
    orders = {i.name: i.order for i in list_layers(model)} if pre_relu else {}
    relu = final_relus(model.net, orders, [layer]).get(layer) if pre_relu else None
    with (
        capture_layers(model, [info], stop=True, inputs_of=[relu] if relu else []) as cap,
        torch.inference_mode(),
    ):
        run(model.forward, x, cap)
        a = (cap.inputs[relu] if relu else cap.acts[layer]).float()
    return (a.flatten(2).mean(2) if a.dim() == 4 else a).cpu()


def natural_max(
    model: Model, layer: str, folder: str | Path | None = None, batch: int = 16, pre_relu: bool = False
) -> torch.Tensor:
    """The highest per-channel mean activation over the photos in ``folder`` (default: bundled photos)."""
    files = list_images(folder or sample_photos_dir())
    best = None
    for start in range(0, len(files), batch):
        x = torch.cat([model_input(model, load_image(f)) for f in files[start : start + batch]])
        m = layer_means(model, layer, x, pre_relu).amax(0)
        best = m if best is None else torch.maximum(best, m)
    return best


def robust_views(image: torch.Tensor, size: int, n: int = ROBUST_CROPS, seed: int = 0) -> torch.Tensor:
    """``n`` random crops keeping 90-100 % of the side, each resized to ``size`` (``[n, 3, size, size]``)."""
    g = torch.Generator().manual_seed(seed)
    h, w = image.shape[-2:]
    views = []
    for _ in range(n):
        f = 0.9 + 0.1 * torch.rand((), generator=g).item()
        ch, cw = max(8, int(round(h * f))), max(8, int(round(w * f)))
        top = int(torch.randint(h - ch + 1, (), generator=g))
        left = int(torch.randint(w - cw + 1, (), generator=g))
        crop = image[:, top : top + ch, left : left + cw]
        views.append(TF.resize(crop, [size, size], antialias=True))
    return torch.stack(views)


@dataclass
class ChannelScore:
    layer: str
    channel: int
    activation: float
    robust_activation: float
    natural_max: float
    ratio: float
    robust_ratio: float
    colourfulness: float = 0.0
    rms_contrast: float = 0.0
    top1: bool | None = None
    top5: bool | None = None
    path_similarity: float | None = None  # to the channel's top natural images (jobs/similarity.py)

    def as_dict(self) -> dict:
        d = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in vars(self).items()}
        return {k: v for k, v in d.items() if v is not None}


def score_images(
    model: Model,
    layer: str,
    channels: Sequence[int],
    images: torch.Tensor,
    nat_max: torch.Tensor,
    eval_model: Model | None = None,
    seed: int = 0,
    pre_relu: bool = False,
) -> list[ChannelScore]:
    """Score renders ``images[i]`` (``[B,3,H,W]`` in [0,1]) of ``channels[i]`` at ``layer`` (``pre_relu``:
    on its pre-activation, with ``nat_max`` from ``natural_max(..., pre_relu=True)``)."""
    size = model.input_size
    scores = []
    for i, c in enumerate(channels):
        img = images[i].float().cpu()
        clean = TF.resize(img, [size, size], antialias=True)[None] if img.shape[-1] != size else img[None]
        act = float(layer_means(model, layer, clean, pre_relu)[0, c])
        views = robust_views(img, size, seed=seed + c)
        robust = float(layer_means(model, layer, views, pre_relu)[:, c].mean())
        top = float(nat_max[c])
        denom = top if abs(top) > 1e-6 else 1e-6
        s = ChannelScore(
            layer, int(c), act, robust, top, act / denom, robust / denom, colourfulness(img), rms_contrast(img)
        )
        if eval_model is not None and layer == LOGIT:
            ev = TF.resize(img, [eval_model.input_size] * 2, antialias=True)[None].to(eval_model.device)
            with torch.inference_mode():
                ranks = eval_model.forward(ev)[0].float().topk(5).indices.tolist()
            s.top1, s.top5 = ranks[0] == c, c in ranks
        scores.append(s)
    return scores


def path_scores(
    model: Model, layer: str, channels: Sequence[int], images: torch.Tensor, folder: str | Path | None = None
) -> list[float]:
    """Path similarity (:mod:`.similarity`) of each render ``images[i]`` of ``channels[i]`` to the 3 natural
    images of ``folder`` (default: the bundled photos) that excite that channel most. NaN for logits."""
    from .dataset import collect_examples
    from .similarity import path_layers, path_profiles, path_similarity

    if layer == LOGIT:
        return [float("nan")] * len(channels)
    info = get_layer(model, layer)
    folder = Path(folder) if folder else sample_photos_dir()
    files, stats = collect_examples(model, [info], folder, n_top=3, progress=False)
    st = stats[info.name]
    stages = path_layers(model, info)
    out = []
    for i, c in enumerate(channels):
        idx = [int(j) for j in st.top_index[c].tolist() if j >= 0]
        nat = path_profiles(model, torch.cat([model_input(model, load_image(files[j])) for j in idx]), stages)
        out.append(path_similarity(path_profiles(model, images[i : i + 1].float(), stages), nat))
    return out


EVALUATION_FILE = "evaluation.json"


@dataclass
class EvaluateRequest:
    """The arguments of ``filterscope evaluate``."""

    run_dir: str | None = opt(None, "A complete run whose channel renders are scored.", argument=True)
    images: str | None = opt(None, "Folder of natural images (default: the bundled photos).")
    eval_model: Model | str | None = opt(
        None, "Second model for transferability of logit renders, e.g. efficientnet_lite1.", load=True
    )


@dataclass
class EvaluatePlan:
    model: Model
    run_dir: Path
    by_layer: dict[str, list[dict]]  # layer → its finished channel renders' results
    images: str | None
    eval_model: Model | None
    settings: dict


def _renders(run_dir: Path) -> dict[str, list[dict]]:
    """layer → the results of the run's finished channel renders (their files there), or a UsageError."""
    record = read_run(run_dir, "evaluate")
    entries = [
        r
        for r in record.get("results", {}).values()
        if isinstance(r, dict) and r.get("status") == "ok" and "file" in r and "channel" in r
    ]
    if not entries:
        raise UsageError(f"{run_dir} has no finished channel renders to evaluate")
    by_layer: dict[str, list[dict]] = {}
    for r in entries:
        if not (run_dir / r["file"]).is_file():
            raise UsageError(f"{run_dir / r['file']}, recorded in {run_dir / 'run.json'}, is missing")
        by_layer.setdefault(r["layer"], []).append(r)
    return by_layer


def _check(req: EvaluateRequest) -> None:
    """Before a model is loaded: the run has renders to score, the photos folder has images."""
    _renders(Path(req.run_dir))
    if req.images:
        list_images(req.images)


def _plan(model: Model, req: EvaluateRequest) -> EvaluatePlan:
    """The run's finished channel renders (their files present), the photos and the second model."""
    run_dir = Path(req.run_dir)
    by_layer = _renders(run_dir)
    for layer in by_layer:
        if layer != LOGIT:
            get_layer(model, layer)  # a model without the run's layer: one line
    ev = req.eval_model
    if isinstance(ev, str):
        from ..models import load_model

        ev = load_model(ev, device=str(model.device))
    if ev is not None and not isinstance(ev, Model):
        raise UsageError("eval_model must be a model name or a filterscope Model")
    settings = {
        "model": model.describe(),
        "images": str(req.images or "bundled photos"),
        "eval_model": ev.describe() if ev is not None else None,
        "robust_crops": ROBUST_CROPS,
    }
    return EvaluatePlan(model, run_dir, by_layer, req.images, ev, settings)


def score_layer(model: Model, layer: str, recs: list[dict], run_dir: Path, images, eval_model) -> dict:
    """``{"summary", "channels"}`` of one layer's renders ``recs`` (their results in ``run.json``)."""
    nat = natural_max(model, layer, images)
    imgs = torch.stack([image_tensor(load_image(run_dir / r["file"]), model.in_channels) for r in recs])
    chans = [r["channel"] for r in recs]
    scores = score_images(model, layer, chans, imgs, nat, eval_model)
    for s, ps in zip(scores, path_scores(model, layer, chans, imgs, images)):
        s.path_similarity = None if np.isnan(ps) else ps
    ratios = np.array([s.ratio for s in scores])
    robust = np.array([s.robust_ratio for s in scores])
    summary = {
        "channels": len(scores),
        "median_ratio": float(np.median(ratios)),
        "median_robust_ratio": float(np.median(robust)),
        "mean_robust_ratio": float(np.mean(robust)),
        "median_colourfulness": float(np.median([s.colourfulness for s in scores])),
        "median_rms_contrast": float(np.median([s.rms_contrast for s in scores])),
    }
    paths = [s.path_similarity for s in scores if s.path_similarity is not None]
    if paths:
        summary["median_path_similarity"] = float(np.median(paths))
    if eval_model is not None and layer == LOGIT:
        summary["top1"] = float(np.mean([s.top1 for s in scores]))
        summary["top5"] = float(np.mean([s.top5 for s in scores]))
    return {"summary": summary, "channels": [s.as_dict() for s in scores]}


def _compute(ctx: RunContext, p: EvaluatePlan) -> dict | None:
    out: dict = {
        "run": str(p.run_dir),
        "model": p.model.name,
        "images": str(p.images or "bundled photos"),
        "eval_model": p.eval_model.name if p.eval_model else None,
        "robust_crops": ROBUST_CROPS,
        "layers": {},
    }
    with ctx.progress(len(p.by_layer), "evaluate", unit="layer") as bar:
        for layer, recs in p.by_layer.items():
            if ctx.stop():
                ctx.mark_partial(len(out["layers"]), len(p.by_layer), "layers", resumable=False)
                return None
            out["layers"][layer] = score_layer(p.model, layer, recs, p.run_dir, p.images, p.eval_model)
            bar.update()
    return out


def _write(ctx: RunContext, result: dict | None) -> None:
    if result is None:
        return
    ctx.run.write(EVALUATION_FILE, json_bytes(result))
    for layer, data in result["layers"].items():
        ctx.run.result(layer, data["summary"])


def _summary(r: JobResult) -> list[str]:
    return [table(r.data), f"wrote {r.run_dir / EVALUATION_FILE}"]


JOB = Job(
    "evaluate",
    EvaluateRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="Measure renders: activation vs natural images, robustness to crops, transferability.",
    precheck=_check,
    into_run="run_dir",
    json=lambda r: r.data,
)


def evaluate(
    run_dir: str | Path,
    model: Model | None = None,
    *,
    images: str | Path | None = None,
    eval_model: Model | str | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    """Score every finished channel render of the complete run in ``run_dir`` (ratio to the best of
    ``images``, robustness to crops, colourfulness, contrast, path similarity; with ``eval_model``, whether a
    second model recognises a class render). ``model`` defaults to the one the run records. Writes
    ``evaluation.json`` into the run and records itself under ``run.json``'s ``added.evaluate``; returns the
    :class:`~.contract.JobResult` whose ``data`` is the evaluation (the content of ``evaluation.json``)."""
    return run_job(
        JOB,
        model,
        run_dir=None if run_dir is None else str(run_dir),
        images=None if images is None else str(images),
        eval_model=eval_model,
        progress=progress,
        should_stop=should_stop,
    )


def table(result: dict) -> str:
    lines = []
    for layer, data in result["layers"].items():
        lines.append(f"{layer}: {data['summary']['channels']} renders vs max over natural images")
        has_t = any("top1" in c for c in data["channels"])
        head = f"  {'channel':>7} {'act':>8} {'nat.max':>8} {'ratio':>7} {'robust':>7} {'colour':>7} {'contr.':>6}"
        lines.append(head + ("  top1 top5" if has_t else ""))
        for c in data["channels"]:
            row = (
                f"  {c['channel']:>7} {c['activation']:>8.3f} {c['natural_max']:>8.3f} {c['ratio']:>7.3f} "
                f"{c['robust_ratio']:>7.3f} {c['colourfulness']:>7.1f} {c['rms_contrast']:>6.3f}"
            )
            if has_t:
                row += f"  {'yes' if c['top1'] else 'no':>4} {'yes' if c['top5'] else 'no':>4}"
            lines.append(row)
        s = data["summary"]
        lines.append(
            f"  median ratio {s['median_ratio']:.3f} · median robust ratio {s['median_robust_ratio']:.3f}"
            f" · colourfulness {s['median_colourfulness']:.1f} · RMS contrast {s['median_rms_contrast']:.3f}"
            + (f" · median path similarity {s['median_path_similarity']:.3f}" if "median_path_similarity" in s else "")
            + (f" · top1 {s['top1']:.0%} · top5 {s['top5']:.0%}" if "top1" in s else "")
        )
    return "\n".join(lines)
