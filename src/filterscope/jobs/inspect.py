"""Inspecting an image: the mean activation of every filter of a layer, the top filters, and where they fire.

For a layer whose maps are 1×1 (e.g. resnet18's ``avgpool``) or that has no spatial maps (a flattened
layer), the maps are taken from the spatial tensor that feeds it, and :attr:`Inspection.maps_from` says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models.layers import LayerInfo, get_layer, list_layers, map_views, network_layer
from ..models.model import Model
from ..optvis.hooks import capture, run
from ..outputs import figures
from ..outputs.images import channel_conversion, load_image, model_input, sample_image_path
from ..outputs.naming import figure_file
from ..outputs.rundir import RunDir


@dataclass
class Inspection:
    layer: LayerInfo
    image: torch.Tensor  # [3, S, S] in [0, 1]: what the model saw
    means: np.ndarray  # [C] mean activation of each filter over positions
    maxes: np.ndarray  # [C] max activation over positions
    maps: torch.Tensor  # [C, h, w] spatial maps used for "where it fires"
    maps_from: str  # which tensor the maps come from
    top: list[int]  # filter indices, highest mean first
    predictions: list[tuple[int, str, float]]  # top-5 classes (index, name, probability)


def inspect(model: Model, image: Image.Image | torch.Tensor, layer: str = "default", top: int = 5) -> Inspection:
    """Run ``image`` through ``model`` and collect ``layer``'s activations with a forward hook."""
    info = network_layer(model, layer, "inspect")
    x = image if isinstance(image, torch.Tensor) else model_input(model, image)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x = x.to(model.device)
    needs_input = not info.spatial or info.shape[1] * info.shape[2] == 1
    with (
        capture(
            model.net,
            [info.name],
            calls={info.name: info.calls},
            inputs_of=[info.name] if needs_input else [],
            views=map_views(model, [info.name]),
        ) as cap,
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
    k = max(1, min(top, info.channels))
    order = np.argsort(-means, kind="stable")[:k].tolist()
    probs = torch.softmax(logits[0].float(), 0).cpu()
    pv, pi = probs.topk(min(5, probs.numel()))
    names = model.categories or []
    preds = [(int(i), names[int(i)] if int(i) < len(names) else str(int(i)), float(p)) for p, i in zip(pv, pi)]
    return Inspection(info, x[0].detach().cpu(), means, maxes, maps, maps_from, order, preds)


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
        capture(model.net, [src.name], calls={src.name: src.calls}, views=map_views(model, [src.name])) as cap,
        torch.inference_mode(),
    ):
        run(model.forward, x, cap)
        return cap.acts[src.name][0].float().cpu(), f"{src.name} (it feeds {info.name}, whose outputs are not spatial)"


def activations_csv(ins: Inspection) -> str:
    lines = ["filter,mean,max"]
    lines += [f"{i},{ins.means[i]:.6f},{ins.maxes[i]:.6f}" for i in range(len(ins.means))]
    return "\n".join(lines) + "\n"


def write_inspection(run: RunDir, ins: Inspection) -> None:
    run.write_text("activations.csv", activations_csv(ins))
    run.write_figure(figure_file("activations"), figures.bar_chart(ins))
    run.write_figure(figure_file("heatmaps"), figures.heatmaps(ins))


def inspection_record(ins: Inspection) -> dict:
    return {
        "layer": ins.layer.name,
        "layer_shape": list(ins.layer.shape),
        "top": [
            {"filter": i, "mean": round(float(ins.means[i]), 6), "max": round(float(ins.maxes[i]), 6)} for i in ins.top
        ],
        "maps_from": ins.maps_from,
        "predictions": [{"class": c, "name": n, "probability": round(p, 6)} for c, n, p in ins.predictions],
    }


def inspect_to_dir(
    model: Model,
    image: str | Path | None,
    out: str | Path,
    *,
    layer: str = "default",
    top: int = 5,
    argv_settings: dict | None = None,
) -> tuple[Path, Inspection]:
    """``filterscope inspect``: chart, heatmaps, CSV and run.json for one image."""
    t0 = time.perf_counter()
    path = Path(image) if image else sample_image_path()
    pil = load_image(path)
    info = get_layer(model, layer)
    settings = {
        "model": model.describe(),
        "image": str(image or "bundled:coffee.jpg"),
        "image_conversion": channel_conversion(model.in_channels),
        "layer": info.name,
        "top": top,
        **(argv_settings or {}),
    }
    run = RunDir(out, "inspect", settings)
    ins = inspect(model, pil, info.name, top=top)
    write_inspection(run, ins)
    run.record["inspection"] = inspection_record(ins)
    run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    run.finish("complete")
    return run.path, ins
