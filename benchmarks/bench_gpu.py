"""Speed on a GPU (issue 25, item 4): channels per minute against the reference at equal steps, batches sized
by free memory, bfloat16 only where the evaluator shows no loss.

    python benchmarks/bench_gpu.py                                       # on the CUDA device
    python benchmarks/bench_gpu.py --device cpu --channels 2 --steps 3   # a smoke run of the same code here

Per layer (blocks.3, blocks.6, bn2), the same channels rendered by:

- ``fast`` in float32 and with a bfloat16 network (``precision``: torch.autocast around the forward pass;
  image, objective and optimiser stay float32), and ``fast`` with 2 and 8 views per step (``views``, which on 2
  CPU cores costs ~1.7 steps and may cost far less where a batch is cheap: late in a render one view's gradient
  is mostly noise, docs/research.md, and 8 views average it 8 times);
- the ``lucid`` preset (Lucid's method in this loop) and, when ``torch-lucent`` is installed, Lucent's
  ``render_vis`` (one channel at a time, as it renders);

all at the same step count (``fast``'s 48, early exit off), and the ``lucid`` preset again at its own 512 steps
(``--lucid-steps``: item 1's quality reference, to read quality per minute against); every filterscope variant
in batches sized from free memory (``jobs.stream.auto_batch``). Reported: channels per minute, the median robust
ratio (bn2: its robust pre-activation; ReLU6 caps the output), and per layer whether bfloat16 is kept: its median
is at least 98 % of float32's. Writes benchmarks/results/gpu.json and gpu.md (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_render as br  # noqa: E402
import common  # noqa: E402

RESULTS = HERE / "results"
LAYERS = ["blocks.3", "blocks.6", "bn2"]
KEEP_BF16 = 0.98  # bfloat16 is kept at a layer where its median is at least this fraction of float32's
# name → (preset, settings changes)
VARIANTS: dict[str, tuple[str, dict]] = {
    "fast float32": ("fast", {}),
    "fast bfloat16": ("fast", {"precision": "bfloat16"}),
    "fast 2 views": ("fast", {"views": 2}),
    "fast 8 views": ("fast", {"views": 8}),
    "lucid": ("lucid", {}),
}


def _speed(n: int, sec: float) -> dict:
    return {"channels_per_min": round(60 * n / sec, 2), "seconds": round(sec, 2)}


def variant(model, layer: str, channels: list[int], name: str, steps: int, batch: int | None) -> dict:
    from filterscope.jobs.stream import auto_batch, render_stream
    from filterscope.models.layers import get_layer
    from filterscope.optvis.presets import get_preset

    preset, changes = VARIANTS[name]
    settings = get_preset(preset).with_(steps=steps, converge=0.0, **changes)
    info = get_layer(model, layer)
    device = str(model.device)
    size = batch or auto_batch(model, settings, info)
    common.sync(device)
    t0 = time.perf_counter()
    images = [r.image for r in render_stream(model, info, channels, settings, seed=0, batch=size)]
    common.sync(device)
    sec = time.perf_counter() - t0
    return {
        "variant": name,
        "steps": steps,
        "batch": size,
        **_speed(len(channels), sec),
        **common.score_layer(model, layer, channels, images),
    }


def lucent_variant(model, layer: str, channels: list[int], steps: int) -> dict:
    device = str(model.device)
    common.sync(device)
    t0 = time.perf_counter()
    images, _ = br.lucent(model, layer, channels, steps, device)
    common.sync(device)
    sec = time.perf_counter() - t0
    scored = common.score_layer(model, layer, channels, images)
    return {"variant": "Lucent render_vis", "steps": steps, "batch": 1, **_speed(len(channels), sec), **scored}


def run(args) -> dict:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return {"status": "not run: no CUDA device on this machine"}
    model = common.load("efficientnet_lite0", args.device)
    res: dict = {"machine": common.machine(), "device": args.device, "steps": args.steps, "layers": {}}
    if args.device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    for layer in args.layers.split(","):
        channels = common.pick_channels(model, layer, args.channels)
        variant(model, layer, channels[:1], "fast float32", 2, args.batch)  # warm-up: kernels, folding
        rows = [variant(model, layer, channels, v, args.steps, args.batch) for v in VARIANTS]
        if args.lucid_steps:  # item 1's reference: Lucid's own step count, for quality per second against it
            rows.append(variant(model, layer, channels, "lucid", args.lucid_steps, args.batch))
        if common.have_lucent() and not args.no_lucent:
            rows.append(lucent_variant(model, layer, channels[: args.lucent_channels], args.steps))
        by = {r["variant"]: r for r in rows}
        keep = by["fast bfloat16"]["median"] >= KEEP_BF16 * by["fast float32"]["median"]
        res["layers"][layer] = {"channels": channels, "rows": rows, "bfloat16_kept": keep}
        print(json.dumps({layer: res["layers"][layer]}), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", default=",".join(LAYERS))
    p.add_argument("--channels", type=int, default=64, help="channels per layer")
    p.add_argument("--lucent-channels", type=int, default=8, help="of them, rendered by Lucent too")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--batch", type=int, default=None, help="default: from free memory (1 on a CPU)")
    p.add_argument("--no-lucent", action="store_true")
    p.add_argument("--lucid-steps", type=int, default=512, help="the lucid preset again at this many steps (0: not)")
    p.add_argument("--out", default=str(RESULTS / "gpu"))
    args = p.parse_args()
    import os

    os.environ["FILTERSCOPE_NO_CACHE"] = "1"
    res = run(args)
    common.write_results(args.out, res, common.tables.gpu_table(res))


if __name__ == "__main__":
    main()
