"""Measure what `filterscope dictionary` claims (issue 44's targets).

1. Held-out planted nets (tests/planted_dictionary.py at seeds 1 and 2; the tests use seed 0): eight pattern
   detectors stored in four channels. Every planted feature recovered (a feature whose top exemplars are
   ≥ 90 % one class) and named right (its INVERT name is the class folder), and the detectors
   (``--basis channels`` at ``detect``) scored above the mixed channels.
2. efficientnet_lite0 ``bn2`` on 48 photos: the 36 bundled photos and 12 offline images (sklearn's two sample
   images and a crop of one, ``skimage.data`` colorwheel, logo, horse, moon, coins, page, text, checkerboard,
   clock; greyscale as RGB). The job with its defaults (renders included, render cache off): wall time,
   explained variance (train and held out: every 6th image not trained on), L0, dead and dense shares,
   stability (a second run with another seed and another initialisation). Then, on the same sampled
   vectors: NMF at the same size, the raw channels, the naive TopK SAE (plain torch: random init, no
   dead-latent handling, Adam 1e-3, 20 epochs) and overcomplete's README recipe (random init, no dead-latent
   handling, Adam 5e-4, batch 1024, 20 epochs), each at the default size and k, two seeds.
3. Stability against dictionary size and number of images, when the default misses 0.6.

Writes benchmarks/results/dictionary.{json,md}. The machine's load average is recorded: timings on a shared
machine are upper bounds. ``--planted-only --seeds 1 2 3`` runs part 1 alone (with each unit's score and the
similarity named) into benchmarks/results/dictionary_planted.{json,md}.

    python benchmarks/bench_dictionary.py            # a few minutes alone on 2 CPU cores
    python benchmarks/bench_dictionary.py --planted-only --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("FILTERSCOPE_NO_CACHE", "1")  # time renders, not cache reads

import numpy as np
import torch
from common import tables
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import filterscope as fs  # noqa: E402
from filterscope.jobs import layer_dictionary as ld  # noqa: E402
from filterscope.jobs.dictionary import explained_variance  # noqa: E402
from filterscope.jobs.sae import SAEConfig, fit_sae, reconstruct  # noqa: E402
from filterscope.models import load_model  # noqa: E402

NMF_ITER = 60
TARGETS = {"ev_held_out": 0.7, "dead": 0.10, "stability": 0.6, "wall_s": 150}
EXTRA = ("colorwheel", "logo", "horse", "moon", "coins", "page", "text", "checkerboard", "clock")


def photos48(folder: Path) -> Path:
    """The 36 bundled photos and 12 offline images (see the module docstring), as files in ``folder``."""
    import shutil

    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(fs.sample_photos_dir().iterdir()):
        if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
            shutil.copy(f, folder / f.name)
    imgs = load_sample_images().images
    extra = {"china": imgs[0], "flower": imgs[1], "china_crop": imgs[0][60:380, 150:470]}
    extra.update({n: getattr(sd, n)() for n in EXTRA})
    for n, a in extra.items():
        a = np.asarray(a)
        a = (a * 255).astype(np.uint8) if a.dtype == bool else a
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a
        Image.fromarray(a[..., :3].astype(np.uint8)).save(folder / f"x_{n}.png")
    return folder


def planted(seed: int, tmp: Path) -> dict:
    from planted_dictionary import CLASSES, make_folder, planted_model

    root = make_folder(tmp / f"planted_{seed}", per_class=12, seed=seed)
    m = planted_model(seed)
    t = time.perf_counter()
    r = ld.dictionary(m, root, out=tmp / f"p{seed}", layer="mix", features=16, k=1, max_vectors=4096, no_renders=True)
    wall = time.perf_counter() - t
    found, named = set(), set()
    for f in r.data.features:
        c = Counter(e["image"].split("/")[0] for e in f.top)
        if f.top and c.most_common(1)[0][1] >= 0.9 * len(f.top):
            found.add(c.most_common(1)[0][0])
            if f.name and f.name["name"] == c.most_common(1)[0][0]:
                named.add(f.name["name"])
    kw = dict(basis="channels", no_renders=True, crops=0, max_vectors=1024)
    det = ld.dictionary(m, root, out=tmp / f"d{seed}", layer="detect", **kw).data
    mix = ld.dictionary(m, root, out=tmp / f"m{seed}", layer="mix", **kw).data
    return {
        "seed": seed,
        "planted": len(CLASSES),
        "recovered": len(found),
        "named_right": len(named),
        "metrics": r.data.metrics,
        "channels_recovered": _channels_recovered(mix),
        "detector_score_mean": round(float(np.mean([f.score for f in det.features])), 4),
        "mixed_channel_score_mean": round(float(np.mean([f.score for f in mix.features])), 4),
        "detector_scores": [f.score for f in det.features],
        "mixed_channel_scores": [f.score for f in mix.features],
        "similarity": det.scoring.get("similarity"),
        "wall_s": round(wall, 1),
    }


def _channels_recovered(res) -> int:
    n = set()
    for f in res.features:
        c = Counter(e["image"].split("/")[0] for e in f.top)
        if f.top and c.most_common(1)[0][1] >= 0.9 * len(f.top):
            n.add(c.most_common(1)[0][0])
    return len(n)


def _sae_metrics(train, held, cfgs) -> dict:
    fits = [fit_sae(train, c) for c in cfgs]
    a = fits[0]
    z = ld._sae_basis(a.sae, {}).encode(train)
    freq = (z > 0).mean(0)
    return {
        "features": cfgs[0].features,
        "k": cfgs[0].k,
        "explained_variance": round(explained_variance(train, reconstruct(a.sae, train)), 4),
        "explained_variance_held_out": round(explained_variance(held, reconstruct(a.sae, held)), 4),
        "l0": round(float((z > 0).sum(1).mean()), 2),
        "dead_fraction": round(float((freq == 0).mean()), 4),
        "dense_fraction": round(float((freq > ld.DENSE).mean()), 4),
        "stability": round(ld.stability(fits[0].sae.w_dec.detach().numpy(), fits[1].sae.w_dec.detach().numpy()), 4),
        "fit_s_per_seed": round(float(np.mean([f.seconds for f in fits])), 1),
    }


def lite0(tmp: Path, model, folder: Path, curve: bool) -> dict:
    from filterscope.jobs.vectors import layer_vectors
    from filterscope.models.layers import network_layer

    t = time.perf_counter()
    r = ld.dictionary(model, folder, out=tmp / "lite0", layer="bn2", progress=False)
    wall = time.perf_counter() - t
    d = r.data
    res = {
        "wall_s": round(wall, 1),
        "timings": d.timings,
        "features": len(d.features),
        "k": r.record["settings"]["k"] or ld.default_k(len(d.features)),
        "data": d.data,
        "sae": d.metrics,
        "renders": sum(f.render is not None for f in d.features),
        "named": sum(f.name is not None for f in d.features),
    }
    # the same sample, split as the job splits it
    info = network_layer(model, "bn2")
    lv = layer_vectors(
        model, info, _files(folder), crops=ld.DEFAULT_CROPS, max_vectors=ld.MAX_VECTORS, seed=0, root=folder
    )
    readable = sorted(lv.predictions)
    held_imgs = readable[ld.HOLDOUT_EVERY - 1 :: ld.HOLDOUT_EVERY]
    mask = np.isin(lv.image, held_imgs)
    train, held = lv.vectors[~mask], lv.vectors[mask]
    f, k = res["features"], res["k"]
    t = time.perf_counter()
    ld.NMF_ITER = NMF_ITER  # scikit-learn's NMF at 600+ components: capped so the benchmark ends
    nmf = ld._fit(None, "nmf", train, f, 0, None)
    nmf2 = ld._fit(None, "nmf", train, f, 1, None)
    res["nmf"] = {
        **ld.basis_metrics(nmf, train, held, nmf2),
        "fit_s_per_seed": round((time.perf_counter() - t) / 2, 1),
        "max_iter": NMF_ITER,
    }
    res["channels"] = ld.basis_metrics(ld._channels_basis(train.shape[1]), train, held, None)
    naive = [SAEConfig(features=f, k=k, epochs=20, lr=1e-3, init="random", aux_coef=0, seed=s) for s in (0, 1)]
    res["naive_topk"] = _sae_metrics(train, held, naive)
    oc = [
        SAEConfig(features=f, k=k, epochs=20, batch=1024, lr=5e-4, init="random", aux_coef=0, warmup=0, decay=0, seed=s)
        for s in (0, 1)
    ]
    res["overcomplete_recipe"] = _sae_metrics(train, held, oc)
    if curve:
        res["stability_curve"] = _curve(train, held, lv, mask, k)
    return res


def _curve(train, held, lv, mask, k) -> list[dict]:
    """Stability of the default recipe against dictionary size (all images) and number of images (default size)."""
    out = []
    ep = ld.default_epochs
    for f in (160, 320, 640, 1280):
        cfgs = [SAEConfig(features=f, k=ld.default_k(f), epochs=ep(len(train)), seed=s) for s in (0, 1)]
        out.append({"images": int(len(np.unique(lv.image[~mask]))), **_sae_metrics(train, held, cfgs)})
    imgs = np.unique(lv.image[~mask])
    for n in (12, 24):
        sub = train[np.isin(lv.image[~mask], imgs[:n])]
        f = ld.default_features(train.shape[1], len(sub))
        cfgs = [SAEConfig(features=f, k=ld.default_k(f), epochs=ep(len(sub)), seed=s) for s in (0, 1)]
        out.append({"images": n, **_sae_metrics(sub, held, cfgs)})
    return out


def _files(folder: Path):
    from filterscope.models.inputs import list_images

    return list_images(folder)


def _planted_md(out: dict) -> str:
    """The planted part's table, with each unit's score (MIS on the units' activation ranges)."""
    m = out["machine"]
    lines = [
        "# dictionary benchmark: held-out planted nets",
        "",
        f"Machine: {m['cpus']} CPUs, torch threads {m['torch_threads']}; load average {m['load_start']} at the "
        f"start, {m.get('load_end')} at the end (a shared machine). Similarity: {out['planted'][0]['similarity']}.",
        "",
        "| seed | recovered | named right | raw channels recover | detector score (mean; per detector) | "
        "mixed channel score (mean; per channel) | detectors above |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in out["planted"]:
        ok = p["detector_score_mean"] > p["mixed_channel_score_mean"]
        lines.append(
            f"| {p['seed']} | {p['recovered']}/{p['planted']} | {p['named_right']}/{p['planted']} | "
            f"{p['channels_recovered']}/{p['planted']} | {p['detector_score_mean']}; {p['detector_scores']} | "
            f"{p['mixed_channel_score_mean']}; {p['mixed_channel_scores']} | {'yes' if ok else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--curve", action="store_true", help="also the stability curve (size, images)")
    ap.add_argument("--skip-planted", action="store_true")
    ap.add_argument("--planted-only", action="store_true", help="part 1 alone, into dictionary_planted.{json,md}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="seeds of the held-out planted nets")
    args = ap.parse_args()
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "load_start": [round(v, 1) for v in os.getloadavg()],
    }
    out: dict = {"machine": machine, "targets": TARGETS}
    if args.planted_only:
        with tempfile.TemporaryDirectory() as tmp:
            out["planted"] = [planted(s, Path(tmp)) for s in args.seeds]
        machine["load_end"] = [round(v, 1) for v in os.getloadavg()]
        res_dir = ROOT / "benchmarks" / "results"
        (res_dir / "dictionary_planted.json").write_text(json.dumps(out, indent=1))
        (res_dir / "dictionary_planted.md").write_text(_planted_md(out))
        print(_planted_md(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_planted:
            out["planted"] = [planted(s, tmp) for s in args.seeds]
            print(json.dumps(out["planted"]), flush=True)
        folder = photos48(tmp / "photos48")
        model = load_model("efficientnet_lite0")
        out["lite0_bn2"] = lite0(tmp, model, folder, args.curve)
    machine["load_end"] = [round(v, 1) for v in os.getloadavg()]
    machine["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    out["not_measured"] = ["1,000 images (≤ 10 min, ≤ 3 GB): not run in this session"]
    res_dir = ROOT / "benchmarks" / "results"
    (res_dir / "dictionary.json").write_text(json.dumps(out, indent=1))
    (res_dir / "dictionary.md").write_text(tables.dictionary_table(out))
    print(tables.dictionary_table(out))


if __name__ == "__main__":
    main()
