"""Measure `filterscope circuit` and `filterscope tuning` on efficientnet_lite0 (the issue's targets).

1. One channel's circuit at blocks.5 (from blocks.4) with the 36 bundled photos, renders excluded
   (target ≤ 10 s on 2 cores); the renders of its top-8 inputs and of the channel timed separately.
2. The tuning of all 24 channels of blocks.1 (target ≤ 30 s), compute and writing timed apart.
3. Ablation: zeroing the top-8 inputs by |attribution| vs 8 random inputs (mean of 8 seeded draws): the
   ratio of the mean |change| of the channel, median over 10 channels per layer (target ≥ 2×), for blocks.5
   and blocks.3; and the drop when the 8 most excitatory inputs are zeroed vs 8 random.

Writes benchmarks/results/circuits.{json,md}. The load average of the machine is recorded: timings on a
machine shared with other jobs are upper bounds.

    python benchmarks/bench_circuits.py                  # everything (~5-10 min on 2 busy cores)
    python benchmarks/bench_circuits.py --only timing
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FILTERSCOPE_NO_CACHE", "1")  # time renders, not cache reads

import numpy as np
import torch
from common import tables

import filterscope as fs
from filterscope.models.layers import get_layer

ROOT = Path(__file__).resolve().parents[1]


def timing(model, renders: bool) -> dict:
    from filterscope.optvis.linearize import linear_copy

    linear_copy(model.net)  # made once per model (a deep copy); not part of one channel's circuit
    t, cpu = time.perf_counter(), time.process_time()
    c = fs.circuit(model, "blocks.5", 42, renders=False)
    circuit_s, circuit_cpu = time.perf_counter() - t, time.process_time() - cpu
    with_renders_s = render_s = None
    if renders:
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            r = fs.circuit(model, "blocks.5", 42, renders=True, out=Path(d) / "c")
        with_renders_s = round(time.perf_counter() - t, 2)
        render_s = r.timings.get("render_s")
    t, cpu = time.perf_counter(), time.process_time()
    tu = fs.tuning(model, "blocks.1")
    tuning_s, tuning_cpu = time.perf_counter() - t, time.process_time() - cpu
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        from filterscope.jobs.tuning import write_tuning
        from filterscope.outputs.rundir import RunDir

        run = RunDir(Path(d) / "t", "tuning", {})
        write_tuning(run, tu)
        run.finish()
    tuning_write_s = time.perf_counter() - t
    described = sum(1 for ch in tu.channels if ch.description)
    return {
        "circuit_blocks5_s": round(circuit_s, 2),
        "circuit_blocks5_cpu_s": round(circuit_cpu, 2),
        "circuit_parts_s": c.timings,
        "circuit_with_renders_and_files_s": with_renders_s,
        "render_s": render_s,
        "tuning_blocks1_24_s": round(tuning_s, 2),
        "tuning_blocks1_24_cpu_s": round(tuning_cpu, 2),
        "tuning_parts_s": tu.timings,
        "tuning_write_s": round(tuning_write_s, 2),
        "tuning_stimuli": tu.n_stimuli,
        "tuning_described": described,
        "tuning_descriptions": {str(ch.channel): ch.description for ch in tu.channels},
    }


def ablation(model, layers: list[str], n: int = 10) -> dict:
    out = {}
    for layer in layers:
        info = get_layer(model, layer)
        chans = np.linspace(0, info.channels - 1, n).round().astype(int).tolist()
        rows = []
        t0 = time.perf_counter()
        for c in chans:
            cc = fs.circuit(model, layer, c, renders=False)
            ab = cc.ablation
            rows.append(
                {
                    "channel": c,
                    "from": cc.source,
                    "change_top": ab["change_top"],
                    "change_random": ab["change_random"],
                    "ratio": ab["change_ratio"],
                    "drop_excitatory": ab["drop_excitatory"],
                    "drop_random": ab["drop_random"],
                    "spearman_weight_attribution": cc.linear["agreement"],
                    "max_abs_weight": cc.linear["max_abs_weight"],
                }
            )
            print(layer, c, ab["change_ratio"], flush=True)
        out[layer] = {
            "from": rows[0]["from"],
            "channels": chans,
            "median_ratio": float(np.median([r["ratio"] for r in rows])),
            "min_ratio": float(np.min([r["ratio"] for r in rows])),
            "median_drop_excitatory": float(np.median([r["drop_excitatory"] for r in rows])),
            "median_drop_random": float(np.median([r["drop_random"] for r in rows])),
            "median_spearman_identity": float(
                np.median([r["spearman_weight_attribution"]["identity"]["spearman_attribution"] for r in rows])
            ),
            "median_spearman_gated": float(
                np.median([r["spearman_weight_attribution"]["gated"]["spearman_attribution"] for r in rows])
            ),
            "median_max_abs_weight_identity": float(np.median([r["max_abs_weight"]["identity"] for r in rows])),
            "median_max_abs_weight_gated": float(np.median([r["max_abs_weight"]["gated"] for r in rows])),
            "seconds": round(time.perf_counter() - t0, 1),
            "rows": rows,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["timing", "ablation"], action="append")
    ap.add_argument("--layers", default="blocks.5,blocks.3")
    ap.add_argument("--renders", action="store_true", help="also time the circuit with its renders and files")
    args = ap.parse_args()
    parts = args.only or ["timing", "ablation"]
    torch.manual_seed(0)
    model = fs.load_model("efficientnet_lite0")
    out_json = ROOT / "benchmarks/results/circuits.json"
    res = json.loads(out_json.read_text()) if out_json.exists() and args.only else {}
    res["machine"] = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_start": [round(v, 1) for v in os.getloadavg()],
    }
    if "timing" in parts:
        res["timing"] = timing(model, args.renders)
        print(res["timing"], flush=True)
    if "ablation" in parts:
        res["ablation"] = ablation(model, args.layers.split(","))
    res["machine"]["load_end"] = [round(v, 1) for v in os.getloadavg()]
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1) + "\n")
    (ROOT / "benchmarks/results/circuits.md").write_text(tables.circuits_table(res))
    print(tables.circuits_table(res))


if __name__ == "__main__":
    main()
