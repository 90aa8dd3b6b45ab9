"""Rendering benchmark: time to a good picture, side by side in one run on one machine.

For each model/layer, on the same channels and seeds:
  naive      the tutorial's loop: full model, batch 1, Adam on pixels, one channel after another
  <preset>   every filterscope preset at its default steps, and at the naive loop's steps
  lucent     Lucent's ``render_vis`` at its default 512 steps (when torch-lucent is installed)
  ceiling    forward+backward time per image of the model truncated at the layer (batch 1 on CPU),
             measured in the same process right before each method
Each method runs in its own subprocess (so its peak RSS is its own) and reports seconds per channel,
seconds per step, the fraction of the ceiling it reaches, the ``evaluate`` robustness ratio (median over
the channels), the median colourfulness (Hasler & Süsstrunk) and RMS contrast of the renders, and peak memory.

    python benchmarks/bench_render.py                      # full run (~30 min on 2 CPU cores)
    python benchmarks/bench_render.py --quick              # one layer, 2 channels, no Lucent
    python benchmarks/bench_render.py --curve --layer blocks.5   # robustness vs steps for each preset
    python benchmarks/bench_render.py --layout             # atlas: 1 process × N threads vs N processes × 1

Writes benchmarks/results/bench.json and bench.md, and docs/bench.png (robust ratio vs seconds per channel),
the figure the docs show. Shared helpers: ``common.py``; the table: ``scripts/bench_tables.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, ROOT, have_lucent, load, machine, peak_mib, pick_channels, sync, tables  # noqa: E402

CONFIGS = {
    "efficientnet_lite0": ["blocks.1", "blocks.3", "bn2"],
    "resnet18": ["layer2", "layer3", "avgpool"],
}
NAIVE_STEPS = 48
NAIVE_LR = 0.02


# ---------------------------------------------------------------- methods (run inside a worker process)


def naive(model, layer, channels, steps, device):
    """The tutorial's loop, written the way the tutorial does it: a hook, the full model, pixels, Adam."""
    import copy

    import torch

    net = copy.deepcopy(model.net).to(memory_format=torch.contiguous_format)
    module = dict(net.named_modules())[layer]
    store = {}
    h = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    images = []
    for c in channels:
        g = torch.Generator().manual_seed(c)
        img = (0.45 + 0.1 * torch.rand(1, 3, model.input_size, model.input_size, generator=g)).to(device)
        img.requires_grad_(True)
        opt = torch.optim.Adam([img], lr=NAIVE_LR)
        for _ in range(steps):
            opt.zero_grad()
            net((img - mean) / std)
            loss = -store["a"][0, c].mean()
            loss.backward()
            opt.step()
            with torch.no_grad():
                img.clamp_(0, 1)
        images.append(img.detach()[0].cpu())
    h.remove()
    return images, steps


def preset(model, layer, channels, name, steps, device, batch, changes=None):
    from filterscope.jobs.stream import render_stream
    from filterscope.models.layers import get_layer
    from filterscope.optvis.presets import get_preset

    settings = get_preset(name).with_(steps=steps, **(changes or {}))
    images, done = [], 0
    for r in render_stream(model, get_layer(model, layer), channels, settings, seed=0, batch=batch):
        images.append(r.image)
        done += len(r.curve)
    return images, done / len(channels)


def lucent(model, layer, channels, steps, device):
    import torch
    from lucent.optvis import objectives, render

    class Wrapped(torch.nn.Module):  # Lucent's preprocessing assumes ImageNet stats; normalise ourselves
        def __init__(self, net, mean, std):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    w = Wrapped(model.net, model.mean, model.std).to(device).eval()
    images = []
    for c in channels:
        torch.manual_seed(c)
        out = render.render_vis(
            w,
            objectives.channel("net_" + layer.replace(".", "_"), c),
            thresholds=(steps,),
            show_image=False,
            progress=False,
            preprocess=False,
            verbose=False,
        )
        images.append(torch.tensor(out[-1][0]).permute(2, 0, 1))
    return images, steps


def ceiling(model, layer, device, batch, n=8, repeats=4, net=None):
    """Seconds per image for forward+backward (w.r.t. the input) of the model truncated at ``layer``: the
    best of ``repeats`` timings of ``n`` steps (timings on a shared machine are noisy; the best is the
    machine's real speed)."""
    import torch

    from filterscope.models.hooks import capture, run
    from filterscope.models.layers import get_layer

    info = get_layer(model, layer)
    net = net or model.net
    x = torch.rand(batch, 3, model.input_size, model.input_size, device=device, requires_grad=True)
    best = float("inf")
    with capture(net, [layer], calls={layer: info.calls}, stop=True) as cap:

        def step():
            run(lambda v: net(model.normalize(v)), x, cap)
            cap.acts[layer][:, 0].mean().backward()

        for _ in range(3):
            step()
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                step()
            sync(device)
            best = min(best, (time.perf_counter() - t) / n / batch)
    return best


def parse_changes(items) -> dict:
    """``--set key=value`` overrides of the preset's RenderSettings (values read as JSON, else text)."""
    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def worker(args) -> None:
    import numpy as np
    import torch

    from filterscope.jobs.evaluate import natural_max, score_images
    from filterscope.optvis.memory import reuse_freed_memory

    reuse_freed_memory()  # before the ceiling too, so the method and its ceiling run on the same allocator
    model = load(args.model, args.device)
    channels = [int(c) for c in args.channels.split(",")]
    # the ceiling is measured in the same process before and after the method (the best of both), so slow
    # phases of a shared machine do not flatter the fraction of the ceiling
    ceil = ceiling(model, args.layer, args.device, args.batch or 1)
    sync(args.device)
    t0 = time.perf_counter()
    if args.method == "naive":
        images, steps = naive(model, args.layer, channels, args.steps, args.device)
    elif args.method == "lucent":
        images, steps = lucent(model, args.layer, channels, args.steps, args.device)
    else:
        images, steps = preset(
            model, args.layer, channels, args.method, args.steps, args.device, args.batch, parse_changes(args.set)
        )
    sync(args.device)
    seconds = (time.perf_counter() - t0) / len(channels)
    ceil = min(ceil, ceiling(model, args.layer, args.device, args.batch or 1))
    # the ceiling of the network the loop actually ran (batch norms folded, optvis/fold.py): step time minus
    # this is the loop's own fixed cost
    net_ceil = ceil
    if args.method not in ("naive", "lucent"):
        from filterscope.optvis.render import Renderer

        net = Renderer(model).net_for([args.layer])
        if net is not model.net:
            net_ceil = ceiling(model, args.layer, args.device, args.batch or 1, net=net)
    mem = peak_mib(args.device)
    nat = natural_max(model, args.layer)
    stack = torch.stack(
        [
            torch.nn.functional.interpolate(
                i[None].float(), size=(model.input_size,) * 2, mode="bilinear", antialias=True
            )[0]
            for i in images
        ]
    )
    scores = score_images(model, args.layer, channels, stack, nat)
    rr = sorted(s.robust_ratio for s in scores)
    pre = {}
    if args.pre_relu:  # the non-saturating measure of a ReLU6-capped layer: its pre-activation
        pre_scores = score_images(
            model, args.layer, channels, stack, natural_max(model, args.layer, pre_relu=True), pre_relu=True
        )
        # the pre-activation itself: a ratio to the photos' best is meaningless where that best is negative
        pre = {"median_robust_pre_relu": float(np.median([s.robust_activation for s in pre_scores]))}
    print(
        json.dumps(
            {
                "s_per_channel": seconds,
                "steps": steps,
                "s_per_step": seconds / max(steps, 1),
                "ceiling_s_per_step": ceil,
                "ceiling_net_s_per_step": net_ceil,
                "fraction_of_ceiling": ceil / (seconds / max(steps, 1)),
                "median_robust_ratio": rr[len(rr) // 2]
                if len(rr) % 2
                else (rr[len(rr) // 2 - 1] + rr[len(rr) // 2]) / 2,
                "robust_ratios": [round(x, 3) for x in (s.robust_ratio for s in scores)],
                "median_colourfulness": float(np.median([s.colourfulness for s in scores])),
                "median_rms_contrast": float(np.median([s.rms_contrast for s in scores])),
                **pre,
                **mem,
            }
        )
    )


# ---------------------------------------------------------------- orchestration


def run_worker(
    model, layer, method, channels, steps, device, batch=None, changes=None, pre_relu=False, env=None
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--model",
        model,
        "--layer",
        layer,
        "--method",
        method,
        "--channels",
        ",".join(map(str, channels)),
        "--steps",
        str(steps),
        "--device",
        device,
    ]
    if batch:
        cmd += ["--batch", str(batch)]
    for k, v in (changes or {}).items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    if pre_relu:
        cmd.append("--pre-relu")
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "FILTERSCOPE_NO_CACHE": "1", **(env or {})},
    )
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench(args) -> dict:
    from filterscope.optvis.presets import PRESETS

    results = {"machine": machine(), "device": args.device, "naive_steps": NAIVE_STEPS, "rows": []}
    configs = {"efficientnet_lite0": ["blocks.5"]} if args.quick else CONFIGS
    if args.layer:
        configs = {args.model or "efficientnet_lite0": [args.layer]}
    for model_name, layers in configs.items():
        from filterscope.models import load_model  # noqa: F401 - fail early if the package is broken

        m = load(model_name, "cpu")
        for layer in layers:
            channels = pick_channels(m, layer, 2 if args.quick else args.n_channels)
            row_base = {"model": model_name, "layer": layer, "channels": channels}
            plan = [("naive", NAIVE_STEPS)]
            for name, st in PRESETS.items():
                plan.append((name, st.steps))
                if st.steps != NAIVE_STEPS:
                    plan.append((name, NAIVE_STEPS))
            if have_lucent() and not args.quick and not args.no_lucent:
                plan.append(("lucent", 512))
            for method, steps in plan:
                if method == "lucid" and steps == 512 and args.skip_slow:
                    continue
                r = run_worker(model_name, layer, method, channels, steps, args.device)
                row = {**row_base, "method": method, "steps_asked": steps, **r}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
    return results


def curve(args) -> dict:
    """Robustness ratio against steps for each preset (the tuning script behind the default preset)."""
    from filterscope.optvis.presets import PRESETS

    model_name = args.model or "efficientnet_lite0"
    m = load(model_name, "cpu")
    channels = pick_channels(m, args.layer, args.n_channels)
    rows = []
    for name in PRESETS:
        for steps in (8, 16, 32, 48, 64, 96, 128, 256):
            if args.skip_slow and steps * PRESETS[name].views > (128 if name == "lucid" else 512):
                continue
            r = run_worker(model_name, args.layer, name, channels, steps, args.device)
            rows.append({"method": name, "steps_asked": steps, **r})
            print(json.dumps(rows[-1]), flush=True)
    return {"machine": machine(), "layer": args.layer, "channels": channels, "curve": rows}


def layout(args) -> dict:
    """Channels per minute of the atlas's render layouts on this machine, side by side: one process with
    every core's threads against one single-threaded worker process per core (``filterscope atlas``,
    default preset, the render phase only)."""
    import tempfile

    from filterscope.cli import parse_channels
    from filterscope.jobs.pool import cpu_cores

    cores = cpu_cores()
    layer = args.layer or "blocks.3"
    chans = args.channels or f"0-{max(4 * cores, 8) - 1}"
    n = len(parse_channels(chans))
    rows = []
    for name, extra in (
        (f"1 process x {cores} threads", ["--threads", str(cores)]),
        (f"{cores} processes x 1 thread", ["--workers", str(cores), "--threads", "1"]),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "filterscope.cli",
                "atlas",
                "--layers",
                layer,
                "--channels",
                chans,
                "--top",
                "1",
                "--quiet",
                "--no-cache",  # every layout renders every channel
                "--out",
                tmp,
                *extra,
            ]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                rows.append({"layout": name, "error": r.stderr.strip()[-300:]})
                continue
            rec = json.loads((Path(tmp) / "run.json").read_text())
            render_s = rec["timings"][f"render_{layer}_s"]
        rows.append(
            {
                "layout": name,
                "channels": n,
                "render_s": render_s,
                "wall_s": round(wall, 1),
                "channels_per_min": round(60 * n / render_s, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if "error" not in r]
    speedup = ok[0]["render_s"] / ok[1]["render_s"] if len(ok) == 2 else None
    return {"machine": machine(), "layer": layer, "rows": rows, "speedup_processes": speedup}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    groups = list(dict.fromkeys((r["model"], r["layer"]) for r in results["rows"] if "error" not in r))
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), dpi=110, squeeze=False)
    colours = {
        "naive": "#888888",
        "seed": "#1f77b4",
        "lucid": "#2ca02c",
        "maco": "#9467bd",
        "fast": "#d62728",
        "lucent": "#ff7f0e",
    }
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for ax, (model, layer) in zip(axes.flat, groups):
        for r in results["rows"]:
            if (r["model"], r["layer"]) != (model, layer) or "error" in r:
                continue
            ax.scatter(r["s_per_channel"], r["median_robust_ratio"], color=colours.get(r["method"], "k"), s=40)
            ax.annotate(
                f"{r['method']} {r['steps']:.0f}",
                (r["s_per_channel"], r["median_robust_ratio"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 5, 10, 20, 50])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("seconds per channel (log scale)")
        ax.set_ylabel("median robust ratio")
        ax.set_title(f"{model} · {layer}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Quality vs time to render — {results['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method")
    p.add_argument("--model")
    p.add_argument("--layer")
    p.add_argument("--channels")
    p.add_argument("--steps", type=int, default=NAIVE_STEPS)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-channels", type=int, default=3)
    p.add_argument("--set", action="append", help="override a preset setting, e.g. --set lr=0.2 (repeatable)")
    p.add_argument("--pre-relu", action="store_true", help="also score the pre-activation of a ReLU-capped layer")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--curve", action="store_true")
    p.add_argument("--layout", action="store_true", help="compare the atlas's process/thread layouts")
    p.add_argument("--no-lucent", action="store_true")
    p.add_argument("--skip-slow", action="store_true", help="skip the 512-step lucid preset")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    if args.worker:
        return worker(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.layout:
        res = layout(args)
        (out / "layout.json").write_text(json.dumps(res, indent=2))
        return
    if args.curve:
        if not args.layer:
            p.error("--curve needs --layer, e.g. --curve --layer blocks.5")
        res = curve(args)
        (out / f"curve_{args.layer}.json").write_text(json.dumps(res, indent=2))
        return
    res = bench(args)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    (out / "bench.md").write_text(tables.render_table(res))
    plot(res, ROOT / "docs" / "bench.png")
    print(tables.render_table(res))


if __name__ == "__main__":
    main()
