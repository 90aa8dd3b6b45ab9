"""The pictures and the page of a layer's map (``filterscope map``): ``map.png``, the rendered grid, and
``report.html``, the grid with each cell's exemplars and name on hover and a section per cell.

Everything here reads an ``ActivationMap`` (:mod:`filterscope.jobs.activation_map`) by its attributes only.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .images import png_bytes, to_pil

MAP_SIDE = 2048  # map.png's side at most (tiles of at most 192 px)


def tile_px(grid: int) -> int:
    """A cell's side in ``map.png``: 192 px, fewer for grids wider than ``MAP_SIDE`` / 192."""
    return int(min(192, MAP_SIDE // grid))


def attribution_colour(v: float, vmax: float) -> tuple[int, int, int]:
    """A diverging colour: red for a cell that raises the class's logit, blue for one that lowers it."""
    t = float(np.clip(v / (vmax + 1e-12), -1, 1))
    if t >= 0:
        return (255, int(255 * (1 - t)), int(255 * (1 - t)))
    return (int(255 * (1 + t)), int(255 * (1 + t)), 255)


def _tile(c: Any) -> Image.Image | None:
    if c.render is not None:
        return to_pil(c.render.float())
    if c.crops:  # no renders: the nearest exemplar stands in for the cell
        return to_pil(c.crops[0].float())
    return None


def map_png(amap: Any) -> bytes:
    """``map.png``: the ``G × G`` grid of cell renders (the nearest exemplar crop with ``--no-renders``), empty
    cells white; a class map frames each cell in its attribution's colour."""
    g, t = amap.grid, tile_px(amap.grid)
    canvas = Image.new("RGB", (g * t, g * t), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    vmax = max((abs(c.attribution) for c in amap.cells if c.attribution is not None), default=0.0)
    for c in amap.cells:
        im = _tile(c)
        if im is not None:
            canvas.paste(im.resize((t - 2, t - 2), Image.LANCZOS), (c.j * t + 1, c.i * t + 1))
        if c.attribution is not None:
            draw.rectangle(
                [c.j * t, c.i * t, c.j * t + t - 1, c.i * t + t - 1],
                outline=attribution_colour(c.attribution, vmax),
                width=max(3, t // 24),
            )
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def layout_figure(amap: Any):
    """The layout's points (clipped to [0, 1]²) coloured by their image's label, with the grid drawn over."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 6.4), dpi=100)
    labels = [amap.labels[int(i)] for i in amap.point_image]
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colour = {n: cmap(k % cmap.N) for k, n in enumerate(names)}
    ax.scatter(amap.xy[:, 0], amap.xy[:, 1], s=3, c=[colour[n] for n in labels], linewidths=0, alpha=0.7)
    for k in range(amap.grid + 1):
        ax.axhline(k / amap.grid, color="#ccc", lw=0.4)
        ax.axvline(k / amap.grid, color="#ccc", lw=0.4)
    for c in amap.cells:
        ax.add_patch(
            plt.Rectangle(
                (c.j / amap.grid, 1 - (c.i + 1) / amap.grid),
                1 / amap.grid,
                1 / amap.grid,
                fill=False,
                ec="#333",
                lw=0.6,
            )
        )
    if len(names) <= 20:
        for n in names:
            ax.scatter([], [], s=12, color=colour[n], label=n)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{amap.layout_method} layout of {len(amap.xy)} positions · drawn cells outlined", fontsize=9)
    fig.tight_layout()
    return fig


def map_context(amap: Any, render_src=None, crop_src=None) -> dict[str, Any]:
    """What ``templates/map.html`` needs. ``render_src(cell)`` gives a cell render's ``src`` (default: its file,
    relative to the page), ``crop_src(png)`` an exemplar crop's (default: a data URI)."""
    from .site import data_uri, figure_uri

    rec = amap.record()
    vmax = max((abs(c.attribution) for c in amap.cells if c.attribution is not None), default=0.0)
    crop_src = crop_src or data_uri
    cells = []
    for c, r in zip(amap.cells, rec["cells"]):
        colour = attribution_colour(c.attribution, vmax) if c.attribution is not None else None
        cells.append(
            {
                **r,
                "k": c.i * amap.grid + c.j,
                "src": (render_src(r) if render_src else r["render"]) if r["render"] else None,
                "crops": [{**e, "src": crop_src(png_bytes(x))} for e, x in zip(r["top"], c.crops)],
                "colour": "#{:02x}{:02x}{:02x}".format(*colour) if colour else None,
            }
        )
    return {
        "model": amap.model,
        "layer": amap.layer.name,
        "shape": amap.layer.shape_str(),
        "grid": amap.grid,
        "layout": rec["layout"],
        "target": amap.target,
        "labels": amap.label_source,
        "cells": cells,
        "by_k": {c["k"]: c for c in cells},
        "layout_figure": figure_uri(layout_figure(amap)),
        "settings": amap.settings,
        "status": amap.status,
        "images_total": amap.images_total,
    }


def map_report(amap: Any) -> str:
    """``report.html`` of ``filterscope map`` (renders linked from the run folder, exemplars inline)."""
    from .figures_circuits import render_page

    return render_page("map.html", map_context(amap))
