"""A cheaper step from the compiler? The render loop's ceiling (forward+backward of the net truncated at the layer,
batch norms folded, batch 1) in eager mode against ``torch.compile`` (inductor) of the same truncated graph, and the
seconds the compiling takes, on efficientnet_lite0 (issue 25, item 1: a better picture per second).

    python benchmarks/bench_compile.py                       # blocks.3, blocks.6, bn2; ~5 min on 2 CPU cores
    python benchmarks/bench_compile.py --layers blocks.6

The truncated graph is timm's ``create_feature_extractor`` (torchvision's FX one, with timm's layers as leaves) of
the folded net, so eager and compiled run
the same modules; the loop's own path (forward hooks and an early exit) is timed beside them. Compiling is timed with
inductor's caches off. Writes
benchmarks/results/compile.json and compile.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_render as br  # noqa: E402

RESULTS = HERE / "results"


def step_seconds(fn, model, layer: str, n: int = 8, repeats: int = 4) -> float:
    """Best of ``repeats`` timings of ``n`` forward+backward steps of ``fn`` (input → the layer's maps)."""
    x = torch.rand(1, 3, model.input_size, model.input_size, requires_grad=True)

    def step():
        fn(model.normalize(x))[layer][:, 0].mean().backward()

    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def measure(model, layer: str) -> dict:
    from timm.models import create_feature_extractor  # torchvision's, with timm's layers as FX leaves

    from filterscope.optvis.fold import fold_batchnorm

    example = torch.zeros(1, 3, model.input_size, model.input_size)
    folded = fold_batchnorm(model.net, example, keep=[layer])
    trunc = create_feature_extractor(folded, return_nodes=[layer]).eval()
    hooks = br.ceiling(model, layer, "cpu", 1, net=folded)
    eager = step_seconds(trunc, model, layer)
    from torch._inductor import config as inductor

    torch._dynamo.reset()
    inductor.force_disable_caches = True  # the compiling a fresh process pays, not a cache hit
    compiled = torch.compile(trunc)
    t0 = time.perf_counter()
    x = torch.rand(1, 3, model.input_size, model.input_size, requires_grad=True)
    compiled(model.normalize(x))[layer][:, 0].mean().backward()  # the first call compiles forward and backward
    compile_s = time.perf_counter() - t0
    with torch.no_grad():
        ref, out = trunc(model.normalize(x))[layer], compiled(model.normalize(x))[layer]
    fast = step_seconds(compiled, model, layer)
    return {
        "layer": layer,
        "hooks_ms": round(hooks * 1e3, 1),
        "eager_ms": round(eager * 1e3, 1),
        "compiled_ms": round(fast * 1e3, 1),
        "speedup": round(eager / fast, 2),
        "compile_s": round(compile_s, 1),
        "max_rel_diff": float(f"{((out - ref).abs().max() / ref.abs().max()).item():.2e}"),
    }


def markdown(res: dict) -> str:
    out = [
        "# torch.compile against eager: the render step's ceiling",
        "",
        f"Machine: {res['machine']}. Forward+backward per image, batch 1, batch norms folded; best of 4×8 steps.",
        "",
        "| layer | loop's path (hooks) | eager (FX) | compiled | speed-up | compiling | max rel. diff (no grad) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        out.append(
            f"| {r['layer']} | {r['hooks_ms']} ms | {r['eager_ms']} ms | {r['compiled_ms']} ms | {r['speedup']}× "
            f"| {r['compile_s']} s | {r['max_rel_diff']:.1e} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="blocks.3,blocks.6,bn2")
    p.add_argument("--out", default=str(RESULTS / "compile"))
    args = p.parse_args()
    model = br.load("efficientnet_lite0", "cpu")
    layers = args.layers.split(",")
    unknown = [x for x in layers if x not in dict(model.net.named_modules())]
    if unknown:
        p.error(f"unknown layer(s) {unknown}")
    rows = []
    for layer in layers:
        rows.append(measure(model, layer))
        print(rows[-1], flush=True)
    res = {"machine": br.machine(), "torch": torch.__version__, "rows": rows}
    br.write_results(args.out, res, markdown(res))


if __name__ == "__main__":
    main()
