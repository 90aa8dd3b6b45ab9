"""The ``filterscope`` command line: a thin layer over the Python API.

Errors are one line ``error: …`` on stderr with exit code 2 (usage) or 1 (runtime); ``--debug`` anywhere on
the command line shows the traceback instead. An interrupted run exits with 130 after keeping its work.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import click

from .cli_options import (
    MODEL_KEYS,
    _load_model,
    emit,
    load,
    model_option_list,
    model_options,
    parse_channels,
)
from .errors import FilterscopeError, UsageError

__all__ = ["cli", "main", "parse_channels"]


# ---------------------------------------------------------------- commands


JOBS: dict[str, tuple[str, str]] = {
    # name: (module holding its JOB, the line `filterscope --help` lists) — the jobs on the one job shape
    "accentuate": ("filterscope.jobs.accentuate", "Feature accentuation: IMAGE pushed to excite each filter."),
    "circuit": (
        "filterscope.jobs.circuit",
        "The channels of an earlier layer that build CHANNEL, by measured effect, checked by ablation.",
    ),
    "atlas": (
        "filterscope.jobs.atlas",
        "Every channel of the chosen layers, with dataset examples, as a static site (DIR/index.html).",
    ),
    "boost": ("filterscope.jobs.boost", "The main job: IMAGE's top filters at LAYER and their boosted features."),
    "concepts": (
        "filterscope.jobs.concepts",
        "Concepts of IMAGES (a folder, or one photo whose random crops are the data) for a class: report.html.",
    ),
    "compare": ("filterscope.jobs.compare", "The same channels rendered with every preset, side by side."),
    "dictionary": ("filterscope.jobs.layer_dictionary", "A layer read as a dictionary: SAE features of IMAGES."),
    "evaluate": (
        "filterscope.jobs.evaluate",
        "Measure renders: activation vs natural images, robustness to crops, transferability.",
    ),
    "explain": ("filterscope.jobs.explain", "Which filters drive IMAGE's prediction, and the evidence."),
    "inspect": ("filterscope.jobs.inspect", "Which filters of LAYER an IMAGE excites most, and where."),
    "render": ("filterscope.jobs.channels", "Render channels of a layer: one PNG per channel, a grid, and run.json."),
    "map": (
        "filterscope.jobs.activation_map",
        "The map of a LAYER: an activation atlas, every cell rendered and named.",
    ),
    "tuning": (
        "filterscope.jobs.tuning",
        "What CHANNELS answer to synthetic stimuli: gratings, colour fields, curves.",
    ),
    "diff": ("filterscope.jobs.diff", "The diff of two models on IMAGES: matched, new and lost units; what moved."),
}


class JobGroup(click.Group):
    """The command group: its own commands, and the jobs of :data:`JOBS`, made from their shipped specs
    (``cli_spec.json``, :func:`~filterscope.cli_options.job_spec`), so ``filterscope --help``, a job's
    ``--help`` and a usage error do not load torch: a job's module is imported only when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *JOBS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in JOBS and name not in self.commands:
            import importlib

            from .cli_options import job_command, read_specs, spec_command

            spec = read_specs().get(name)
            module = JOBS[name][0]
            if spec is not None:  # the shipped spec: the job's module (and torch) loads only when it runs
                self.add_command(spec_command(spec, lambda: importlib.import_module(module).JOB), name)
            else:
                self.add_command(job_command(importlib.import_module(module).JOB), name)
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


def _second_model_options(command):
    """``--model-b`` and its twins (``cli_options.model_option_list("-b")``), optional: serve's second model."""
    params = model_option_list("-b", of="The second model, for the diff pages: ")
    params[0].required = False
    command.__click_params__ = getattr(command, "__click_params__", []) + params[::-1]
    return command


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
@_second_model_options
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
    **second,
):
    """The live explorer on http://HOST:PORT/ (with ATLAS_DIR: its pages too, linked both ways; with --model-b:
    a diff page per layer, what changed from the first model to the second)."""
    from .serve.server import run_server, run_static

    b = {k: second[k + "_b"] for k in MODEL_KEYS}
    given_b = [k for k, v in b.items() if k != "model_name" and v not in (None, False, "auto")]
    if b["model_name"] is None and given_b:
        raise UsageError(f"--{given_b[0].replace('_', '-')}-b needs --model-b")

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
        load_model_b=(lambda: _load_model(b)) if b["model_name"] is not None else None,
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
