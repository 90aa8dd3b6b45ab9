"""The ``filterscope`` command line: a thin layer over the Python API.

Errors are one line ``error: …`` on stderr with exit code 2 (usage) or 1 (runtime); ``--debug`` anywhere on
the command line shows the traceback instead. An interrupted run exits with 130 after keeping its work.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import click

from .errors import FilterscopeError, Interrupted, UsageError, closest
from .outputs import check_writable

DEFAULT_OUT = "filterscope-out"


# ---------------------------------------------------------------- shared options and parsing

def parse_channels(spec: str, n_channels: int | None = None) -> list[int]:
    """``0-63``, ``1,5,9``, ``0-3,10`` or ``all`` → sorted unique channel list (checked against ``n_channels``)."""
    spec = spec.strip()
    if spec == "all":
        if n_channels is None:
            raise UsageError("--channels all needs a layer")
        return list(range(n_channels))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0],
                                                                            part[1:].split("-", 1)[1])
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise UsageError(f"channel range {part!r} is empty (end before start)")
                out += range(lo, hi + 1)
            else:
                out.append(int(part))
        except ValueError:
            raise UsageError(f"cannot read channels {spec!r}: use e.g. 0-63, 1,5,9 or all") from None
    neg = [c for c in out if c < 0]
    if neg:
        raise UsageError(f"channel {neg[0]} is negative")
    if n_channels is not None:
        big = [c for c in out if c >= n_channels]
        if big:
            raise UsageError(f"channel {big[0]} is out of range: the layer has channels 0-{n_channels - 1}")
    return sorted(set(out))


def check_number(name: str, value: float | None, *, positive: bool = True, minimum: float | None = None) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    if positive and value <= 0:
        raise UsageError(f"{name} must be positive, got {value:g}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{name} must be at least {minimum:g}, got {value:g}")


def check_size(size: int | None, batch: int | None, device) -> None:
    """Refuse render sizes that are too small for a CNN or too large for the memory available."""
    if size is None:
        return
    if size < 32:
        raise UsageError(f"--size must be at least 32 pixels, got {size}")
    from .memory import available_bytes, render_bytes
    from .models import resolve_device

    need = render_bytes(size, batch or 1)
    have = available_bytes(resolve_device(device).type)
    if need > have:
        raise UsageError(f"--size {size} needs about {need / 2**30:.1f} GiB for the image buffers, "
                         f"only {have / 2**30:.1f} GiB is available; use a smaller --size or --batch")


def model_options(f):
    f = click.option("--device", default="auto", show_default=True, help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")(f)
    f = click.option("--trust-checkpoint", is_flag=True,
                     help="Allow a weights file that needs code to unpickle (runs that code!).")(f)
    f = click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="Local state dict for the named architecture.")(f)
    f = click.option("--model", "model_name", default="efficientnet_lite0", show_default=True,
                     help="Registry, torchvision or timm model name, or a TorchScript file.")(f)
    return f


def output_options(f):
    f = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars or messages.")(f)
    return f


def render_options(f):
    f = click.option("--optimizer", type=click.Choice(["adam", "nadam"]), default=None,
                     help="Override the method's optimiser.")(f)
    f = click.option("--transforms", default=None,
                     help="Override the method's transforms: none, standard, fused, light, maco, maco_horama.")(f)
    f = click.option("--param", default=None, help="Override the method's parameterisation: pixel, fourier, maco.")(f)
    f = click.option("--batch", type=int, default=None, help="Images per step (default: 1 on CPU, from memory on GPU).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    f = click.option("--size", type=int, default=None, help="Side of the rendered image (default: the model's input).")(f)
    f = click.option("--lr", type=float, default=None, help="Learning rate (default: the method's).")(f)
    f = click.option("--steps", type=int, default=None, help="Optimisation steps (default: the method's).")(f)
    f = click.option("--method", default=None, help="Preset: fast (default), seed, lucid or maco.")(f)
    return f


def load(model_name: str, weights: str | None, trust_checkpoint: bool, device: str):
    from .models import load_model

    return load_model(model_name, weights=weights, trust_checkpoint=trust_checkpoint, device=device)


def settings_for(method: str | None, steps, lr, size, seed, batch, device, param=None, transforms=None,
                 optimizer=None):
    from .param import PARAM_REGISTRY
    from .presets import DEFAULT_METHOD, get_preset
    from .transform import TRANSFORM_PRESETS

    method = method or DEFAULT_METHOD
    base = get_preset(method)
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    check_number("--lr", lr)
    if seed is not None and seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {seed}")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    check_size(size if size is not None else base.size, batch, device)
    if param is not None and param not in PARAM_REGISTRY:
        raise UsageError(f"unknown --param {param!r}", hint=closest(param, PARAM_REGISTRY))
    if transforms is not None and transforms not in TRANSFORM_PRESETS:
        raise UsageError(f"unknown --transforms {transforms!r}", hint=closest(transforms, TRANSFORM_PRESETS))
    return method, base.with_(steps=steps, lr=lr, size=size, param=param, transforms=transforms,
                              optimizer=optimizer)


def emit(as_json: bool, quiet: bool, payload: dict, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    elif not quiet:
        for line in lines:
            click.echo(line)


def diversity_option(ctx, param, value: int) -> int:
    from .channels import check_diversity

    return check_diversity(value)


def interrupted_error(run_dir: Path, done: int, total: int) -> Interrupted:
    return Interrupted(f"interrupted: {done} of {total} channels finished and kept in {run_dir}; "
                       "run the same command with --resume to finish")


# ---------------------------------------------------------------- commands

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="filterscope")
def cli() -> None:
    """What the filters of a CNN have learned: activations, boosted features, atlases.

    Add --debug anywhere to see a traceback instead of a one-line error.
    """


@cli.command()
@model_options
@click.option("--json", "as_json", is_flag=True)
def layers(model_name, weights, trust_checkpoint, device, as_json):
    """List every layer that can be targeted, with its output shape; mark the default."""
    from .layers import default_layer, list_layers

    model = load(model_name, weights, trust_checkpoint, device)
    infos = list_layers(model)
    default = default_layer(model)
    if as_json:
        click.echo(json.dumps({"model": model.name, "default": default, "layers": [
            {"name": i.name, "type": i.type, "shape": list(i.shape), "calls": i.calls} for i in infos]}, indent=2))
        return
    width = max(len(i.name) for i in infos)
    click.echo(f"{model.name}: {len(infos)} targetable layers (output C×H×W), in forward order")
    for i in infos:
        mark = "  <- default (last layer with maps before the head)" if i.name == default else ""
        calls = f"  (runs {i.calls}×; the last call is used)" if i.calls > 1 else ""
        click.echo(f"  {i.name:<{width}}  {i.type:<22} {i.shape_str():>14}{calls}{mark}")


@cli.command(name="inspect")
@click.argument("image", required=False)
@model_options
@click.option("--layer", default="default", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--out", default=None, help=f"Output directory [default: {DEFAULT_OUT}/inspect].")
@output_options
def inspect_cmd(image, model_name, weights, trust_checkpoint, device, layer, top, out, quiet, as_json):
    """Which filters of LAYER an IMAGE excites most, and where (chart, heatmaps, CSV)."""
    from .images import load_image
    from .layers import network_layer
    from .pipeline import inspect_to_dir

    if image:
        load_image(image)
    out = out or os.path.join(DEFAULT_OUT, "inspect")
    model = load(model_name, weights, trust_checkpoint, device)
    layer = network_layer(model, layer, "inspect").name
    check_writable(out)
    run_dir, ins = inspect_to_dir(model, image, out, layer=layer, top=top)
    lines = [f"{model.name} · {ins.layer.name} ({ins.layer.shape_str()}) · prediction: "
             f"{ins.predictions[0][1]} ({ins.predictions[0][2]:.1%})", "top filters (mean activation):"]
    lines += [f"  {i:5d}  {ins.means[i]:.4f}" for i in ins.top]
    lines.append(f"wrote {run_dir}/figure_activations.png, figure_heatmaps.png, activations.csv, run.json")
    emit(as_json, quiet, json.loads((run_dir / "run.json").read_text()), lines)


@cli.command()
@click.argument("image", required=False)
@model_options
@click.option("--layer", default="default", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True)
@render_options
@click.option("--out", default=None, help=f"Output directory [default: {DEFAULT_OUT}/boost].")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in --out.")
@output_options
def boost(image, model_name, weights, trust_checkpoint, device, layer, top, method, steps, lr, size, seed, batch,
          param, transforms, optimizer, out, resume, quiet, as_json):
    """The main job: IMAGE's top filters at LAYER and their boosted features (default: bundled cup)."""
    from .pipeline import boost as run_boost
    from .images import load_image
    from .interrupt import graceful_stop
    from .layers import network_layer

    t0 = time.perf_counter()
    if image:
        load_image(image)
    method, settings = settings_for(method, steps, lr, size, seed, batch, device, param, transforms, optimizer)
    out = out or os.path.join(DEFAULT_OUT, "boost")
    model = load(model_name, weights, trust_checkpoint, device)
    info = network_layer(model, layer, "boost")
    if top > info.channels:
        raise UsageError(f"--top {top} is more than the {info.channels} filters of {info.name}")
    check_writable(out)
    with graceful_stop(quiet) as stop:
        res = run_boost(model, image, layer=info.name, top=top, method=method, settings=settings, seed=seed,
                        out=out, batch=batch, resume=resume, progress=not quiet, should_stop=stop)
    if res.status == "partial":
        raise interrupted_error(res.run_dir, len(res.renders), top)
    ins = res.inspection
    lines = [f"{model.name} · {ins.layer.name} ({ins.layer.shape_str()}) · prediction: "
             f"{ins.predictions[0][1]} ({ins.predictions[0][2]:.1%})"]
    for r in res.renders:
        lines.append(f"  filter {r['channel']:5d}: image {ins.means[r['channel']]:.3f} · noise "
                     f"{r['activation_before']:.3f} → boosted {r['activation_after']:.3f}  [{r['status']}]")
    lines.append(f"wrote {res.run_dir}/figure_boost.png and {len(res.renders)} renders "
                 f"in {time.perf_counter() - t0:.1f} s")
    emit(as_json, quiet, json.loads((res.run_dir / "run.json").read_text()), lines)
    failed = [r for r in res.renders if r["status"] != "ok"]
    if failed and len(failed) == len(res.renders):
        from .errors import RenderError

        raise RenderError(f"every render failed: {failed[0]['status']}")


@cli.command(name="render")
@model_options
@click.option("--layer", default="default", show_default=True, help="Layer, or 'logit' for class logits.")
@click.option("--channels", default="0-15", show_default=True, help="e.g. 0-63, 1,5,9 or all.")
@render_options
@click.option("--objective", default=None, help="Render one objective given as text instead, "
              "e.g. 'blocks.5:12 - 0.1*tv' or 'logit:967'.")
@click.option("--penalty", default=None, help="Regularisers subtracted from every channel, e.g. '0.05*tv'.")
@click.option("--diversity", type=click.IntRange(min=0), default=0, callback=diversity_option,
              help="Also render N ≥ 2 diverse variants per channel.")
@click.option("--out", default=None, help=f"Output directory [default: {DEFAULT_OUT}/render].")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in --out.")
@output_options
def render_cmd(model_name, weights, trust_checkpoint, device, layer, channels, method, steps, lr, size, seed, batch,
               param, transforms, optimizer, objective, penalty, diversity, out, resume, quiet, as_json):
    """Render channels of a layer: one PNG per channel, a grid, and run.json."""
    from .channels import render_layer
    from .interrupt import graceful_stop
    from .layers import get_layer
    from .outputs import RunDir

    t0 = time.perf_counter()
    method, settings = settings_for(method, steps, lr, size, seed, batch, device, param, transforms, optimizer)
    out = out or os.path.join(DEFAULT_OUT, "render")
    model = load(model_name, weights, trust_checkpoint, device)
    if objective:
        return render_objective_cmd(model, objective, method, settings, seed, out, resume, quiet, as_json, t0)
    info = get_layer(model, layer)
    chans = parse_channels(channels, info.channels)
    pen = parse_objective(model, penalty) if penalty else None
    check_writable(out)
    record = {"model": model.describe(), "layer": info.name, "channels": chans, "method": method,
              "render": settings.as_dict(), "seed": seed, "batch": batch, "diversity": diversity,
              "penalty": penalty}
    run = RunDir(out, "render", record, resume=resume)
    with graceful_stop(quiet) as stop:
        summary = render_layer(model, info, chans, settings, seed, run, batch=batch, diversity=diversity,
                               penalty=pen, progress=not quiet, should_stop=stop)
    status = "partial" if summary.interrupted else "complete"
    run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    run.finish(status)
    if summary.interrupted:
        raise interrupted_error(run.path, len(summary.rendered) + len(summary.skipped), len(chans))
    lines = [f"rendered {len(summary.rendered)} channels of {info.name}"
             + (f" ({len(summary.skipped)} already done)" if summary.skipped else "")
             + f" in {time.perf_counter() - t0:.1f} s → {run.path}/grid_{info.name}.png"]
    lines += [f"  channel {c}: {why}" for c, why in summary.failed.items()]
    emit(as_json, quiet, run.record, lines)


def parse_objective(model, text: str):
    from .layers import get_layer
    from .objectives import parse

    def resolve(name: str) -> str:
        return get_layer(model, name).name

    def vector(layer: str, arg: str):
        from .activations import inspect
        from .images import load_image

        if arg.endswith(".npy"):
            import numpy as np
            import torch

            try:
                vec = torch.tensor(np.load(arg)).float().flatten()
            except (OSError, ValueError) as e:
                raise UsageError(f"cannot read direction vector {arg}: {e}") from None
            n = get_layer(model, layer).channels
            if vec.numel() != n:
                raise UsageError(f"direction vector {arg} has {vec.numel()} values; {layer} has {n} channels")
            return vec
        ins = inspect(model, load_image(arg), layer, top=1)
        return ins.means

    return parse(text, resolve, vector, channels=lambda name: get_layer(model, name).channels)


def render_objective_cmd(model, text, method, settings, seed, out, resume, quiet, as_json, t0):
    from tqdm import tqdm

    from .interrupt import graceful_stop
    from .objectives import Objective
    from .outputs import RunDir
    from .renderer import Renderer, channel_seed

    obj: Objective = parse_objective(model, text)
    check_writable(out)
    spec = getattr(obj, "channel_spec", None)
    if obj.needs_logits and obj.name.startswith("logit:") and obj.name[6:].isdigit():
        fname = f"logit_{int(obj.name[6:]):04d}.png"
    elif spec and obj.name == f"{spec[0]}:{spec[1][0]}":
        fname = f"{spec[0]}/channel_{spec[1][0]:04d}.png"
    else:
        fname = "objective.png"
    run = RunDir(out, "render", {"model": model.describe(), "objective": obj.name, "method": method,
                                 "render": settings.as_dict(), "seed": seed}, resume=resume)
    bar = tqdm(total=settings.steps, unit="step", disable=quiet, desc="render objective", dynamic_ncols=True)
    with graceful_stop(quiet) as stop:
        res = Renderer(model, settings).render(obj, [channel_seed(seed, 0)], on_step=lambda i: bar.update(1),
                                               should_stop=stop)
    bar.close()
    if res.interrupted:
        run.finish("partial")
        raise Interrupted("interrupted before the render finished; nothing was written but run.json")
    if res.status[0] == "ok":
        run.write_png(fname, res.images[0])
    rec = {"objective": obj.name, "file": fname, "activation_before": res.before[0],
           "activation_after": res.after[0], "status": res.status[0]}
    if obj.name.startswith("logit:") and obj.name[6:].isdigit():
        rec.update(layer="logit", channel=int(obj.name[6:]))
    elif spec:
        rec.update(layer=spec[0], channel=spec[1][0])
    run.result(obj.name, rec)
    run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    run.finish("complete")
    if res.status[0] != "ok":
        from .errors import RenderError

        raise RenderError(f"the render failed: {res.status[0]}")
    emit(as_json, quiet, run.record, [f"{obj.name}: {res.before[0]:.3f} → {res.after[0]:.3f}; wrote {run.path / fname}"])


@cli.command()
@model_options
@click.option("--layer", default="default", show_default=True)
@click.option("--channels", default="0-5", show_default=True)
@click.option("--methods", default="seed,lucid,maco,fast", show_default=True)
@click.option("--steps", type=int, default=None, help="Same steps for every method (default: each method's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default=None, help=f"Output directory [default: {DEFAULT_OUT}/compare].")
@click.option("--resume", is_flag=True)
@output_options
def compare(model_name, weights, trust_checkpoint, device, layer, channels, methods, steps, seed, out, resume,
            quiet, as_json):
    """The same channels rendered with every preset, side by side in one figure."""
    from .channels import channel_file, render_layer
    from .figures import compare_figure
    from .interrupt import graceful_stop
    from .layers import get_layer
    from .outputs import RunDir
    from .presets import get_preset

    t0 = time.perf_counter()
    names = [m.strip() for m in methods.split(",") if m.strip()]
    presets = {n: get_preset(n) for n in names}
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    out = out or os.path.join(DEFAULT_OUT, "compare")
    model = load(model_name, weights, trust_checkpoint, device)
    info = get_layer(model, layer)
    chans = parse_channels(channels, info.channels)
    check_writable(out)
    settings = {n: p.with_(steps=steps) for n, p in presets.items()}
    run = RunDir(out, "compare", {"model": model.describe(), "layer": info.name, "channels": chans,
                                  "methods": {n: s.as_dict() for n, s in settings.items()}, "seed": seed},
                 resume=resume)
    rows, notes = {}, {}
    finished = 0
    with graceful_stop(quiet) as stop:
        for n, st in settings.items():
            sub = RunDir(run.path / n, "render", {"model": model.describe(), "layer": info.name,
                                                   "channels": chans, "method": n, "render": st.as_dict(),
                                                   "seed": seed, "batch": None, "diversity": 0,
                                                   "penalty": None}, resume=resume)
            t = time.perf_counter()
            summary = render_layer(model, info, chans, st, seed, sub, progress=not quiet, should_stop=stop)
            sub.finish("partial" if summary.interrupted else "complete")
            finished += len(summary.rendered) + len(summary.skipped)
            if summary.interrupted:
                run.finish("partial")
                raise interrupted_error(run.path, finished, len(chans) * len(settings))
            rows[n] = [compare_tile(sub.file(channel_file(info.name, c)), st.size or model.input_size)
                       for c in chans]
            notes[n] = f"{st.steps} steps"
            run.record["timings"][n + "_s"] = round(time.perf_counter() - t, 3)
            run.record["results"][n] = {"dir": n, "steps": st.steps}
    run.write_figure("figure_compare.png", compare_figure(rows, chans, info.name, notes))
    run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    run.finish("complete")
    emit(as_json, quiet, run.record, [f"wrote {run.path}/figure_compare.png ({len(names)} methods × {len(chans)} channels)"])


def compare_tile(path: Path, size: int):
    """A finished render as a tensor; a channel that failed (no PNG) shows as a grey tile."""
    import torch
    from PIL import Image

    from .images import to_tensor

    if not path.is_file():
        return torch.full((3, size, size), 0.5)
    with Image.open(path) as im:
        return to_tensor(im.convert("RGB"))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--images", default=None, help="Folder of natural images (default: the bundled photos).")
@click.option("--eval-model", default=None, help="Second model for transferability of logit renders, "
              "e.g. efficientnet_lite1.")
@click.option("--device", default="auto", show_default=True)
@click.option("--trust-checkpoint", is_flag=True)
@output_options
def evaluate(run_dir, images, eval_model, device, trust_checkpoint, quiet, as_json):
    """Measure renders: activation vs natural images, robustness to crops, transferability."""
    from .evaluate import evaluate_run, table
    from .images import list_images
    from .outputs import atomic_write, json_bytes

    rec_file = Path(run_dir) / "run.json"
    if not rec_file.is_file():
        raise UsageError(f"{run_dir} is not a filterscope run directory (no run.json)")
    if images:
        list_images(images)
    try:
        record = json.loads(rec_file.read_text())
        m = record["settings"]["model"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{rec_file} does not record the model it was made with") from None
    model = load(m.get("spec") or m["name"], m.get("weights_file"), trust_checkpoint, device)
    ev = load(eval_model, None, trust_checkpoint, device) if eval_model else None
    result = evaluate_run(run_dir, model, images=images, eval_model=ev)
    atomic_write(Path(run_dir) / "evaluation.json", json_bytes(result))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not quiet:
        click.echo(table(result))
        click.echo(f"wrote {Path(run_dir) / 'evaluation.json'}")


@cli.command()
@model_options
@click.option("--layers", "layer_names", default="default", show_default=True,
              help="Comma-separated layers, e.g. blocks.3,blocks.5.")
@click.option("--channels", default="all", show_default=True, help="Channels of every layer: all, 0-63, 1,5,9.")
@render_options
@click.option("--images", default=None, help="Folder of images for dataset examples (default: bundled photos).")
@click.option("--top", "n_top", type=click.IntRange(min=1, max=50), default=6, show_default=True,
              help="Dataset examples per channel.")
@click.option("--diversity", type=click.IntRange(min=0), default=0, callback=diversity_option,
              help="N ≥ 2 diverse variants per channel.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (default: start a local Ray).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Ray actors.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per render (default: torch's); the same value gives identical files on any backend.")
@click.option("--out", default=None, help=f"Output directory [default: {DEFAULT_OUT}/atlas].")
@click.option("--resume", is_flag=True, help="Skip channels already finished in --out.")
@output_options
def atlas(model_name, weights, trust_checkpoint, device, layer_names, channels, method, steps, lr, size, seed, batch,
          param, transforms, optimizer, images, n_top, diversity, backend, address, workers, threads, out, resume,
          quiet, as_json):
    """Every channel of the chosen layers, with dataset examples, as a static site (DIR/index.html)."""
    import torch

    from .atlas import build_atlas
    from .images import list_images
    from .interrupt import graceful_stop
    from .layers import network_layer

    t0 = time.perf_counter()
    method, settings = settings_for(method, steps, lr, size, seed, batch, device, param, transforms, optimizer)
    if images:
        list_images(images)
    if backend == "ray":
        from .ray_backend import _ray

        _ray()
        if diversity:
            raise UsageError("--diversity is not supported with --backend ray yet")
    out = out or os.path.join(DEFAULT_OUT, "atlas")
    model = load(model_name, weights, trust_checkpoint, device)
    infos = []
    for name in [n.strip() for n in layer_names.split(",") if n.strip()]:
        info = network_layer(model, name, "atlas")
        if info.name not in [i.name for i in infos]:
            infos.append(info)
    if not infos:
        raise UsageError("--layers is empty")
    chans = {i.name: parse_channels(channels, i.channels) for i in infos}
    check_writable(out)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    with graceful_stop(quiet) as stop:
        summary = build_atlas(model, infos, chans, settings, seed, out, method=method, images=images, n_top=n_top,
                              diversity=diversity, batch=batch, backend=backend, address=address, workers=workers,
                              threads=threads, resume=resume, progress=not quiet, should_stop=stop)
    if summary.interrupted:
        raise interrupted_error(summary.run_dir, summary.rendered + summary.skipped, summary.channels)
    lines = [f"atlas of {summary.channels} channels ({summary.rendered} rendered now, {summary.skipped} kept) "
             f"in {time.perf_counter() - t0:.1f} s → {summary.run_dir}/index.html"]
    emit(as_json, quiet, {"run_dir": str(summary.run_dir), "timings": summary.seconds,
                          "channels": summary.channels, "rendered": summary.rendered}, lines)


@cli.command()
@click.argument("directory", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
def serve(directory, host, port):
    """Serve a built atlas over HTTP (bound to 127.0.0.1 unless --host says otherwise)."""
    from .site import serve as make_server

    if not (Path(directory) / "index.html").is_file():
        raise UsageError(f"{directory} has no index.html; build it with 'filterscope atlas --out {directory}'")
    try:
        server = make_server(directory, host, port)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    click.echo(f"serving {directory} at http://{host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FILTERSCOPE_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        rv = cli.main(args=argv, prog_name="filterscope", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except click.ClickException as e:
        if debug:
            raise
        print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
        return 2
    except FilterscopeError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: aborted", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            raise
        print("error: out of memory; try a smaller --size or --batch", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the contract: one line, never a traceback
        if debug:
            raise
        msg = " ".join(str(e).split())[:300]
        print(f"error: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
