"""Figures and report pages of ``filterscope circuit`` and ``filterscope tuning``.

Functions take the jobs' result objects (duck-typed: they draw what a job computed and never call one).
Weight maps share one symmetric colour scale per figure (red excites, blue inhibits), so their strengths
compare.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from ..version import __version__
from .images import png_bytes, to_uint8
from .site import data_uri as _uri
from .site import figure_uri as fig_uri

WEIGHT_CMAP = "RdBu_r"
EXCITE, INHIBIT = "#c0392b", "#2c6fbb"


def _colour(sign: str) -> str:
    return EXCITE if sign == "excites" else INHIBIT if sign == "inhibits" else "#777777"


def weight_map_png(m: np.ndarray, vmax: float, side: int = 150) -> bytes:
    """A weight map as a colour image (RdBu, ±``vmax``), scaled up with nearest-neighbour to ``side`` px."""
    cmap = matplotlib.colormaps[WEIGHT_CMAP]
    a = (cmap(0.5 + 0.5 * np.clip(m / max(vmax, 1e-30), -1, 1))[..., :3] * 255).round().astype(np.uint8)
    im = Image.fromarray(a, "RGB")
    scale = max(1, side // max(m.shape))
    return png_bytes(im.resize((m.shape[1] * scale, m.shape[0] * scale), Image.Resampling.NEAREST))


def _crop(res, m: np.ndarray) -> np.ndarray:
    r0, r1, c0, c1 = res.window
    return m[r0:r1, c0:c1]


def _effect_images(res) -> str:
    """How many images the measured effects were made on: ``18 of 36`` when fewer than all."""
    n = res.ranking.get("n_images", res.n_images)
    return f"{n} of {res.n_images}" if n < res.n_images else str(n)


def circuit_figure(res) -> plt.Figure:
    """``figure_circuit.png``: the target's render, summed weight vs attribution of every input, the
    ablation; then per shown input its render and its expanded-weight map."""
    shown = res.shown
    cols = max(len(shown), 6)
    fig = plt.figure(figsize=(1.75 * cols, 7.4), dpi=100)
    gs = fig.add_gridspec(3, cols, height_ratios=[1.35, 1, 1])
    third = cols // 3
    ax = fig.add_subplot(gs[0, :third])
    if res.target_render is not None:
        ax.imshow(to_uint8(res.target_render))
        ax.set_title(f"{res.layer}:{res.channel} (render)", fontsize=9)
    else:
        ax.text(0.5, 0.5, f"{res.layer}:{res.channel}\n(no render)", ha="center", va="center", fontsize=10)
    ax.axis("off")
    ax = fig.add_subplot(gs[0, third : 2 * third + (cols % 3 > 1)])
    w = np.array([i.weight_norm for i in res.inputs])
    e = np.array([i.effect for i in res.inputs])
    ax.scatter(w, e, s=9, color="#999999", linewidths=0)
    for i in shown:
        ax.scatter([i.weight_norm], [i.effect], s=22, color=_colour(i.sign), zorder=3)
        ax.annotate(str(i.channel), (i.weight_norm, i.effect), xytext=(3, 2), textcoords="offset points", fontsize=7)
    ax.axhline(0, color="#bbb", lw=0.8)
    ax.axvline(0, color="#bbb", lw=0.8)
    ax.set_xlim(-1.08, 1.08)
    ax.set_xlabel("expanded weight, normalised (second view)", fontsize=8)
    ax.set_ylabel("measured effect (drop when zeroed)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.yaxis.get_offset_text().set_fontsize(7)
    agree = res.ranking.get("weights_agreement", {}).get(res.linear.get("linearize", "identity"), {})
    rho = agree.get("spearman_effect")
    vs = f" · |weight| vs |effect|: Spearman {rho:+.2f}" if rho is not None and np.isfinite(rho) else ""
    ax.set_title(f"all {len(res.inputs)} inputs{vs}", fontsize=9)
    ax = fig.add_subplot(gs[0, 2 * third + (cols % 3 > 1) :])
    ab = res.ablation
    if ab:
        labels = [f"first {ab['k']}\nlisted", f"{ab['k']}\nrandom", f"top {ab['k']}\nexcit.", f"{ab['k']}\nrandom "]
        vals = [ab["change_top"], ab["change_random"], ab["drop_excitatory"], ab["drop_random"]]
        ax.bar(range(4), vals, color=["#d62728", "#7f7f7f", "#d62728", "#7f7f7f"], width=0.7)
        ax.set_xticks(range(4), labels, fontsize=7)
        ax.axvline(1.5, color="#ccc", lw=0.8)
        ok = ab.get("passed") is not False
        ax.set_title(
            f"ablation, {res.n_images} images: |Δ| {ab['change_ratio']:.1f}× random" + ("" if ok else " (weak!)"),
            fontsize=9,
            color="black" if ok else "#b03a00",
        )
        ax.axhline(0, color="#999", lw=0.8)
        ax.tick_params(labelsize=7)
    else:
        ax.axis("off")
    vmax = max(float(np.abs(i.weight_map).max()) for i in shown) if shown else 1.0
    for col, i in enumerate(shown):
        ax = fig.add_subplot(gs[1, col])
        if i.render is not None:
            ax.imshow(to_uint8(i.render))
        else:
            ax.text(0.5, 0.5, "no render", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_title(
            f"#{i.rank + 1} {i.channel}: {i.sign}\neffect {i.effect:+.3g} · attr {i.attribution:+.3g}",
            fontsize=7.5,
            color=_colour(i.sign),
        )
        ax.axis("off")
        ax = fig.add_subplot(gs[2, col])
        m = _crop(res, i.weight_map) / max(vmax, 1e-30)  # one scale for all shown maps, ±1
        im = ax.imshow(m, cmap=WEIGHT_CMAP, vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"exp. weight {i.weight_norm:+.2f} (rank {i.rank_weight + 1})", fontsize=7)
    fig.suptitle(
        f"filterscope circuit · {res.model} · {res.layer}:{res.channel} built from {res.source} "
        f"(inputs by measured effect over {_effect_images(res)} images; expanded weights at {tuple(res.position)})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    if shown:
        cax = fig.add_axes([0.93, 0.04, 0.012, 0.22])
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(labelsize=6)
        cb.set_label(f"weight / {vmax:.3g}", fontsize=6)
    return fig


def _css() -> str:
    return resources.files("filterscope.outputs").joinpath("templates/report.css").read_text()


def render_page(template: str, context: dict[str, Any]) -> str:
    """One self-contained report page from ``templates/<template>`` (inline CSS, pictures as data URIs)."""
    from .site import _env

    return _env().get_template(template).render(css=_css(), version=__version__, **context)


def circuit_report(res) -> str:
    """``report.html`` of ``filterscope circuit``: the inputs in the default order (measured effect), the
    ablation check, then the expanded weights as a second, labelled view."""
    shown = res.shown
    vmax = max((float(np.abs(i.weight_map).max()) for i in shown), default=1.0)
    rows = []
    for i in shown:
        rows.append(
            {
                "i": i,
                "render": _uri(i.render_png) if i.render_png is not None else None,
                "map": _uri(weight_map_png(_crop(res, i.weight_map), vmax)),
            }
        )
    by_weight = sorted(res.inputs, key=lambda i: -abs(i.weight))[: res.top]
    lin = res.linear.get("linearize", "identity")
    return render_page(
        "circuit.html",
        {
            "r": res,
            "rows": rows,
            "by_weight": by_weight,
            "agree": res.ranking.get("weights_agreement", {}).get(lin),
            "target": _uri(res.target_png) if res.target_png is not None else None,
            "figure": _uri(res.figure_png()) if hasattr(res, "figure_png") else fig_uri(circuit_figure(res)),
            "vmax": vmax,
            "ab": res.ablation,
        },
    )


# ---------------------------------------------------------------- tuning


def _hue_colours(hues) -> list:
    from matplotlib.colors import hsv_to_rgb

    return [hsv_to_rgb((h / 360.0, 1.0, 0.85)) for h in hues]


def tuning_figure(res, channels=None) -> plt.Figure:
    """``figure_tuning.png``: one row per channel: orientation tuning (per phase and the max), spatial
    frequency, hue (3-channel models), curves (direction × radius) and the best stimulus."""
    from ..optvis.stimuli import CURVE_DIRECTIONS, HUES, ORIENTATIONS

    rows = [c for c in res.channels if channels is None or c.channel in channels]
    fig, axes = plt.subplots(len(rows), 5, figsize=(13, 1.9 * len(rows) + 0.6), dpi=80, squeeze=False)
    periods = res.stimuli.periods
    for r, c in enumerate(rows):
        ax = axes[r, 0]
        ax.plot(ORIENTATIONS, c.orientation_curve, color="#bbb", lw=0.8)
        ax.plot(ORIENTATIONS, c.orientation_curve.max(1), color="#d62728", lw=1.6, marker="o", ms=2.5)
        ax.axhline(c.grey, color="#777", ls=":", lw=0.8)
        ax.axvline(c.orientation, color="#1f77b4" if c.orientation_significant else "#ccc", lw=1)
        ax.set_xticks([0, 45, 90, 135, 180])
        ax.set_title(
            f"ch {c.channel}: orientation {c.orientation:.0f}°, OSI {c.orientation_selectivity:.2f}, "
            f"p {c.orientation_p:.3f}",
            fontsize=7.5,
            color="black" if c.orientation_significant else "#777",
        )
        ax = axes[r, 1]
        ax.semilogx(periods, c.frequency_curve, marker="o", ms=2.5, color="#2ca02c")
        ax.set_xticks(periods[::2], [f"{p:.0f}" for p in periods[::2]])
        ax.minorticks_off()
        ax.set_xlabel("period (px)", fontsize=6, labelpad=1)
        ax.axhline(c.grey, color="#777", ls=":", lw=0.8)
        ax.set_title(f"period {c.period:.1f} px ({c.frequency:.3f} c/px)", fontsize=7.5)
        ax = axes[r, 2]
        if c.hue_curve is not None:
            ax.scatter(HUES, c.hue_curve.max(1), c=_hue_colours(HUES), s=12)
            ax.plot(HUES, c.hue_curve.max(1), color="#999", lw=0.6)
            if c.hue_baseline is not None:
                ax.axhline(c.hue_baseline, color="#777", ls=":", lw=0.8)
            ax.set_xticks([0, 60, 120, 180, 240, 300, 360])
            from ..optvis.stimuli import hue_name

            ax.set_title(
                f"hue {c.hue:.0f}° ({hue_name(c.hue)}), sel {c.hue_selectivity:.2f}, p {c.hue_p:.3f}",
                fontsize=7.5,
                color="black" if c.hue_significant else "#777",
            )
        else:
            ax.text(0.5, 0.5, f"{res.stimuli.in_channels}-channel model:\nno colour stimuli", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
        ax = axes[r, 3]
        ax.imshow(c.curve_table.T, aspect="auto", cmap="magma", interpolation="nearest")
        ax.set_yticks(range(len(res.stimuli.radii) + 1), [f"{v:.0f}" for v in res.stimuli.radii] + ["line"], fontsize=6)
        ax.set_xticks(range(0, len(CURVE_DIRECTIONS), 3), [str(d) for d in CURVE_DIRECTIONS[::3]], fontsize=6)
        ax.set_title(
            f"curves: r {c.curve_radius:.0f}px dir {c.curve_direction:.0f}°, CI {c.curvature_index:.2f}",
            fontsize=7.5,
            color="black" if c.curve_significant else "#777",
        )
        ax = axes[r, 4]
        if c.best_image is not None:
            ax.imshow(to_uint8(c.best_image))
        ratio = c.best_activation / c.natural_max if c.natural_max > 1e-9 else None
        vs = (
            f"{ratio:.2f}× natural max"
            if ratio is not None
            else f"{c.best_activation:.2f} (natural max {c.natural_max:.2f})"
        )
        ax.set_title(f"best: {c.best_stimulus}\n{vs}", fontsize=7)
        ax.axis("off")
        for ax in axes[r, :4]:
            ax.tick_params(labelsize=6)
    fig.suptitle(
        f"filterscope tuning · {res.model} · {res.layer} · centre response to {res.n_stimuli} stimuli "
        "(grey dotted: response to mid-grey)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / (1.9 * len(rows) + 0.6)))
    return fig


def tuning_report(res, figure_png: bytes | None = None) -> str:
    """``report.html`` of ``filterscope tuning``: the table of channels, the tuning figure (``figure_png``
    when it is already drawn) and each channel's numbers."""
    from ..optvis.stimuli import RULE

    rows = [
        {"c": c, "rec": c.record(), "best": _uri(png_bytes(c.best_image)) if c.best_image is not None else None}
        for c in res.channels
    ]
    figure = _uri(figure_png) if figure_png is not None else fig_uri(tuning_figure(res))
    return render_page(
        "tuning.html",
        {"t": res, "rows": rows, "rule": RULE, "stim": res.stimuli.record(), "figure": figure},
    )
