"""Helpers shared by the benchmark scripts: the model and channels they measure, the machine they name, where
their results go, and the evaluator's score of a layer's renders.

The tables of every result file are made by ``scripts/bench_tables.py`` (one function per result, JSON → markdown),
which the documentation build uses too; a benchmark writes ``results/NAME.json`` and the ``.md`` of the same table.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "scripts"))

import bench_tables as tables  # noqa: E402,F401  (the tables, shared with the docs build)


def load(model_name: str, device: str):
    """The real model for efficientnet_lite0; resnet18 with random weights (speed only, no download)."""
    import torch
    import torchvision

    from filterscope.models import load_model

    if model_name == "resnet18":
        torch.manual_seed(0)
        return load_model(torchvision.models.resnet18(weights=None), name="resnet18-random", device=device)
    return load_model(model_name, device=device)


def pick_channels(model, layer: str, n: int) -> list[int]:
    from filterscope.models.layers import get_layer

    c = get_layer(model, layer).channels
    return sorted(int(x) for x in np.random.default_rng(1).choice(c, n, replace=False))


def peak_mib(device: str) -> dict:
    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda"):
        import torch

        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def write_results(out, res: dict, markdown: str) -> None:
    """``out``.json (``res``) and ``out``.md (``markdown``), the parent folder made; the markdown printed."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def have_lucent() -> bool:
    try:
        import lucent  # noqa: F401

        return True
    except Exception:
        return False


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}{gpu}"


def score_layer(model, layer: str, channels: list[int], images) -> dict:
    """The evaluator on renders ``images`` of ``channels``: median robust ratio, or for bn2 its robust
    pre-activation (ReLU6 caps the output), with every value and the picture measures."""
    import torch

    from filterscope.jobs.evaluate import natural_max, score_images

    pre = layer == "bn2"
    stack = torch.stack([i.float().cpu() for i in images])
    sc = score_images(model, layer, channels, stack, natural_max(model, layer, pre_relu=pre), pre_relu=pre)
    value = [x.robust_activation if pre else x.robust_ratio for x in sc]
    return {
        "measure": "robust pre-activation" if pre else "robust ratio",
        "median": round(float(np.median(value)), 3),
        "values": [round(float(v), 3) for v in value],
        "median_colourfulness": round(float(np.median([x.colourfulness for x in sc])), 1),
        "median_rms_contrast": round(float(np.median([x.rms_contrast for x in sc])), 3),
    }
