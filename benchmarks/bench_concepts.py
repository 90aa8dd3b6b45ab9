"""Measure what `filterscope concepts` claims: 200 images at 224 px, `bn2` of efficientnet_lite0, 10 concepts
with their renders.

The 200 images: the 36 bundled photos, the colour images of `skimage.data` and sklearn's two sample images,
then random crops of those (40-90 % of the side, resized to 224 px) until there are 200, all saved as 224 px
JPEGs in a temporary folder.

1. Main run (renders on, render cache off): wall time, peak RSS of the process, seconds per image and per
   concept, the ablation (top-3 concepts removed vs 3 random: median drop of the class probability over the
   class images), stability (median matched cosine to the seed + 1 fit) and the reconstruction's top-1
   agreement.
2. Cost at 50 and 100 images (no renders; the main run's passes give 200): the activation pass, dictionary
   and evidence pass are linear in images.
3. NMF vs semi-NMF on the same vectors (the 50-image run with --compare-methods).

Writes benchmarks/results/concepts.{json,md}.

``--shortcut SEED [SEED ...]`` instead: held-out planted-shortcut nets (tests/shortcut_net.py: a 2-4 px red
mark on class 0 of noisy tinted stripes; the tests train seed 1, these are other seeds, each with its own
held-out folder of 48 images, 16 marked): the share of marked images in which the top concept of class 0
sits on the mark (its map peaks within one map cell of the mark's centre; target ≥ 80 %), for the NMF
concepts (the default) and for ``--basis dictionary`` over a ``filterscope dictionary`` run of the same layer
(defaults) on the same images. Writes benchmarks/results/concepts_shortcut.{json,md}.

    python benchmarks/bench_concepts.py            # ~2 min alone on 2 CPU cores (much longer on a shared one)
    python benchmarks/bench_concepts.py --shortcut 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FILTERSCOPE_NO_CACHE", "1")  # time renders, not cache reads

import numpy as np
import torch
from common import tables
from PIL import Image

import filterscope as fs
from filterscope.models.inputs import list_images, load_image

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
TARGETS = {"wall_s": 120, "peak_gb": 2.0, "ablation_ratio": 2.0, "stability": 0.8, "top1": 0.9}


def source_images() -> list[tuple[str, Image.Image]]:
    out = [(f.stem, load_image(f)) for f in list_images(fs.sample_photos_dir())]
    import skimage.data as sd

    for name in ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry"):
        try:
            a = getattr(sd, name)()
        except Exception:  # a dataset file missing from this install
            continue
        if a.ndim == 3 and a.shape[2] >= 3:
            out.append((f"skimage_{name}", Image.fromarray(a[..., :3])))
    from sklearn.datasets import load_sample_images

    for i, a in enumerate(load_sample_images().images):
        out.append((f"sklearn_{i}", Image.fromarray(a)))
    return out


def square(im: Image.Image, box=None) -> Image.Image:
    w, h = im.size
    if box is None:
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return im.crop(box).resize((SIZE, SIZE), Image.BICUBIC)


def make_folder(n: int, root: Path, seed: int = 0) -> Path:
    folder = root / f"images_{n}"
    folder.mkdir(parents=True, exist_ok=True)
    src = source_images()
    rng = np.random.default_rng(seed)
    items = [(name, square(im)) for name, im in src]
    while len(items) < n:
        name, im = src[int(rng.integers(len(src)))]
        w, h = im.size
        s = int(min(w, h) * rng.uniform(0.4, 0.9))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        items.append((f"{name}_crop{len(items):03d}", square(im, (x, y, x + s, y + s))))
    for name, im in items[:n]:
        im.convert("RGB").save(folder / f"{name}.jpg", quality=92)
    return folder


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run(model, folder: Path, out: Path, **kw) -> tuple[fs.Concepts, float]:
    t = time.perf_counter()
    res = fs.concepts(model, folder, n_concepts=10, seed=0, out=out, progress=False, **kw)
    return res, time.perf_counter() - t


def shortcut(seed: int, tmp: Path) -> dict:
    """One held-out shortcut net: mark hits of the top concept, NMF concepts and dictionary concepts."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from shortcut_net import mark_hits, striped_folder, train_stripes

    from filterscope.jobs.layer_dictionary import dictionary

    t = time.perf_counter()
    model, acc = train_stripes(seed)
    out = {"seed": seed, "training_accuracy": round(acc, 4), "train_s": round(time.perf_counter() - t, 1)}
    folder = tmp / f"shortcut_{seed}"
    marks = striped_folder(folder / "images", 48, seed=seed + 100)
    t = time.perf_counter()
    d = dictionary(model, folder / "images", out=folder / "dictionary", layer="act3", no_renders=True)
    out["dictionary_run"] = {**d.data.metrics, "wall_s": round(time.perf_counter() - t, 1)}
    for basis in ("nmf", "dictionary"):
        kw = {"basis": "dictionary", "dictionary": str(folder / "dictionary")} if basis == "dictionary" else {}
        t = time.perf_counter()
        res = fs.concepts(model, folder / "images", layer="act3", target_class=0, render=False, progress=False,
                          out=folder / basis, **kw)  # fmt: skip
        hits = mark_hits(res.maps, res.images, marks)
        out[f"{basis}_concepts"] = {
            "top_concept_on_mark": round(float(np.mean(hits)), 4),
            "marked_images": len(hits),
            "top_importance": round(res.concepts[0].importance, 5),
            "top_feature": res.concepts[0].feature,
            "wall_s": round(time.perf_counter() - t, 1),
        }
    return out


def shortcut_main(seeds: list[int]) -> None:
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shortcut-"))
    load0 = [round(v, 1) for v in os.getloadavg()]
    runs = [shortcut(s, tmp) for s in seeds]
    res = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": 1, "platform": platform.platform(),
                    "load_start": load0, "load_end": [round(v, 1) for v in os.getloadavg()]},
        "target": "top concept on the mark in >= 80 % of the marked images",
        "runs": runs,
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    (out / "concepts_shortcut.json").write_text(json.dumps(res, indent=1))
    md = tables.concepts_shortcut_table(res)
    (out / "concepts_shortcut.md").write_text(md)
    print(md)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--shortcut", type=int, nargs="+", help="only the held-out shortcut nets of these seeds")
    args = ap.parse_args()
    if args.shortcut:
        shortcut_main(args.shortcut)
        return
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-concepts-"))
    model = fs.load_model()
    res_json: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "setup": {"images": args.images, "size": SIZE, "layer": "bn2", "concepts": 10, "render": "fast"},
    }
    folder = make_folder(args.images, tmp)
    rss0 = peak_rss_gb()
    main_res, wall = run(model, folder, tmp / "out_main")
    rec = main_res.data.record()
    t = main_res.timings
    per_image = ("activation_pass_s", "evidence_pass_s", "deletion_s")  # the stages that grow with the images
    passes = sum(t.get(k, 0) for k in per_image)
    d = rec["deletion"]
    res_json["main"] = {
        "wall_s": round(wall, 2),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "peak_rss_gb_before_run": round(rss0, 3),
        "timings": t,
        "s_per_image_passes": round(passes / args.images, 4),
        "s_per_concept_render": round(t.get("render_s", 0) / 10, 3),
        "class": [main_res.target_class, main_res.class_name],
        "class_images": rec["data"]["class_images"],
        "ablation": {
            "top3_median_drop": d["top3_median_drop"],
            "random3_median_drop": d["random3_median_drop"],
            "ratio": round(d["top3_median_drop"] / max(d["random3_median_drop"], 1e-6), 2),
            "images": d["images"],
        },
        "stability_median_cosine": rec["stability"]["median"],
        "unstable": rec["stability"]["unstable"],
        "reconstruction_top1": rec["fidelity"]["reconstruction_top1_agreement"],
        "reconstruction_top1_all_images": rec["fidelity"]["reconstruction_top1_agreement_all"],
        "explained_variance": rec["fidelity"]["explained_variance"],
        "concepts": [
            {
                "concept": c.concept,
                "importance": round(c.importance, 4),
                "drop": round(c.ablation_drop, 4),
                "label": c.label,
            }
            for c in main_res.concepts
        ],
    }
    scaling = {args.images: round(passes, 2)}
    for n in (50, 100):
        if n >= args.images:
            continue
        f = make_folder(n, tmp)
        r, _ = run(model, f, tmp / f"out_{n}", render=False, compare_methods=(n == 50))
        scaling[n] = round(sum(r.timings.get(k, 0) for k in per_image), 2)
        if n == 50:
            dd = r.data.record()["data"]["dictionary"]
            res_json["methods_50_images"] = {
                "nmf": {
                    "explained_variance": r.fidelity["explained_variance_sample"],
                    "fit_s": dd["fit_s"],
                    "stability_median": r.data.record()["stability"]["median"],
                },
                "semi-nmf": dd.get("compared"),
            }
    res_json["cost_s_by_images_no_renders"] = dict(sorted(scaling.items()))
    res_json["load_average_at_end"] = list(os.getloadavg())
    m = res_json["main"]
    res_json["targets"] = {
        "wall_s ≤ 120": m["wall_s"] <= TARGETS["wall_s"],
        "peak ≤ 2 GB": m["peak_rss_gb"] <= TARGETS["peak_gb"],
        "ablation ratio ≥ 2": m["ablation"]["ratio"] >= TARGETS["ablation_ratio"],
        "stability ≥ 0.8": m["stability_median_cosine"] >= TARGETS["stability"],
        "reconstruction top-1 ≥ 90 %": m["reconstruction_top1"] >= TARGETS["top1"],
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "concepts.json").write_text(json.dumps(res_json, indent=1))
    md = tables.concepts_table(res_json)
    (out / "concepts.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
