"""The ``filterscope`` command line: a thin layer over the Python API.

Errors are one line ``error: …`` on stderr with exit code 2 (usage) or 1 (runtime); ``--debug`` anywhere on
the command line shows the traceback instead. An interrupted run exits with 130 after keeping its work.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import click

from .cli_options import (
    CHANNELS,
    METHOD,
    MODEL_INPUT,
    backend_options,
    cache_options,
    diversity_option,
    emit,
    load,
    model_options,
    out_option,
    output_options,
    parse_channels,
    render_options,
    settings_for,
)
from .errors import FilterscopeError, UsageError
from .outputs.naming import default_out
from .outputs.rundir import check_writable

__all__ = ["cli", "main", "parse_channels"]


# ---------------------------------------------------------------- commands


JOBS: dict[str, tuple[str, str]] = {
    # name: (module holding its JOB, the line `filterscope --help` lists) — the jobs on the one job shape
    "map": (
        "filterscope.jobs.activation_map",
        "The map of a LAYER: an activation atlas, every cell rendered and named.",
    ),
    "tuning": (
        "filterscope.jobs.tuning",
        "What CHANNELS answer to synthetic stimuli: gratings, colour fields, curves.",
    ),
}


class JobGroup(click.Group):
    """The command group: its own commands, and the jobs of :data:`JOBS`, whose modules are imported only
    when one of them runs (or shows its help), so ``filterscope --help`` does not load torch."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *JOBS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in JOBS and name not in self.commands:
            import importlib

            from .cli_options import job_command

            self.add_command(job_command(importlib.import_module(JOBS[name][0]).JOB), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (
                n,
                click.utils.make_default_short_help(JOBS[n][1], 45)
                if n in JOBS and n not in self.commands
                else self.commands[n].get_short_help_str(45),
            )
            for n in self.list_commands(ctx)
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=JobGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="filterscope")
def cli() -> None:
    """What the filters of a CNN have learned: activations, boosted features, atlases.

    Add --debug anywhere to see a traceback instead of a one-line error.
    """


@cli.command()
@model_options
@click.option("--all", "show_all", is_flag=True, help="Every module, each block's internals under it.")
@click.option("--json", "as_json", is_flag=True)
def layers(model_name, weights, trust_checkpoint, device, show_all, as_json):
    """The stage and block outputs that can be targeted (the default marked); --all: every module."""
    from .models.layers import default_layer, layer_outline

    model = load(model_name, weights, trust_checkpoint, device)
    outline = layer_outline(model)
    default = default_layer(model)
    if as_json:
        rows = [
            {
                "name": e.name,
                "type": e.info.type,
                "shape": list(e.info.shape),
                "calls": e.info.calls,
                "primary": e.primary,
                "parent": e.parent,
                "same_as": e.same_as,
                "ends_in_relu": e.relu,
            }
            for e in outline
        ]
        click.echo(json.dumps({"model": model.name, "default": default, "layers": rows}, indent=2))
        return
    for line in layers_text(model.name, outline, default, show_all):
        click.echo(line)


def layers_text(model_name: str, outline, default: str, show_all: bool = False) -> list[str]:
    """The lines of ``filterscope layers``: stage and block outputs, each block's internals under it (with
    ``show_all``), duplicates marked or dropped, the layers that end in a ReLU marked."""
    short = [e for e in outline if e.primary and not e.duplicate]
    width = max(len(e.name) for e in (outline if show_all else short)) + (8 if show_all else 4)

    def line(e, indent: str) -> str:
        notes = []
        if e.name == default:
            notes.append("<- default (last layer with maps before the head)")
        if e.same_as == "input":
            notes.append("= its input (dropped from the short list)")
        elif e.same_as:
            notes.append(f"= {e.same_as} (the same output)")
        if e.relu:
            notes.append(f"ends in a ReLU ({e.relu}; renders use the pre-activation)")
        if e.info.calls > 1:
            notes.append(f"runs {e.info.calls}×; the last call is used")
        head = f"{indent}{e.name}".ljust(width)
        return f"{head} {e.info.type:<22} {e.info.shape_str():>14}  {'; '.join(notes)}".rstrip()

    out = [
        f"{model_name}: {len(short)} stage and block outputs of {len(outline)} targetable modules "
        f"(output C×H×W, forward order)" + ("" if show_all else "; --all lists every module")
    ]
    inner: dict[str, list] = {}
    for e in outline:
        if e.parent is not None:
            inner.setdefault(e.parent, []).append(e)
    for e in outline:
        if e.primary and (show_all or not e.duplicate):
            out.append(line(e, "  "))
            if show_all:
                out += [line(i, "      ") for i in inner.get(e.name, [])]
    return out


@cli.command(name="inspect")
@click.argument("image", required=False)
@model_options
@click.option("--layer", default="default", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--rank",
    type=click.Choice(["activation", "contribution"]),
    default="activation",
    show_default=True,
    help="Order filters by mean activation, or by contribution to the class (gradient × activation).",
)
@click.option(
    "--class", "target_class", type=int, default=None, help="Class for --rank contribution [default: the prediction]."
)
@out_option("inspect")
@output_options
def inspect_cmd(
    image, model_name, weights, trust_checkpoint, device, layer, top, rank, target_class, out, quiet, as_json
):
    """Which filters of LAYER an IMAGE excites most (or contribute most to the class), and where."""
    from .jobs.attribution import check_class
    from .jobs.inspect import inspect_to_dir
    from .models.inputs import load_image
    from .models.layers import network_layer

    if image:
        load_image(image)
    out = out or default_out("inspect")
    model = load(model_name, weights, trust_checkpoint, device)
    layer = network_layer(model, layer, "inspect").name
    check_class(model, target_class)
    check_writable(out)
    res = inspect_to_dir(model, image, out, layer=layer, top=top, rank=rank, target_class=target_class)
    run_dir, ins = res.run_dir, res.inspection
    lines = [
        f"{model.name} · {ins.layer.name} ({ins.layer.shape_str()}) · prediction: "
        f"{ins.predictions[0][1]} ({ins.predictions[0][2]:.1%})",
        "top filters ("
        + (f"contribution to class {ins.target_class}" if rank == "contribution" else "mean activation")
        + "):",
    ]
    has = ins.contributions is not None
    lines += [
        f"  {i:5d}  mean {ins.means[i]:.4f}" + (f"  contribution {ins.contributions[i]:+.4f}" if has else "")
        for i in ins.top
    ]
    if model.in_channels != 3:
        from .models.inputs import channel_conversion

        lines.append(f"image converted for {model.in_channels} input channels: {channel_conversion(model.in_channels)}")
    lines.append(f"wrote {run_dir}/figure_activations.png, figure_heatmaps.png, activations.csv, run.json")
    emit(as_json, quiet, json.loads((run_dir / "run.json").read_text()), lines)


@cli.command()
@click.argument("image", required=False)
@model_options
@click.option("--layer", default="default", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True)
@render_options
@out_option("boost")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in --out.")
@output_options
@cache_options
def boost(
    image,
    model_name,
    weights,
    trust_checkpoint,
    device,
    layer,
    top,
    method,
    steps,
    lr,
    size,
    seed,
    batch,
    param,
    transforms,
    optimizer,
    views,
    precision,
    out,
    resume,
    quiet,
    as_json,
):
    """The main job: IMAGE's top filters at LAYER and their boosted features (default: bundled cup)."""
    from .jobs.boost import boost as run_boost
    from .jobs.boost import check_top
    from .jobs.interrupt import graceful_stop
    from .models.inputs import load_image
    from .models.layers import network_layer

    t0 = time.perf_counter()
    if image:
        load_image(image)
    method, settings = settings_for(
        method, steps, lr, size, batch, device, param, transforms, optimizer, views, precision
    )
    out = out or default_out("boost")
    model = load(model_name, weights, trust_checkpoint, device)
    info = network_layer(model, layer, "boost")
    check_top(top, info)
    check_writable(out)
    with graceful_stop(quiet) as stop:
        res = run_boost(
            model,
            image,
            layer=info.name,
            top=top,
            method=method,
            settings=settings,
            seed=seed,
            out=out,
            batch=batch,
            resume=resume,
            progress=not quiet,
            should_stop=stop,
        )
    res.raise_if_partial()
    ins = res.inspection
    lines = [
        f"{model.name} · {ins.layer.name} ({ins.layer.shape_str()}) · prediction: "
        f"{ins.predictions[0][1]} ({ins.predictions[0][2]:.1%})"
    ]
    for r in res.renders:
        lines.append(
            f"  filter {r['channel']:5d}: image {ins.means[r['channel']]:.3f} · noise "
            f"{r['activation_before']:.3f} → boosted {r['activation_after']:.3f}  [{r['status']}]"
        )
    lines.append(
        f"wrote {res.run_dir}/figure_boost.png and {len(res.renders)} renders in {time.perf_counter() - t0:.1f} s"
    )
    emit(as_json, quiet, json.loads((res.run_dir / "run.json").read_text()), lines)


@cli.command(name="render")
@model_options
@click.option("--layer", default="default", show_default=True, help="Layer, or 'logit' for class logits.")
@click.option("--channels", type=CHANNELS, default="0-15", show_default=True, help="e.g. 0-63, 1,5,9 or all.")
@render_options
@click.option(
    "--objective",
    default=None,
    help="Render one objective given as text instead, e.g. 'blocks.5:12 - 0.1*tv' or 'logit:967'.",
)
@click.option("--penalty", default=None, help="Regularisers subtracted from every channel, e.g. '0.05*tv'.")
@click.option(
    "--images",
    default=None,
    help="Folder of images to estimate the colour decorrelation from (models with 2 or 4+ input channels).",
)
@click.option(
    "--diversity",
    type=click.IntRange(min=0),
    default=0,
    callback=diversity_option,
    help="Also render N ≥ 2 diverse variants per channel.",
)
@out_option("render")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in --out.")
@output_options
@cache_options
def render_cmd(
    model_name,
    weights,
    trust_checkpoint,
    device,
    layer,
    channels,
    method,
    steps,
    lr,
    size,
    seed,
    batch,
    param,
    transforms,
    optimizer,
    views,
    precision,
    objective,
    penalty,
    images,
    diversity,
    out,
    resume,
    quiet,
    as_json,
):
    """Render channels of a layer: one PNG per channel, a grid, and run.json."""
    from .jobs.channels import render_channels
    from .jobs.interrupt import graceful_stop
    from .jobs.render_objective import objective_for, render_objective, target_layer
    from .models.layers import get_layer
    from .optvis.presets import for_target
    from .outputs.naming import grid_file

    t0 = time.perf_counter()
    if objective and (penalty or diversity):  # an objective is the whole target: its terms are written into it
        raise UsageError(
            "--objective is the whole target: write a penalty into it ('blocks.5:12 - 0.05*tv'); "
            "--penalty and --diversity work with --layer/--channels"
        )
    # ``method`` stays the user's (None: each target takes its kind's default preset, for_target below)
    _, settings = settings_for(method, steps, lr, size, batch, device, param, transforms, optimizer, views, precision)
    out = out or default_out("render")
    if images:
        from .models.inputs import list_images

        list_images(images)
        settings = settings.with_(decorrelation_images=str(images))
    model = load(model_name, weights, trust_checkpoint, device)
    if objective:
        obj = objective_for(model, objective)
        if method is None:
            settings = for_target(settings, target_layer(obj), model)
        check_writable(out)
        from tqdm import tqdm

        with (
            tqdm(total=settings.steps, unit="step", disable=quiet, desc="render objective", dynamic_ncols=True) as bar,
            graceful_stop(quiet) as stop,
        ):
            res = render_objective(
                model,
                obj,
                method=method,
                settings=settings,
                seed=seed,
                out=out,
                resume=resume,
                on_step=lambda i: bar.update(1),
                should_stop=stop,
            )
        res.raise_if_partial()
        rec = res.render
        emit(
            as_json,
            quiet,
            json.loads((res.run_dir / "run.json").read_text()),
            [
                f"{obj.name}: {rec['activation_before']:.3f} → {rec['activation_after']:.3f}; "
                f"wrote {res.run_dir / res.file}"
            ],
        )
        return
    info = get_layer(model, layer)
    if method is None:
        settings = for_target(settings, info.name, model)
    check_writable(out)
    with graceful_stop(quiet) as stop:
        res = render_channels(
            model,
            info.name,
            channels,
            method=method,
            settings=settings,
            seed=seed,
            out=out,
            batch=batch,
            diversity=diversity,
            penalty=penalty,
            resume=resume,
            progress=not quiet,
            should_stop=stop,
        )
    summary = res.summary
    res.raise_if_partial()
    lines = [
        f"rendered {len(summary.rendered)} channels of {info.name}"
        + (f" ({len(summary.skipped)} already done)" if summary.skipped else "")
        + f" in {time.perf_counter() - t0:.1f} s → {res.run_dir / grid_file(info.name)}"
    ]
    lines += [f"  channel {c}: {why}" for c, why in summary.failed.items()]
    emit(as_json, quiet, json.loads((res.run_dir / "run.json").read_text()), lines)


@cli.command()
@model_options
@click.option("--layer", default="default", show_default=True)
@click.option("--channels", type=CHANNELS, default="0-5", show_default=True)
@click.option("--methods", default="seed,lucid,maco,fast", show_default=True, help="Comma-separated presets.")
@click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="Same steps for every method (default: each method's)."
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@out_option("compare")
@click.option("--resume", is_flag=True)
@output_options
def compare(
    model_name, weights, trust_checkpoint, device, layer, channels, methods, steps, seed, out, resume, quiet, as_json
):
    """The same channels rendered with every preset, side by side in one figure."""
    from .jobs.compare import compare as run_compare
    from .jobs.interrupt import graceful_stop
    from .models.layers import get_layer

    names = [METHOD.convert(m.strip(), None, None) for m in methods.split(",") if m.strip()]
    out = out or default_out("compare")
    model = load(model_name, weights, trust_checkpoint, device)
    info = get_layer(model, layer)
    chans = list(range(info.channels)) if channels is None else channels
    check_writable(out)
    with graceful_stop(quiet) as stop:
        res = run_compare(
            model,
            info.name,
            chans,
            names,
            steps=steps,
            seed=seed,
            out=out,
            resume=resume,
            progress=not quiet,
            should_stop=stop,
        )
    res.raise_if_partial()
    emit(
        as_json,
        quiet,
        json.loads((res.run_dir / "run.json").read_text()),
        [f"wrote {res.run_dir}/{res.figure} ({len(names)} methods × {len(chans)} channels)"],
    )


RANK_OPTION = click.option(
    "--rank",
    type=click.Choice(["contribution", "activation"]),
    default="contribution",
    show_default=True,
    help="Order filters by contribution to the class (gradient × activation) or by mean activation.",
)


@cli.command()
@click.argument("image", required=False)
@model_options
@click.option("--layer", default="default", show_default=True)
@click.option("--channels", type=CHANNELS, default="0-2", show_default=True, help="e.g. 12 or 3,17,42.")
@click.option(
    "--strength",
    type=click.FloatRange(min=0),
    default=None,
    help="Closeness to the photo: the weight of 1 − SSIM to it against the filter's activation divided by its "
    "gradient norm at the photo, so one value holds for every photo and filter; higher stays closer [default: 5].",
)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimisation steps [default: 24].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@out_option("accentuate")
@output_options
def accentuate(
    image, model_name, weights, trust_checkpoint, device, layer, channels, strength, steps, seed, out, quiet, as_json
):
    """Feature accentuation: IMAGE pushed to excite each filter while it stays close to the photo."""
    from .jobs.accentuate import DEFAULT_STEPS, DEFAULT_STRENGTH, accentuate_to_dir
    from .jobs.interrupt import graceful_stop
    from .models.inputs import load_image
    from .models.layers import network_layer

    if image:
        load_image(image)
    out = out or default_out("accentuate")
    model = load(model_name, weights, trust_checkpoint, device)
    info = network_layer(model, layer, "accentuate")
    chans = list(range(info.channels)) if channels is None else channels
    info.check_channels(chans)
    check_writable(out)
    with graceful_stop(quiet) as stop:
        res = accentuate_to_dir(
            model,
            image,
            out,
            layer=info.name,
            channels=chans,
            strength=DEFAULT_STRENGTH if strength is None else strength,
            steps=steps or DEFAULT_STEPS,
            seed=seed,
            progress=not quiet,
            should_stop=stop,
        )
    res.raise_if_partial()
    lines = [f"{model.name} · {info.name} · accentuations of {image or 'the bundled photo'}"]
    lines += [
        f"  filter {a.channel:5d}: photo {a.activation_photo:.3f} → accentuation {a.activation_accent:.3f} "
        f"(gain {a.gain:.2f}×), SSIM {a.ssim:.3f}"
        for a in res.accentuations
    ]
    lines.append(f"wrote {res.run_dir}/{info.name}/accent_*.png, run.json")
    emit(as_json, quiet, json.loads((res.run_dir / "run.json").read_text()), lines)


@cli.command()
@click.argument("image", required=False)
@model_options
@click.option("--layer", default=None, help="Layer [default: blocks.5 when the model has it, else its default layer].")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="Filters to explain.")
@RANK_OPTION
@click.option("--class", "target_class", type=int, default=None, help="Class to explain [default: the prediction].")
@click.option("--images", default=None, help="Folder of natural images for top examples (default: bundled photos).")
@click.option(
    "--strength",
    type=click.FloatRange(min=0),
    default=None,
    help="Accentuation closeness (the weight of 1 − SSIM, as accentuate's) [default: 5].",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@out_option("explain")
@output_options
@cache_options
def explain(
    image,
    model_name,
    weights,
    trust_checkpoint,
    device,
    layer,
    top,
    rank,
    target_class,
    images,
    strength,
    seed,
    out,
    quiet,
    as_json,
):
    """Which filters drive IMAGE's prediction, what each sees in it, and the evidence: report.html."""
    from .jobs.accentuate import DEFAULT_STRENGTH
    from .jobs.attribution import check_class
    from .jobs.boost import check_top
    from .jobs.explain import explain as run_explain
    from .jobs.explain import explain_layer
    from .jobs.interrupt import graceful_stop
    from .models.inputs import list_images, load_image
    from .models.layers import network_layer

    if image:
        load_image(image)
    if images:
        list_images(images)
    out = out or default_out("explain")
    model = load(model_name, weights, trust_checkpoint, device)
    info = network_layer(model, layer or explain_layer(model), "explain")
    check_top(top, info)
    check_class(model, target_class)
    check_writable(out)
    with graceful_stop(quiet) as stop:
        res = run_explain(
            model,
            image,
            layer=info.name,
            top=top,
            rank=rank,
            target_class=target_class,
            images=images,
            strength=DEFAULT_STRENGTH if strength is None else strength,
            seed=seed,
            out=out,
            progress=not quiet,
            should_stop=stop,
        )
    res.raise_if_partial()
    ins = res.inspection
    rec = res.record()
    lines = [
        f"{model.name} · {info.name} · explaining {rec['class_name']} ({ins.target_class}); "
        f"prediction {ins.predictions[0][1]} ({ins.predictions[0][2]:.1%})",
        "zeroing the top 8 filters lowers p by: "
        + ", ".join(f"{k} {v:.3f}" for k, v in rec["ablation"]["top8_drop"].items()),
    ]
    for f in res.filters:
        lines.append(
            f"  filter {f.channel:4d}: contribution {f.contribution:+.3f} · accentuation gain {f.accent.gain:.2f}×, "
            f"SSIM {f.accent.ssim:.3f} · path similarity render {f.path_render:.2f}"
        )
    lines.append(f"wrote {res.run_dir}/report.html, figure_explain.png, run.json ({res.timings['total_s']:.1f} s)")
    emit(as_json, quiet, json.loads((res.run_dir / "run.json").read_text()), lines)


@cli.command()
@click.argument("images")
@model_options
@click.option("--layer", default="default", show_default=True, help="Layer with spatial maps.")
@click.option(
    "--concepts", "n_concepts", type=click.IntRange(min=1), default=10, show_default=True, help="Concepts to learn."
)
@click.option("--class", "target_class", type=int, default=None, help="Class [default: the one predicted most often].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--method",
    type=click.Choice(["auto", "nmf", "semi-nmf"]),
    default="auto",
    show_default=True,
    help="Factorisation: auto = nmf for a non-negative layer, semi-nmf for a signed one.",
)
@click.option(
    "--crops", type=click.IntRange(min=0), default=None, help="Random crops per image [default: 3; one photo: 64]."
)
@click.option("--render-method", type=METHOD, default=None, help="Preset of the concept renders (default: fast).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Render steps (default: the preset's).")
@click.option("--no-render", is_flag=True, help="Skip the renders from noise.")
@click.option("--compare-methods", is_flag=True, help="Also fit the other method on the same vectors (run.json).")
@backend_options(
    "Where the activation pass runs: this process, or Ray Data actors (same files).",
    workers=(2, "Ray actors."),
    threads="CPU threads per Ray actor [default: torch's here].",
)
@out_option("concepts")
@output_options
@cache_options
def concepts(
    images,
    model_name,
    weights,
    trust_checkpoint,
    device,
    layer,
    n_concepts,
    target_class,
    seed,
    method,
    crops,
    render_method,
    steps,
    no_render,
    compare_methods,
    backend,
    address,
    workers,
    threads,
    out,
    quiet,
    as_json,
):
    """Concepts of IMAGES (a folder, or one photo whose random crops are the data) for a class: report.html."""
    from .jobs.concepts import concepts as run_concepts

    if backend == "ray":  # before the model loads
        from .jobs.ray_data import ray_data

        ray_data()
    out = out or default_out("concepts")
    model = load(model_name, weights, trust_checkpoint, device)
    res = run_concepts(
        model,
        images,
        layer=layer,
        n_concepts=n_concepts,
        target_class=target_class,
        seed=seed,
        method=method,
        crops=crops,
        render=not no_render,
        render_method=render_method,
        render_steps=steps,
        compare_methods=compare_methods,
        out=out,
        progress=not quiet,
        backend=backend,
        address=address,
        workers=workers,
        threads=threads,
    )
    res.raise_if_partial()
    rec = res.record()
    lines = [
        f"{model.name} · {res.layer.name} · {len(res.concepts)} concepts ({res.method}) of {res.class_name} "
        f"({res.target_class}) from {rec['data']['images']} images"
        + (f", {rec['data']['skipped_unreadable']} unreadable skipped" if rec["data"]["skipped_unreadable"] else ""),
        f"explained variance {rec['fidelity']['explained_variance']:.3f} · reconstruction keeps top-1 on "
        f"{rec['fidelity']['reconstruction_top1_agreement']:.1%} of the class images "
        f"({rec['fidelity']['reconstruction_top1_agreement_all']:.1%} of all) · "
        f"stability median {rec['stability']['median']:.3f}",
    ]
    if res.warning:
        lines.append(f"warning: {res.warning}")
    for c in res.concepts:
        named = f" · named {c.name['name']} (AUC {c.name['auc']:.2f})" if c.name else ""
        scored = f" · score {c.score:.2f}" if c.score is not None else ""
        lines.append(
            f"  concept {c.concept:2d}: importance {c.importance:+.3f} · ablation drop {c.ablation_drop:.3f} · "
            f"stability {c.stability:.2f}{'' if c.stable else ' (unstable)'} · {c.label}{named}{scored}"
        )
    lines.append(f"wrote {res.run_dir}/report.html, concepts.json, concept_maps.npz ({res.timings['total_s']:.1f} s)")
    emit(as_json, quiet, json.loads((res.run_dir / "run.json").read_text()), lines)


@cli.command()
@model_options
@click.option("--layer", default=None, help="Layer [default: blocks.5 when the model has it, else its default layer].")
@click.option("--channel", type=click.IntRange(min=0), required=True, help="The channel of LAYER to explain.")
@click.option("--from", "from_layer", default=None, help="Earlier layer [default: the layer that feeds LAYER].")
@click.option("--images", default=None, help="Folder of images for attribution (default: the bundled photos).")
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True, help="Inputs shown with renders.")
@click.option("--k", "k", type=click.IntRange(min=1), default=None, help="Inputs zeroed by ablation [default: 8].")
@click.option(
    "--linearize",
    type=click.Choice(["identity", "gated"]),
    default="identity",
    show_default=True,
    help="Activations in the expanded weights: the identity (Voss et al.) or their mean slope on the images.",
)
@click.option("--no-renders", is_flag=True, help="Skip the renders of the inputs (faster).")
@click.option("--method", type=METHOD, default=None, help="Render preset of the inputs [default: fast].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@out_option("circuit")
@output_options
@cache_options
def circuit(
    model_name,
    weights,
    trust_checkpoint,
    device,
    layer,
    channel,
    from_layer,
    images,
    top,
    k,
    linearize,
    no_renders,
    method,
    seed,
    out,
    quiet,
    as_json,
):
    """The channels of an earlier layer that build CHANNEL: expanded weights, attribution, ablation."""
    from .jobs.circuit import run_circuit
    from .models.inputs import list_images

    if images:
        list_images(images)
    out = out or default_out("circuit")
    model = load(model_name, weights, trust_checkpoint, device)
    res = run_circuit(
        model,
        layer,
        channel,
        out=out,
        from_layer=from_layer,
        images=images,
        top=top,
        k=k,
        renders=not no_renders,
        linearize=linearize,
        method=method,
        seed=seed,
        progress=not quiet,
    )
    res.raise_if_partial()
    c = res.data
    ab = c.ablation
    lines = [
        f"{model.name} · {c.layer}:{c.channel} built from {c.source} ({len(c.inputs)} inputs, {c.n_images} images)",
        f"zeroing the top {ab['k']} inputs by |attribution| changes it by {ab['change_top']:.4f} "
        f"vs {ab['change_random']:.4f} for {ab['k']} random ({ab['change_ratio']:.1f}×)",
    ]
    for i in c.shown:
        lines.append(
            f"  {c.source}:{i.channel:<4d} {i.sign:<8} weight {i.weight:+.4f}  attribution {i.attribution:+.4f}"
        )
    lines.append(f"wrote {res.run_dir}/circuit.json, figure_circuit.png, report.html, run.json")
    emit(as_json, quiet, json.loads((res.run_dir / "run.json").read_text()), lines)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--images", default=None, help="Folder of natural images (default: the bundled photos).")
@click.option(
    "--eval-model", default=None, help="Second model for transferability of logit renders, e.g. efficientnet_lite1."
)
@click.option("--device", default="auto", show_default=True)
@click.option("--trust-checkpoint", is_flag=True)
@output_options
def evaluate(run_dir, images, eval_model, device, trust_checkpoint, quiet, as_json):
    """Measure renders: activation vs natural images, robustness to crops, transferability."""
    from .jobs.evaluate import evaluate_run, table
    from .models.inputs import list_images
    from .outputs.rundir import atomic_write, json_bytes

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
    recorded = {k: m.get(k) for k in MODEL_INPUT}  # a user's model comes back with the input it had
    recorded["mean"], recorded["std"] = (tuple(m[k]) if m.get(k) else None for k in ("mean", "std"))
    model = load(m.get("spec") or m["name"], m.get("weights_file"), trust_checkpoint, device, **recorded)
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
@click.option(
    "--layers",
    "layer_names",
    default="default",
    show_default=True,
    help="Comma-separated layers, e.g. blocks.3,blocks.5.",
)
@click.option(
    "--channels", type=CHANNELS, default="all", show_default=True, help="Channels of every layer: all, 0-63, 1,5,9."
)
@render_options
@click.option("--images", default=None, help="Folder of images for dataset examples (default: bundled photos).")
@click.option(
    "--top",
    "n_top",
    type=click.IntRange(min=1, max=50),
    default=6,
    show_default=True,
    help="Dataset examples per channel.",
)
@click.option(
    "--diversity",
    type=click.IntRange(min=0),
    default=0,
    callback=diversity_option,
    help="N ≥ 2 diverse variants per channel.",
)
@backend_options(
    "Where the renders run: worker processes here, or Ray actors.",
    workers=(
        None,
        "Worker processes (local; default: one per core when there are enough channels) or Ray actors (default 2).",
    ),
    threads="CPU threads per render (default: 1 in worker processes, torch's otherwise); the same value gives "
    "identical files on any backend.",
)
@out_option("atlas")
@click.option("--resume", is_flag=True, help="Skip channels already finished in --out.")
@output_options
@cache_options
def atlas(
    model_name,
    weights,
    trust_checkpoint,
    device,
    layer_names,
    channels,
    method,
    steps,
    lr,
    size,
    seed,
    batch,
    param,
    transforms,
    optimizer,
    views,
    precision,
    images,
    n_top,
    diversity,
    backend,
    address,
    workers,
    threads,
    out,
    resume,
    quiet,
    as_json,
):
    """Every channel of the chosen layers, with dataset examples, as a static site (DIR/index.html)."""
    from .jobs.atlas import build_atlas
    from .jobs.interrupt import graceful_stop
    from .models.inputs import list_images
    from .models.layers import network_layer

    t0 = time.perf_counter()
    method, settings = settings_for(
        method, steps, lr, size, batch, device, param, transforms, optimizer, views, precision
    )
    if images:
        list_images(images)
    if backend == "ray":
        from .jobs.ray_backend import _ray

        _ray()
    out = out or default_out("atlas")
    model = load(model_name, weights, trust_checkpoint, device)
    if images and model.in_channels not in (1, 3):
        settings = settings.with_(decorrelation_images=str(images))  # also the colour statistics of the bands
    infos = []
    for name in [n.strip() for n in layer_names.split(",") if n.strip()]:
        info = network_layer(model, name, "atlas")
        if info.name not in [i.name for i in infos]:
            infos.append(info)
    if not infos:
        raise UsageError("--layers is empty")
    chans = {i.name: list(range(i.channels)) if channels is None else channels for i in infos}
    check_writable(out)
    with graceful_stop(quiet) as stop:
        summary = build_atlas(
            model,
            infos,
            chans,
            settings,
            seed,
            out,
            method=method,
            images=images,
            n_top=n_top,
            diversity=diversity,
            batch=batch,
            backend=backend,
            address=address,
            workers=workers,
            threads=threads,
            resume=resume,
            progress=not quiet,
            should_stop=stop,
        )
    summary.raise_if_partial()
    lines = [
        f"atlas of {summary.channels} channels ({summary.rendered} rendered now, {summary.skipped} kept) "
        f"in {time.perf_counter() - t0:.1f} s → {summary.run_dir}/index.html"
    ]
    emit(
        as_json,
        quiet,
        {
            "run_dir": str(summary.run_dir),
            "timings": summary.seconds,
            "channels": summary.channels,
            "rendered": summary.rendered,
        },
        lines,
    )


@cli.command()
@click.argument("atlas_dir", required=False, type=click.Path(file_okay=False))
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Other than loopback: a token is required.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Render worker processes [default: one per core]."
)
@click.option("--static", "static_only", is_flag=True, help="Only serve ATLAS_DIR as static files (no model).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None, help="Render cache folder.")
@click.option("--no-cache", is_flag=True, help="Keep results in a temporary cache removed at exit.")
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Another host name the server answers to (besides 127.0.0.1, localhost, [::1] and --host); repeatable.",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Jobs queued and running at once, all clients together (past it: 429).",
)
@click.option(
    "--images",
    "images_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="A folder of photos to explain and learn concepts from, besides the bundled ones.",
)
def serve(
    atlas_dir,
    model_name,
    weights,
    trust_checkpoint,
    device,
    host,
    port,
    workers,
    static_only,
    cache_dir,
    no_cache,
    allow_hosts,
    max_jobs,
    images_dir,
):
    """The live explorer on http://HOST:PORT/ (with ATLAS_DIR: its pages too, linked both ways)."""
    from .serve.server import run_server, run_static

    if static_only:
        return run_static(atlas_dir, host, port, allow_hosts, echo=click.echo)
    run_server(
        lambda: load(model_name, weights, trust_checkpoint, device),
        atlas_dir=atlas_dir,
        host=host,
        port=port,
        workers=workers,
        cache_dir=cache_dir,
        no_cache=no_cache,
        allow_hosts=allow_hosts,
        max_jobs=max_jobs,
        images_dir=images_dir,
        echo=click.echo,
    )


@cli.group()
def cache() -> None:
    """The render cache shared by render, boost, atlas and serve."""


@cache.command(name="info")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None, help="Cache folder.")
@click.option("--json", "as_json", is_flag=True)
def cache_info(cache_dir, as_json):
    """Where the cache is, its entries and size."""
    from .outputs.cache import RenderCache, default_cache_dir
    from .serve.store import upload_usage

    cache = RenderCache(cache_dir or default_cache_dir())
    info = {**cache.info(), **upload_usage(cache)}
    emit(
        as_json,
        False,
        info,
        [
            f"{info['path']}: {info['entries']} renders, {info['uploads']} uploads, {info['bytes'] / 1e6:.1f} MB",
            f"uploads: {info['upload_bytes'] / 2**20:.1f} MB of the explorer's "
            f"{info['upload_quota_bytes'] / 2**20:.0f} MB quota, each kept {info['upload_max_age_s'] / 86400:.0f} days "
            "(expired and oldest first removed)",
        ],
    )


@cache.command(name="clear")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None, help="Cache folder.")
def cache_clear(cache_dir):
    """Remove every cached render and upload."""
    from .outputs.cache import RenderCache, default_cache_dir

    c = RenderCache(cache_dir or default_cache_dir())
    click.echo(f"removed {c.clear()} files from {c.root}")


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
    except Exception as e:
        if debug:
            raise
        msg = " ".join(str(e).split())[:300]
        print(
            f"error: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
