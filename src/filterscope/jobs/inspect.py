"""Inspecting an image: the mean activation of every filter of a layer, the top filters, and where they fire.

For a layer whose maps are 1×1 (e.g. resnet18's ``avgpool``) or that has no spatial maps (a flattened
layer), the maps are taken from the spatial tensor that feeds it, and :attr:`Inspection.maps_from` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UsageError
from ..models.hooks import run
from ..models.inputs import channel_conversion, load_image, model_input, sample_image_path
from ..models.layers import LayerInfo, capture_layers, list_layers, network_layer
from ..models.model import Model
from ..outputs import figures
from ..outputs.naming import figure_file
from ..outputs.rundir import RunDir
from ..results import InspectionData
from .attribution import check_class, check_rank, contributions
from .contract import Job, JobResult, RunContext, opt, run_job


class Inspection(InspectionData):
    """One image at one layer (see :class:`~filterscope.results.InspectionData`); shows its bar chart in Jupyter."""

    def _repr_png_(self) -> bytes:
        """Jupyter: the bar chart of the layer (the ranking's top filters labelled)."""
        import io

        import matplotlib.pyplot as plt

        fig = figures.bar_chart(self)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi)
        plt.close(fig)
        return buf.getvalue()


def inspect(
    model: Model,
    image: str | Path | Image.Image | torch.Tensor | None = None,
    layer: str = "default",
    top: int = 5,
    *,
    rank: str = "activation",
    target_class: int | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    """Inspect ``image`` (a file, a PIL image, the model's input tensor; default: the bundled cup) at
    ``layer``: every filter's mean and max activation, the ``top`` filters by ``rank`` (``activation`` or
    ``contribution`` to ``target_class``, default the prediction) and where they fire.

    Returns the job's :class:`~.contract.JobResult`; its ``data`` is the :class:`Inspection` (and its
    attributes are the result's: ``fs.inspect(model, photo).top``). Without ``out`` it runs in memory and
    writes nothing; with ``out`` it writes ``activations.csv``, the bar chart, the heat maps and
    ``run.json`` there (the job :data:`JOB`, as ``filterscope inspect``)."""
    return run_job(
        JOB, model, out=out, in_memory=out is None, progress=progress, should_stop=should_stop,
        image=image, layer=layer, top=top, rank=rank, target_class=target_class,
    )  # fmt: skip


def inspect_image(
    model: Model,
    image: Image.Image | torch.Tensor,
    layer: str = "default",
    top: int = 5,
    *,
    rank: str = "activation",
    target_class: int | None = None,
) -> Inspection:
    """The work of :func:`inspect` (no run, no files; what other jobs call): run ``image`` through ``model``
    and collect ``layer``'s activations with a forward hook.

    ``rank="contribution"`` orders the filters by their contribution to ``target_class`` (default: the
    predicted class), gradient × activation summed over the map (see :mod:`.attribution`); the
    contributions are computed in both rankings when the model outputs logits.
    """
    check_rank(rank)
    info = network_layer(model, layer, "inspect")
    check_class(model, target_class)
    x = image if isinstance(image, torch.Tensor) else model_input(model, image)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x = x.to(model.device)
    needs_input = not info.spatial or info.shape[1] * info.shape[2] == 1
    with (
        capture_layers(model, [info], inputs_of=[info.name] if needs_input else []) as cap,
        torch.inference_mode(),
    ):
        logits = run(model.forward, x, cap)
        act = cap.acts[info.name][0].float()
        fed = cap.inputs.get(info.name)
    flat = act.flatten(1) if act.dim() == 3 else act[:, None]
    means = flat.mean(1).cpu().numpy()
    maxes = flat.amax(1).cpu().numpy()
    if not needs_input:
        maps, maps_from = act.cpu(), info.name
    elif fed is not None and fed.dim() == 4 and fed.shape[1] == info.channels and fed.shape[-1] > 1:
        maps, maps_from = fed[0].float().cpu(), f"the input of {info.name} (its own maps are 1×1)"
    else:
        maps, maps_from = _feeding_maps(model, x, info)
    contrib, cls = None, target_class
    try:
        contrib, _, cls = contributions(model, x, info, target_class)
    except UsageError:
        if rank == "contribution" or target_class is not None:
            raise
    k = max(1, min(top, info.channels))
    order = np.argsort(-(contrib if rank == "contribution" else means), kind="stable")[:k].tolist()
    probs = torch.softmax(logits[0].float(), 0).cpu()
    pv, pi = probs.topk(min(5, probs.numel()))
    names = model.categories or []
    preds = [(int(i), names[int(i)] if int(i) < len(names) else str(int(i)), float(p)) for p, i in zip(pv, pi)]
    return Inspection(info, x[0].detach().cpu(), means, maxes, maps, maps_from, order, preds, contrib, cls, rank)


def _feeding_maps(model: Model, x: torch.Tensor, info: LayerInfo) -> tuple[torch.Tensor, str]:
    """The last spatial layer before ``info`` with the same number of channels."""
    candidates = [
        i
        for i in list_layers(model)
        if i.order < info.order and i.spatial and i.channels == info.channels and i.shape[1] > 1
    ]
    if not candidates:
        ones = torch.ones(info.channels, 1, 1)
        return ones, "none (no spatial maps feed this layer)"
    src = candidates[-1]
    with (
        capture_layers(model, [src]) as cap,
        torch.inference_mode(),
    ):
        run(model.forward, x, cap)
        return cap.acts[src.name][0].float().cpu(), f"{src.name} (it feeds {info.name}, whose outputs are not spatial)"


def activations_csv(ins: Inspection) -> str:
    """One row per filter: mean, max, and the contribution to the target class when there is one."""
    has = ins.contributions is not None
    lines = ["filter,mean,max" + (",contribution" if has else "")]
    lines += [
        f"{i},{ins.means[i]:.6f},{ins.maxes[i]:.6f}" + (f",{ins.contributions[i]:.6f}" if has else "")
        for i in range(len(ins.means))
    ]
    return "\n".join(lines) + "\n"


def write_inspection(run: RunDir, ins: Inspection) -> None:
    run.write_text("activations.csv", activations_csv(ins))
    run.write_figure(figure_file("activations"), figures.bar_chart(ins))
    run.write_figure(figure_file("heatmaps"), figures.heatmaps(ins))


def _top_entry(ins: Inspection, i: int) -> dict:
    e = {"channel": i, "mean": round(float(ins.means[i]), 6), "max": round(float(ins.maxes[i]), 6)}
    if ins.contributions is not None:
        e["contribution"] = round(float(ins.contributions[i]), 6)
    return e


def inspection_record(ins: Inspection) -> dict:
    """``top`` is the ranked list of ``{channel, mean, max, contribution}`` in the chosen order."""
    return {
        "layer": ins.layer.name,
        "layer_shape": list(ins.layer.shape),
        "rank": ins.rank,
        "target_class": ins.target_class,
        "top": [_top_entry(ins, i) for i in ins.top],
        "maps_from": ins.maps_from,
        "predictions": [{"class": c, "name": n, "probability": round(p, 6)} for c, n, p in ins.predictions],
    }


@dataclass
class InspectRequest:
    """The arguments of ``filterscope inspect``."""

    image: str | Path | Image.Image | torch.Tensor | None = opt(
        None, "Image file [default: the bundled photo].", argument=True, optional=True
    )
    layer: str = opt("default", "Layer.")
    top: int = opt(5, "Filters listed.", min=1)
    rank: str = opt(
        "activation",
        "Order filters by mean activation, or by contribution to the class (gradient × activation).",
        choices=("activation", "contribution"),
    )
    target_class: int | None = opt(None, "Class for --rank contribution [default: the prediction].", flag="--class")


@dataclass
class InspectPlan:
    model: Model
    image: Image.Image | torch.Tensor
    request: InspectRequest
    layer: str
    settings: dict


def _check_image(req: InspectRequest) -> None:
    if isinstance(req.image, (str, Path)) and str(req.image):
        load_image(req.image)


def given_image(image: str | Path | Image.Image | torch.Tensor | None) -> tuple[Image.Image | torch.Tensor, str]:
    """The image a job was given and its name in ``run.json``: a file (its path; default: the bundled cup), or
    a PIL image or the model's input tensor given in Python."""
    if isinstance(image, Image.Image):
        return image, "<PIL image>"
    if isinstance(image, torch.Tensor):
        if image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1):
            raise UsageError(f"an image tensor is [C,H,W] or [1,C,H,W], got {list(image.shape)}")
        return image, "<tensor>"
    return load_image(Path(image) if image else sample_image_path()), str(image or "bundled:coffee.jpg")


def _plan(model: Model, req: InspectRequest) -> InspectPlan:
    check_rank(req.rank)
    check_class(model, req.target_class)
    if req.top < 1:
        raise UsageError(f"--top must be at least 1, got {req.top}")
    pil, name = given_image(req.image)
    info = network_layer(model, req.layer, "inspect")
    settings = {
        "model": model.describe(),
        "image": name,
        "image_conversion": channel_conversion(model.in_channels),
        "layer": info.name,
        "top": req.top,
        "rank": req.rank,
        "target_class": req.target_class,
    }
    return InspectPlan(model, pil, req, info.name, settings)


def _compute(ctx: RunContext, p: InspectPlan) -> Inspection:
    r = p.request
    return inspect_image(p.model, p.image, p.layer, top=r.top, rank=r.rank, target_class=r.target_class)


def _write(ctx: RunContext, ins: Inspection) -> None:
    write_inspection(ctx.run, ins)
    ctx.record["inspection"] = inspection_record(ins)


def _summary(r: JobResult) -> list[str]:
    ins, s = r.data, r.record["settings"]
    lines = [
        f"{s['model']['name']} · {ins.layer.name} ({ins.layer.shape_str()}) · prediction: "
        f"{ins.predictions[0][1]} ({ins.predictions[0][2]:.1%})",
        "top filters ("
        + (f"contribution to class {ins.target_class}" if ins.rank == "contribution" else "mean activation")
        + "):",
    ]
    has = ins.contributions is not None
    lines += [
        f"  {i:5d}  mean {ins.means[i]:.4f}" + (f"  contribution {ins.contributions[i]:+.4f}" if has else "")
        for i in ins.top
    ]
    if s["model"]["in_channels"] != 3:
        lines.append(f"image converted for {s['model']['in_channels']} input channels: {s['image_conversion']}")
    lines.append(f"wrote {r.run_dir}/figure_activations.png, figure_heatmaps.png, activations.csv, run.json")
    return lines


JOB = Job(
    "inspect",
    InspectRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="Which filters of LAYER an IMAGE excites most (or contribute most to the class), and where.",
    precheck=_check_image,
)
