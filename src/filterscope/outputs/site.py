"""The atlas's static site: plain HTML/CSS from Jinja2 templates, relative links only, so it works from
``file://`` and from ``filterscope serve`` (``--static``: the explorer's guarded Starlette app,
``serve.app.create_static_app``, bound to 127.0.0.1 by default).

The templates here are the one set the atlas and the explorer share: ``base.html`` (the layout),
``style.css`` (the stylesheet) and ``_channel.html`` (the sections of a channel's page, as macros); the
explorer's own pages (``serve/templates``) extend and import them through :func:`environment`."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ..version import __version__
from .naming import channel_file, channel_page, grid_file


def environment(*first: jinja2.BaseLoader) -> jinja2.Environment:
    """The Jinja2 environment of filterscope's pages: the templates of ``first`` (the explorer's pages),
    then this package's (the shared layout, stylesheet and channel sections, the reports); autoescaped, and
    an undefined name is an error rather than an empty string."""
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader([*first, jinja2.PackageLoader("filterscope.outputs", "templates")]),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return environment()


def stylesheet() -> bytes:
    """``style.css``, the one stylesheet of the atlas (copied into its folder) and the explorer (``/static/``)."""
    return resources.files("filterscope.outputs").joinpath("templates/style.css").read_bytes()


def _hist(entry: dict) -> tuple[list[dict], float, float]:
    counts, edges = entry["hist"]["counts"], entry["hist"]["edges"]
    top = max(counts) or 1
    bars = [
        {"height": round(100 * n / top, 1), "count": n, "label": f"{edges[i]:.3f}–{edges[i + 1]:.3f}"}
        for i, n in enumerate(counts)
    ]
    return bars, edges[0], edges[-1]


def name_rows(unit: dict, how: dict) -> list[tuple[str, Any]]:
    """A channel page's rows for its name, purity and interpretability score (jobs/names.py), where the
    examples have them."""
    if "name" not in unit:
        return []
    name = unit["name"]
    source = "class folders" if how.get("labels") == "folders" else "predicted classes"
    rows: list[tuple[str, Any]] = [
        (
            f"name (from the images' {source})",
            f"{name['name']} (AUC {name['auc']:.2f}, p = {name['p']:.1g})" if name else "no name (p ≥ 0.01)",
        )
    ]
    if unit.get("purity"):
        rows.append(("top images' most common label", f"{unit['purity']['label']} ({unit['purity']['share']:.0%})"))
    score = unit.get("score")
    if score is not None:
        rows.append(("interpretability score (MIS, 0.5 chance)", f"{score:.2f}"))
    else:
        rows.append(("interpretability score", f"not measured ({how.get('score_skipped', 'no spread')})"))
    return rows


def build_site(run, layers: list[dict[str, Any]], examples: dict | None) -> list[str]:
    """Write ``index.html``, a page per layer and a page per channel into ``run`` (a RunDir).

    ``layers`` holds ``{"name", "shape", "channels"}``; render results come from ``run.record``.
    Returns the pages written.
    """
    env = _env()
    rec = run.record
    settings = rec["settings"]
    model = settings["model"]
    base = {"model": model, "model_name": model["name"], "version": __version__, "live": False}
    pages = []
    run.write("style.css", stylesheet())
    n_images = examples.get("n_images", 0) if examples else 0
    index_layers = []
    for lay in layers:
        name = lay["name"]
        results = rec["results"]
        chans = []
        ex_chans = (examples or {}).get("layers", {}).get(name, {}).get("channels", {})
        for c in lay["channels"]:
            r = results.get(f"{name}:{c}", {})
            render = channel_file(name, c) if r.get("status") == "ok" else None
            unit = ex_chans.get(str(c), {})
            chans.append(
                {
                    "index": c,
                    "page": channel_page(c),
                    "render": Path(render).name if render else None,
                    "name": (unit.get("name") or {}).get("name"),
                    "score": unit.get("score"),
                }
            )
        rendered = sum(1 for ch in chans if ch["render"])
        # the layer's index ranks its channels by interpretability score where there is one (issue 44)
        scored = any(ch["score"] is not None for ch in chans)
        ranked = sorted(chans, key=lambda ch: -ch["score"] if ch["score"] is not None else 1.0) if scored else chans
        layer_ctx = {
            "name": name, "shape": lay["shape"], "channels": chans, "rendered": rendered, "ranked": ranked,
            "scored": scored, "names": (examples or {}).get("names"),
        }  # fmt: skip
        grid = grid_file(name)
        index_layers.append({**layer_ctx, "dir": name, "grid": grid})
        html = env.get_template("layer.html").render(root="../", layer=layer_ctx, **base)
        pages.append(str(run.write(f"{name}/index.html", html.encode()).relative_to(run.path)))
        ex_layer = (examples or {}).get("layers", {}).get(name, {})
        for k, ch in enumerate(chans):
            c = ch["index"]
            r = results.get(f"{name}:{c}", {})
            div = results.get(f"{name}:{c}:diversity", {})
            ex = ex_layer.get("channels", {}).get(str(c))
            ctx = {
                "index": c,
                "render": ch["render"],
                "prev": channel_page(chans[k - 1]["index"]) if k > 0 else None,
                "next": channel_page(chans[k + 1]["index"]) if k + 1 < len(chans) else None,
                "diversity": [str(Path(f).relative_to(name)) for f in div.get("files", [])],
                "examples": [],
                "hist": [],
                "hist_lo": 0.0,
                "hist_hi": 0.0,
            }
            table = [
                ("layer", name),
                ("channel", c),
                ("method", settings.get("method")),
                ("steps", settings.get("render", {}).get("steps")),
                ("seed", settings.get("seed")),
            ]
            if r:
                table += [
                    ("activation on start noise", f"{r['activation_before']:.4f}"),
                    ("activation of render", f"{r['activation_after']:.4f}"),
                    ("status", r["status"]),
                ]
            if ex:
                ctx["examples"] = [
                    {"src": "../" + e["crop"], "thumb": "../" + e["thumb"], "name": e["name"], "value": e["value"]}
                    for e in ex["top"]
                ]
                ctx["hist"], ctx["hist_lo"], ctx["hist_hi"] = _hist(ex)
                table += [
                    ("max mean activation over the images", f"{ex['max']:.4f}"),
                    ("mean over the images", f"{ex['mean']:.4f}"),
                ]
                if r and ex["max"] > 0:
                    table.append(("render / best image", f"{r['activation_after'] / ex['max']:.2f}"))
                table += name_rows(ex, (examples or {}).get("names") or {})
            ctx["table"] = table
            html = env.get_template("channel.html").render(
                root="../", layer=layer_ctx, ch=ctx, n_images=n_images, **base
            )
            pages.append(str(run.write(f"{name}/{channel_page(c)}", html.encode()).relative_to(run.path)))
    html = env.get_template("index.html").render(
        root="",
        layers=index_layers,
        method=settings.get("method"),
        settings=settings.get("render", {}),
        seed=settings.get("seed"),
        images_label=settings.get("images") or "the bundled photos",
        n_images=n_images,
        **base,
    )
    pages.append(str(run.write("index.html", html.encode()).relative_to(run.path)))
    return pages


def render_report(context: dict[str, Any]) -> str:
    """``report.html`` of ``filterscope explain``: one self-contained page (inline CSS, pictures as data URIs)."""
    css = resources.files("filterscope.outputs").joinpath("templates/report.css").read_text()
    return _env().get_template("explain.html").render(css=css, version=__version__, **context)


def render_template(name: str, context: dict[str, Any]) -> str:
    """A self-contained report page from ``templates/<name>`` (inline CSS, pictures as data URIs)."""
    css = resources.files("filterscope.outputs").joinpath("templates/report.css").read_text()
    return _env().get_template(name).render(css=css, version=__version__, **context)


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI, for self-contained report pages."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode()


def figure_uri(fig) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed; no varying metadata)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    plt.close(fig)
    return data_uri(buf.getvalue())
