"""Measure `filterscope diff` (issue 46): does the ranking surface what a fine-tune did, and is it fast enough.

1. **Backdoor pairs** (held out from the tests: other seeds, other mark positions and classes; built by
   ``tests/backdoor_net.py`` the same way as the test's pair): a digits CNN and the same net fine-tuned with
   15 % of its training images marked (a 4×4 white square) and relabelled. ``plain``: the fine-tune only adds
   the backdoor; ``shift``: the fine-tune is also to a new domain (strokes thickened), so many units change
   that have nothing to do with the backdoor. Per pair: is the backdoor's class listed first, and for every
   candidate measure of ``filterscope.jobs.diff.METRICS``: the marked share of the top-10 images of each of the
   top-3 units (target: one of them ≥ 80 %), of the first unit, and of the top-3 carriers of the first class.
2. **efficientnet_lite0 against efficientnet_lite1 at bn2** on 48 photos (the 36 bundled + 12 images of
   ``skimage.data`` not among them): the CLI's wall time, model loading included, without renders (target
   ≤ 120 s on 2 cores), and every one of the 1280 units matched, new or dead.

Writes benchmarks/results/diff.{json,md}; the machine's load average is recorded (timings on a shared machine
are upper bounds).

    python benchmarks/bench_diff.py                   # both parts (~5 min on 2 busy cores)
    python benchmarks/bench_diff.py --only pairs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FILTERSCOPE_NO_CACHE", "1")

import numpy as np
import torch
from common import tables

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from backdoor_net import make_pair  # noqa: E402

import filterscope as fs  # noqa: E402
from filterscope.jobs.diff import DEFAULT_METRIC, METRICS, diff, rank_units  # noqa: E402

# held out: the test's pair is seed 0, class 7, mark at (3, 3)
PAIRS = [(1, 2, (16, 4)), (2, 5, (4, 16)), (3, 0, (16, 16)), (4, 9, (10, 2))]
HARD_EXTRA = [(5, 3, (3, 10)), (6, 8, (12, 16)), (7, 1, (16, 10)), (8, 4, (2, 2))]  # the hard family: 8 pairs
SKIMAGE_EXTRA = [
    "motorcycle_left.png",
    "motorcycle_right.png",
    "coins.png",
    "moon.png",
    "page.png",
    "text.png",
    "cell.png",
    "clock_motion.png",
    "color.png",
    "logo.png",
    "microaneurysms.png",
    "chessboard_RGB.png",
]


def share(top: list[dict], marked: set[str], k: int = 10) -> float:
    return sum(e["image"] in marked for e in top[:k]) / k


def one_pair(seed: int, target: int, pos: tuple[int, int], family: str, work: Path) -> dict:
    t = time.perf_counter()
    p = make_pair(work / f"pair{seed}{family}", seed=seed, target=target, pos=pos, **FAMILIES[family])
    build = time.perf_counter() - t
    a = fs.load_model(f"{p.code}:Net", weights=str(p.weights_a), input_size=24)
    b = fs.load_model(f"{p.code}:Net", weights=str(p.weights_b), input_size=24)
    t = time.perf_counter()
    res = diff(a, p.images, model_b=b, layer="relu3", out=work / f"out{seed}{family}", no_renders=True)
    d = res.data
    tops = {u["channel"]: u["top"] for u in d.units}
    first = d.classes[0] if d.classes else None
    carriers = [u["channel"] for u in first["units"][:3]] if first else []
    row = {
        "seed": seed,
        "target": target,
        "mark_at": list(pos),
        "family": family,
        "marked_images": len(p.marked),
        "clean_accuracy_a": round(p.acc_a, 3),
        "clean_accuracy_b": round(p.acc_b, 3),
        "attack_success_b": round(p.attack, 3),
        "first_class": first["class"] if first else None,
        "first_class_flips": [first["into"], first["out_of"]] if first else None,
        "target_flips": next(([c["into"], c["out_of"]] for c in d.classes if c["class"] == target), None),
        "class_first_ok": bool(first and first["class"] == target),
        "carriers_top3_marked": [share(tops[c], p.marked) for c in carriers],
        "measures": {},
        "build_s": round(build, 1),
        "diff_s": round(time.perf_counter() - t, 2),
    }
    for m in METRICS:
        order = [int(c) for c in rank_units(d.scores, m)[:3]]
        shares = [share(tops[c], p.marked) for c in order]
        row["measures"][m] = {"top3": order, "top3_marked": shares, "hit": max(shares) >= 0.8}
    print(json.dumps({k: v for k, v in row.items() if k != "measures"}), flush=True)
    print("   ", {m: v["top3_marked"] for m, v in row["measures"].items()}, flush=True)
    return row


FAMILIES = {
    # name: make_pair options
    "plain": {},
    "shift": {"shift": True},
    "hard": {"shift": True, "ft_epochs": 6, "ft_lr": 1e-2, "n_clean": 80, "n_marked": 10},
}


def pairs(work: Path) -> dict:
    torch.set_num_threads(1)  # training tiny nets: two threads on a shared machine only add contention
    rows = [one_pair(s, t, pos, fam, work) for fam in FAMILIES for s, t, pos in PAIRS + HARD_EXTRA * (fam == "hard")]
    summary: dict[str, dict] = {}
    for m in METRICS:
        summary[m] = {}
        for fam in [*FAMILIES, "all"]:
            sel = [r for r in rows if fam in ("all", r["family"])]
            per = [r["measures"][m]["top3_marked"] for r in sel]
            summary[m][fam] = {
                "hits": sum(r["measures"][m]["hit"] for r in sel),
                "n": len(sel),
                "first_unit_marked_mean": round(float(np.mean([p[0] for p in per])), 3),
                "top3_marked_mean": round(float(np.mean(per)), 3),
            }
    fams = {
        fam: {
            "n": sum(r["family"] == fam for r in rows),
            "class_first": sum(r["class_first_ok"] for r in rows if r["family"] == fam),
            "carrier_hits": sum(max(r["carriers_top3_marked"], default=0) >= 0.8 for r in rows if r["family"] == fam),
        }
        for fam in FAMILIES
    }
    return {"rows": rows, "summary": summary, "families": fams, "n": len(rows)}


def photos48(work: Path) -> Path:
    import skimage

    d = work / "photos48"
    d.mkdir(parents=True, exist_ok=True)
    for f in fs.sample_photos_dir().glob("*.jpg"):
        shutil.copyfile(f, d / f.name)
    src = Path(skimage.data.__file__).parent
    for name in SKIMAGE_EXTRA:
        shutil.copyfile(src / name, d / f"skimage_{name}")
    return d


def lite(work: Path) -> dict:
    images = photos48(work)
    out = work / "lite"
    cmd = [sys.executable, "-m", "filterscope.cli", "diff", str(images), "--model", "efficientnet_lite0"]
    cmd += ["--model-b", "efficientnet_lite1", "--layer", "bn2", "--no-renders", "--out", str(out), "-q"]
    load0 = [round(v, 1) for v in os.getloadavg()]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(proc.stderr)
    rec = json.loads((out / "diff.json").read_text())
    run = json.loads((out / "run.json").read_text())
    c = rec["counts"]
    return {
        "images": len(list(images.iterdir())),
        "images_from": "36 bundled photos + 12 skimage.data: " + ", ".join(SKIMAGE_EXTRA),
        "wall_s": round(wall, 1),
        "timings": run["timings"],
        "counts": c,
        "all_accounted": c["matched"] + c["new"] + c["dead"] == c["units"] == 1280,
        "r_median_matched": round(float(np.median([u["r"] for u in rec["units"] if u["match"] is not None])), 3),
        "first_classes": [[k["name"], k["into"], k["out_of"]] for k in rec["classes"][:3]],
        "flipped": rec["flipped_images"],
        "load_at_start": load0,
        "load_at_end": [round(v, 1) for v in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["pairs", "lite"], action="append")
    args = ap.parse_args()
    parts = args.only or ["pairs", "lite"]
    out_json = ROOT / "benchmarks/results/diff.json"
    res = json.loads(out_json.read_text()) if out_json.exists() and args.only else {}
    res["machine"] = {
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_start": [round(v, 1) for v in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "lite" in parts:
            res["lite"] = lite(work)
            print(res["lite"], flush=True)
        if "pairs" in parts:
            res["pairs"] = {**pairs(work), "metrics": list(METRICS), "default_metric": DEFAULT_METRIC}
    res["machine"]["load_end"] = [round(v, 1) for v in os.getloadavg()]
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1) + "\n")
    (ROOT / "benchmarks/results/diff.md").write_text(tables.diff_table(res))
    print(tables.diff_table(res))


if __name__ == "__main__":
    main()
