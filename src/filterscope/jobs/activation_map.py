"""``filterscope map``: the map of a layer, an activation atlas (Carter et al., Distill 2019).

The layer's activation vectors over a folder of images (the layer pass shared with ``dictionary``:
:func:`~filterscope.jobs.vectors.layer_vectors`, local or on Ray Data), at most :data:`PER_IMAGE` positions
drawn at random per image (the atlas took one random position from each of a million images; a folder of
dozens needs more, and the cap keeps a large map from dominating), are laid out in two dimensions
(:mod:`.map_layout`: UMAP, or PCA / t-SNE), and a ``G × G`` grid over the layout groups them. Each cell that
holds at least ``min_points`` points becomes one entry of the map:

- its **mean activation**, rendered from noise with the ``direction`` objective through the render loop and
  the render cache (written as each finishes: ``<layer>/cell_0042.png``, 42 = ``i·G + j``; ``--resume``
  keeps them);
- its **class**: the class the direction supports most through the rest of the network: the logits when the
  cell's mean vector fills the layer's map, minus those when the mean of all vectors does (as ``concepts``'
  votes read a concept direction);
- its **name** (the names module's INVERT name of the cell as a unit whose activation on an image is the
  share of the image's points in the cell; labels: the class sub-folders, else the model's top-1 classes);
- its **exemplars**: the images of the points nearest the cell's mean (one per image), with their positions.

A class map (``--class K``) keeps the positions of the images of class ``K`` (the folder ``K`` when the
images are in class folders, else the images the model predicts as ``K``) and shades each cell by its
attribution to the class: the rise of the class's logit when the cell's direction fills the map.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from ..models.inputs import list_images, sample_photos_dir
from ..models.layers import LayerInfo, get_layer, network_layer
from ..models.model import Model
from .activations import check_maps_layer, forward_variants
from .contract import Job, JobResult, RunContext, opt, run_job
from .map_layout import LAYOUTS, MIN_POINTS, grid_cells, layout_2d, nearest_points

MAP_FILE = "map.json"
MAP_PNG = "map.png"
MAP_NPZ = "map.npz"  # the points' layout and the cells' mean vectors (the explorer and benchmarks read it)
DEFAULT_GRID = 12
PER_IMAGE = 64  # at most this many positions per image (drawn at random, seeded)
MAX_VECTORS = 20000  # the layer pass keeps at most this many vectors in all
N_TOP = 6  # exemplars per cell
N_CHANNELS = 5  # nearest channels shown per cell
RENDER_METHOD = "fast"  # the measured choice (benchmarks/results/map.md, "preset")
COSSIM_POW = 0.0  # the direction objective's cosine term (0: the plain projection)
CROP_PX = 96  # side of an exemplar's crop in the report
# the job's bars, in their order (after the layer's activation pass, vectors.PASS): what a run's progress (the
# CLI's bars, run_job's on_progress, the explorer's map page) reads, e.g. "layout 120/500", "rendering cells 4/36"
LAYOUT_BAR = "layout"  # one step; UMAP's epochs when it runs them
CLASSES_BAR = "cell classes"  # each cell's class vote through the rest of the network
NAMES_BAR = "naming cells"  # the names and purities of all cells at once
CROPS_BAR = "exemplar crops"
RENDERS_BAR = "rendering cells"


@dataclass
class MapRequest:
    """The arguments of ``filterscope map``."""

    images: str | None = opt(
        None,
        "Folder of images; class sub-folders name the cells [default: bundled photos].",
        argument=True,
        optional=True,
    )
    layer: str = opt("default", "Layer with spatial maps.")
    grid: int = opt(DEFAULT_GRID, "Cells per side of the grid over the layout (at least 2).")
    layout: str = opt("umap", "2-D layout of the vectors: umap, pca or tsne.", choices=LAYOUTS)
    class_: str | None = opt(
        None, "Class map: a class sub-folder (name or index) or the model's class index.", flag="--class", metavar="K"
    )
    min_points: int = opt(MIN_POINTS, "Fewest points a cell needs to be drawn.", min=1)
    seed: int = opt(0, "Seed of the sampling, the layout and the renders.", min=0)
    no_renders: bool = opt(False, "Skip the cell renders.")
    method: str | None = opt(None, f"Render preset [default: {RENDER_METHOD}].")
    backend: str = opt("local", "Where the layer pass runs: local or ray (Ray Data).", choices=("local", "ray"))


@dataclass
class MapPlan:
    model: Model
    info: LayerInfo
    root: Path
    files: list[Path]
    folders: list[str] | None  # class sub-folders when IMAGES is laid out as an ImageFolder
    grid: int
    layout: str
    min_points: int
    seed: int
    target: dict | None  # {"folder": name} or {"class": index}
    render: Any  # RenderSettings or None
    backend: str
    settings: dict


@dataclass
class Cell:
    """One drawn cell of the map."""

    i: int
    j: int
    points: np.ndarray  # indices into the map's points
    mean: np.ndarray  # [C] mean activation vector
    top: list[dict]
    channels: list[dict]
    class_index: int = -1
    class_name: str = ""
    vote: float = 0.0
    attribution: float | None = None  # class maps: the rise of the class's logit
    name: dict | None = None
    purity: dict | None = None
    render: torch.Tensor | None = None  # [3, H, W] in [0, 1]
    render_record: dict = field(default_factory=dict)
    crops: list[torch.Tensor] = field(default_factory=list)  # the exemplars' crops, [3, CROP_PX, CROP_PX]

    def index(self, grid: int) -> int:
        return self.i * grid + self.j

    def record(self, layer: str, grid: int) -> dict:
        r = {
            "i": self.i,
            "j": self.j,
            "n": int(len(self.points)),
            "name": self.name,
            "class": {"index": self.class_index, "name": self.class_name, "vote": round(self.vote, 5)},
            "render": cell_file(layer, self.index(grid)) if self.render is not None else None,
            "top": self.top,
            "purity": self.purity,
            "channels": self.channels,
        }
        if self.attribution is not None:
            r["attribution"] = round(self.attribution, 5)
        if self.render_record:
            r["render_activation"] = {
                k: self.render_record.get(k) for k in ("activation_before", "activation_after", "cached")
            }
        return r


@dataclass
class ActivationMap:
    """The map of a layer: points, layout, grid and cells (``record()`` is ``map.json``)."""

    model: str
    layer: LayerInfo
    grid: int
    layout_method: str
    layout: np.ndarray  # [n, 2] raw layout
    xy: np.ndarray  # [n, 2] clipped, in [0, 1]
    point_image: np.ndarray
    point_yx: np.ndarray
    files: list[str]  # relative to IMAGES
    labels: list[str]
    label_source: str
    cells: list[Cell]
    target: dict | None
    settings: dict
    map_size: tuple[int, int]
    images_total: int
    run_dir: Path | None = None
    status: str = "complete"

    def record(self) -> dict:
        return {
            "model": self.model,
            "layer": self.layer.name,
            "grid": self.grid,
            "layout": {
                "method": self.layout_method,
                "points": int(len(self.xy)),
                "images": int(len(set(self.point_image.tolist()))),
                "clip_percentiles": [1, 99],
                "min_points": self.settings.get("min_points"),
            },
            "map_size": list(self.map_size),
            "labels": self.label_source,
            "class": self.target,
            "cells": [c.record(self.layer.name, self.grid) for c in self.cells],
        }

    def arrays(self) -> bytes:
        """``map.npz``: ``xy`` (the clipped layout in [0, 1]²), ``image`` and ``yx`` of every point, and
        ``cells`` ``[k, 2]`` (i, j) with ``means`` ``[k, C]``, their mean activation vectors."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            xy=self.xy.astype(np.float32),
            image=self.point_image.astype(np.int32),
            yx=self.point_yx.astype(np.int16),
            cells=np.array([[c.i, c.j] for c in self.cells], np.int32).reshape(-1, 2),
            means=np.stack([c.mean for c in self.cells]).astype(np.float32)
            if self.cells
            else np.zeros((0, self.layer.shape[0]), np.float32),
        )
        return buf.getvalue()

    def html(self) -> str:
        from ..outputs.map_page import map_report

        return map_report(self)

    def _repr_html_(self) -> str:
        return self.html()


def cell_file(layer: str, index: int) -> str:
    """A cell's render: ``<layer>/cell_0042.png`` (index ``i·G + j``)."""
    return f"{layer}/cell_{index:04d}.png"


# ---------------------------------------------------------------- plan


def _root(req: MapRequest) -> Path:
    return Path(req.images) if req.images else sample_photos_dir()


def _check(req: MapRequest) -> None:
    """Cheap checks before a model is loaded: the folder and the numbers."""
    if not isinstance(req.grid, int) or isinstance(req.grid, bool) or req.grid < 2:
        raise UsageError(f"--grid must be at least 2, got {req.grid!r}")
    if req.grid > 64:
        raise UsageError(f"--grid must be at most 64, got {req.grid}")
    if req.layout not in LAYOUTS:
        raise UsageError(f"unknown layout {req.layout!r}: choose {', '.join(LAYOUTS)}")
    if not isinstance(req.min_points, int) or req.min_points < 1:
        raise UsageError(f"--min-points must be at least 1, got {req.min_points!r}")
    if req.backend not in ("local", "ray"):
        raise UsageError(f"unknown backend {req.backend!r}: choose local or ray")
    list_images(_root(req))


def class_folders(root: Path, files: list[Path]) -> list[str] | None:
    """The class sub-folders of ``root`` (sorted, as torchvision's ImageFolder numbers them) when every image
    lies in one and there are at least two; else ``None``."""
    names = []
    for f in files:
        rel = f.relative_to(root)
        if len(rel.parts) < 2:
            return None
        names.append(rel.parts[0])
    found = sorted(set(names))
    return found if len(found) >= 2 else None


def _target(model: Model, k: str | int | None, folders: list[str] | None) -> dict | None:
    if k is None:
        return None
    s = str(k).strip()
    if folders is not None:
        if s in folders:
            return {"folder": s}
        if s.lstrip("-").isdigit():
            i = int(s)
            if not 0 <= i < len(folders):
                raise UsageError(f"--class {i} is out of range: the images have {len(folders)} class folders")
            return {"folder": folders[i]}
        raise UsageError(f"--class {s!r} is not a class folder of the images ({', '.join(folders[:6])}…)")
    if not s.lstrip("-").isdigit():
        raise UsageError(f"--class must be a class index of {model.name} (the images have no class folders): {s!r}")
    n = get_layer(model, "logit").shape[0]
    i = int(s)
    if not 0 <= i < n:
        raise UsageError(f"--class {i} is out of range: {model.name} has {n} classes")
    return {"class": i}


def _plan(model: Model, req: MapRequest) -> MapPlan:
    from ..optvis.presets import get_preset

    _check(req)
    info = network_layer(model, req.layer, use="map")
    check_maps_layer(info, "map")
    root = Path(os.path.abspath(_root(req)))  # absolute, links kept: a folder of links (the explorer's) stays the root
    files = list_images(root)
    folders = class_folders(root, files)
    target = _target(model, req.class_, folders)
    render = None if req.no_renders else get_preset(req.method or RENDER_METHOD).for_model(model)
    settings = {
        "model": model.describe(),
        "layer": info.name,
        "images": str(req.images or "bundled photos"),
        "grid": req.grid,
        "layout": req.layout,
        "class": target,
        "min_points": req.min_points,
        "seed": req.seed,
        "per_image": PER_IMAGE,
        "max_vectors": MAX_VECTORS,
        "backend": req.backend,
        "render": render.as_dict() if render is not None else None,
        "render_method": render.preset if render is not None else None,
        "objective": f"direction(cossim_pow={COSSIM_POW:g})",
    }
    return MapPlan(
        model,
        info,
        root,
        files,
        folders,
        req.grid,
        req.layout,
        req.min_points,
        req.seed,
        target,
        render,
        req.backend,
        settings,
    )


# ---------------------------------------------------------------- compute


def _per_image(image: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Indices keeping at most ``cap`` points per image, drawn at random (seeded), in their original order."""
    rng = np.random.default_rng(seed)
    keep = []
    for im in np.unique(image):
        idx = np.flatnonzero(image == im)
        keep.append(idx if len(idx) <= cap else np.sort(rng.choice(idx, cap, replace=False)))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def _layer_pass(ctx: RunContext, p: MapPlan):
    from .vectors import layer_vectors

    return layer_vectors(
        p.model,
        p.info,
        p.files,
        crops=0,
        max_vectors=MAX_VECTORS,
        seed=p.seed,
        backend=p.backend,
        root=p.root,
        progress=ctx.show_progress,
        stop=ctx.stop,
        bars=ctx.progress,
    )


def _votes(
    model: Model,
    info: LayerInfo,
    means: np.ndarray,
    base: np.ndarray,
    chunk: int = 32,
    step: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """``[cells, classes]``: each logit's rise when a cell's mean vector fills the layer's map in place of the
    mean of all vectors (the rest of the network from the layer on, on a blank input); ``step(k)`` after each
    chunk of ``k`` cells."""
    c, h, w = info.shape
    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size)
    out = []
    b = torch.from_numpy(base.astype(np.float32)).view(1, c, 1, 1).expand(1, c, h, w)
    for s in range(0, len(means), chunk):
        m = torch.from_numpy(means[s : s + chunk].astype(np.float32)).view(-1, c, 1, 1).expand(-1, c, h, w)
        k = m.shape[0]

        def variants(a: torch.Tensor, m=m, k=k) -> torch.Tensor:
            v = torch.cat([b, m])
            return v[None].expand(a.shape[0], k + 1, c, h, w).to(a.device, a.dtype)

        logits = forward_variants(model, info, x, variants, k + 1)[2][0].float().cpu()  # [1 + 1 + k, classes]
        out.append((logits[2:] - logits[1:2]).numpy())
        if step is not None:
            step(k)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _labels(p: MapPlan, files: list[Path], predictions: np.ndarray) -> tuple[list[str], str]:
    from .names import image_labels

    return image_labels(files, p.root, p.model, list(map(int, predictions)))


def _compute(ctx: RunContext, p: MapPlan) -> ActivationMap:
    from .names import class_name, name_units, purity

    with ctx.timed("vectors"):
        lv = _layer_pass(ctx, p)
    if ctx.stop():
        ctx.mark_partial(0, 1, "layer passes", resumable=False)
        return None  # type: ignore[return-value]
    files = [Path(f) for f in lv.files]
    predictions = np.full(len(files), -1, np.int64)  # -1: an unreadable image (no vectors either)
    for i, c in dict(lv.predictions).items():
        predictions[int(i)] = int(c)
    keep = _per_image(np.asarray(lv.image), PER_IMAGE, p.seed)
    labels, source = _labels(p, files, predictions)
    folder_of = [f.relative_to(p.root).parts[0] if p.folders else None for f in files]
    target = dict(p.target) if p.target else None
    if target is not None:
        if "folder" in target:
            chosen = {i for i, fo in enumerate(folder_of) if fo == target["folder"]}
            preds = predictions[sorted(chosen)] if chosen else np.zeros(0, np.int64)
            preds = preds[preds >= 0]
            target["class"] = int(np.bincount(preds).argmax()) if len(preds) else -1  # its most predicted class
        else:
            chosen = {i for i, c in enumerate(predictions) if int(c) == target["class"]}
        target["class_name"] = class_name(p.model, target["class"]) if target["class"] >= 0 else None
        target["images"] = len(chosen)
        if not chosen:
            what = f"folder {target['folder']!r}" if "folder" in target else f"predicted as class {target['class']}"
            raise UsageError(f"--class: no image is {what}")
        keep = keep[np.isin(np.asarray(lv.image)[keep], sorted(chosen))]
    vectors = np.asarray(lv.vectors, dtype=np.float32)[keep]
    image = np.asarray(lv.image)[keep]
    view = np.asarray(getattr(lv, "view", np.zeros(len(lv.image), np.int64)))[keep]
    yx = np.stack([np.asarray(lv.y)[keep], np.asarray(lv.x)[keep]], 1)
    if len(vectors) < max(4, p.min_points):
        raise UsageError(f"map: only {len(vectors)} positions to lay out; give more images")
    with ctx.timed("layout"):
        lay = _layout(ctx, p, vectors)
        g = grid_cells(lay, p.grid, p.min_points)
    if ctx.stop():
        ctx.mark_partial(0, 1, "layouts", resumable=False)
        return None  # type: ignore[return-value]
    rel = [f.relative_to(p.root).as_posix() for f in files]
    base = np.asarray(lv.vectors, dtype=np.float32).mean(0)
    cells = []
    for (i, j), idx in g.cells.items():
        mean = vectors[idx].mean(0)
        unit = mean / (np.linalg.norm(mean) + 1e-8)
        top = [
            {
                "image": rel[int(image[q])],
                "x": int(yx[q, 1]),
                "y": int(yx[q, 0]),
                "activation": round(float(vectors[q] @ unit), 5),
                **({"view": int(view[q])} if int(view[q]) else {}),
            }
            for q in nearest_points(vectors, idx, mean, image, N_TOP)
        ]
        order = np.argsort(-unit, kind="stable")[:N_CHANNELS]
        chans = [{"channel": int(c), "weight": round(float(unit[c]), 5)} for c in order]
        cells.append(Cell(i, j, idx, mean, top, chans))
    with ctx.timed("votes"), contextlib.closing(ctx.progress(len(cells), CLASSES_BAR, unit="cell")) as bar:
        means = np.stack([c.mean for c in cells]) if cells else None
        votes = _votes(p.model, p.info, means, base, step=bar.update) if cells else np.zeros((0, 0))
    for c, v in zip(cells, votes):
        c.class_index = int(v.argmax())
        c.class_name = class_name(p.model, c.class_index)
        c.vote = float(v[c.class_index])
        if target is not None and target["class"] >= 0:
            c.attribution = float(v[target["class"]])
    with ctx.timed("names"), contextlib.closing(ctx.progress(1, NAMES_BAR, unit="step")) as bar:
        n_img = len(files)
        shares = np.zeros((n_img, len(cells)), np.float32)
        per_img = np.bincount(image, minlength=n_img).astype(np.float32)
        for k, c in enumerate(cells):
            shares[:, k] = np.bincount(image[c.points], minlength=n_img) / np.maximum(per_img, 1)
        present = np.flatnonzero(per_img > 0)
        names = name_units(shares[present], [labels[i] for i in present]) if cells else []
        for k, c in enumerate(cells):
            c.name = names[k]
            ranked = [int(i) for i in np.argsort(-shares[:, k], kind="stable") if shares[i, k] > 0][:N_TOP]
            c.purity = purity(ranked, labels)
        bar.update(1)
    amap = ActivationMap(
        p.model.name,
        p.info,
        p.grid,
        p.layout,
        lay,
        g.xy,
        image,
        yx,
        rel,
        labels,
        source,
        cells,
        target,
        p.settings,
        tuple(lv.map_size),
        len(files),
    )
    amap.run_dir = ctx.path
    with ctx.timed("exemplars"), contextlib.closing(ctx.progress(len(cells), CROPS_BAR, unit="cell")) as bar:
        _exemplar_crops(p, amap, files, step=bar.update)
    if p.render is not None:
        with ctx.timed("renders"):
            _render_cells(ctx, p, amap)
    return amap


def _layout(ctx: RunContext, p: MapPlan, vectors: np.ndarray) -> np.ndarray:
    """The 2-D layout under its own bar: one step (PCA, t-SNE, UMAP's neighbour graph), then UMAP's epochs
    (``layout 120/500``) as its optimiser runs them."""
    with contextlib.closing(ctx.progress(1, LAYOUT_BAR, unit="step")) as bar:

        def on_epoch(done: int, total: int) -> None:
            if total > 0 and (bar.total != total or done != bar.n):
                bar.total = total
                bar.update(done - bar.n)

        lay = layout_2d(vectors, p.layout, p.seed, on_epoch=on_epoch)
        if bar.n < (bar.total or 1):
            bar.update((bar.total or 1) - bar.n)
    return lay


def crop_box(y: int, x: int, map_size: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """The input box (left, top, right, bottom) around map position ``(y, x)``: 3 map cells wide, at least
    48 px (or half the input, when that is smaller), inside the image."""
    h, w = map_size
    cy, cx = (y + 0.5) * size / h, (x + 0.5) * size / w
    side = int(min(size, max(min(48, size // 2), size * 3 / max(h, w))))
    left = int(min(max(0, round(cx - side / 2)), size - side))
    top = int(min(max(0, round(cy - side / 2)), size - side))
    return left, top, left + side, top + side


def _exemplar_crops(
    p: MapPlan, amap: ActivationMap, files: list[Path], step: Callable[[int], Any] | None = None
) -> None:
    """Each exemplar's crop around its position, from the image as the model sees it (``box`` added);
    ``step(1)`` after each cell."""
    from torchvision.transforms.v2 import functional as TF

    from ..models.inputs import load_image, model_input

    seen: dict[str, torch.Tensor] = {}
    by_rel = {f.relative_to(p.root).as_posix(): f for f in files}
    for c in amap.cells:
        for e in c.top:
            if e["image"] not in seen:
                seen[e["image"]] = model_input(p.model, load_image(by_rel[e["image"]]))[0]
            img = seen[e["image"]]
            box = crop_box(e["y"], e["x"], amap.map_size, img.shape[-1])
            e["box"] = list(box)
            left, top, right, bottom = box
            crop = img[:, top:bottom, left:right]
            c.crops.append(TF.resize(crop, [CROP_PX, CROP_PX], antialias=True).clamp(0, 1))
        if step is not None:
            step(1)


def _render_cells(ctx: RunContext, p: MapPlan, amap: ActivationMap) -> None:
    """Render every cell's mean direction (render cache; each written as it finishes, kept on resume)."""
    from PIL import Image

    from ..optvis.objectives import direction
    from ..optvis.render import Renderer, channel_seed
    from ..outputs.cache import active_cache, render_key
    from ..outputs.images import png_bytes

    cache = active_cache() if p.model.in_channels <= 3 else None
    renderer = None
    todo = []
    for c in amap.cells:
        k = c.index(p.grid)
        key = f"cell_{k:04d}"
        f = ctx.run.file(cell_file(p.info.name, k))
        if ctx.run.done(key) and f.is_file():  # --resume: finished before
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            c.render = torch.from_numpy(arr.transpose(2, 0, 1).copy())
            c.render_record = dict(ctx.run.record["results"][key])
        else:
            todo.append(c)
    bar = ctx.progress(len(amap.cells), RENDERS_BAR, unit="cell", initial=len(amap.cells) - len(todo))
    try:
        for n, c in enumerate(todo):
            if ctx.stop():
                ctx.mark_partial(len(amap.cells) - len(todo) + n, len(amap.cells), "cell renders")
                return
            k = c.index(p.grid)
            obj = direction(p.info.name, torch.from_numpy(c.mean), cossim_pow=COSSIM_POW)
            seed = channel_seed(p.seed, k)
            key, fields = render_key(p.model, obj, p.render, seed, layer=p.info.name)
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                with Image.open(io.BytesIO(hit.png)) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                c.render = torch.from_numpy(arr.transpose(2, 0, 1).copy())
                png = hit.png
                rec = {
                    "activation_before": hit.record.get("activation_before"),
                    "activation_after": hit.record.get("activation_after"),
                    "cached": True,
                }
            else:
                renderer = renderer or Renderer(p.model, p.render)
                out = renderer.render(obj, [seed], should_stop=ctx.stop)
                if out.interrupted:
                    ctx.mark_partial(len(amap.cells) - len(todo) + n, len(amap.cells), "cell renders")
                    return
                if out.status[0] != "ok":
                    c.render_record = {"status": out.status[0]}
                    bar.update(1)
                    continue
                c.render = out.images[0]
                png = png_bytes(c.render)
                rec = {
                    "activation_before": round(out.before[0], 6),
                    "activation_after": round(out.after[0], 6),
                    "seconds": round(out.seconds, 3),
                    "cached": False,
                }
                if cache is not None:
                    cache.put(key, png, {**fields, **rec, "status": "ok"})
            c.render_record = rec
            ctx.run.write(cell_file(p.info.name, k), png)
            ctx.run.result(f"cell_{k:04d}", {"i": c.i, "j": c.j, "file": cell_file(p.info.name, k), **rec})
            bar.update(1)
    finally:
        bar.close()


# ---------------------------------------------------------------- write


def _write(ctx: RunContext, amap: ActivationMap | None) -> None:
    from ..outputs.map_page import map_png
    from ..outputs.naming import REPORT
    from ..outputs.rundir import json_bytes

    if amap is None or ctx.status == "partial":
        return
    with ctx.timed("write"):
        ctx.run.write(MAP_FILE, json_bytes(amap.record()))
        ctx.run.write(MAP_PNG, map_png(amap))
        ctx.run.write(MAP_NPZ, amap.arrays())
        ctx.run.write_text(REPORT, amap.html())
        ctx.run.result(
            "map",
            {"layer": amap.layer.name, "grid": amap.grid, "cells": len(amap.cells), "points": int(len(amap.xy))},
        )


def _summary(r: JobResult) -> list[str]:
    m: ActivationMap = r.data
    rendered = sum(c.render is not None for c in m.cells)
    lines = [
        f"{m.model} · {m.layer.name} · {len(m.xy)} positions of {m.images_total} images · {m.layout_method} · "
        f"{m.grid}×{m.grid} grid · {len(m.cells)} cells ({rendered} rendered)"
        + (f" · class {m.target}" if m.target else "")
    ]
    for c in sorted(m.cells, key=lambda c: -len(c.points))[:8]:
        nm = c.name["name"] if c.name else "—"
        lines.append(f"  ({c.i:2d},{c.j:2d})  {len(c.points):4d} pts  {c.class_name[:28]:28s}  {nm}")
    lines.append(f"wrote {r.run_dir}/{MAP_FILE}, {MAP_PNG}, {MAP_NPZ}, report.html, run.json")
    return lines


JOB = Job(
    "map",
    MapRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="The map of a LAYER (an activation atlas): its activation vectors laid out in 2-D, a grid over the "
    "layout, each cell rendered, named and shown with its nearest exemplars; map.json, map.png, report.html.",
    renders=True,
    resumable=True,
    precheck=_check,
)


def activation_map(
    model: Model,
    images: str | Path | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> JobResult:
    """``filterscope map``: the activation atlas of ``layer`` over ``images`` (options: ``layer``, ``grid``,
    ``layout``, ``class_``, ``min_points``, ``seed``, ``no_renders``, ``method``, ``backend``); writes
    ``map.json``, ``map.png``, ``report.html`` and ``run.json`` in ``out``. ``result.data`` is the
    :class:`ActivationMap`."""
    return run_job(
        JOB,
        model,
        out=out,
        resume=resume,
        progress=progress,
        should_stop=should_stop,
        images=None if images is None else str(images),
        **options,
    )


def load_map(run_dir: str | Path) -> dict:
    """A finished map's ``map.json``."""
    return json.loads((Path(run_dir) / MAP_FILE).read_text())
