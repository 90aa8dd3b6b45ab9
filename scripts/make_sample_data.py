"""Build the small data files shipped in ``src/filterscope/data`` from photos that install offline.

Sources: scikit-image's sample photos and matplotlib's ``grace_hopper.jpg``, all public domain or CC0
(see ``data/photos/LICENSE.md``). Run from the repository root with the dev extra installed::

    python scripts/make_sample_data.py

Writes
- ``data/coffee.jpg``: the bundled cup photo for ``filterscope boost``;
- ``data/photos/*.jpg``: 36 square 256-px photos (3 views of each of 12 sources) for dataset examples
  and ``evaluate``;
- ``data/natural_stats.npz``: the 3×3 colour correlation square root (Lucid's ``color_correlation_svd_sqrt``
  convention) and the mean magnitude spectrum of colour-decorrelated 256×256 crops (MACO's template).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import skimage.data
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "src" / "filterscope" / "data"
SIZE = 256

SOURCES = {
    # name: (loader, licence)
    "astronaut": (skimage.data.astronaut, "public domain (NASA)"),
    "chelsea": (skimage.data.chelsea, "CC0, Stefan van der Walt"),
    "coffee": (skimage.data.coffee, "CC0, Rachel Michetti"),
    "rocket": (skimage.data.rocket, "public domain (SpaceX)"),
    "hubble": (skimage.data.hubble_deep_field, "public domain (NASA/ESA)"),
    "retina": (skimage.data.retina, "CC0 (Wikimedia Commons, Häggström)"),
    "ihc": (skimage.data.immunohistochemistry, "no known copyright restrictions"),
    "camera": (skimage.data.camera, "CC0, Lav Varshney"),
    "brick": (skimage.data.brick, "CC0 (CC0Textures)"),
    "grass": (skimage.data.grass, "CC0 (DeviantArt, linolafett)"),
    "gravel": (skimage.data.gravel, "CC0 (CC0Textures)"),
    "grace_hopper": (
        lambda: np.asarray(
            Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
        ),
        "public domain (U.S. Navy), via matplotlib",
    ),
}
COLOUR = ["astronaut", "chelsea", "coffee", "rocket", "hubble", "retina", "ihc", "grace_hopper"]


def rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return a[..., :3].astype(np.uint8)


def square_views(a: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = a.shape[:2]
    s = min(h, w)
    views = [a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]]
    for _ in range(2):
        c = int(s * rng.uniform(0.45, 0.7))
        y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
        views.append(a[y : y + c, x : x + c])
    return views


def main() -> None:
    rng = np.random.default_rng(0)
    photos = DATA / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    images = {name: rgb(load()) for name, (load, _) in SOURCES.items()}

    Image.fromarray(images["coffee"]).save(DATA / "coffee.jpg", quality=95)
    lines = [
        "# Bundled photos",
        "",
        "Square views (256 px) of these photos, made by `scripts/make_sample_data.py`:",
        "",
    ]
    for name, a in images.items():
        for k, v in enumerate(square_views(a, rng)):
            Image.fromarray(v).resize((SIZE, SIZE), Image.Resampling.LANCZOS).save(
                photos / f"{name}_{k}.jpg", quality=90
            )
        lines.append(f"- `{name}_*.jpg`: {SOURCES[name][1]}")
    lines += ["", "`../coffee.jpg`: scikit-image `coffee`, CC0 by the photographer (Rachel Michetti).", ""]
    (photos / "LICENSE.md").write_text("\n".join(lines))

    # colour statistics over the colour photos, each photo weighted equally (resized to 256 px first:
    # otherwise the 1411x1411 retina photo would dominate and tint every render red)
    covs = []
    for n in COLOUR:
        small = np.asarray(Image.fromarray(images[n]).resize((SIZE, SIZE), Image.Resampling.LANCZOS)) / 255.0
        pix = small.reshape(-1, 3)
        covs.append(np.cov(pix - pix.mean(0), rowvar=False))
    cov = np.mean(covs, 0)
    u, s, _ = np.linalg.svd(cov)
    sqrt = u * np.sqrt(s)  # columns: principal colour directions scaled by their std
    inv = np.linalg.inv(sqrt)

    # mean magnitude spectrum of decorrelated crops
    spec = np.zeros((3, SIZE, SIZE // 2 + 1))
    n = 0
    for name in COLOUR:
        a = images[name] / 255.0
        h, w = a.shape[:2]
        for _ in range(24):
            c = int(rng.uniform(0.35, 1.0) * min(h, w))
            y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
            crop = (
                np.asarray(
                    Image.fromarray((a[y : y + c, x : x + c] * 255).astype(np.uint8)).resize(
                        (SIZE, SIZE), Image.Resampling.LANCZOS
                    )
                )
                / 255.0
            )
            d = (crop - crop.mean((0, 1))) @ inv.T
            spec += np.abs(np.fft.rfft2(d.transpose(2, 0, 1), norm="ortho"))
            n += 1
    spec /= n
    np.savez_compressed(
        DATA / "natural_stats.npz",
        color_sqrt=sqrt.astype(np.float32),
        log_magnitude=np.log(spec + 1e-8).astype(np.float16),
        source=np.array(", ".join(COLOUR)),
    )
    print(f"wrote {len(list(photos.glob('*.jpg')))} photos, colour matrix\n{sqrt}\nand a spectrum from {n} crops")


if __name__ == "__main__":
    main()
