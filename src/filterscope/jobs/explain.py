"""Explain an image: which filters drive the prediction, what each one sees in the photo, and the evidence.

One pass of :func:`explain`:

1. inspect the photo at the layer and rank its filters by contribution to the class (gradient × activation,
   the Taylor estimate of zeroing a filter; :mod:`.attribution`) beside the mean activation;
2. check the ranking by ablation on this photo: the class probability as the top-k filters of each
   ranking (and k random filters) are set to zero, k = 1…16 (a deletion curve);
3. for each of the top filters: where it fires, its accentuation of the photo (:mod:`.accentuate`), its
   render from noise (``fast`` preset), its top natural images (one streamed pass over the bundled photos
   or ``images``, :func:`~.dataset.collect_examples`), and the path similarity of the render and of the
   accentuation to those natural images (:mod:`.similarity`).

The default layer is ``blocks.5`` when the model has one (EfficientNet's second-to-last stage, 7×7 maps):
its filters respond to object parts whose accentuations and renders are readable, and zeroing its top
filters moves the prediction. The model's own default (``bn2`` on EfficientNet, a ReLU6 right before the
pooled head) saturates at 6, so renders all reach the same ceiling and say little. Other models use
their default layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import Interrupted, UsageError
from ..models.inputs import list_images, load_image, model_input, sample_image_path, sample_photos_dir
from ..models.layers import LayerInfo, network_layer
from ..models.model import Model
from ..optvis.presets import DEFAULT_METHOD, get_preset
from ..outputs.images import png_bytes
from ..outputs.site import data_uri as _uri
from ..outputs.site import figure_uri as _fig_uri
from .accentuate import DEFAULT_STEPS, DEFAULT_STRENGTH, Accentuation, accentuate_image
from .attribution import check_class, check_rank, deletion_curve
from .boost import check_top
from .contract import Job, JobResult, RunContext, opt, run_job
from .inspect import Inspection, inspect_image

DELETION_KS = tuple(range(1, 17))
N_EXAMPLES = 3


def explain_layer(model: Model) -> str:
    """The layer ``explain`` uses when none is named: the model's preferred one (``blocks.5`` for EfficientNet,
    see the module docstring and :attr:`Model.preferred_layers`), else its default layer."""
    return model.preferred_layer("explain")


@dataclass
class FilterEvidence:
    """Everything the report shows for one filter."""

    channel: int
    contribution: float
    mean: float
    max: float
    fires: torch.Tensor  # [h, w] where it fires on the photo
    accent: Accentuation
    render: torch.Tensor  # [3, S, S] render from noise
    render_activation: float
    examples: list[dict] = field(default_factory=list)  # {file, activation, image [3,S,S]}
    path_render: float = float("nan")
    path_accent: float = float("nan")
    path_photo: float = float("nan")

    def record(self) -> dict:
        return {
            "channel": self.channel,
            "contribution": round(self.contribution, 6),
            "mean": round(self.mean, 6),
            "max": round(self.max, 6),
            "accentuation": self.accent.record(),
            "render_activation": round(self.render_activation, 6),
            "examples": [{"file": e["file"], "activation": round(e["activation"], 6)} for e in self.examples],
            "path_similarity": {
                "render": round(self.path_render, 4),
                "accentuation": round(self.path_accent, 4),
                "photo": round(self.path_photo, 4),
            },
        }


@dataclass
class Explanation:
    """What :func:`explain` found; shows itself as the report in Jupyter."""

    model: str
    image_name: str
    inspection: Inspection
    filters: list[FilterEvidence]
    deletion: dict[str, list[float]]  # ranking → probability drop for k = DELETION_KS
    examples_folder: str
    settings: dict
    run_dir: Path | None = None
    timings: dict = field(default_factory=dict)
    status: str = "complete"
    deletion_ks: tuple[int, ...] = DELETION_KS
    interruption: str | None = None  # the one-line message of a partial run

    def raise_if_partial(self) -> None:
        """Raise :class:`~filterscope.errors.Interrupted` (exit 130 from the CLI) for a stopped run."""
        if self.status == "partial":
            raise Interrupted(self.interruption or "interrupted: explanation incomplete")

    def record(self) -> dict:
        ins = self.inspection
        k8 = DELETION_KS.index(8) if 8 in DELETION_KS else -1
        return {
            "class": ins.target_class,
            "class_name": _class_name(ins),
            "filters": [f.record() for f in self.filters],
            "ablation": {
                "k": list(DELETION_KS),
                "drop": {r: [round(v, 5) for v in d] for r, d in self.deletion.items()},
                "top8_drop": {r: round(d[k8], 5) for r, d in self.deletion.items()},
            },
            "examples_folder": self.examples_folder,
        }

    def html(self) -> str:
        from ..outputs.site import render_report

        return render_report(report_context(self))

    def _repr_html_(self) -> str:
        return self.html()


def _class_name(ins: Inspection) -> str:
    for c, n, _ in ins.predictions:
        if c == ins.target_class:
            return n
    return str(ins.target_class)


@dataclass
class ExplainRequest:
    """The arguments of ``filterscope explain``."""

    image: str | Path | Image.Image | None = opt(
        None, "Image file [default: the bundled photo].", argument=True, optional=True
    )
    layer: str | None = opt(None, "Layer [default: blocks.5 when the model has it, else its default layer].")
    top: int = opt(3, "Filters to explain.", min=1)
    rank: str = opt(
        "contribution",
        "Order filters by contribution to the class (gradient × activation) or by mean activation.",
        choices=("contribution", "activation"),
    )
    target_class: int | None = opt(None, "Class to explain [default: the prediction].", flag="--class")
    images: str | Path | None = opt(None, "Folder of natural images for top examples (default: bundled photos).")
    strength: float | None = opt(
        None,
        f"Accentuation closeness (the weight of 1 − SSIM, as accentuate's) [default: {DEFAULT_STRENGTH:g}].",
        min=0,
    )
    seed: int = opt(0, "Seed.", min=0)
    accent_steps: int = opt(DEFAULT_STEPS, "Accentuation steps.", cli=False)
    method: str = opt(DEFAULT_METHOD, "Preset of the renders from noise.", cli=False)
    render_steps: int | None = opt(None, "Steps of the renders [default: the preset's].", cli=False)


@dataclass
class ExplainPlan:
    model: Model
    image: Image.Image
    image_name: str
    info: LayerInfo
    files: list[Path]
    folder: Path
    request: ExplainRequest
    settings: dict


def _check_files(req: ExplainRequest) -> None:
    if isinstance(req.image, (str, Path)):
        load_image(req.image)
    if req.images:
        list_images(req.images)


def _plan(model: Model, req: ExplainRequest) -> ExplainPlan:
    check_rank(req.rank)
    check_class(model, req.target_class)
    info = network_layer(model, req.layer or explain_layer(model), "explain")
    check_top(req.top, info)
    folder = Path(req.images) if req.images else sample_photos_dir()
    files = list_images(folder)  # raises a usage error for a folder without images
    if isinstance(req.image, Image.Image):
        pil, image_name = req.image, "<PIL image>"
    else:
        path = Path(req.image) if req.image else sample_image_path()
        pil, image_name = load_image(path), str(req.image or "bundled:coffee.jpg")
    if req.strength is None:
        req = replace(req, strength=DEFAULT_STRENGTH)
    method, render_steps = req.method, req.render_steps
    settings = {
        "model": model.describe(),
        "image": image_name,
        "layer": info.name,
        "top": req.top,
        "rank": req.rank,
        "target_class": req.target_class,
        "images": str(req.images or "bundled photos"),
        "accentuation": {"strength": req.strength, "steps": req.accent_steps},
        "method": method,
        "render": get_preset(method).with_(steps=render_steps).for_model(model).as_dict(),
        "seed": req.seed,
        "deletion_k": list(DELETION_KS),
    }
    return ExplainPlan(model, pil, image_name, info, files, folder, req, settings)


def _work(p: ExplainPlan, progress: bool, stop: Callable[[], bool] | None, kept=None, on_accent=None) -> Explanation:
    r = p.request
    return _explain(
        p.model, p.image, p.image_name, p.info, r.top, r.rank, r.target_class, r.images, p.files, p.folder,
        r.strength, r.accent_steps, r.method, r.render_steps, r.seed, p.settings, progress, stop, kept, on_accent,
    )  # fmt: skip


STAGE = "resume"  # finished accentuations (exact floats) kept for --resume; removed when the run completes


def _stage(layer: str, c: int) -> tuple[str, str]:
    """The file and the result key of a staged accentuation."""
    return f"{STAGE}/{layer}/accent_{c:04d}.npz", f"explain-accent:{layer}:{c}"


def _save_accent(run, acc: Accentuation) -> None:
    """Keep a finished accentuation for ``--resume``: its pictures and numbers, exactly."""
    import io

    rel, key = _stage(acc.layer, acc.channel)
    buf = io.BytesIO()
    nums = [acc.activation_photo, acc.activation_accent, acc.ssim, acc.strength, acc.seconds, acc.scale]
    np.savez(buf, image=acc.image.numpy(), change=acc.change.numpy(), nums=np.array(nums, dtype=np.float64))
    run.write(rel, buf.getvalue())
    run.result(key, {**acc.record(), "file": rel})


def _load_accent(run, layer: str, c: int, photo: torch.Tensor) -> Accentuation | None:
    """A staged accentuation of an earlier, interrupted run of the folder, or ``None``."""
    import io

    rel, key = _stage(layer, c)
    if not run.done(key) or not run.file(rel).is_file():
        return None
    rec = run.record["results"][key]
    with np.load(io.BytesIO(run.file(rel).read_bytes())) as z:
        image, change, nums = torch.from_numpy(z["image"]), torch.from_numpy(z["change"]), z["nums"].tolist()
    return Accentuation(layer, c, photo, image, change, *nums[:5], scale=nums[5], method=rec["method"])


def _compute(ctx: RunContext, p: ExplainPlan) -> Explanation:
    run = ctx.run
    kept = (lambda c, photo: _load_accent(run, p.info.name, c, photo)) if ctx.resume else None
    keep = (lambda a: _save_accent(run, a)) if ctx.path is not None else None  # in memory: nothing to resume
    res = _work(p, ctx.show_progress, ctx.stop, kept=kept, on_accent=keep)
    if ctx.path is None:  # in memory (a run in a folder gets its total once it has written, :func:`_write`)
        res.timings["total_s"] = round(ctx.elapsed(), 3)
    if res.status == "partial":
        ctx.mark_partial(len(res.filters), p.request.top, "channels")
        res.interruption = ctx.interruption
    return res


def _write(ctx: RunContext, res: Explanation) -> None:
    with ctx.timed("write"):
        write_explanation(ctx.run, res)
        if ctx.status == "complete":  # the staged accentuations are no longer needed
            for f in res.filters:
                ctx.run.discard(*_stage(res.inspection.layer.name, f.channel))
    res.run_dir = ctx.path
    res.timings["write_s"] = ctx.record["timings"]["write_s"]
    res.timings["total_s"] = round(ctx.elapsed(), 3)
    ctx.record["timings"].update(res.timings)
    res.interruption = ctx.interruption


def _summary(r: JobResult) -> list[str]:
    res = r.data
    ins = res.inspection
    rec = res.record()
    lines = [
        f"{res.model} · {ins.layer.name} · explaining {rec['class_name']} ({ins.target_class}); "
        f"prediction {ins.predictions[0][1]} ({ins.predictions[0][2]:.1%})",
        "zeroing the top 8 filters lowers p by: "
        + ", ".join(f"{k} {v:.3f}" for k, v in rec["ablation"]["top8_drop"].items()),
    ]
    for f in res.filters:
        lines.append(
            f"  filter {f.channel:4d}: contribution {f.contribution:+.3f} · accentuation gain {f.accent.gain:.2f}×, "
            f"SSIM {f.accent.ssim:.3f} · path similarity render {f.path_render:.2f}"
        )
    lines.append(f"wrote {r.run_dir}/report.html, figure_explain.png, run.json ({res.timings['total_s']:.1f} s)")
    return lines


JOB = Job(
    "explain",
    ExplainRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="Which filters drive IMAGE's prediction, what each sees in it, and the evidence: report.html.",
    renders=True,
    resumable=True,
    precheck=_check_files,
)


def explain(
    model: Model,
    image: str | Path | Image.Image | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    **options,
) -> JobResult:
    """Explain ``image`` (default: the bundled cup; ``options``: the fields of :class:`ExplainRequest`).

    Returns the job's :class:`~.contract.JobResult`; its ``data`` is the :class:`Explanation` (shown as the
    report in Jupyter). Without ``out`` it runs in memory and writes nothing; with ``out`` it writes
    ``report.html``, ``figure_explain.png``, the accentuations and renders, and ``run.json`` there (the job
    :data:`JOB`); ``resume`` finishes an interrupted run of ``out``, keeping its finished accentuations."""
    return run_job(
        JOB, model, out=out, in_memory=out is None, resume=resume, progress=progress, should_stop=should_stop,
        image=image, **options,
    )  # fmt: skip


def _explain(
    model,
    pil,
    image_name,
    info,
    top,
    rank,
    target_class,
    images,
    files,
    folder,
    strength,
    accent_steps,
    method,
    render_steps,
    seed,
    settings,
    progress,
    should_stop,
    kept: Callable[[int, torch.Tensor], Accentuation | None] | None = None,
    on_accent: Callable[[Accentuation], None] | None = None,
) -> Explanation:
    """The work of :func:`explain`, once its arguments are checked; ``kept(c, photo)`` gives filter ``c``'s
    accentuation finished by an earlier run (``--resume``), ``on_accent`` sees each new one."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    x = model_input(model, pil)
    ins = inspect_image(model, x, info.name, top=top, rank=rank, target_class=target_class)
    if ins.contributions is None:
        raise UsageError(f"{model.name} does not output class logits: explain needs them")
    timings["inspect_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    deletion = ablation_curves(model, x, info, ins, seed)
    timings["ablation_s"] = time.perf_counter() - t

    t = time.perf_counter()
    chans = ins.top
    photo = (x[0] if x.dim() == 4 else x).detach().float().cpu()
    found = {c: kept(c, photo) for c in chans} if kept else {}
    done = {c: a for c, a in found.items() if a is not None}
    todo = [c for c in chans if c not in done]
    new = (
        accentuate_image(
            model,
            x,
            info.name,
            todo,
            strength=strength,
            steps=accent_steps,
            seed=seed,
            progress=progress,
            should_stop=should_stop,
            on_done=on_accent,
        )
        if todo
        else []
    )
    by_channel = {**done, **{a.channel: a for a in new}}
    accents = []
    for c in chans:  # in rank order, up to the first filter not finished
        if c not in by_channel:
            break
        accents.append(by_channel[c])
    timings["accentuate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    from .stream import render_stream

    renders = {}
    from tqdm import tqdm

    bar = tqdm(total=len(chans), desc=f"render {info.name} from noise", unit="filter", disable=not progress)
    for r in render_stream(
        model, info, chans, get_preset(method).with_(steps=render_steps), seed, batch=1, should_stop=should_stop
    ):
        renders[r.channel] = r
        bar.update(1)
    bar.close()
    timings["render_s"] = time.perf_counter() - t

    t = time.perf_counter()
    filters = evidence(model, info, ins, accents, renders, files, folder, progress)
    timings["examples_s"] = time.perf_counter() - t

    status = "complete" if len(filters) == len(chans) else "partial"
    res = Explanation(model.name, image_name, ins, filters, deletion, str(images or "bundled photos"), settings)
    res.status = status
    res.timings = {k: round(v, 3) for k, v in timings.items()}
    return res


def ablation_curves(model: Model, x: torch.Tensor, info: LayerInfo, ins: Inspection, seed: int) -> dict:
    """Deletion curves of the class probability for the two rankings and a random order."""
    rng = np.random.default_rng(seed)
    orders = {
        "contribution": ins.order("contribution"),
        "activation": ins.order("activation"),
        "random": rng.permutation(info.channels).tolist(),
    }
    return {
        name: deletion_curve(model, x, info, order, ins.target_class, DELETION_KS).tolist()
        for name, order in orders.items()
    }


def evidence(
    model: Model,
    info: LayerInfo,
    ins: Inspection,
    accents: list[Accentuation],
    renders: dict,
    files: list[Path],
    folder: Path,
    progress: bool,
) -> list[FilterEvidence]:
    """Top natural images per filter (one streamed pass) and path similarities."""
    from .dataset import collect_examples
    from .similarity import path_layers, path_profiles, path_similarity

    _, stats = collect_examples(model, [info], folder, n_top=N_EXAMPLES, batch=8, progress=progress)
    st = stats[info.name]
    stages = path_layers(model, info)
    out = []
    for acc in accents:
        c = acc.channel
        r = renders.get(c)
        if r is None:
            break
        ex_idx = [int(i) for i in st.top_index[c].tolist() if i >= 0]
        ex_imgs = torch.cat([model_input(model, load_image(files[i])) for i in ex_idx])
        nat = path_profiles(model, ex_imgs, stages)
        pr = path_profiles(model, r.image[None], stages)
        pa = path_profiles(model, acc.image[None], stages)
        pp = path_profiles(model, acc.photo[None], stages)
        out.append(
            FilterEvidence(
                c,
                float(ins.contributions[c]),
                float(ins.means[c]),
                float(ins.maxes[c]),
                ins.maps[c],
                acc,
                r.image,
                r.after,
                [
                    {"file": str(files[i].relative_to(folder)), "activation": float(v), "image": ex_imgs[j]}
                    for j, (i, v) in enumerate(zip(ex_idx, st.top_values[c].tolist()))
                ],
                path_similarity(pr, nat),
                path_similarity(pa, nat),
                path_similarity(pp, nat),
            )
        )
    return out


def report_context(res: Explanation) -> dict:
    """Everything ``templates/explain.html`` needs, pictures as data URIs (one self-contained page)."""
    from ..outputs import figures

    ins = res.inspection
    k = len(ins.top)
    rows = []
    for f in res.filters:
        rows.append(
            {
                "channel": f.channel,
                "contribution": f.contribution,
                "mean": f.mean,
                "fires": _uri(png_bytes(Image.fromarray(figures.overlay(ins.image, f.fires)))),
                "accent": _uri(png_bytes(f.accent.image)),
                "change": _uri(png_bytes(f.accent.change_rgb())),
                "render": _uri(png_bytes(f.render)),
                "act_photo": f.accent.activation_photo,
                "act_accent": f.accent.activation_accent,
                "gain": f.accent.gain,
                "ssim": f.accent.ssim,
                "render_activation": f.render_activation,
                "examples": [
                    {"uri": _uri(png_bytes(e["image"])), "file": e["file"], "activation": e["activation"]}
                    for e in f.examples
                ],
                "path_render": f.path_render,
                "path_accent": f.path_accent,
                "path_photo": f.path_photo,
            }
        )
    rec = res.record()
    return {
        "model": res.model,
        "image_name": Path(res.image_name).name,
        "layer": ins.layer.name,
        "shape": ins.layer.shape_str(),
        "photo": _uri(png_bytes(ins.image)),
        "predictions": ins.predictions,
        "target_class": ins.target_class,
        "class_name": _class_name(ins),
        "rank": ins.rank,
        "bars_contribution": _fig_uri(figures.bar_chart(ins, rank="contribution", k=k)),
        "bars_activation": _fig_uri(figures.bar_chart(ins, rank="activation", k=k)),
        "deletion": _fig_uri(figures.deletion_figure(list(DELETION_KS), res.deletion, _class_name(ins))),
        "top8": rec["ablation"]["top8_drop"],
        "top_activation": ins.order("activation", k),
        "filters": rows,
        "examples_folder": res.examples_folder,
        "settings": res.settings,
        "timings": res.timings,
        "status": res.status,
    }


def write_explanation(run, res: Explanation) -> None:
    """``report.html``, ``figure_explain.png``, the accentuations, change maps and renders, activations.csv."""
    from ..outputs import figures
    from ..outputs.naming import REPORT, channel_file, figure_file
    from .accentuate import write_accentuation
    from .inspect import activations_csv, inspection_record

    ins = res.inspection
    run.write_text("activations.csv", activations_csv(ins))
    run.record["inspection"] = inspection_record(ins)
    for f in res.filters:
        write_accentuation(run, f.accent)
        run.write(channel_file(ins.layer.name, f.channel), png_bytes(f.render))
    run.record["explain"] = res.record()
    run.write_figure(figure_file("explain"), figures.explain_figure(res))
    run.write_text(REPORT, res.html())
