"""Measure `filterscope circuit` and the explorer's tuning on efficientnet_lite0 (issue 43's targets).

1. Rankings on held-out photos: the 36 bundled photos split in two by a seeded permutation; every ranking
   is made on one half and checked on the other: zeroing the first 8 inputs listed against 8 random inputs
   (mean of 32 seeded draws), the ratio of the mean |change| of the channel; median over 6 channels per
   layer drawn with a seeded generator (seed 43, fixed before any result) at blocks.5 (from blocks.4, target
   ≥ 2×) and blocks.3 (from blocks.2, target ≥ 2.5×). The rankings side by side, from one run: the old
   order (|summed expanded weight|, identity), |mean attribution| re-sorted, mean |removal effect|, greedy
   on per-image gradient × activation, and greedy on the measured removal effects (the default).
2. Held-out hand-built nets: seeded random nets (not the tests' nets) with a dead path, a saturated ReLU6 or
   a closed squeeze-excite gate behind the strongest weights: the live inputs must come first and the
   blocked ones never in the first two.
3. Timing: `filterscope circuit` at blocks.5 with its default renders (cold render cache) and without; the
   explorer's tuning for a second filter of a layer in a worker whose own memo is empty (the other worker).

Writes benchmarks/results/circuits.{json,md}. The load average of the machine is recorded: timings on a
machine shared with other jobs are upper bounds (CPU seconds of the process are given beside them).

    python benchmarks/bench_circuits.py                  # everything
    python benchmarks/bench_circuits.py --only ranking --only handbuilt
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
from torch import nn

import filterscope as fs
from filterscope.jobs import circuit as C
from filterscope.jobs import circuit_rank as R
from filterscope.models.inputs import list_images, sample_photos_dir
from filterscope.models.layers import get_layer
from filterscope.models.model import wrap_module

ROOT = Path(__file__).resolve().parents[1]
K = 8
N_RANDOM = 32
CHANNEL_SEED = 43  # the seeded draw of the benchmark's channels (fixed before any result)
SPLIT_SEED = 0
NAMES, ORDER = tables.CIRCUIT_RANKINGS, tables.CIRCUIT_ORDER


def split_photos() -> tuple[list[Path], list[Path]]:
    files = list_images(sample_photos_dir())
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    return [files[i] for i in sorted(perm[: len(files) // 2])], [files[i] for i in sorted(perm[len(files) // 2 :])]


def rankings(model, src, dst, channel: int, files: list[Path], k: int = K) -> dict[str, np.ndarray]:
    """Every ranking of ``RANKINGS`` made on ``files`` with the library's own functions (the default is the
    same call :func:`filterscope.jobs.circuit.compute_circuit` makes)."""
    batches = list(C.image_batches(model, files))
    p = C.attribution(model, src, dst, channel, batches)
    masked = C.Masked(model, src, dst, channel, batches, p.sources, p.activation)
    used = C.effect_images(len(files), C.EFFECT_IMAGES, 0)  # all 18: the job's default cap is what was checked
    effects = C.measured_effects(masked, p.activation, used)
    maps, _, _ = C.expanded_weights(model, src, dst, channel, p.gates)
    w = maps.reshape(maps.shape[0], -1).sum(1)
    return {r: R.effect_order(r, effects, p.attribution, w, k) for r in R.RANKINGS}


def held_out_ratios(model, src, dst, channel: int, files: list[Path], orders: dict, seed: int) -> dict:
    """Mean |change| of the channel on ``files`` with each order's first K zeroed, over the mean for
    ``N_RANDOM`` random K (seeded)."""
    rng = np.random.default_rng([seed, channel])
    sets = [orders[r][:K] for r in ORDER] + [rng.choice(src.channels, K, replace=False) for _ in range(N_RANDOM)]
    masks = torch.ones(len(sets) + 1, src.channels)
    for i, s in enumerate(sets):
        masks[i + 1, torch.as_tensor(s)] = 0.0
    batches = list(C.image_batches(model, files))
    masked = C.Masked(model, src, dst, channel, batches)
    acts = torch.cat([masked.run(masks.to(model.device), i) for i in range(len(batches))]).numpy()
    change = np.abs(acts[:, 1:] - acts[:, :1]).mean(0)
    rnd = change[len(ORDER) :].mean()
    return {r: round(float(change[i] / max(rnd, 1e-12)), 3) for i, r in enumerate(ORDER)}


def ranking(model, layers: list[str]) -> dict:
    rank_f, hold_f = split_photos()
    out = {"split_seed": SPLIT_SEED, "channel_seed": CHANNEL_SEED, "k": K, "n_random": N_RANDOM, "layers": {}}
    out["rank_photos"] = [f.name for f in rank_f]
    out["held_out_photos"] = [f.name for f in hold_f]
    for layer in layers:
        dst = get_layer(model, layer)
        src = C.feeding_layer(model, dst)
        chans = sorted(np.random.default_rng(CHANNEL_SEED).choice(dst.channels, 6, replace=False).tolist())
        rows = []
        t0 = time.perf_counter()
        for c in chans:
            orders = rankings(model, src, dst, c, rank_f)
            ratios = held_out_ratios(model, src, dst, c, hold_f, orders, CHANNEL_SEED)
            rows.append({"channel": c, "ratios": ratios, "first": {r: orders[r][:K].tolist() for r in ORDER}})
            print(layer, c, ratios, flush=True)
        out["layers"][layer] = {
            "from": src.name,
            "channels": chans,
            "median": {r: float(np.median([x["ratios"][r] for x in rows])) for r in ORDER},
            "min": {r: float(np.min([x["ratios"][r] for x in rows])) for r in ORDER},
            "seconds": round(time.perf_counter() - t0, 1),
            "rows": rows,
        }
    return out


# ---------------------------------------------------------------- held-out hand-built nets


class SqueezeExcite(nn.Module):
    """A squeeze-excite gate whose biases alone set it (open σ(+30) or closed σ(−30))."""

    def __init__(self, open_: np.ndarray):
        super().__init__()
        n = len(open_)
        self.conv_reduce, self.act = nn.Conv2d(n, 2, 1), nn.ReLU()
        self.conv_expand, self.gate = nn.Conv2d(2, n, 1), nn.Sigmoid()
        with torch.no_grad():
            self.conv_reduce.weight.zero_()
            self.conv_expand.weight.zero_()
            self.conv_reduce.bias.fill_(1.0)
            self.conv_expand.bias.copy_(torch.tensor(np.where(open_, 30.0, -30.0)))

    def forward(self, x):
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


def trap(kind: str, seed: int) -> tuple[nn.Module, list[int], list[int]]:
    """A seeded net: ``a`` (6 channels, > 0 on every photo) → a middle that passes 3 random live inputs and
    blocks 2 others (``dead``: a ReLU held off by a bias of −100; ``relu6``: a ReLU6 saturated by its bias
    +20; ``gate``: a closed squeeze-excite gate) → ``out``, whose weights on the blocked paths are the largest.
    ``cap``: the 2 "blocked" inputs are the ones that hold their ReLU6 at its cap (weight 100, bias 2: without
    them the unit falls from 6 to 2), so they carry the filter most although their gradient is 0.
    Returns the net, the live inputs and the blocked ones."""
    g = np.random.default_rng(seed)
    perm = g.permutation(6)
    live, blocked = sorted(perm[:3].tolist()), sorted(perm[3:5].tolist())
    net = nn.Sequential()
    net.add_module("a", nn.Conv2d(3, 6, 3, padding=1))
    with torch.no_grad():
        net.a.weight.copy_(torch.tensor(g.uniform(0.0, 0.2, (6, 3, 3, 3)), dtype=torch.float32))
        net.a.bias.fill_(0.05)
    if kind == "gate":
        gate_open = np.ones(6, dtype=bool)
        gate_open[blocked] = False
        net.add_module("mid", SqueezeExcite(gate_open))
        w = np.zeros(6)
        w[live] = g.uniform(0.5, 1.5, 3) * g.choice([-1, 1], 3)
        w[blocked] = g.uniform(5, 10, 2)
    else:
        net.add_module("mix", nn.Conv2d(6, 5, 1))
        net.add_module("act", nn.ReLU() if kind == "dead" else nn.ReLU6())
        bias, scale = {"dead": (-100.0, 1.0), "relu6": (20.0, 1.0), "cap": (2.0, 20.0)}[kind]
        with torch.no_grad():
            net.mix.weight.zero_()
            net.mix.bias.zero_()
            for j, c in enumerate(live):
                net.mix.weight[j, c] = float(g.uniform(0.5, 1.0))
            for j, c in enumerate(blocked):
                net.mix.weight[3 + j, c] = float(g.uniform(3, 6)) * scale
                net.mix.bias[3 + j] = bias
        w = np.concatenate([g.uniform(0.5, 1.5, 3) * g.choice([-1, 1], 3), g.uniform(5, 10, 2)])
    net.add_module("out", nn.Conv2d(6 if kind == "gate" else 5, 1, 1, bias=False))
    with torch.no_grad():
        net.out.weight.copy_(torch.tensor(w, dtype=torch.float32).view(1, -1, 1, 1))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    return net, live, blocked


def handbuilt(n: int = 10) -> dict:
    """``n`` seeded nets per kind, every ranking made on half the photos; the default order also through the
    product's own circuit (they must agree)."""
    rank_f, _ = split_photos()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for f in rank_f:
            os.symlink(f, Path(d) / f.name)
        for kind in ("dead", "relu6", "gate", "cap"):
            rows = []
            for seed in range(1000, 1000 + n):
                net, live, blocked = trap(kind, seed)
                m = wrap_module(net, f"{kind}{seed}", mean=(0.0,), std=(1.0,), input_size=32, in_channels=3)
                c = fs.circuit(m, "out", 0, from_layer="a", images=d, renders=False, k=2)
                orders = rankings(m, get_layer(m, "a"), get_layer(m, "out"), 0, rank_f, k=2)
                assert [i.channel for i in c.inputs] == orders[R.DEFAULT_RANKING].tolist()
                first = blocked if kind == "cap" else live  # the inputs that carry the filter
                rows.append(
                    {
                        "seed": seed,
                        "live": first,
                        "blocked": [] if kind == "cap" else blocked,
                        "orders": {r: orders[r].tolist() for r in ORDER},
                        "carriers_first": {r: set(orders[r][: len(first)].tolist()) == set(first) for r in ORDER},
                        "blocked_in_first_two": {
                            r: kind != "cap" and bool(set(orders[r][:2].tolist()) & set(blocked)) for r in ORDER
                        },
                    }
                )
            out[kind] = {
                "nets": n,
                "carriers_first": {r: sum(x["carriers_first"][r] for x in rows) for r in ORDER},
                "blocked_in_first_two": {r: sum(x["blocked_in_first_two"][r] for x in rows) for r in ORDER},
                "rows": rows,
            }
            print(kind, out[kind]["carriers_first"], out[kind]["blocked_in_first_two"], flush=True)
    return out


# ---------------------------------------------------------------- timing


def timing(model) -> dict:
    """`filterscope circuit` blocks.5:42 as the CLI runs it (a fresh run folder, all files), with its default
    renders from a cold cache and without renders; then the explorer's tuning of a second filter."""
    from filterscope.jobs.circuit import JOB
    from filterscope.jobs.contract import run_job

    out = {}
    for renders in (True, False):
        with tempfile.TemporaryDirectory() as d:
            t, cpu = time.perf_counter(), time.process_time()
            r = run_job(JOB, model, out=Path(d) / "c", layer="blocks.5", channel=42, no_renders=not renders)
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        key = "with_renders" if renders else "no_renders"
        out[f"circuit_blocks5_{key}_s"] = round(wall, 2)
        out[f"circuit_blocks5_{key}_cpu_s"] = round(cpu, 2)
        out[f"circuit_blocks5_{key}_parts_s"] = r.data.timings
        out["circuit_blocks5_ablation_ratio"] = r.data.ablation["change_ratio"]
    out.update(explorer_tuning(model))
    return out


def explorer_tuning(model, layer: str = "blocks.3") -> dict:
    """The explorer worker's tuning job (``serve.workers.run_tuning``) for channels 0 then 1 of ``layer``,
    the second in a worker whose own memo is empty (as when the pool hands it to the other worker), with a
    cache both share; one thread, as a worker runs."""
    from filterscope.outputs.cache import ENV_DIR, ENV_OFF, active_cache
    from filterscope.serve import store, workers

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = {k: os.environ.get(k) for k in (ENV_DIR, ENV_OFF)}
    out = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            os.environ[ENV_DIR] = d
            os.environ.pop(ENV_OFF, None)
            workers._MODEL, workers._SHARED = model, {}
            for c in (0, 1):
                workers._TUNING_MEMO = {}  # another worker
                job = f"{c:064x}"
                t, cpu = time.perf_counter(), time.process_time()
                assert workers.run_tuning(job, layer, c, str(sample_photos_dir()), 0, f"f{c:063x}") == "ok"
                rec = store.load_json(active_cache(), job)
                name = "first" if c == 0 else "second"
                out[f"tuning_{name}_filter_s"] = round(time.perf_counter() - t, 2)
                out[f"tuning_{name}_filter_cpu_s"] = round(time.process_time() - cpu, 2)
                out[f"tuning_{name}_filter_responses_from"] = rec["responses_from"]
                out[f"tuning_{name}_filter_parts_s"] = rec["timings"]
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    out["tuning_layer"] = layer
    return out


# ---------------------------------------------------------------- report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["ranking", "handbuilt", "timing"], action="append")
    ap.add_argument("--layers", default="blocks.5,blocks.3")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/circuits.json", help="results file")
    ap.add_argument(
        "--merge", type=Path, default=None, help="take the parts of this results file (another run) into --json"
    )
    args = ap.parse_args()
    out_json = args.json
    if args.merge:
        res = json.loads(out_json.read_text())
        other = json.loads(args.merge.read_text())
        for part in ("ranking", "handbuilt", "timing"):
            if part in other:
                res[part] = other[part]
                res.setdefault("machine_of", {})[part] = other["machine"]
        out_json.write_text(json.dumps(res, indent=1) + "\n")
        out_json.with_suffix(".md").write_text(tables.circuits_table(res))
        print(tables.circuits_table(res))
        return
    parts = args.only or ["ranking", "handbuilt", "timing"]
    torch.manual_seed(0)
    model = fs.load_model("efficientnet_lite0")
    res = json.loads(out_json.read_text()) if out_json.exists() and args.only else {}
    res = {k: v for k, v in res.items() if k in ("ranking", "handbuilt", "timing", "machine", "machine_of")}
    for part in ("ranking", "handbuilt", "timing"):  # the parts kept from an earlier run keep its machine
        if part in res and part not in parts and "machine" in res:
            res.setdefault("machine_of", {}).setdefault(part, res["machine"])
    res["machine"] = {
        "threads": torch.get_num_threads(),
        "cpu": f"{os.cpu_count()} cores",
        "torch": torch.__version__,
        "load_start": [round(v, 1) for v in os.getloadavg()],
    }
    if "ranking" in parts:
        res["ranking"] = ranking(model, args.layers.split(","))
    if "handbuilt" in parts:
        res["handbuilt"] = handbuilt()
    if "timing" in parts:
        res["timing"] = timing(model)
        print(res["timing"], flush=True)
    res["machine"]["load_end"] = [round(v, 1) for v in os.getloadavg()]
    for part in parts:
        res.get("machine_of", {}).pop(part, None)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1) + "\n")
    out_json.with_suffix(".md").write_text(tables.circuits_table(res))
    print(tables.circuits_table(res))


if __name__ == "__main__":
    main()
