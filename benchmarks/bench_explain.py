"""Measure what `filterscope explain` claims, on the bundled photos (efficientnet_lite0).

1. Ablation: for every photo and layer, the drop of the predicted class's probability when the top-k
   filters are set to zero (k = 1…32) for three rankings: contribution (gradient × activation, the Taylor
   estimate of zeroing), mean activation, and random. Medians of the top-8 drop per layer and ranking.
2. Accentuation: for the top-3 filters by contribution of every photo at blocks.5, the filter's activation
   on the photo and on the accentuation (gain) and the SSIM between them; and a strength curve on a subset
   (how the default closeness strength was picked).
3. Path similarity of renders from noise: `seed` (adversarial pixels) vs the readable presets.

Writes benchmarks/results/explain.{json,md} and docs/deletion_curves.png, docs/accent_curve.png.

    python benchmarks/bench_explain.py                 # everything (~15-25 min on 2 CPU cores)
    python benchmarks/bench_explain.py --only ablation
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import matplotlib

os.environ.setdefault("FILTERSCOPE_NO_CACHE", "1")  # time renders, not cache reads

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from common import tables

import filterscope as fs
from filterscope.jobs.accentuate import DEFAULT_STEPS, DEFAULT_STRENGTH
from filterscope.jobs.attribution import deletion_curve
from filterscope.jobs.evaluate import path_scores
from filterscope.models.inputs import list_images, load_image, model_input, to_tensor
from filterscope.models.layers import get_layer

ROOT = Path(__file__).resolve().parents[1]
KS = list(range(1, 33))


def photos(which: str = "all") -> list[Path]:
    """The bundled cup and the 36 bundled photos (``all``), or the cup and one view of each of the 12 scenes
    (``views0``: 13 photos, the set the issue's baseline was measured on)."""
    files = list_images(fs.sample_photos_dir())
    if which == "views0":
        files = [f for f in files if f.stem.endswith("_0")]
    return [fs.sample_image_path()] + files


def ablation(model, layers, files, seed=0) -> dict:
    out = {}
    for layer in layers:
        info = get_layer(model, layer)
        rng = np.random.default_rng(seed)
        curves = {"contribution": [], "activation": [], "random": []}
        t0 = time.perf_counter()
        for f in files:
            x = model_input(model, load_image(f))
            ins = fs.inspect(model, x, layer, top=8, rank="contribution")
            orders = {
                "contribution": ins.order("contribution"),
                "activation": ins.order("activation"),
                "random": rng.permutation(info.channels).tolist(),
            }
            for r, order in orders.items():
                curves[r].append(deletion_curve(model, x, info, order, ins.target_class, KS).tolist())
        arr = {r: np.array(v) for r, v in curves.items()}
        k8 = KS.index(8)
        out[layer] = {
            "photos": len(files),
            "median_top8_drop": {r: float(np.median(a[:, k8])) for r, a in arr.items()},
            "median_curve": {r: np.median(a, 0).round(5).tolist() for r, a in arr.items()},
            "ratio_contribution_vs_activation": float(np.median(arr["contribution"][:, k8]))
            / max(float(np.median(arr["activation"][:, k8])), 1e-9),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(layer, out[layer]["median_top8_drop"], flush=True)
    return out


def accentuation(model, files, strength, steps, layer="blocks.5", top=3) -> dict:
    rows = []
    t0 = time.perf_counter()
    for f in files:
        x = model_input(model, load_image(f))
        ins = fs.inspect(model, x, layer, top=top, rank="contribution")
        for a in fs.accentuate(model, x, layer, ins.top, strength=strength, steps=steps).data:
            rows.append(
                {
                    "photo": f.name,
                    "filter": a.channel,
                    "activation_photo": a.activation_photo,
                    "activation_accent": a.activation_accent,
                    "gain": a.gain,
                    "ssim": a.ssim,
                }
            )
    g = np.array([r["gain"] for r in rows])
    s = np.array([r["ssim"] for r in rows])
    return {
        "layer": layer,
        "strength": strength,
        "steps": steps,
        "n": len(rows),
        "median_gain": float(np.median(g)),
        "median_ssim": float(np.median(s)),
        "fraction_gain2_ssim05": float(np.mean((g >= 2) & (s >= 0.5))),
        "seconds_per_accentuation": round((time.perf_counter() - t0) / max(len(rows), 1), 2),
        "rows": rows,
    }


def path(model, layer="blocks.5", chans=(0, 17, 42, 88, 150, 191), methods=("seed", "fast", "maco")) -> dict:
    out = {}
    for m in methods:
        imgs = torch.stack([to_tensor(fs.render(model, layer, c, method=m, seed=0).image) for c in chans])
        scores = path_scores(model, layer, list(chans), imgs)
        out[m] = {"channels": list(chans), "path_similarity": scores, "median": float(np.median(scores))}
        print("path", m, out[m]["median"], flush=True)
    return out


def plots(res: dict) -> None:
    if "ablation" in res:
        layers = list(res["ablation"])
        fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.4), dpi=100, sharey=True)
        colours = {"contribution": "#d62728", "activation": "#1f77b4", "random": "#7f7f7f"}
        for ax, layer in zip(np.atleast_1d(axes), layers):
            for r, c in res["ablation"][layer]["median_curve"].items():
                ax.plot(KS, c, label=r, color=colours[r])
            ax.set_title(f"{layer} ({res['ablation'][layer]['photos']} photos)", fontsize=10)
            ax.set_xlabel("k filters set to zero")
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("median drop of p(predicted class)")
        np.atleast_1d(axes)[0].legend(frameon=False, fontsize=8)
        fig.suptitle("Deletion curves on efficientnet_lite0: top-k filters by each ranking zeroed", fontsize=10)
        fig.tight_layout()
        fig.savefig(ROOT / "docs/deletion_curves.png")
        plt.close(fig)
    if "accent_curve" in res:
        c = res["accent_curve"]
        xs = [max(p["strength"], 1.0) for p in c]
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
        ax.plot(xs, [p["median_gain"] for p in c], "o-", color="#d62728", label="median gain")
        ax.axhline(2, color="#d62728", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("closeness strength (0 plotted at 1)")
        ax.set_ylabel("median gain (×)")
        ax2 = ax.twinx()
        ax2.plot(xs, [p["median_ssim"] for p in c], "s-", color="#1f77b4", label="median SSIM")
        ax2.axhline(0.5, color="#1f77b4", ls=":", lw=1)
        ax2.set_ylabel("median SSIM to the photo")
        ax.set_title(f"Accentuation at blocks.5: strength curve ({c[0]['n']} filters)", fontsize=10)
        fig.legend(loc="lower left", fontsize=8, frameon=False)
        fig.tight_layout()
        fig.savefig(ROOT / "docs/accent_curve.png")
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["ablation", "accentuation", "curve", "path"], action="append")
    ap.add_argument("--layers", default="blocks.4,blocks.5,blocks.6")
    ap.add_argument("--curve", default="0,1000,10000,100000", help="strengths for the accentuation curve")
    ap.add_argument("--curve-photos", type=int, default=4)
    ap.add_argument("--photos", choices=["all", "views0"], default="all", help="photos for ablation")
    ap.add_argument("--accent-photos", choices=["all", "views0"], default="views0", help="photos for accentuation")
    args = ap.parse_args()
    parts = args.only or ["ablation", "accentuation", "curve", "path"]
    torch.manual_seed(0)
    model = fs.load_model("efficientnet_lite0")
    files = photos(args.photos)
    out_json = ROOT / "benchmarks/results/explain.json"
    res = json.loads(out_json.read_text()) if out_json.exists() and args.only else {}
    res["machine"] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if "ablation" in parts:
        res["ablation"] = ablation(model, args.layers.split(","), files)
    if "curve" in parts:
        acc_files = photos(args.accent_photos)
        sub = acc_files[:: max(1, len(acc_files) // args.curve_photos)][: args.curve_photos]
        res["accent_curve"] = []
        for s in [float(v) for v in args.curve.split(",")]:
            a = accentuation(model, sub, s, DEFAULT_STEPS)
            a.pop("rows")
            res["accent_curve"].append(a)
            print("curve", s, a["median_gain"], a["median_ssim"], flush=True)
    if "accentuation" in parts:
        res["accentuation"] = accentuation(model, photos(args.accent_photos), DEFAULT_STRENGTH, DEFAULT_STEPS)
        print("accentuation", res["accentuation"]["median_gain"], res["accentuation"]["median_ssim"], flush=True)
    if "path" in parts:
        res["path"] = path(model)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1) + "\n")
    (ROOT / "benchmarks/results/explain.md").write_text(tables.explain_table(res))
    plots(res)
    print(tables.explain_table(res))


if __name__ == "__main__":
    main()
