"""The figure and the report of ``filterscope diff``: the r distribution, the most changed units of B with their
exemplars beside their matches' in A, and the classes whose predictions move."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

N_FIGURE_UNITS = 6  # rows of the figure
N_FIGURE_EXEMPLARS = 4  # exemplars per side in the figure
N_REPORT_UNITS = 24  # units shown with pictures in the report
N_REPORT_EXEMPLARS = 5
THUMB = 96  # px side of an exemplar tile


class Tiles:
    """Exemplar tiles: the image as the model sees it, with the map cell of the exemplar outlined."""

    def __init__(self, res: Any, root: Path) -> None:
        self.res, self.root = res, root
        self._cache: dict[tuple, np.ndarray] = {}
        self._inputs: dict[tuple, np.ndarray] = {}

    def tile(self, side: str, ex: dict) -> np.ndarray:
        """``THUMB``×``THUMB``×3 uint8 of exemplar ``ex`` in model ``side`` (``a``/``b``)."""
        key = (side, ex["image"], ex["x"], ex["y"])
        if key in self._cache:
            return self._cache[key]
        from PIL import Image, ImageDraw

        h, w = (self.res.shape if side == "a" else self.res.shape_b)[1:3]
        im = Image.fromarray(self._input(side, ex["image"]))
        cw, ch = THUMB / w, THUMB / h
        cx, cy = (ex["x"] + 0.5) * cw, (ex["y"] + 0.5) * ch
        rw, rh = max(cw, THUMB / 8), max(ch, THUMB / 8)  # a cell, at least 1/8 of the image
        ImageDraw.Draw(im).rectangle(
            [cx - rw, cy - rh, cx + rw, cy + rh], outline=(255, 40, 40) if side == "b" else (40, 140, 255), width=2
        )
        arr = np.asarray(im)
        self._cache[key] = arr
        return arr

    def _input(self, side: str, image: str) -> np.ndarray:
        """The image as model ``side`` sees it, ``THUMB`` px, loaded once: the region its preprocessing keeps
        (shorter side resized to ``resize_size``, centre crop of ``input_size``), cut from the original with
        Pillow (much cheaper than the model's float resize of a large photo)."""
        key = (side, image)
        if key not in self._inputs:
            from PIL import Image

            from ..models.inputs import load_image

            model = self.res.models[side]
            im = load_image(self.root / image)
            w, h = im.size
            side_px = model.input_size * min(w, h) / model.resize_size  # the crop, in original pixels
            x0, y0 = (w - side_px) / 2, (h - side_px) / 2
            im = im.resize((THUMB, THUMB), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side_px, y0 + side_px))
            if model.in_channels == 1:
                im = im.convert("L").convert("RGB")
            self._inputs[key] = np.asarray(im)
        return self._inputs[key]

    def png(self, side: str, ex: dict) -> bytes:
        from PIL import Image

        from .images import png_bytes

        return png_bytes(Image.fromarray(self.tile(side, ex)))


def diff_figure(res: Any, tiles: Tiles | None = None):
    """``figure_diff.png``: the histogram of matched r (threshold marked) and the most changed units, each with
    its render and top exemplars in B (red boxes) beside its match's in A (blue)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    tiles = tiles or Tiles(res, res.images_root)
    live = [u for u in res.units if not u["dead"]]
    rows = live[:N_FIGURE_UNITS]
    k = N_FIGURE_EXEMPLARS
    with_renders = bool(res.renders)
    ncol = 2 * (k + with_renders)
    fig = plt.figure(figsize=(1.25 * ncol + 0.8, 3.2 + 1.4 * len(rows)), dpi=100)
    top_fig, units_fig = fig.subfigures(2, 1, height_ratios=[3.2, 1.4 * max(len(rows), 1)])
    ax, tx = top_fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    top_fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.2, wspace=0.1)
    r = np.array([u["r"] for u in live], dtype=float)
    ax.hist(r, bins=40, range=(min(-0.2, float(r.min()) if len(r) else 0), 1.0), color="#5a7fb0")
    ax.axvline(res.threshold, color="#c0392b", ls="--", lw=1)
    c = res.counts()
    ax.set_title(
        f"r with the matched unit of A · {c['matched']} matched, {c['new']} new (r < {res.threshold:g}), "
        f"{c['dead']} dead",
        fontsize=9,
    )
    ax.set_xlabel("r", fontsize=8)
    ax.tick_params(labelsize=7)
    tx.axis("off")
    lines = [f"A: {res.model} · {res.layer} {'×'.join(map(str, res.shape))}"]
    lines.append(f"B: {res.model_b} · {res.layer_b} {'×'.join(map(str, res.shape_b))}")
    lines.append(f"{len(res.images)} images, {res.flipped} top-1 flips")
    for cl in res.classes[:3]:
        lines.append(f"class {cl['name']}: {cl['into']} in / {cl['out_of']} out, Δp {cl['mean_prob_change']:+.3f}")
    lines.append(f"ranked by: {res.metric}")
    tx.text(0, 1, "\n".join(lines), va="top", fontsize=8.5, family="monospace")
    blank = np.full((THUMB, THUMB, 3), 235, np.uint8)
    if not rows:
        return fig
    grid = units_fig.subplots(len(rows), ncol, squeeze=False)
    units_fig.subplots_adjust(left=0.07, right=0.98, top=0.92, bottom=0.01, wspace=0.06, hspace=0.3)
    for i, u in enumerate(rows):
        a = u["partner"] if u["partner"] is not None else u["best"]
        cells = [("b", None, res.renders.get(("b", u["channel"])))] if with_renders else []
        cells += [("b", ex, None) for ex in u["top"][:k]] + [("b", None, None)] * (k - len(u["top"][:k]))
        cells += [("a", None, res.renders.get(("a", a)))] if with_renders else []
        cells += [("a", ex, None) for ex in u["top_a"][:k]] + [("a", None, None)] * (k - len(u["top_a"][:k]))
        for j, (side, ex, png) in enumerate(cells[:ncol]):
            axc = grid[i, j]
            if ex is not None:
                img = tiles.tile(side, ex)
            elif png is not None:
                img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            elif j:  # nothing to show (not rendered, fewer exemplars): an empty cell
                axc.axis("off")
                continue
            else:  # column 0 keeps a frame: it carries the row's label
                img = blank
            axc.imshow(img)
            axc.set_xticks([])
            axc.set_yticks([])
            if j == 0:
                match = f"A {u['match']}" if u["match"] is not None else f"new (≈A {a})"
                axc.set_ylabel(f"B {u['channel']}\n{match}\nr {u['r']:+.2f}", fontsize=7.5)
            if ex is not None:
                axc.set_title(f"{ex['activation']:.2f}", fontsize=6.5, pad=1)
            elif i == 0 and png is not None:
                axc.set_title("render B" if side == "b" else "render A", fontsize=7, pad=1)
    units_fig.suptitle(
        f"Most changed units of B ({res.metric}): B's top exemplars (red) beside its match's in A (blue)", fontsize=10
    )
    return fig


def diff_report(res: Any, figure_png: bytes | None = None, tiles: Tiles | None = None) -> str:
    """``report.html``: the classes that move with the units carrying them, and per unit A and B side by side."""
    from .figures_circuits import render_page
    from .site import data_uri, figure_uri

    tiles = tiles or Tiles(res, res.images_root)
    shown = []
    for u in [u for u in res.units if not u["dead"]][:N_REPORT_UNITS]:
        a = u["partner"] if u["partner"] is not None else u["best"]
        shown.append(
            {
                "u": u,
                "a": a,
                "render": data_uri(res.renders[("b", u["channel"])]) if ("b", u["channel"]) in res.renders else None,
                "render_a": data_uri(res.renders[("a", a)]) if ("a", a) in res.renders else None,
                "top": [(ex, data_uri(tiles.png("b", ex))) for ex in u["top"][:N_REPORT_EXEMPLARS]],
                "top_a": [(ex, data_uri(tiles.png("a", ex))) for ex in u["top_a"][:N_REPORT_EXEMPLARS]],
            }
        )
    figure = data_uri(figure_png) if figure_png is not None else figure_uri(diff_figure(res, tiles))
    rec = res.record()
    return render_page(
        "diff.html",
        {
            "d": res,
            "c": res.counts(),
            "shown": shown,
            "figure": figure,
            "rec": rec,
            "rest": [u for u in res.units[len(shown) :]],
        },
    )
