"""Why a render step goes no further (issue 25, item 1): how much of one step's gradient is signal, and whether a
render's quality follows its number of steps or its number of gradient samples (views × steps).

    python benchmarks/bench_noise.py                          # every section, ~60 min on 2 idle CPU cores
    python benchmarks/bench_noise.py --only alignment,sources # ~4 min
    python benchmarks/bench_noise.py --only samples --layers blocks.6

alignment  At each benchmarked layer, on 4 tuning channels, at ``fast``'s start (its natural-spectrum noise) and at
           its 48-step render: the gradient of the channel's objective with respect to the Fourier coefficients
           under one random view (``fused``'s affine at the strength the loop uses there), as one step sees it.
           Reported: the mean cosine between two views' gradients (ρ), and the cosine of one view's gradient, and
           of the mean of 4, with the mean gradient of 32 other views (the expected gradient, estimated). If the
           views' gradients are the expected one plus independent noise, ρ is the share of a gradient's energy
           that is signal, and a mean of N views is aligned with the expectation by sqrt(Nρ / (1 + (N-1)ρ)).
sources    At blocks.6, on the same 4 channels, at the end point: ρ under views that only translate (±3 px, ±12 px),
           only rotate (±2°, ±10°) or only scale (0.9-1.1), each at its full range, and under ``fused``'s whole
           affine at the last step's strength (half its ranges), without and with the gradient blurred at the
           strided convolutions' inputs (bench_screens.py's blurred-backward screen).
samples    At blocks.3 and blocks.6, on the 8 tuning channels of the other screens: ``fast`` at several
           (views per step × steps) with 48, 96 and 192 gradient samples, and at 64 steps (1/8 of Lucid's) with 4
           and 8 views, beside Lucid-512 (512 samples, one view a step) and Lucid at 4 views × 128 steps (the same
           512 samples in a quarter of the steps).

held_out   On the benchmark's own channels at every benchmarked layer (bench_targets.py's; bn2 on its robust
           pre-activation), each as it runs by default (early exit on): ``fast``, ``fast`` with 4 and 8 views per
           step at 64 steps, and Lucid-512, in one run.

Writes benchmarks/results/noise.json and noise.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_progress as bp  # noqa: E402
import bench_render as br  # noqa: E402

ALIGN_LAYERS = ["blocks.1", "blocks.3", "blocks.5", "blocks.6", "bn2"]
REFERENCE_VIEWS = 32
TEST_VIEWS = 8
# (preset, views per step, steps, other changes): fast at 48, 96 and 192 samples, each split several ways; at 96
# samples also a learning rate raised by the square root of the views (the square-root scaling of large-batch Adam:
# a mean of k views is a less noisy step, so it may go further); fast at 64 steps (1/8 of Lucid's) with 4 and 8
# views; Lucid's 512 two ways
GRID = [
    ("fast", 1, 48, {}),
    ("fast", 2, 24, {}),
    ("fast", 1, 96, {}),
    ("fast", 2, 48, {}),
    ("fast", 2, 48, {"lr": 0.17}),
    ("fast", 4, 24, {}),
    ("fast", 4, 24, {"lr": 0.24}),
    ("fast", 1, 192, {}),
    ("fast", 2, 96, {}),
    ("fast", 4, 48, {}),
    ("fast", 8, 24, {}),
    ("fast", 4, 64, {}),
    ("fast", 8, 64, {}),
    ("lucid", 1, 512, {}),
    ("lucid", 4, 128, {}),
]


def aligned(rho: float, n: int) -> float:
    """Expected cosine between the mean of ``n`` views' gradients and the expected gradient, when each view's
    gradient is the expected one plus independent noise and two views' gradients have mean cosine ``rho``."""
    rho = max(rho, 1e-9)
    return math.sqrt(n * rho / (1 + (n - 1) * rho))


def views_for(rho: float, cos: float = 0.9) -> float:
    """Views per step for a gradient aligned ``cos`` with the expected one, under the same model."""
    rho = max(rho, 1e-9)
    return cos * cos * (1 - rho) / (rho * (1 - cos * cos))


def _cos(a, b) -> float:
    return float((a @ b) / (a.norm() * b.norm() + 1e-30))


def _view_gradients(model, net, calls, layer: str, pre: str | None, c: int, p, view, seeds: list[int]) -> list:
    """The gradient of channel ``c``'s spatial mean (of ``pre``'s input where the layer ends in that ReLU) with
    respect to ``p``'s coefficients, once per seed's random ``view``, as a render step computes it."""
    import torch

    from filterscope.optvis.hooks import capture, run

    out = []
    with capture(net, [layer], calls=calls, stop=True, inputs_of=[pre] if pre else []) as cap:
        for seed in seeds:
            p.zero_grad()
            run(lambda z: net(model.normalize(z)), view(p(), [torch.Generator().manual_seed(seed)]), cap)
            (cap.inputs[pre] if pre else cap.acts[layer])[:, c].mean().backward()
            out.append(p.tensors[0].grad.detach().flatten().clone())
    return out


def rendered_params(model, layer: str, channels: list[int], steps: int = 48) -> dict:
    """Each channel's ``fast`` render (``steps`` steps, no early exit, no cache) as the parameterisation the loop
    returned: its coefficients are the render's own (the average of its steps), taken from the loop, not mapped
    back from the picture (whose sigmoid a clip to [1/255, 254/255] would change where pixels saturate)."""
    from filterscope.jobs.stream import render_stream
    from filterscope.models.layers import get_layer

    settings = bp.settings_for("fast", {}, {}, steps)
    with bp.made_params() as made:  # batch 1: one param per channel, in order
        done = [
            r.channel for r in render_stream(model, get_layer(model, layer), channels, settings, 0, batch=1, cache=None)
        ]
    assert len(made) == len(done), "one parameterisation per render"
    return dict(zip(done, made))


def alignment(model, layers: list[str], n_channels: int = 4) -> list[dict]:
    """The alignment section (see the module docstring); one row per layer and point (start, end)."""
    import torch

    from filterscope.optvis.param import make_param
    from filterscope.optvis.presets import get_preset
    from filterscope.optvis.relu import final_relus
    from filterscope.optvis.render import Renderer, channel_seed
    from filterscope.optvis.transform import make_transform

    fast = get_preset("fast")
    options = dict(fast.param_options)
    rows = []
    for layer in layers:
        renderer = Renderer(model, fast)
        net = renderer.net_for([layer])
        pre = final_relus(net, renderer.orders, [layer]).get(layer)  # the loop optimises bn2's pre-activation
        chans = bp.tuning_channels(model, layer, 8)[:n_channels]
        finals = rendered_params(model, layer, chans)
        for point in ("start", "end"):
            per = []
            for c in chans:
                if point == "start":  # the loop's own start for this channel
                    p = make_param("fourier", [channel_seed(0, c)], renderer.size, **options)
                else:  # the render's own coefficients
                    p = finals[c]
                view = make_transform("fused")
                view.anneal(1.0 if point == "start" else 1.0 - fast.anneal)  # the strength of the first / last step

                t0 = time.perf_counter()
                seeds = [10_000 + j for j in range(REFERENCE_VIEWS)] + list(range(TEST_VIEWS))
                grads = _view_gradients(model, net, renderer.calls, layer, pre, c, p, view, seeds)
                ref, test = torch.stack(grads[:REFERENCE_VIEWS]).mean(0), grads[REFERENCE_VIEWS:]
                pairs = [_cos(a, b) for i, a in enumerate(test) for b in test[i + 1 :]]
                per.append(
                    {
                        "channel": c,
                        "rho": float(np.mean(pairs)),
                        "cos_one_to_reference": float(np.mean([_cos(g, ref) for g in test])),
                        "cos_four_to_reference": float(
                            np.mean([_cos(sum(test[i : i + 4]), ref) for i in range(0, TEST_VIEWS, 4)])
                        ),
                        "ms_per_gradient": 1000 * (time.perf_counter() - t0) / (REFERENCE_VIEWS + TEST_VIEWS),
                    }
                )
            rho = float(np.median([x["rho"] for x in per]))
            rows.append(
                {
                    "layer": layer,
                    "point": point,
                    "channels": chans,
                    "rho": round(rho, 4),
                    "cos_one_to_reference": round(float(np.median([x["cos_one_to_reference"] for x in per])), 3),
                    "cos_four_to_reference": round(float(np.median([x["cos_four_to_reference"] for x in per])), 3),
                    "predicted_one_to_reference": round(aligned(rho, 1) * aligned(rho, REFERENCE_VIEWS), 3),
                    "predicted_four_to_reference": round(aligned(rho, 4) * aligned(rho, REFERENCE_VIEWS), 3),
                    "views_for_cos_0_9": round(views_for(rho), 1),
                    "per_channel": [{k: round(v, 4) if isinstance(v, float) else v for k, v in x.items()} for x in per],
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_channel"}), flush=True)
    return rows


def _sources() -> dict:
    """name → (a view transform, whether the gradient is blurred at the strided convolutions) for :func:`sources`."""
    from filterscope.optvis.transform import RandomAffine, make_transform

    def fused():
        t = make_transform("fused")
        t.anneal(0.5)  # fast's last step
        return t

    return {
        "translate ±3 px": (RandomAffine(scales=(1.0,), angles=(0,), translate=3), False),
        "translate ±12 px": (RandomAffine(scales=(1.0,), angles=(0,), translate=12), False),
        "rotate ±2°": (RandomAffine(scales=(1.0,), angles=(-2, -1, 1, 2)), False),
        "rotate ±10°": (RandomAffine(scales=(1.0,), angles=tuple(range(-10, 11))), False),
        "scale 0.9-1.1": (RandomAffine(scales=tuple(1 + (i - 5) / 50 for i in range(11)), angles=(0,)), False),
        "fused (fast's last step)": (fused(), False),
        "fused, backward blurred at the strides (1 2 1)": (fused(), True),
    }


def sources(model, layer: str = "blocks.6", n_channels: int = 4) -> list[dict]:
    """The sources section (see the module docstring): ρ over 8 views per channel, median over channels."""
    import contextlib

    import bench_screens  # the blurred backward, as screened

    from filterscope.optvis.presets import get_preset
    from filterscope.optvis.relu import final_relus
    from filterscope.optvis.render import Renderer

    chans = bp.tuning_channels(model, layer, 8)[:n_channels]
    finals = rendered_params(model, layer, chans)
    rows = []
    for name, (view, blurred) in _sources().items():
        with bench_screens._blurred_backward((1, 2, 1)) if blurred else contextlib.nullcontext():
            renderer = Renderer(model, get_preset("fast"))
            net = renderer.net_for([layer])
            pre = final_relus(net, renderer.orders, [layer]).get(layer)
            rhos = []
            for c in chans:
                p = finals[c]
                g = _view_gradients(model, net, renderer.calls, layer, pre, c, p, view, list(range(TEST_VIEWS)))
                rhos.append(float(np.mean([_cos(a, b) for i, a in enumerate(g) for b in g[i + 1 :]])))
        rows.append({"layer": layer, "views": name, "channels": chans, "rho": round(float(np.median(rhos)), 4)})
        rows[-1]["rho_per_channel"] = [round(x, 4) for x in rhos]
        print(json.dumps(rows[-1]), flush=True)
    return rows


def samples(model, layers: list[str], n_channels: int = 8) -> list[dict]:
    """The samples section: each (preset, views, steps) of :data:`GRID` on the tuning channels, no early exit."""
    rows = []
    for layer in layers:
        chans = bp.tuning_channels(model, layer, n_channels)
        bp.measure(model, layer, chans[:1], bp.settings_for("fast", {}, {}, 2))  # warm-up
        for preset, views, steps, changes in GRID:
            r = bp.measure(model, layer, chans, bp.settings_for(preset, {"views": views, **changes}, {}, steps))
            row = {"layer": layer, "preset": preset, "views": views, "steps": steps, "samples": views * steps}
            rows.append({**row, "changes": changes, **r})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# the held-out check: name → (preset, RenderSettings changes, param options), as bench_progress.held_out takes them
HELD_OUT = {
    "fast (default)": ("fast", {}, {}),
    "fast, 4 views × 64 steps": ("fast", {"views": 4, "steps": 64}, {}),
    "fast, 8 views × 64 steps": ("fast", {"views": 8, "steps": 64}, {}),
    "lucid (512)": ("lucid", {}, {}),
}


def _changes(changes: dict | None) -> str:
    return "".join(f", {k} {v}" for k, v in (changes or {}).items())


def _table(head: list[str], rows: list[list]) -> list[str]:
    """A markdown table (cells already formatted) and the blank line after it."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def markdown(res: dict) -> str:
    out = ["# Gradient noise and samples", ""]
    if res.get("alignment"):
        align = res["alignment"]["rows"]
        out += [
            "### One view's gradient against the expected one",
            "",
            f"Machine: {res['alignment']['machine']}. Median over {len(align[0]['channels'])} tuning channels per "
            "layer; the reference is the mean "
            f"of {REFERENCE_VIEWS} other views' gradients. *Predicted*: from ρ alone, if each view's gradient is the "
            "expected one plus independent noise.",
            "",
        ]
        head = ["layer", "point", "ρ (two views)", "one view · reference", "predicted", "mean of 4 · reference"]
        out += _table(
            [*head, "predicted", "views for cos 0.9"],
            [
                [
                    r["layer"],
                    r["point"],
                    f"{r['rho']:.3f}",
                    f"{r['cos_one_to_reference']:.2f}",
                    f"{r['predicted_one_to_reference']:.2f}",
                    f"{r['cos_four_to_reference']:.2f}",
                    f"{r['predicted_four_to_reference']:.2f}",
                    f"{r['views_for_cos_0_9']:.0f}",
                ]
                for r in align
            ],
        )
    if res.get("sources"):
        src = res["sources"]["rows"]
        out += [
            "### Where the noise comes from",
            "",
            f"Machine: {res['sources']['machine']}. {src[0]['layer']}, {len(src[0]['channels'])} tuning channels, at "
            f"the end of a 48-step render; ρ: mean cosine between {TEST_VIEWS} views' gradients, median over channels.",
            "",
        ]
        cells = [[r["views"], f"{r['rho']:.3f}", ", ".join(f"{x:.3f}" for x in r["rho_per_channel"])] for r in src]
        out += _table(["views", "ρ", "per channel"], cells)
    if res.get("samples"):
        chans, grid = res["samples"]["channels"], res["samples"]["rows"]
        out += [
            "### Robust ratio by gradient samples (views per step × steps)",
            "",
            f"Machine: {res['samples']['machine']}. Tuning channels "
            + ", ".join(f"{k}: {v}" for k, v in chans.items())
            + "; no early exit; one process, the views of a step one batch.",
            "",
        ]
        for layer in dict.fromkeys(r["layer"] for r in grid):
            cells = [
                [
                    f"{r['preset']}{_changes(r.get('changes'))}",
                    r["samples"],
                    f"{r['views']} × {r['steps']}",
                    f"{r['median_robust_ratio']:.2f}",
                    f"{r['s_per_channel']:.2f}",
                    f"{r['median_colourfulness']:.1f}",
                ]
                for r in grid
                if r["layer"] == layer
            ]
            head = ["preset", "samples", "views × steps", "robust ratio", "s/channel", "colourfulness"]
            out += [f"**{layer}**", "", *_table(head, cells)]
    if res.get("held_out"):
        table = bp.held_out_table(res["held_out"]["rows"])
        out += [*table[:2], f"Machine: {res['held_out']['machine']}.", "", *table[2:]]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="alignment,sources,samples,held_out", help="comma-separated sections")
    p.add_argument("--layers", default=None, help="layers of the samples section (default: blocks.3,blocks.6)")
    p.add_argument("--out", default=str(bp.RESULTS / "noise"))
    args = p.parse_args()
    import os

    os.environ["FILTERSCOPE_NO_CACHE"] = "1"  # every point rendered and timed here
    only = set(args.only.split(","))
    sections = {"alignment", "sources", "samples", "held_out"}
    if only - sections:
        p.error(f"unknown section(s) {sorted(only - sections)}")
    model = br.load("efficientnet_lite0", "cpu")
    out = Path(args.out).with_suffix(".json")
    res = json.loads(out.read_text()) if out.exists() else {}  # a section run alone keeps the other's rows
    res["machine"] = br.machine()  # the last run's; each section records its own
    if "alignment" in only:
        res["alignment"] = {"machine": br.machine(), "rows": alignment(model, ALIGN_LAYERS)}
    if "sources" in only:
        res["sources"] = {"machine": br.machine(), "rows": sources(model)}
    if "samples" in only:
        layers = (args.layers or ",".join(bp.LAYERS)).split(",")
        chans = {layer: bp.tuning_channels(model, layer, 8) for layer in layers}
        before = res.get("samples", {"channels": {}, "rows": []})
        kept = [{"machine": before.get("machine"), **r} for r in before["rows"] if r["layer"] not in layers]
        rows = kept + [{"machine": br.machine(), **r} for r in samples(model, layers)]  # other layers' rows stay
        res["samples"] = {
            "machine": " / ".join(dict.fromkeys(r["machine"] for r in rows)),
            "channels": {**before["channels"], **chans},
            "rows": rows,
        }
    if "held_out" in only:
        rows = bp.held_out(model, variants=list(HELD_OUT), table=HELD_OUT)
        res["held_out"] = {"machine": br.machine(), "rows": rows}
    br.write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
