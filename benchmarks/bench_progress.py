"""More progress per step (issue 25, item 1): each tried direction's curve — robust ratio against seconds per
channel — beside ``fast`` and Lucid-512, on *tuning* channels (not the ones bench_targets.py scores).

    python benchmarks/bench_progress.py                     # all variants, ~6 min on 2 idle CPU cores
    python benchmarks/bench_progress.py --variants fast,cosine --steps 32,64
    python benchmarks/bench_progress.py --seed-noise-only       # how far a median moves with the seed alone

Every variant is the ``fast`` preset with some settings changed, run without early exit so each point is
exactly its step count. One process; the seconds are measured in it (a shared machine inflates all alike).
Writes benchmarks/results/progress.json and progress.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_render as br  # noqa: E402

RESULTS = HERE / "results"
LAYERS = ["blocks.3", "blocks.6"]

# name → (preset, RenderSettings changes, param_options set); each variant is today's ``fast`` with its
# changes; the "before" rows are earlier defaults (Lucid's grey start, ``init_contrast`` 0; no averaging; constant
# transforms)
GREY = {"init_contrast": 0.0}
DEFAULT = "fast (default)"
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "fast grey start (before)": ("fast", {"ema": 0.0, "anneal": 0.0}, GREY),
    "fast without averaging (before)": ("fast", {"ema": 0.0, "anneal": 0.0}, {}),
    "fast without annealing (before)": ("fast", {"anneal": 0.0}, {}),
    DEFAULT: ("fast", {}, {}),
    "natural start 1.0": ("fast", {}, {"init_contrast": 1.0}),
    "cosine lr 0.3": ("fast", {"schedule": "cosine", "lr": 0.3}, GREY),
    "cosine lr 0.2 + natural start": ("fast", {"schedule": "cosine", "lr": 0.2}, {}),
    "coarse 50%": ("fast", {"coarse": 0.5}, GREY),
    "maco": ("maco", {}, {}),
    # this round's directions, each from today's default; "lucid at these steps" is the reference's own curve
    "lucid at these steps": ("lucid", {}, {}),
    "steeper spectrum (decay 1.25)": ("fast", {}, {"decay_power": 1.25}),
    "lr 0.2": ("fast", {"lr": 0.2}, {}),
    "2 views per step": ("fast", {"views": 2}, {}),
    "light transforms": ("fast", {"transforms": "light"}, {}),
    "bfloat16 network": ("fast", {"precision": "bfloat16"}, {}),
    # MACO's magnitude prior as the Fourier preconditioner, amplitudes still learned (``spectrum="natural"``)
    "natural spectrum": ("fast", {}, {"spectrum": "natural"}),
    # coarse-to-fine: the first 40 % of the steps on a half-size image (~0.4 of a step's cost here), then carried
    # to full size resized (features grow 2×, Lucid's lowres_tensor) or tiled 2×2 (same pixel scale); 64 steps
    # when held out, about fast's 48 in seconds
    "half size first 40 %": ("fast", {"lowres": 0.4, "steps": 64}, {}),
    "half size first 40 % (tiled)": ("fast", {"lowres": 0.4, "lowres_carry": "tile", "steps": 64}, {}),
    # the default's running average of the steps (ema 0.8, ~the last 5) over ~the last 10 instead
    "ema 0.9": ("fast", {"ema": 0.9}, {}),
    # captum.optim's LaplacianImage: pixel levels at 1, 1/2, … 1/32 of the side, from fast's natural start
    "laplacian pyramid (lr 0.1)": ("fast", {"param": "laplacian", "lr": 0.1}, {}),
    # transform annealing: the default shrinks the transforms' ranges to 1/2 at the last step; these to 0, 1/3
    "anneal to 0": ("fast", {"anneal": 1.0}, {}),
    "anneal to 0.33": ("fast", {"anneal": 0.67}, {}),
}
assert not any("," in v for v in VARIANTS), "--variants splits on commas"
# the held-out check: today's default beside the directions that gained on the tuning channels
HELD_OUT = [
    DEFAULT,
    "fast without averaging (before)",
    "light transforms",
    "steeper spectrum (decay 1.25)",
    "2 views per step",
    "natural spectrum",
    "half size first 40 %",
    "half size first 40 % (tiled)",
    "laplacian pyramid (lr 0.1)",
]


@contextlib.contextmanager
def made_params() -> Iterator[list]:
    """The parameterisations the render loop makes while inside, in order: a render's own coefficients, for the
    scripts that start from one (bench_screens.py) or measure at one (bench_noise.py)."""
    from filterscope.optvis import render as R

    made, make = [], R.make_param

    def keep(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    with mock.patch.object(R, "make_param", keep):
        yield made


def tuning_channels(model, layer: str, n: int) -> list[int]:
    """``n`` channels drawn with another seed than the benchmark's, none of the benchmark's own."""
    from filterscope.models.layers import get_layer

    scored = set(br.pick_channels(model, layer, 4))
    pool = [c for c in range(get_layer(model, layer).channels) if c not in scored]
    return sorted(int(c) for c in np.random.default_rng(7).choice(pool, n, replace=False))


def settings_for(preset: str, changes: dict, options: dict, steps: int | None = None, early_exit: bool = False):
    """A variant: the preset with ``changes`` and its param options updated by ``options``; ``steps`` exactly
    (no early exit) unless ``early_exit``. bench_classes.py uses it too."""
    from filterscope.optvis.presets import get_preset

    s = get_preset(preset)
    opts = {**dict(s.param_options), **options}
    s = s.with_(param_options=tuple(sorted(opts.items())), **changes)
    return s.with_(steps=steps) if early_exit else s.with_(steps=steps, converge=0.0)


def measure(model, layer: str, channels: list[int], settings, seed: int = 0) -> dict:
    import torch

    from filterscope.jobs.evaluate import natural_max, score_images
    from filterscope.jobs.stream import render_stream
    from filterscope.models.layers import get_layer

    t0 = time.perf_counter()
    images = [r.image for r in render_stream(model, get_layer(model, layer), channels, settings, seed=seed)]
    sec = (time.perf_counter() - t0) / len(channels)
    stack = torch.stack([i.float() for i in images])
    scores = score_images(model, layer, channels, stack, natural_max(model, layer))
    return {
        "s_per_channel": round(sec, 3),
        "median_robust_ratio": round(float(np.median([s.robust_ratio for s in scores])), 3),
        "robust_ratios": [round(float(s.robust_ratio), 3) for s in scores],
        "median_colourfulness": round(float(np.median([s.colourfulness for s in scores])), 1),
        "median_rms_contrast": round(float(np.median([s.rms_contrast for s in scores])), 3),
    }


def score_layer(model, layer: str, channels: list[int], images) -> dict:
    """The evaluator on renders ``images`` of ``channels``: median robust ratio, or for bn2 its robust
    pre-activation (ReLU6 caps the output), with every value and the picture measures."""
    import torch

    from filterscope.jobs.evaluate import natural_max, score_images

    pre = layer == "bn2"
    stack = torch.stack([i.float().cpu() for i in images])
    sc = score_images(model, layer, channels, stack, natural_max(model, layer, pre_relu=pre), pre_relu=pre)
    value = [x.robust_activation if pre else x.robust_ratio for x in sc]
    return {
        "measure": "robust pre-activation" if pre else "robust ratio",
        "median": round(float(np.median(value)), 3),
        "values": [round(float(v), 3) for v in value],
        "median_colourfulness": round(float(np.median([x.colourfulness for x in sc])), 1),
        "median_rms_contrast": round(float(np.median([x.rms_contrast for x in sc])), 3),
    }


def held_out(model, steps: int | None = None, variants: list[str] = HELD_OUT, table: dict | None = None) -> list[dict]:
    """The directions checked where they were not tuned: the benchmark's own channels (bench_targets.py's),
    every benchmarked layer, each as ``fast`` runs by default (early exit on); bn2 scored on its robust
    pre-activation (:func:`score_layer`). ``table``: name → (preset, changes, options), :data:`VARIANTS` if None."""
    from filterscope.jobs.stream import render_stream
    from filterscope.models.layers import get_layer

    rows = []
    for layer in ["blocks.1", "blocks.3", "blocks.5", "blocks.6", "bn2"]:
        chans = br.pick_channels(model, layer, 4)
        for name in variants:
            preset, changes, options = (VARIANTS if table is None else table)[name]
            s = settings_for(preset, changes, options, steps, early_exit=True)
            t0 = time.perf_counter()
            res = list(render_stream(model, get_layer(model, layer), chans, s, seed=0))
            sec = (time.perf_counter() - t0) / len(chans)
            scored = score_layer(model, layer, chans, [r.image for r in res])
            rows.append(
                {
                    "layer": layer,
                    "start": name,
                    "channels": chans,
                    **{k: scored[k] for k in ("measure", "median", "values")},
                    "steps": float(np.mean([len(r.curve) for r in res])),
                    "s_per_channel": round(sec, 3),
                    **{k: scored[k] for k in ("median_colourfulness", "median_rms_contrast")},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def seed_noise(model, layers: list[str], n: int = 8, seeds: tuple[int, ...] = (0, 1, 2), steps: int = 64) -> list[dict]:
    """How far a median moves with the render seed alone: ``fast`` at ``steps`` on ``n`` tuning channels per
    layer, once per seed. A difference between variants smaller than this spread is not a finding. The same
    renders bound what choosing among restarts could gain: per channel the best of the seeds (an oracle that
    costs one full render per seed)."""
    rows = []
    for layer in layers:
        chans = tuning_channels(model, layer, n)
        s = settings_for("fast", {}, {}, steps)
        runs = [measure(model, layer, chans, s, seed) for seed in seeds]
        meds = [r["median_robust_ratio"] for r in runs]
        values = [r["robust_ratios"] for r in runs]
        rows.append(
            {
                "layer": layer,
                "channels": chans,
                "steps": steps,
                "seeds": list(seeds),
                "medians": meds,
                "values": values,
                "best_of_seeds_median": round(float(np.median(np.max(values, axis=0))), 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(res: dict) -> str:
    curves = (
        f" Tuning channels {res['channels']} (not the benchmark's)."
        " Each cell: median robust ratio @ seconds per channel."
        if res["rows"]
        else ""
    )
    out = [f"Machine: {res['machine']}.{curves}", ""]
    for layer in res["layers"]:
        rows = [r for r in res["rows"] if r["layer"] == layer]
        if not rows:
            continue
        steps = sorted({r["steps"] for r in rows if r["variant"] != "lucid"})
        out += [f"### {layer}", "", "| variant | " + " | ".join(f"{s} steps" for s in steps) + " |"]
        out.append("|---" * (len(steps) + 1) + "|")
        for v in dict.fromkeys(r["variant"] for r in rows):
            cells = {r["steps"]: r for r in rows if r["variant"] == v}
            if v == "lucid":
                (r,) = cells.values()
                out.append(f"| lucid (512) | {r['median_robust_ratio']:.2f} @ {r['s_per_channel']:.2f} s |")
                continue
            out.append(
                f"| {v} | "
                + " | ".join(
                    f"{cells[s]['median_robust_ratio']:.2f} @ {cells[s]['s_per_channel']:.2f} s" if s in cells else ""
                    for s in steps
                )
                + " |"
            )
        out.append("")
    if res.get("seed_noise"):
        out += [
            "### Seed noise: `fast` at the same settings, only the render seed changed",
            "",
            "| layer | channels | steps | medians (seeds 0, 1, 2) | spread | median of each channel's best seed |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["seed_noise"]:
            m = r["medians"]
            spread = (max(m) - min(m)) / float(np.median(m))
            best = r.get("best_of_seeds_median")
            out.append(
                f"| {r['layer']} | {len(r['channels'])} | {r['steps']} | {', '.join(f'{x:.2f}' for x in m)} | "
                f"{100 * spread:.1f} % | {'' if best is None else f'{best:.2f}'} |"
            )
        out.append("")
    if res.get("held_out"):
        out += held_out_table(res["held_out"])
    return "\n".join(out)


def held_out_table(rows: list[dict]) -> list[str]:
    """The held-out check's rows as markdown lines (a heading, the table, a blank line)."""
    out = [
        "### Held out: the benchmark's channels, each variant as `fast` runs (early exit on)",
        "",
        "| layer | variant | measure | median | steps | s/channel | colourfulness | RMS contrast |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r['layer']} | {r['start']} | {r['measure']} | {r['median']:.2f} | {r['steps']:.0f} | "
        f"{r['s_per_channel']:.2f} | {r['median_colourfulness']} | {r['median_rms_contrast']} |"
        for r in rows
    ]
    return out + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", default="32,64,128")
    p.add_argument("--layers", default=",".join(LAYERS))
    p.add_argument("--n-channels", type=int, default=3)
    p.add_argument("--no-lucid", action="store_true", help="skip the Lucid-512 reference")
    p.add_argument("--held-out-only", action="store_true", help="only the held-out check")
    p.add_argument("--held-out", default=",".join(HELD_OUT), help="variants of the held-out check")
    p.add_argument(
        "--precision-check",
        action="store_true",
        help="only the held-out check of float32 against a bfloat16 network (results/precision.json)",
    )
    p.add_argument(
        "--seed-noise-only", action="store_true", help="only the seed-noise check (kept with the other results)"
    )
    p.add_argument("--out", default=str(RESULTS / "progress"))
    args = p.parse_args()
    if args.precision_check:
        args.held_out_only, args.out = True, str(RESULTS / "precision")
        args.held_out = f"{DEFAULT},bfloat16 network"
    import os

    os.environ["FILTERSCOPE_NO_CACHE"] = "1"  # every point rendered and timed here, none served from a cache
    import torch

    torch.set_num_threads(torch.get_num_threads())
    model = br.load("efficientnet_lite0", "cpu")
    layers = args.layers.split(",")
    chans = {layer: tuning_channels(model, layer, args.n_channels) for layer in layers}
    rows = []
    for layer in layers if not args.held_out_only else []:
        measure(model, layer, chans[layer][:1], settings_for("fast", {}, {}, 2))  # warm-up: folding, first calls
        if not args.no_lucid:
            r = measure(model, layer, chans[layer], settings_for("lucid", {}, {}, 512))
            rows.append({"layer": layer, "variant": "lucid", "steps": 512, **r})
            print(json.dumps(rows[-1]), flush=True)
        for v in args.variants.split(","):
            preset, changes, options = VARIANTS[v]
            for steps in (int(x) for x in args.steps.split(",")):
                r = measure(model, layer, chans[layer], settings_for(preset, changes, options, steps))
                rows.append({"layer": layer, "variant": v, "steps": steps, **r})
                print(json.dumps(rows[-1]), flush=True)
    if args.seed_noise_only:
        args.held_out_only = True
    noise = seed_noise(model, layers) if args.seed_noise_only or not args.held_out_only else []
    checked = [] if args.seed_noise_only else held_out(model, variants=args.held_out.split(","))
    res = {"machine": br.machine(), "layers": layers, "channels": chans, "rows": rows, "held_out": checked}
    res["seed_noise"] = noise
    if args.held_out_only and Path(args.out).with_suffix(".json").exists():  # keep what was measured before
        before = json.loads(Path(args.out).with_suffix(".json").read_text())
        res = {**before, **{k: v for k, v in (("held_out", checked), ("seed_noise", noise)) if v}}
    br.write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
