"""Regenerate the pictures in docs/ that the README shows, with the commands a user would run.

    python scripts/make_readme_figures.py [--atlas DIR]

- docs/figure_boost.png: ``filterscope boost`` with defaults;
- docs/grid_methods_bn2.png, docs/grid_methods_blocks5.png: ``filterscope compare`` of seed, lucid, maco
  and fast (each at its own default steps) on 6 channels of the default layer (the cup's top filters) and
  of blocks.5;
- docs/atlas_layer.png, docs/atlas_channel.png: headless-Chromium screenshots of an atlas (``--atlas DIR``,
  built with ``filterscope atlas``);
- with ``--guide`` (only these, for the documentation's guide pages): docs/figure_inspect.png
  (``filterscope inspect``'s bar chart), docs/figure_accentuate.png (``filterscope accentuate --layer
  blocks.5``: photo | accentuation | change map per filter), docs/grid_render.png (``filterscope render
  --layer blocks.5 --channels 0-11``);
- with ``--views`` (only this): docs/grid_fast_views_blocks6.png (``filterscope compare --methods
  fast,fast-views,lucid`` on 6 evenly spaced channels of blocks.6: Lucid-512's gradient samples in 1/8 of its
  steps, beside both);
- with ``--jobs`` (only these): docs/figure_concepts.png (``filterscope concepts`` on the bundled photos, 6
  concepts of the class predicted most often), docs/figure_circuit.png (``filterscope circuit --layer blocks.5
  --channel 42``), docs/figure_tuning.png (``filterscope tuning --layer blocks.1 --channels 0-7``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def fs(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "filterscope.cli", *args], check=True)


def screenshots(atlas: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = b.new_page(viewport={"width": 1200, "height": 900})
        rec = json.loads((atlas / "run.json").read_text())
        layer = next(iter(rec["settings"]["layers"]))
        page.goto((atlas / layer / "index.html").resolve().as_uri())
        # the grid's images load lazily: load the first screen's before the screenshot
        page.evaluate("document.querySelectorAll('img').forEach((i, k) => { if (k < 200) i.loading = 'eager'; })")
        page.wait_for_function("[...document.querySelectorAll('img')].slice(0, 200).every(i => i.complete)")
        page.screenshot(path=str(DOCS / "atlas_layer.png"))
        ex = json.loads((atlas / "examples.json").read_text())
        chans = ex["layers"][layer]["channels"]
        # the best-firing channel among those rendered (an atlas of some channels has pages for those only)
        rendered = [c for c in chans if (atlas / layer / f"channel_{int(c):04d}.html").exists()]
        best = max(rendered, key=lambda c: chans[c]["max"])
        page.goto((atlas / layer / f"channel_{int(best):04d}.html").resolve().as_uri())
        page.screenshot(path=str(DOCS / "atlas_channel.png"), full_page=True)
        b.close()


def guide_figures(tmp: Path) -> None:
    from PIL import Image

    fs("inspect", "--out", str(tmp / "inspect"), "--quiet")
    shutil.copy(tmp / "inspect/figure_activations.png", DOCS / "figure_inspect.png")
    fs("inspect", "--layer", "blocks.5", "--top", "3", "--rank", "contribution", "--out", str(tmp / "i5"), "--quiet")
    top = [
        t.get("channel", t.get("filter")) for t in json.loads((tmp / "i5/run.json").read_text())["inspection"]["top"]
    ]
    import io

    import filterscope

    model = filterscope.load_model()
    photo = filterscope.load_image(filterscope.sample_image_path())
    rows = [Image.open(io.BytesIO(a._repr_png_())) for a in filterscope.accentuate(model, photo, "blocks.5", top).data]
    w, h = rows[0].size
    sheet = Image.new("RGB", (w, h * len(rows) + 8 * (len(rows) - 1)), "white")
    for i, im in enumerate(rows):
        sheet.paste(im.convert("RGB"), (0, i * (h + 8)))
    sheet.save(DOCS / "figure_accentuate.png")
    fs("render", "--layer", "blocks.5", "--channels", "0-11", "--out", str(tmp / "render"), "--quiet")
    shutil.copy(tmp / "render/grid_blocks.5.png", DOCS / "grid_render.png")
    print("wrote figure_inspect.png, figure_accentuate.png, grid_render.png")


def job_figures(tmp: Path) -> None:
    import filterscope

    photos = str(filterscope.sample_photos_dir())
    fs("concepts", photos, "--concepts", "6", "--out", str(tmp / "concepts"), "--quiet")
    shutil.copy(tmp / "concepts/figure_concepts.png", DOCS / "figure_concepts.png")
    fs("circuit", "--layer", "blocks.5", "--channel", "42", "--out", str(tmp / "circuit"), "--quiet")
    shutil.copy(tmp / "circuit/figure_circuit.png", DOCS / "figure_circuit.png")
    fs("tuning", "--layer", "blocks.1", "--channels", "0-7", "--out", str(tmp / "tuning"), "--quiet")
    shutil.copy(tmp / "tuning/figure_tuning.png", DOCS / "figure_tuning.png")
    print("wrote figure_concepts.png, figure_circuit.png, figure_tuning.png")


def views_figure(tmp: Path) -> None:
    chans = "0,53,106,159,212,265"  # evenly spaced over blocks.6's 320, not picked by result
    out = tmp / "compare_views"
    fs("compare", "--layer", "blocks.6", "--channels", chans, "--methods", "fast,fast-views,lucid", "--out", str(out))
    shutil.copy(out / "figure_compare.png", DOCS / "grid_fast_views_blocks6.png")
    print("wrote grid_fast_views_blocks6.png")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--atlas", type=Path)
    ap.add_argument("--skip-renders", action="store_true")
    ap.add_argument("--guide", action="store_true", help="only the guide pages' figures")
    ap.add_argument("--jobs", action="store_true", help="only the concepts, circuit and tuning figures")
    ap.add_argument("--views", action="store_true", help="only the fast / fast-views / lucid figure")
    a = ap.parse_args()
    DOCS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    if a.guide:
        guide_figures(tmp)
        return
    if a.jobs:
        job_figures(tmp)
        return
    if a.views:
        views_figure(tmp)
        return
    if not a.skip_renders:
        fs("boost", "--out", str(tmp / "boost"), "--quiet")
        shutil.copy(tmp / "boost/figure_boost.png", DOCS / "figure_boost.png")
        fs("inspect", "--top", "6", "--out", str(tmp / "inspect"), "--quiet")
        top6 = [
            t.get("channel", t.get("filter"))
            for t in json.loads((tmp / "inspect/run.json").read_text())["inspection"]["top"]
        ]
        for layer, chans, name in (("bn2", top6, "bn2"), ("blocks.5", [0, 17, 42, 88, 150, 191], "blocks5")):
            fs(
                "compare",
                "--layer",
                layer,
                "--channels",
                ",".join(map(str, chans)),
                "--out",
                str(tmp / f"compare_{name}"),
                "--quiet",
            )
            shutil.copy(tmp / f"compare_{name}/figure_compare.png", DOCS / f"grid_methods_{name}.png")
    if a.atlas:
        screenshots(a.atlas)
    print(f"wrote {sorted(p.name for p in DOCS.iterdir())}")


if __name__ == "__main__":
    main()
