"""Models: the :class:`Model` wrapper, the registry and its loaders, weights files, and the layers of a model."""

from . import digits, loaders  # noqa: F401  (registers the built-in loaders and sources)
from .layers import LayerEntry, LayerInfo, default_layer, get_layer, layer_outline, list_layers
from .model import Model
from .registry import DEFAULT_MODEL, MODEL_REGISTRY, available_models, load_model, register_model, resolve_device

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_REGISTRY",
    "LayerEntry",
    "LayerInfo",
    "Model",
    "available_models",
    "default_layer",
    "get_layer",
    "layer_outline",
    "list_layers",
    "load_model",
    "register_model",
    "resolve_device",
]
