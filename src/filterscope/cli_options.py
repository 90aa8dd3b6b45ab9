"""The command line's parameter types and shared options: channel lists, registry names, the model options
(and their ``-b`` twins for a second model), the render options, the cache and output options."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click

from .defaults import DEFAULT_MODEL
from .errors import UsageError, closest
from .outputs.naming import RUN_FILE, default_out
from .outputs.rundir import check_writable

# ---------------------------------------------------------------- parameter types


class ChannelList(click.ParamType):
    """``0-63``, ``1,5,9``, ``0-3,10`` or ``all`` → a sorted list of channels (``None`` for all). The
    range against the layer is checked by the job (:meth:`LayerInfo.check_channels`)."""

    name = "channels"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, list):
            return value
        try:
            return parse_channels(value)
        except UsageError as e:
            self.fail(e.message, param, ctx)


MAX_CHANNEL_LIST = 1 << 20  # more channels than any layer has: a longer list is a typo, not a request


def parse_channels(spec: str) -> list[int] | None:
    """``0-63``, ``1,5,9``, ``0-3,10`` → sorted unique channels; ``all`` → ``None``."""
    spec = spec.strip()
    if spec == "all":
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part[1:].partition("-")
        lo = part[0] + lo if part else lo
        try:
            if sep:
                first, last = int(lo), int(hi)
                if last < first:
                    raise UsageError(f"channel range {part!r} is empty (end before start)")
                if last - first >= MAX_CHANNEL_LIST or len(out) >= MAX_CHANNEL_LIST:
                    raise UsageError(f"channel range {part!r} is too long (at most {MAX_CHANNEL_LIST} channels)")
                out += range(first, last + 1)
            else:
                out.append(int(part))
        except ValueError:
            raise UsageError(f"cannot read channels {spec!r}: use e.g. 0-63, 1,5,9 or all") from None
    neg = [c for c in out if c < 0]
    if neg:
        raise UsageError(f"channel {neg[0]} is negative")
    return sorted(set(out))


class PositiveNumber(click.ParamType):
    """A finite number > 0."""

    name = "number"

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"must be a finite number, got {value}", param, ctx)
        if v <= 0:
            self.fail(f"must be positive, got {v:g}", param, ctx)
        return v


class RegistryChoice(click.ParamType):
    """A name from one of filterscope's registries, read when needed (plugins included, no import cost
    at start-up); the help text lists the names."""

    def __init__(
        self,
        what: str,
        names: Callable[[], Iterable[str]],
        known: Iterable[str] | None = None,
        group: str | None = None,
    ):
        self.name = what
        self.names = names
        self.known = None if known is None else list(known)
        self.group = group  # the entry-point group of its plugins, if it has one

    def shown(self, known: Iterable[str] | None) -> RegistryChoice:
        """This choice with ``known`` names (a job spec's built-in ones): the help lists them and the plugins'
        entry points, and the name is checked against those without loading the registry (and torch);
        where the registry is loaded already (names registered in code, in this process), against it."""
        return RegistryChoice(self.name, self.names, known, self.group)

    def _listed(self) -> list[str]:
        """The names without loading the registry: the known ones and the plugins' entry points (what a
        command line process can register before it parses its options)."""
        names = list(self.known or ())
        if self.group is not None:
            from importlib.metadata import entry_points

            names += [ep.name for ep in entry_points(group=self.group) if ep.name not in names]
        return names

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.names() if self.known is None else self._listed()) + "]"

    def convert(self, value, param, ctx):
        names = self._listed() if self.known is not None else []
        if value not in names and (self.known is None or "filterscope.optvis" in sys.modules):
            names = list(self.names())  # the registry itself: loaded already (names registered in code), or asked
        if value not in names:
            hint = closest(value, names)
            self.fail(
                f"unknown {self.name} {value!r}" + (f" ({hint})" if hint else f"; use one of {', '.join(names)}"),
                param,
                ctx,
            )
        return value


def _presets():
    from .optvis.presets import PRESETS

    return PRESETS


def _params():
    from .optvis.param import param_registry

    return param_registry()


def _transforms():
    from .optvis.transform import TRANSFORM_PRESETS

    return TRANSFORM_PRESETS


def _optimizers():
    from .optvis.render import OPTIMIZERS

    return OPTIMIZERS


def _precisions():
    from .optvis.render import PRECISIONS

    return PRECISIONS


CHANNELS = ChannelList()
METHOD = RegistryChoice("method", _presets)


class NameList(click.ParamType):
    """Comma-separated names of one registry, e.g. ``seed,lucid,maco,fast``, each checked as
    :class:`RegistryChoice` checks one."""

    name = "names"

    def __init__(self, choice: RegistryChoice):
        self.choice = choice

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        return [self.choice.convert(v.strip(), param, ctx) for v in str(value).split(",") if v.strip()]


REGISTRIES = {
    "method": METHOD,
    "param": RegistryChoice("param", _params, group="filterscope.params"),
    "transforms": RegistryChoice("transforms", _transforms),
    "optimizer": RegistryChoice("optimizer", _optimizers),
    "precision": RegistryChoice("precision", _precisions),
}


class FloatList(click.ParamType):
    """Comma-separated numbers, e.g. ``0.5`` or ``0.485,0.456,0.406``."""

    name = "numbers"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not out:
            self.fail("give at least one number", param, ctx)
        return out


MODEL_INPUT = ("in_channels", "input_size", "mean", "std")


def model_option_list(suffix: str = "", of: str = "", recorded: bool = False) -> list[click.Option]:
    """The model options (``--model``, ``--weights``, ``--trust-checkpoint``, ``--device`` and the input
    options); ``suffix`` ``-b`` makes the twins of a second model (``--model-b`` …), ``of`` says whose;
    ``recorded``: ``--model`` defaults to the model a run folder records (a job that adds to a run)."""
    s, u = suffix, suffix.replace("-", "_")
    if recorded:
        first: dict[str, Any] = {"default": None}
        whose = "[default: the model the run records] " + of
    else:
        # no default at all for the twin: click 8.3+ counts an explicit default=None as given, so a
        # required --model-b with default=None was never asked for
        first = {"default": DEFAULT_MODEL, "show_default": True} if not s else {"required": True}
        whose = of
    return [
        click.Option(
            [f"--model{s}", f"model_name{u}"],
            **first,
            help=whose + "Registry name, timm:NAME, torchvision:NAME, a bare torchvision/timm name, your code as "
            "path/net.py:Class or package.module:factory (with --weights FILE), or a TorchScript file.",
        ),
        click.Option(
            [f"--weights{s}", f"weights{u}"],
            type=click.Path(dir_okay=False),
            default=None,
            help=of + "Local state dict for the named architecture.",
        ),
        click.Option(
            [f"--trust-checkpoint{s}", f"trust_checkpoint{u}"],
            is_flag=True,
            help=of + "Allow a weights file that needs code to unpickle (runs that code!).",
        ),
        click.Option(
            [f"--device{s}", f"device{u}"],
            default="auto",
            show_default=True,
            help=of + "auto (CUDA, then MPS, then CPU), cpu, cuda or mps.",
        ),
        click.Option(
            [f"--in-channels{s}", f"in_channels{u}"],
            type=click.IntRange(min=1),
            default=None,
            help=of + "Input channels, for a model that does not say (default: its config or first convolution).",
        ),
        click.Option(
            [f"--input-size{s}", f"input_size{u}"],
            type=click.IntRange(min=8),
            default=None,
            help=of + "Input side in pixels, for a model that does not say (default: its config, else 224).",
        ),
        click.Option(
            [f"--mean{s}", f"mean{u}"],
            type=FloatList(),
            default=None,
            help=of + "Input mean per channel (or one for all); default: the model's.",
        ),
        click.Option(
            [f"--std{s}", f"std{u}"],
            type=FloatList(),
            default=None,
            help=of + "Input std per channel (or one for all); default: the model's.",
        ),
    ]


def model_options(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        # the input options go to load() through the click context, so commands keep their signatures
        click.get_current_context().meta["model_input"] = {k: kwargs.pop(k) for k in MODEL_INPUT}
        return command(*args, **kwargs)

    wrapper.__click_params__ = getattr(wrapper, "__click_params__", []) + model_option_list()[::-1]
    return wrapper


def cache_option_list() -> list[click.Option]:
    """``--cache DIR`` / ``--no-cache``: the render cache a command (and its worker processes) use."""
    return [
        click.Option(
            ["--cache", "cache_dir"],
            type=click.Path(file_okay=False),
            default=None,
            help="Render cache folder [default: $FILTERSCOPE_CACHE, $XDG_CACHE_HOME/filterscope or "
            "~/.cache/filterscope].",
        ),
        click.Option(["--no-cache"], is_flag=True, help="Neither reuse nor store renders in the render cache."),
    ]


def output_options(f):
    f = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars or messages.")(f)
    return f


def load(model_name: str, weights: str | None, trust_checkpoint: bool, device: str, **given):
    """Load ``--model`` with the command line's input options (``--in-channels`` …) or the ``given`` ones."""
    from .models import load_model

    ctx = click.get_current_context(silent=True)
    opts = dict((ctx.meta.get("model_input") if ctx else None) or {})
    opts.update({k: v for k, v in given.items() if v is not None})
    opts = {k: v for k, v in opts.items() if v is not None}
    return load_model(model_name, weights=weights, trust_checkpoint=trust_checkpoint, device=device, **opts)


def emit(as_json: bool, quiet: bool, payload: dict, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    elif not quiet:
        for line in lines:
            click.echo(line)


# ---------------------------------------------------------------- a job's command, made from its request


def _kind(hint: Any) -> str:
    """``bool``, ``int``, ``float`` or ``other``: what a field's type says about its option."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    return {bool: "bool", int: "int", float: "float"}.get(base, "other")


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def job_spec(job: Any) -> dict:
    """What the command line needs of a :class:`~filterscope.jobs.contract.Job` before it runs, as JSON: its
    help, flags and request fields (name, kind, default, :func:`~filterscope.jobs.contract.opt` metadata),
    and the built-in names of the registries its options take. :data:`SPEC_FILE` holds every job's, so
    ``filterscope JOB --help`` and a usage error need not import the job (and torch)."""
    hints = typing.get_type_hints(job.request)
    fields = dataclasses.fields(job.request)
    second = [f.name for f in fields if getattr(hints[f.name], "__name__", "") == "Model"]
    if len(second) > 1:
        raise TypeError(f"{job.name}: at most one second model in a request")
    shown = [f for f in fields if f.name not in second and f.metadata.get("cli", True)]
    specs = []
    for f in shown:
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = None if f.default_factory is dataclasses.MISSING else f.default_factory()
        specs.append({"name": f.name, "kind": _kind(hints[f.name]), "default": default, "meta": dict(f.metadata)})
    used = {f["meta"].get("registry") or f["meta"].get("names") for f in specs} - {None}
    return _jsonable(
        {
            "name": job.name,
            "help": job.help,
            "renders": job.renders,
            "resumable": job.resumable,
            "into_run": job.into_run,
            "second": second,
            "fields": specs,
            "registries": {r: list(REGISTRIES[r].names()) for r in sorted(used)},
        }
    )


SPEC_FILE = "cli_spec.json"  # every job's job_spec, beside this module (scripts/cli_spec.py writes it)


@functools.cache
def read_specs() -> dict[str, dict]:
    """The jobs' specs as shipped (:data:`SPEC_FILE`); empty when the file is missing."""
    from importlib.resources import files

    try:
        return json.loads(files("filterscope").joinpath(SPEC_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return {}


def _param_for(fs: dict, registries: dict[str, list[str]]) -> click.Parameter:
    """The click option (or argument) of one field of a job's request (from its :func:`job_spec` entry)."""
    meta, name, kind = fs["meta"], fs["name"], fs["kind"]
    default = meta.get("cli_default", fs["default"])
    if meta.get("argument"):
        required = default is None and not meta.get("optional")
        # a required argument gets no default: click counts even default=None as given
        return click.Argument([name], required=required, **({} if required else {"default": default}))
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    kw: dict[str, Any] = {"help": meta.get("help", ""), "default": default}
    if kind == "bool":
        kw.update(is_flag=True, default=bool(default))
    elif meta.get("channels"):
        kw["type"] = CHANNELS
    elif meta.get("names"):
        kw["type"] = NameList(REGISTRIES[meta["names"]].shown(registries.get(meta["names"])))
        if isinstance(default, list):
            kw["default"] = ",".join(default)
    elif meta.get("registry"):
        kw["type"] = REGISTRIES[meta["registry"]].shown(registries.get(meta["registry"]))
    elif meta.get("positive"):
        kw["type"] = PositiveNumber()
    elif meta.get("choices"):
        kw["type"] = click.Choice(list(meta["choices"]))
    elif kind == "int":
        kw["type"] = click.IntRange(min=meta.get("min"), max=meta.get("max")) if "min" in meta else int
    elif kind == "float":
        kw["type"] = click.FloatRange(min=meta["min"]) if "min" in meta else float
    if meta.get("required"):
        kw["required"] = True  # the API's default is not the command line's; no default at all (click 8.3+)
        del kw["default"]
    elif default is not None and kind != "bool":
        kw["show_default"] = True
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    return click.Option([flag, name], **kw)


def job_command(job: Any) -> click.Command:
    """The command of a :class:`~filterscope.jobs.contract.Job` (see :func:`spec_command`)."""
    return spec_command(job_spec(job), lambda: job)


def spec_command(spec: dict, load_job: Callable[[], Any]) -> click.Command:
    """The command of a job from its :func:`job_spec`: its request's fields as options, the model options
    (``-b`` twins for a field typed ``Model``), ``--out``, ``--resume`` when it resumes, ``--quiet``,
    ``--json`` and the render cache's options when it renders. Only when it runs is the job loaded
    (``load_job()``): it runs with :func:`~filterscope.jobs.contract.run_job` and prints the job's summary
    (or the record with ``--json``)."""
    name, second, into_run = spec["name"], spec["second"], spec["into_run"]
    shown = spec["fields"]
    loaded = [f["name"] for f in shown if f["meta"].get("load")]
    api_default = [f["name"] for f in shown if "cli_default" not in f["meta"]]
    params: list[click.Parameter] = [_param_for(f, spec["registries"]) for f in shown]
    params += model_option_list(recorded=into_run is not None)
    if second:
        params += model_option_list("-b", of="The second model: ")
    if into_run is None:
        params.append(click.Option(["--out"], default=None, help=f"Output directory [default: {default_out(name)}]."))
    if spec["resumable"]:
        params.append(click.Option(["--resume"], is_flag=True, help="Finish an interrupted run in --out."))
    params += [
        click.Option(["--quiet", "-q"], is_flag=True, help="No progress bars or messages."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print a machine-readable summary on stdout."),
    ]
    if spec["renders"]:
        params += cache_option_list()

    def callback(**kw: Any) -> None:
        from click.core import ParameterSource

        from .jobs.contract import read_run, recorded_model, run_job

        job = load_job()
        ctx = click.get_current_context()
        for n in api_default:  # an option left out takes the request's own default (as the Python API does)
            if ctx.get_parameter_source(n) in (ParameterSource.DEFAULT, None):
                kw.pop(n, None)
        out, quiet, as_json, resume = kw.pop("out", None), kw.pop("quiet"), kw.pop("as_json"), kw.pop("resume", False)
        if job.renders:
            _configure_cache(kw.pop("cache_dir"), kw.pop("no_cache"))
        models = {s: {k: kw.pop(k + s) for k in MODEL_KEYS} for s in ("", "_b")[: 1 + bool(second)]}
        request = job.make_request(**kw)
        if job.into_run is not None:
            read_run(getattr(request, job.into_run), job.name)  # a wrong folder, before a model is loaded
        if job.precheck is not None:
            job.precheck(request)  # a wrong folder is refused before a model is loaded
        main = models[""]
        if job.into_run is not None and main["model_name"] is None:  # the model the run was made with
            given = {k: main[k] for k in ("weights", *MODEL_INPUT)}
            folder = getattr(request, job.into_run)
            model = recorded_model(folder, device=main["device"], trust_checkpoint=main["trust_checkpoint"], **given)
        else:
            model = _load_model(main)
        named = {n: getattr(request, n) for n in loaded if isinstance(getattr(request, n), str)}
        if named:  # a model named by an option: loaded like --model, with its --device and --trust-checkpoint
            like = {**dict.fromkeys(MODEL_KEYS), "device": main["device"], "trust_checkpoint": main["trust_checkpoint"]}
            named = {n: _load_model({**like, "model_name": v}) for n, v in named.items()}
            request = dataclasses.replace(request, **named)
        if second:
            request = dataclasses.replace(request, **{second[0]: _load_model(models["_b"])})
        res = run_job(job, model, request, out=out, resume=resume, progress=not quiet)
        res.raise_if_partial()
        if job.json is not None:
            record = json.loads(json.dumps(job.json(res), default=str))
        elif job.into_run is not None:
            record = res.record
        else:
            record = json.loads((res.run_dir / RUN_FILE).read_text())  # as written, numbers as JSON numbers
        emit(as_json, quiet, record, job.summary(res) if job.summary else [])

    help_text = spec["help"]
    return click.Command(name, params=params, callback=callback, help=help_text, short_help=help_text.split("\n")[0])


MODEL_KEYS = ("model_name", "weights", "trust_checkpoint", "device", *MODEL_INPUT)


def _load_model(opts: dict) -> Any:
    from .models import load_model

    given = {k: v for k, v in opts.items() if k in MODEL_INPUT and v is not None}
    return load_model(
        opts["model_name"],
        weights=opts["weights"],
        trust_checkpoint=opts["trust_checkpoint"],
        device=opts["device"],
        **given,
    )


def _configure_cache(cache_dir: str | None, no_cache: bool) -> None:
    from .outputs.cache import configure

    if cache_dir is not None:
        check_writable(cache_dir, keep=True)
    if cache_dir is not None or no_cache:  # otherwise the environment decides (default: on)
        configure(cache_dir, enabled=not no_cache)
