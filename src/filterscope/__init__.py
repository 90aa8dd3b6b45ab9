"""filterscope: what the filters of a convolutional network have learned.

The Python API mirrors the CLI; data flows one way: model → hooked layer → objective → param/transform →
render loop → outputs.

>>> import filterscope as fs
>>> model = fs.load_model()                      # efficientnet_lite0, offline
>>> ins = fs.inspect(model, fs.load_image(fs.sample_image_path()))
>>> r = fs.render(model, "default", ins.top[0])  # boosted features of the top filter
"""

import importlib
import typing

from .errors import FilterscopeError
from .version import __version__ as __version__

# the public API, imported when first used (``import filterscope`` and the command line start without torch)
_WHERE = {
    "Accentuation": ".jobs.accentuate",
    "accentuate": ".jobs.accentuate",
    "atlas": ".jobs.atlas",
    "boost": ".jobs.boost",
    "ChannelRender": ".jobs.channels",
    "render": ".jobs.channels",
    "render_channels": ".jobs.channels",
    "Circuit": ".jobs.circuit",
    "circuit": ".jobs.circuit",
    "compare": ".jobs.compare",
    "Concepts": ".jobs.concepts",
    "concepts": ".jobs.concepts",
    "evaluate": ".jobs.evaluate",
    "Explanation": ".jobs.explain",
    "explain": ".jobs.explain",
    "Inspection": ".jobs.inspect",
    "inspect": ".jobs.inspect",
    "objective_for": ".jobs.render_objective",
    "render_objective": ".jobs.render_objective",
    "DictionaryResult": ".jobs.layer_dictionary",
    "dictionary": ".jobs.layer_dictionary",
    "activation_map": ".jobs.activation_map",
    "Diff": ".jobs.diff",
    "diff": ".jobs.diff",
    "Tuning": ".jobs.tuning",
    "tuning": ".jobs.tuning",
    "JobResult": ".jobs.contract",
    "run_job": ".jobs.contract",
    "Model": ".models",
    "default_layer": ".models",
    "get_layer": ".models",
    "layer_outline": ".models",
    "list_layers": ".models",
    "load_model": ".models",
    "register_model": ".models",
    "load_image": ".models.inputs",
    "sample_image_path": ".models.inputs",
    "sample_photos_dir": ".models.inputs",
    "Objective": ".optvis.objectives",
    "Target": ".optvis.objectives",
    "register_objective": ".optvis.objectives",
    "register_param": ".optvis.param",
    "PRESETS": ".optvis.presets",
    "get_preset": ".optvis.presets",
    "Renderer": ".optvis.render",
    "RenderSettings": ".optvis.render",
}
_RENAMED = {"parse_objective": (".optvis.objective_text", "parse")}


def __getattr__(name: str) -> typing.Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    elif name in _RENAMED:
        where, attr = _RENAMED[name]
        value = getattr(importlib.import_module(where, __name__), attr)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, *_RENAMED})


if typing.TYPE_CHECKING:  # what type checkers and IDEs see
    from .jobs.accentuate import Accentuation, accentuate
    from .jobs.activation_map import activation_map
    from .jobs.atlas import atlas
    from .jobs.boost import boost
    from .jobs.channels import ChannelRender, render, render_channels
    from .jobs.circuit import Circuit, circuit
    from .jobs.compare import compare
    from .jobs.concepts import Concepts, concepts
    from .jobs.contract import JobResult, run_job
    from .jobs.diff import Diff, diff
    from .jobs.evaluate import evaluate
    from .jobs.explain import Explanation, explain
    from .jobs.inspect import Inspection, inspect
    from .jobs.layer_dictionary import DictionaryResult, dictionary
    from .jobs.render_objective import objective_for, render_objective
    from .jobs.tuning import Tuning, tuning
    from .models import Model, default_layer, get_layer, layer_outline, list_layers, load_model, register_model
    from .models.inputs import load_image, sample_image_path, sample_photos_dir
    from .optvis.objective_text import parse as parse_objective
    from .optvis.objectives import Objective, Target, register_objective
    from .optvis.param import register_param
    from .optvis.presets import PRESETS, get_preset
    from .optvis.render import Renderer, RenderSettings

__all__ = [
    "atlas",
    "activation_map",
    "DictionaryResult",
    "dictionary",
    "Diff",
    "diff",
    "evaluate",
    "JobResult",
    "run_job",
    "Accentuation",
    "Explanation",
    "accentuate",
    "explain",
    "ChannelRender",
    "Circuit",
    "Tuning",
    "circuit",
    "tuning",
    "FilterscopeError",
    "Inspection",
    "Model",
    "Objective",
    "PRESETS",
    "RenderSettings",
    "Renderer",
    "Target",
    "boost",
    "compare",
    "Concepts",
    "concepts",
    "default_layer",
    "get_layer",
    "get_preset",
    "inspect",
    "layer_outline",
    "list_layers",
    "load_image",
    "load_model",
    "objective_for",
    "parse_objective",
    "register_model",
    "register_objective",
    "register_param",
    "render",
    "render_channels",
    "render_objective",
    "sample_image_path",
    "sample_photos_dir",
]
