"""filterscope: what the filters of a convolutional network have learned.

The Python API mirrors the CLI; data flows one way: model → hooked layer → objective → param/transform →
render loop → outputs.

>>> import filterscope as fs
>>> model = fs.load_model()                      # efficientnet_lite0, offline
>>> ins = fs.inspect(model, fs.load_image(fs.sample_image_path()))
>>> r = fs.render(model, "default", ins.top[0])  # boosted features of the top filter
"""

__version__ = "0.1.0"

from .activations import Inspection, inspect
from .errors import FilterscopeError
from .images import load_image, sample_image_path, sample_photos_dir
from .layers import default_layer, get_layer, list_layers
from .models import Model, load_model, register_model
from .objectives import Objective, parse as parse_objective, register_objective
from .param import register_param
from .pipeline import boost
from .presets import PRESETS, get_preset
from .renderer import Renderer, RenderSettings, render

__all__ = [
    "FilterscopeError", "Inspection", "Model", "Objective", "PRESETS", "RenderSettings", "Renderer", "boost",
    "default_layer", "get_layer", "get_preset", "inspect", "list_layers", "load_image", "load_model",
    "parse_objective", "register_model", "register_objective", "register_param", "render",
    "sample_image_path", "sample_photos_dir",
]
