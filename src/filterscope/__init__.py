"""filterscope: what the filters of a convolutional network have learned.

The Python API mirrors the CLI; data flows one way: model → hooked layer → objective → param/transform →
render loop → outputs.

>>> import filterscope as fs
>>> model = fs.load_model()                      # efficientnet_lite0, offline
>>> ins = fs.inspect(model, fs.load_image(fs.sample_image_path()))
>>> r = fs.render(model, "default", ins.top[0])  # boosted features of the top filter
"""

from .errors import FilterscopeError
from .jobs.accentuate import Accentuation, accentuate
from .jobs.atlas import build_atlas
from .jobs.boost import boost
from .jobs.channels import ChannelRender, render, render_channels
from .jobs.circuit import Circuit, circuit
from .jobs.compare import compare
from .jobs.concepts import Concepts, concepts
from .jobs.explain import Explanation, explain
from .jobs.inspect import Inspection, inspect
from .jobs.render_objective import objective_for, render_objective
from .jobs.tuning import Tuning, tuning
from .models import Model, default_layer, get_layer, layer_outline, list_layers, load_model, register_model
from .models.inputs import load_image, sample_image_path, sample_photos_dir
from .optvis.objective_text import parse as parse_objective
from .optvis.objectives import Objective, Target, register_objective
from .optvis.param import register_param
from .optvis.presets import PRESETS, get_preset
from .optvis.render import Renderer, RenderSettings
from .version import __version__ as __version__

__all__ = [
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
    "build_atlas",
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
