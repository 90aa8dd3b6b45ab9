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
3. ``--parts curve``: held-out explained variance and stability against the number of training images and
   the dictionary's size (what a user needs).
4. ``--parts scale``: the CLI job on 1,000 images (crops, flips and colour shifts of the 48: a test of time
   and memory, not of quality), wall time and peak memory.

Writes benchmarks/results/dictionary.{json,md}. The machine's load average is recorded: timings on a shared
machine are upper bounds. ``--planted-only --seeds 1 2 3`` runs part 1 alone (with each unit's score and the
similarity named) into benchmarks/results/dictionary_planted.{json,md}.

    python benchmarks/bench_dictionary.py                       # planted + default: minutes alone on 2 cores
    python benchmarks/bench_dictionary.py --parts curve,scale   # each part updates its own keys of the JSON
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
from filterscope.jobs.bases import channels_basis, sae_basis  # noqa: E402
from filterscope.jobs.dictionary import explained_variance  # noqa: E402
from filterscope.jobs.sae import SAEConfig, fit_sae, reconstruct  # noqa: E402
from filterscope.models import load_model  # noqa: E402

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
    z = sae_basis(a.sae, {}).encode(train)
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


def lite0(tmp: Path, model, folder: Path) -> dict:
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
    vectors, _, mask = _split(model, folder)
    train, held = vectors[~mask], vectors[mask]
    f, k = res["features"], res["k"]
    t = time.perf_counter()
    nmf = ld._fit(None, "nmf", train, f, 0, None)
    nmf2 = ld._fit(None, "nmf", train, f, 1, None)
    res["nmf"] = {
        **ld.basis_metrics(nmf, train, held, nmf2),
        "fit_s_per_seed": round((time.perf_counter() - t) / 2, 1),
        "max_iter": ld.NMF_ITER,  # as the job runs it
    }
    res["channels"] = ld.basis_metrics(channels_basis(train.shape[1]), train, held, None)
    naive = [SAEConfig(features=f, k=k, epochs=20, lr=1e-3, init="random", aux_coef=0, seed=s) for s in (0, 1)]
    res["naive_topk"] = _sae_metrics(train, held, naive)
    oc = [
        SAEConfig(features=f, k=k, epochs=20, batch=1024, lr=5e-4, init="random", aux_coef=0, warmup=0, decay=0, seed=s)
        for s in (0, 1)
    ]
    res["overcomplete_recipe"] = _sae_metrics(train, held, oc)
    return res


def _split(model, folder: Path):
    """The job's sample of ``bn2`` over ``folder`` and its split: (vectors, image of each, held-out mask)."""
    from filterscope.jobs.vectors import layer_vectors
    from filterscope.models.layers import network_layer

    lv = layer_vectors(
        model, network_layer(model, "bn2"), _files(folder), crops=ld.DEFAULT_CROPS, max_vectors=ld.MAX_VECTORS,
        seed=0, root=folder,
    )  # fmt: skip
    readable = sorted(lv.predictions)
    mask = np.isin(lv.image, readable[ld.HOLDOUT_EVERY - 1 :: ld.HOLDOUT_EVERY])
    return lv.vectors, lv.image, mask


def curve(model, folder: Path) -> list[dict]:
    """The default recipe against the number of training images (the same held-out images; default size, k
    and epochs for each) and against dictionary size (all training images): held-out explained variance and
    stability, to say what a user needs."""
    vectors, image, mask = _split(model, folder)
    train, held, train_img = vectors[~mask], vectors[mask], image[~mask]
    imgs = np.unique(train_img)
    ep = ld.default_epochs
    out = []
    for n in (12, 24, len(imgs)):
        sub = train[np.isin(train_img, imgs[:n])]
        f = ld.default_features(train.shape[1], len(sub))
        cfgs = [SAEConfig(features=f, k=ld.default_k(f), epochs=ep(len(sub)), seed=s) for s in (0, 1)]
        out.append({"images": int(n), **_sae_metrics(sub, held, cfgs)})
        print(json.dumps(out[-1]), flush=True)
    for f in (320, 1280):
        cfgs = [SAEConfig(features=f, k=ld.default_k(f), epochs=ep(len(train)), seed=s) for s in (0, 1)]
        out.append({"images": int(len(imgs)), **_sae_metrics(train, held, cfgs)})
        print(json.dumps(out[-1]), flush=True)
    return out


def _files(folder: Path):
    from filterscope.models.inputs import list_images

    return list_images(folder)


def make_scaled(src: Path, folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct files from the photos in ``src``: random crops (a third to all of each side), flips and
    small colour shifts, 256 px JPEGs. Distinct files with repeated content: a test of time and memory at
    scale, not of a dictionary's quality (offline there are no 1,000 distinct photos)."""
    from PIL import ImageEnhance

    folder.mkdir(parents=True, exist_ok=True)
    files = _files(src)
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = Image.open(files[i % len(files)]).convert("RGB")
        w, h = im.size
        s = rng.uniform(0.3, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x, y, x + cw, y + ch)).resize((256, 256))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        ImageEnhance.Color(im).enhance(float(rng.uniform(0.7, 1.3))).save(folder / f"img_{i:04d}.jpg", quality=90)
    return folder


def scale(tmp: Path, folder: Path, n: int = 1000) -> dict:
    """The CLI job with its defaults (renders included) on ``n`` images, in its own process: wall time and
    peak resident memory (the target: 1,000 images in ≤ 10 min and ≤ 3 GB)."""
    import subprocess

    imgs = make_scaled(folder, tmp / f"scaled_{n}", n)
    cmd = [sys.executable, "-m", "filterscope", "dictionary", str(imgs), "--layer", "bn2", "--out", str(tmp / "s")]
    t = time.perf_counter()
    subprocess.run([*cmd, "-q"], check=True)
    wall = time.perf_counter() - t
    rec = json.loads((tmp / "s" / "run.json").read_text())
    return {
        "images": n,
        "command": "filterscope dictionary IMAGES --layer bn2 (defaults, renders included)",
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 2),
        "timings": rec.get("timings") or rec.get("dictionary", {}).get("timings"),
        "metrics": rec.get("dictionary", {}).get("metrics"),
    }


PARTS = ("planted", "default", "curve", "scale")


NOTES = "\n## Notes"  # in dictionary_planted.md: what a rerun keeps below the regenerated table


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
    ap.add_argument(
        "--parts", default="planted,default", help=f"comma-separated, of {', '.join(PARTS)} [default: planted,default]"
    )
    ap.add_argument("--planted-only", action="store_true", help="part 1 alone, into dictionary_planted.{json,md}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="seeds of the held-out planted nets")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        ap.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    res_dir = ROOT / "benchmarks" / "results"
    path = res_dir / "dictionary.json"
    out: dict = json.loads(path.read_text()) if path.exists() else {}  # parts run alone keep the others' results
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "load_start": [round(v, 1) for v in os.getloadavg()],
        "parts": parts,
    }
    if args.planted_only:
        out = {"machine": machine, "targets": TARGETS}
        with tempfile.TemporaryDirectory() as tmp:
            out["planted"] = [planted(s, Path(tmp)) for s in args.seeds]
        machine["load_end"] = [round(v, 1) for v in os.getloadavg()]
        res_dir = ROOT / "benchmarks" / "results"
        (res_dir / "dictionary_planted.json").write_text(json.dumps(out, indent=1))
        md = res_dir / "dictionary_planted.md"
        _, head, notes = md.read_text().partition(NOTES) if md.exists() else ("", "", "")
        md.write_text(_planted_md(out) + head + notes)  # the notes written under the table stay
        print(_planted_md(out))
        return
    out["targets"] = TARGETS
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "planted" in parts:
            out["planted"] = [planted(s, tmp) for s in args.seeds]
            print(json.dumps(out["planted"]), flush=True)
        folder = photos48(tmp / "photos48")
        if "default" in parts or "curve" in parts:
            model = load_model("efficientnet_lite0")
            lite = out.setdefault("lite0_bn2", {})
            if "default" in parts:
                lite.update(lite0(tmp, model, folder))
            if "curve" in parts:
                lite["stability_curve"] = curve(model, folder)
        if "scale" in parts:
            out["scale"] = scale(tmp, folder)
    machine["load_end"] = [round(v, 1) for v in os.getloadavg()]
    machine["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    out.setdefault("machines", {}).update({p: machine for p in parts})
    out["machine"] = machine
    (res_dir / "dictionary.json").write_text(json.dumps(out, indent=1))
    (res_dir / "dictionary.md").write_text(tables.dictionary_table(out))
    print(tables.dictionary_table(out))


if __name__ == "__main__":
    main()
