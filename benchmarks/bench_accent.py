"""Accentuation that holds on any photo: SSIM and gain of ``adaptive`` against the earlier ``fixed`` strength.

For every photo of a set, the top-3 filters by contribution at ``blocks.5`` of efficientnet_lite0 (as
``inspect --rank contribution`` picks them) are accentuated by each method; per set and method: median SSIM
to the photo, median gain (:attr:`~filterscope.jobs.accentuate.Accentuation.gain`: after/before for a filter
the photo activates, else the rise in units of max(|before|, 0.1 × the layer's mean |activation|)), the
fraction with SSIM ≥ 0.8, and seconds per accentuation.

Sets (photos are centre-cropped to the model input as the CLI does):

- ``tune``: the photos tuning may look at: scikit-image's astronaut, chelsea, coffee, rocket, and one random
  half-size crop of each (the default strength 5 was picked on astronaut's top-3 filters alone);
- ``heldout``: never looked at while tuning: scikit-learn's ``load_sample_images`` (china, flower),
  scikit-image's stereo_motorcycle (left view), hubble_deep_field, immunohistochemistry, retina, camera
  (grey, as RGB), and random half-size crops of china, flower, stereo_motorcycle and hubble_deep_field;
- ``bundled``: views ``_0`` of the bundled photos (the set the fixed strength was picked on).

Writes benchmarks/results/accent.{json,md} (sets measured earlier are kept) and
benchmarks/results/accent_examples_<first set>.png (photo | fixed | adaptive, the top filter of the first photos).

    python benchmarks/bench_accent.py                          # all sets, both methods
    python benchmarks/bench_accent.py --sets heldout --limit 6 # the first 6 held-out photos
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("FILTERSCOPE_NO_CACHE", "1")

import numpy as np
import torch
from common import tables
from PIL import Image

import filterscope as fs
from filterscope.jobs.accentuate import DEFAULT_STEPS, accentuate_image
from filterscope.models.inputs import list_images, load_image, model_input

ROOT = Path(__file__).resolve().parents[1]
LAYER = "blocks.5"


def _skimage(name: str) -> Image.Image:
    import skimage.data

    a = getattr(skimage.data, name)()
    a = a[0] if isinstance(a, tuple) else a
    return Image.fromarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])


def _sklearn(i: int) -> Image.Image:
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[i])


def crop(im: Image.Image, seed: int, frac: float = 0.5) -> Image.Image:
    """A random square crop of ``frac`` of the shorter side."""
    rng = np.random.default_rng(seed)
    w, h = im.size
    s = int(min(w, h) * frac)
    x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    return im.crop((x0, y0, x0 + s, y0 + s))


def photo_set(which: str) -> dict[str, Image.Image]:
    if which == "tune":
        out = {}
        for n in ("astronaut", "chelsea", "coffee", "rocket"):
            out[n] = _skimage(n)
            out[n + "_crop"] = crop(out[n], 1)
        return out
    if which == "heldout":
        out = {"china": _sklearn(0), "flower": _sklearn(1)}
        for n in ("stereo_motorcycle", "hubble_deep_field", "immunohistochemistry", "retina", "camera"):
            out[n] = _skimage(n)
        for n in ("china", "flower", "stereo_motorcycle", "hubble_deep_field"):
            out[n + "_crop1"] = crop(out[n], 101)
        order = ["china", "flower", "stereo_motorcycle", "china_crop1", "hubble_deep_field", "flower_crop1"]
        return {k: out[k] for k in order + [k for k in out if k not in order]}
    files = [f for f in list_images(fs.sample_photos_dir()) if f.stem.endswith("_0")]
    return {f.name: load_image(f) for f in files}


def summary(rows: list[dict], photos: int) -> dict:
    g = np.array([v["gain"] for v in rows])
    s = np.array([v["ssim"] for v in rows])
    return {
        "photos": photos,
        "n": len(rows),
        "median_ssim": round(float(np.median(s)), 4),
        "median_gain": round(float(np.median(g)), 3),
        "min_ssim": round(float(s.min()), 4),
        "fraction_ssim_08": round(float(np.mean(s >= 0.8)), 3),
        "fraction_gain2_ssim08": round(float(np.mean((g >= 2) & (s >= 0.8))), 3),
        "seconds_per_accentuation": round(float(np.mean([v["seconds"] for v in rows])), 2),
        "rows": rows,
    }


def run_set(model, photos: dict[str, Image.Image], methods: list[str], examples: list, done: dict, save) -> dict:
    """Accentuate the top-3 filters of each photo with each method; ``done`` holds rows of photos measured
    before (kept, not redone); ``save(result)`` is called after every photo."""
    rows = {m: list(done.get(m, {}).get("rows", [])) for m in methods}
    for name, im in photos.items():
        if all(any(r["photo"] == name for r in rows[m]) for m in methods):
            continue
        x = model_input(model, im)
        top = fs.inspect(model, x, LAYER, top=3, rank="contribution").top
        for m in methods:
            for a in accentuate_image(model, x, LAYER, top, method=m, steps=DEFAULT_STEPS):
                rows[m].append(
                    {
                        "photo": name,
                        "filter": a.channel,
                        "activation_photo": round(a.activation_photo, 4),
                        "activation_accent": round(a.activation_accent, 4),
                        "gain": round(a.gain, 4),
                        "ssim": round(a.ssim, 4),
                        "seconds": round(a.seconds, 2),
                    }
                )
                if len(examples) < 6 and a.channel == top[0]:
                    examples.append((name, m, a))
                print(m, name, a.channel, f"gain {a.gain:.2f} ssim {a.ssim:.3f} {a.seconds:.1f}s", flush=True)
        save({m: summary(r, len({v["photo"] for v in r})) for m, r in rows.items()})
    return {m: summary(r, len({v["photo"] for v in r})) for m, r in rows.items()}


def figure(examples: list, path: Path) -> None:
    """Photo | fixed | adaptive for the first photos' top filter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_photo: dict[str, dict] = {}
    for name, m, a in examples:
        by_photo.setdefault(name, {})[m] = a
    by_photo = {k: v for k, v in by_photo.items() if len(v) == 2}
    if not by_photo:
        return
    fig, axes = plt.subplots(len(by_photo), 3, figsize=(7.5, 2.6 * len(by_photo)), dpi=100, squeeze=False)
    for row, (name, accs) in zip(axes, by_photo.items()):
        a0 = next(iter(accs.values()))
        row[0].imshow(a0.photo.permute(1, 2, 0).numpy())
        row[0].set_title(f"{name} · {a0.layer}:{a0.channel}", fontsize=8)
        for ax, m in zip(row[1:], ("fixed", "adaptive")):
            a = accs[m]
            ax.imshow(a.image.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_title(f"{m}: gain {a.gain:.1f}×, SSIM {a.ssim:.2f}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="heldout,bundled,tune")
    ap.add_argument("--methods", default="fixed,adaptive")
    ap.add_argument("--limit", type=int, default=0, help="at most this many photos per set (0: all)")
    ap.add_argument("--photos", default="", help="only these photos (comma-separated names)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in accent.json, measure the rest")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = fs.load_model("efficientnet_lite0")
    out_json = ROOT / "benchmarks/results/accent.json"
    res = json.loads(out_json.read_text()) if out_json.exists() else {}
    res.setdefault("sets", {})
    res["steps"] = DEFAULT_STEPS
    res["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    examples: list = []
    for name in args.sets.split(","):
        photos = photo_set(name)
        if args.photos:
            photos = {k: v for k, v in photos.items() if k in args.photos.split(",")}
        if args.limit:
            photos = dict(list(photos.items())[: args.limit])
        t0 = time.perf_counter()

        def save(result: dict, name: str = name) -> None:
            res["sets"][name] = result
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(res, indent=1) + "\n")
            (ROOT / "benchmarks/results/accent.md").write_text(tables.accent_table(res))

        done = res["sets"].get(name, {}) if args.resume else {}
        save(run_set(model, photos, args.methods.split(","), examples, done, save))
        summ = {m: (v["median_ssim"], v["median_gain"]) for m, v in res["sets"][name].items()}
        print(name, summ, f"{time.perf_counter() - t0:.0f}s", flush=True)
    figure(examples, ROOT / f"benchmarks/results/accent_examples_{args.sets.split(',')[0]}.png")
    print(tables.accent_table(res))


if __name__ == "__main__":
    main()
