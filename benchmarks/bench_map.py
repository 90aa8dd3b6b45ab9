"""Benchmark of ``filterscope map`` (the map of a layer, an activation atlas) → ``benchmarks/results/map.json``
and ``map.md``.

- ``planted``: held-out hand-built nets (tests/planted_map.py with other class counts, rotated colour
  directions, other distractors and images than the tests use), defaults (UMAP, ``--grid 12``, renders):
  every planted feature must have a cell of its own (a cell whose points are ≥ 70 % one class folder).
- ``photos``: efficientnet_lite0 ``bn2`` on 48 photos (the 36 bundled + 12 from ``skimage.data``, listed in the
  JSON), ``filterscope map`` with its defaults (renders included) as a command-line process, render cache off:
  wall seconds on this machine (target ≤ 300 s on 2 cores; the load average is recorded: the machine may be
  shared), and every cell listed in ``map.json`` has its render file.
- ``preset``: which preset renders a cell: for cells of that map, each candidate's render's activation along
  the cell's direction (the direction objective on the final image, the same measure for all) and its seconds.

Run: ``python benchmarks/bench_map.py [--only planted,photos,preset]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import tables

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results"
TARGET_S = 300
HELD_OUT = [  # (classes, distractors, rotation seed, image seed): none of them is the tests' net
    (4, 6, 11, 101),
    (5, 8, 12, 102),
    (6, 4, 13, 103),
]
SKIMAGE = (
    "astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
    "colorwheel", "logo", "camera", "coins", "moon",
)  # fmt: skip
PRESETS = {  # candidate: (preset, changes)
    "fast": ("fast", {}),
    "fast-24": ("fast", {"steps": 24}),
    "fast-128px": ("fast", {"size": 128}),
    "maco-fused": ("maco-fused", {}),
}


def machine() -> dict:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "platform": sys.platform,
    }


def planted() -> dict:
    from planted_map import feature_cells, planted_folder, planted_net

    from filterscope.jobs.activation_map import activation_map

    rows = []
    for n, distractors, rot, img_seed in HELD_OUT:
        model, u = planted_net(n, distractors, seed=rot)
        with tempfile.TemporaryDirectory() as tmp:
            root = planted_folder(Path(tmp) / "imgs", u, per_class=10, seed=img_seed)
            t = time.perf_counter()
            res = activation_map(model, root, layer="pool", out=Path(tmp) / "out")
            wall = time.perf_counter() - t
            amap = res.data
            found = feature_cells(amap, n)
            acts = [c.render_record for c in amap.cells if c.render_record]
            rows.append(
                {
                    "classes": n,
                    "distractors": distractors,
                    "rotation_seed": rot,
                    "image_seed": img_seed,
                    "cells": len(amap.cells),
                    "cells_per_feature": {k: len(v) for k, v in found.items()},
                    "every_feature_has_a_cell": all(found.values()),
                    "renders_that_activate_their_direction": sum(
                        r["activation_after"] > r["activation_before"] for r in acts
                    ),
                    "renders": len(acts),
                    "wall_s": round(wall, 1),
                }
            )
            print("planted", rows[-1], flush=True)
    return {"nets": rows, "all_pass": all(r["every_feature_has_a_cell"] for r in rows)}


def photo_folder(root: Path) -> tuple[Path, list[str]]:
    """The 36 bundled photos and 12 images of ``skimage.data`` (RGB, saved as PNG) in one folder."""
    import shutil

    import skimage.data as sd
    from PIL import Image

    import filterscope as fs
    from filterscope.models.inputs import list_images

    root.mkdir(parents=True, exist_ok=True)
    for f in list_images(fs.sample_photos_dir()):
        shutil.copy(f, root / f.name)
    used = []
    for name in SKIMAGE:
        a = getattr(sd, name)()
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        Image.fromarray(np.ascontiguousarray(a[..., :3]).astype(np.uint8)).save(root / f"skimage_{name}.png")
        used.append(name)
    return root, used


def photos(out: Path, threads: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder, used = photo_folder(Path(tmp) / "photos48")
        n = len(list(folder.iterdir()))
        env = {**os.environ, "FILTERSCOPE_NO_CACHE": "1", "PYTHONPATH": str(ROOT / "src")}
        if threads:  # torch's threads (default: one per core); on a loaded machine 2 threads spin-wait
            env["OMP_NUM_THREADS"] = str(threads)
        before = machine()
        import resource

        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "filterscope.cli", "map", str(folder), "--layer", "bn2", "--out", str(out), "-q"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"map failed: {proc.stderr.strip()[-500:]}")
    rec = json.loads((out / "map.json").read_text())
    run = json.loads((out / "run.json").read_text())
    missing = [c for c in rec["cells"] if not c["render"] or not (out / c["render"]).is_file()]
    return {
        "images": n,
        "torch_threads": threads or "default (one per core)",
        "skimage_images": used,
        "command": f"filterscope map PHOTOS48 --layer bn2 --out {out.name} (defaults; render cache off)",
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),  # the process's CPU seconds (user + system): what it needs of the machine
        "target_s": TARGET_S,
        "meets_target": wall <= TARGET_S,
        "timings": run["timings"],
        "points": rec["layout"]["points"],
        "grid": rec["grid"],
        "cells": len(rec["cells"]),
        "cells_with_render": len(rec["cells"]) - len(missing),
        "every_cell_has_its_render": not missing,
        "render_method": run["settings"]["render_method"],
        "machine_before": before,
        "machine_after": machine(),
    }


def preset(run_dir: Path, n_cells: int = 6) -> dict:
    """Each candidate preset on ``n_cells`` cells of the photo map (spread over the cells by point count)."""
    import torch

    from filterscope.models import load_model
    from filterscope.models.layers import network_layer
    from filterscope.optvis.objectives import direction
    from filterscope.optvis.presets import get_preset
    from filterscope.optvis.render import Renderer, channel_seed

    torch.set_num_threads(1)  # CPU seconds per render without thread contention on a shared machine
    z = np.load(run_dir / "map.npz")
    means = z["means"]
    pick = np.linspace(0, len(means) - 1, n_cells).round().astype(int)
    model = load_model("efficientnet_lite0")
    info = network_layer(model, "bn2")
    out = {}
    for name, (base, changes) in PRESETS.items():
        r = Renderer(model, get_preset(base).with_(**changes))
        rows = []
        for k in pick:
            obj = direction(info.name, torch.from_numpy(means[k]))
            t, c0 = time.perf_counter(), time.process_time()
            res = r.render(obj, [channel_seed(0, int(k))])
            rows.append(
                {
                    "cell": int(k),
                    "before": res.before[0],
                    "after": res.after[0],
                    "s": time.perf_counter() - t,
                    "cpu_s": time.process_time() - c0,
                    "steps": res.steps_done,
                }
            )
        out[name] = {
            "median_activation": round(float(np.median([q["after"] for q in rows])), 3),
            "median_start": round(float(np.median([q["before"] for q in rows])), 3),
            "median_s": round(float(np.median([q["s"] for q in rows])), 2),
            "median_cpu_s": round(float(np.median([q["cpu_s"] for q in rows])), 2),
            "cells": rows,
        }
        print("preset", name, {k: v for k, v in out[name].items() if k != "cells"}, flush=True)
    return {"cells": [int(k) for k in pick], "candidates": out, "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="planted,photos,preset")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the photo map's process")
    ap.add_argument("--keep", default=str(ROOT / "filterscope-out" / "bench_map"), help="where the photo map goes")
    args = ap.parse_args()
    only = set(args.only.split(","))
    path = RESULTS / "map.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    res["machine"] = machine()
    out = Path(args.keep)
    if "planted" in only:
        res["planted"] = planted()
    if "photos" in only:
        res["photos"] = photos(out, args.threads)
        print("photos", {k: v for k, v in res["photos"].items() if k != "timings"}, flush=True)
    if "preset" in only:
        res["preset"] = preset(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "map.md").write_text(tables.map_table(res))
    print(tables.map_table(res))


if __name__ == "__main__":
    main()
