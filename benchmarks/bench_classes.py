"""Class renders that another model recognises (issue 25, item 2): which settings make a class render transfer.

    python benchmarks/bench_classes.py                           # every variant on the tuning classes
    python benchmarks/bench_classes.py --set benchmark --variants class   # score the chosen default

Renders logits of efficientnet_lite0 and classifies them with efficientnet_lite1 (trained independently):
top-1 / top-5 and seconds per class. Two disjoint class sets: ``tuning`` (0, 50, …, 950), on which variants
are compared and the default chosen, and ``benchmark`` (25, 75, …, 975; bench_targets.py's), only scored.
Writes benchmarks/results/classes_<set>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SETS = {"tuning": list(range(0, 1000, 50)), "benchmark": list(range(25, 1000, 50))}

# name → (preset, RenderSettings changes, param_options added)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "fast": ("fast", {}, {}),
    "fast 96": ("fast", {"steps": 96, "converge": 0.0}, {}),
    "fast crops": ("fast", {"transforms": "maco"}, {}),
    "fast natural init": ("fast", {}, {"init_contrast": 0.5}),
    "maco": ("maco", {}, {}),
    "maco 48": ("maco", {"steps": 48}, {}),
    "maco fused": ("maco", {"transforms": "fused"}, {}),
    "maco fused 64": ("maco", {"transforms": "fused", "steps": 64}, {}),
    "fast 64": ("fast", {"steps": 64, "converge": 0.0}, {}),
    "maco fused 128": ("maco", {"transforms": "fused", "steps": 128}, {}),
    "maco-fused (logit default)": ("maco-fused", {}, {}),
}


def settings_for(preset: str, changes: dict, options: dict):
    """A variant as bench_progress.py makes one, each preset running as it does by default (early exit on)."""
    sys.path.insert(0, str(HERE))
    from bench_progress import settings_for as variant

    return variant(preset, changes, options, early_exit=True)


def run_variant(model, ev, classes: list[int], settings) -> dict:
    import torch

    from filterscope.jobs.evaluate import natural_max, score_images
    from filterscope.jobs.stream import render_stream
    from filterscope.models.layers import LOGIT, get_layer

    t = time.perf_counter()
    images = [r.image for r in render_stream(model, get_layer(model, LOGIT), classes, settings, seed=0)]
    sec = (time.perf_counter() - t) / len(classes)
    scores = score_images(
        model, LOGIT, classes, torch.stack([i.float() for i in images]), natural_max(model, LOGIT), eval_model=ev
    )
    return {
        "s_per_class": round(sec, 3),
        "top1": float(np.mean([s.top1 for s in scores])),
        "top5": float(np.mean([s.top5 for s in scores])),
        "top1_classes": [c for c, s in zip(classes, scores) if s.top1],
        "median_colourfulness": round(float(np.median([s.colourfulness for s in scores])), 1),
        "median_rms_contrast": round(float(np.median([s.rms_contrast for s in scores])), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=list(SETS), default="tuning")
    p.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "class"))
    args = p.parse_args()
    import os

    os.environ["FILTERSCOPE_NO_CACHE"] = "1"
    sys.path.insert(0, str(HERE))
    import bench_render as br

    from filterscope.models import load_model

    model, ev = load_model("efficientnet_lite0"), load_model("efficientnet_lite1")
    classes = SETS[args.set]
    run_variant(model, ev, classes[:1], settings_for("fast", {"steps": 2}, {}))  # warm-up
    rows = []
    for v in args.variants.split(","):
        preset, changes, options = VARIANTS[v]
        r = run_variant(model, ev, classes, settings_for(preset, changes, options))
        rows.append({"variant": v, "date": time.strftime("%Y-%m-%d %H:%M"), **r})
        print(json.dumps(rows[-1]), flush=True)
    out = RESULTS / f"classes_{args.set}"
    if out.with_suffix(".json").exists():  # rows of variants not re-run now are kept (each row says when)
        done = set(args.variants.split(","))
        rows = [r for r in json.loads(out.with_suffix(".json").read_text())["rows"] if r["variant"] not in done] + rows
    lines = [
        f"Machine: {br.machine()}. {args.set} classes {classes}; rendered on efficientnet_lite0, "
        "classified by efficientnet_lite1. Seconds under a shared machine are upper bounds.",
        "",
        "| variant | top-1 | top-5 | s/class | colourfulness | RMS contrast | measured |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['top1']:.0%} | {r['top5']:.0%} | {r['s_per_class']:.2f} | "
        f"{r['median_colourfulness']} | {r['median_rms_contrast']} | {r.get('date', '')} |"
        for r in rows
    ]
    res = {"machine": br.machine(), "classes": classes, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
