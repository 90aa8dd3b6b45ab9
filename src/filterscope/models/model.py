"""The :class:`Model`: a network in eval mode with frozen weights plus what turns an image into its input.

Images are handled in [0, 1] everywhere; normalisation happens inside :meth:`Model.forward`, so renders
can be optimised in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ModelError


@dataclass(eq=False)
class Model:
    """A classifier ready for inspection and rendering."""

    net: nn.Module
    name: str
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    input_size: int = 224
    resize_size: int = 256
    in_channels: int = 3  # channels of an input image: 1 (grayscale), 3 (RGB), 4 or more (bands)
    weights: str = "unknown"
    categories: list[str] | None = None
    spec: str | None = None  # what the user named: registry/torchvision/timm name or TorchScript path
    weights_file: str | None = None  # a user-supplied state dict, if any
    layer_cache: Any = field(default=None, repr=False)

    normalization: str = "given"  # where mean/std came from: given, the model's config, or assumed
    code: str | None = None  # ``file.py:Class`` / ``pkg.mod:factory`` that built a user's architecture
    # a job's layer for this model when the user names none, as data (like timm's pretrained_cfg), e.g.
    # {"explain": "blocks.5"}; jobs without an entry use the default layer (see models/layers.py)
    preferred_layers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)  # gradients are only ever needed for the input image
        self.set_normalization(self.mean, self.std)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set mean/std: one value per input channel, or one value for all of them."""
        c = self.in_channels
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        for what, v in (("mean", mean), ("std", std)):
            if len(v) not in (1, c):
                raise ModelError(f"{self.name} takes {c} input channels, but {what} has {len(v)} values: give 1 or {c}")
        if any(s <= 0 for s in std):
            raise ModelError(f"std must be positive, got {list(std)}")
        self.mean = mean * c if len(mean) == 1 and c > 1 else mean
        self.std = std * c if len(std) == 1 and c > 1 else std
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale, self._shift = 1.0 / s, -m / s  # normalise in one multiply-add

    @property
    def device(self) -> torch.device:
        for t in self.net.parameters():
            return t.device
        for t in self.net.buffers():
            return t.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Model:
        self.net.to(device)
        try:  # NHWC weights: measured 1.1-1.8x faster forward+backward on CPU for EfficientNet-Lite
            self.net.to(memory_format=torch.channels_last)
        except (RuntimeError, TypeError):
            pass
        self._scale, self._shift = self._scale.to(device), self._shift.to(device)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``, as one multiply-add."""
        return torch.addcmul(self._shift.to(x.device), x, self._scale.to(x.device))

    @property
    def num_classes(self) -> int | None:
        """How many classes the network's output has: the length of :attr:`categories` when the model names
        them, else the width of its logits on one blank input (measured once, then kept); ``None`` when the
        output is not a ``[batch, classes]`` tensor. Every class and ``logit`` channel check reads it, so a
        10-class model refuses class 10 before any work, whatever the model's origin."""
        if self.categories:
            return len(self.categories)
        if not hasattr(self, "_num_classes"):
            x = torch.zeros(1, self.in_channels, self.input_size, self.input_size, device=self.device)
            try:
                with torch.no_grad():
                    out = self.forward(x)
                n = int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None
            except Exception:  # a network that cannot run a blank input leaves the check to the job
                n = None
            self._num_classes = n
        return self._num_classes

    def preferred_layer(self, job: str) -> str:
        """The layer ``job`` uses for this model when none is named: its entry in :attr:`preferred_layers`
        if the network has that module, else ``default``."""
        name = self.preferred_layers.get(job)
        return name if name and name in dict(self.net.named_modules()) else "default"

    def preprocess(self, im) -> torch.Tensor:
        """A PIL image as this model's input ``[1, C, S, S]`` in [0, 1]: channel conversion, resize of the
        shorter side, centre crop (normalisation happens in :meth:`forward`)."""
        from .inputs import model_input

        return model_input(self, im)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images in [0, 1]."""
        return self.net(self.normalize(x))

    __call__ = forward

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec or self.name,
            "weights": self.weights,
            "weights_file": self.weights_file,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "in_channels": self.in_channels,
            "normalization": self.normalization,
            **({"code": self.code} if self.code else {}),
        }


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names (shipped inside torchvision, no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


EXPLAIN_LAYER = "blocks.5"  # EfficientNet's stage of 112-channel part detectors at 14×14 (jobs/explain.py)


def preferred_layers(net: nn.Module) -> dict[str, str]:
    """The per-job layers of a network, read from its modules: ``explain`` at ``blocks.5`` where it has one."""
    return {"explain": EXPLAIN_LAYER} if EXPLAIN_LAYER in dict(net.named_modules()) else {}


def infer_in_channels(net: nn.Module) -> int:
    """Input channels of a network: timm's ``pretrained_cfg``/``in_chans``, else its first convolution, else 3."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if getattr(net, "in_chans", None):
        return int(net.in_chans)
    if cfg.get("input_size"):
        return int(cfg["input_size"][0])
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(m.in_channels)
    return 3


def wrap_module(
    net: nn.Module,
    name: str,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: int | None = None,
    in_channels: int | None = None,
    categories: list[str] | None = None,
    weights: str = "user module",
) -> Model:
    """A user's module as a :class:`Model`. What is not given is read from the model where it can be
    (timm's ``pretrained_cfg`` via ``resolve_data_config``, the first convolution's ``in_channels``); else
    ImageNet's mean/std for 3 channels and no normalisation (mean 0, std 1) for other counts, at 224 px."""
    found = infer_in_channels(net)
    c = int(in_channels or found)
    if c < 1:
        raise ModelError(f"in_channels must be at least 1, got {c}")
    if in_channels and found != c and any(isinstance(m, nn.Conv2d) for m in net.modules()):
        raise ModelError(f"{name} takes {found} input channels (its first convolution), not {c}")
    cfg_mean = cfg_std = cfg_size = None
    crop = 0.875
    if getattr(net, "pretrained_cfg", None):
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=net)
        cfg_mean, cfg_std, cfg_size = cfg["mean"], cfg["std"], int(cfg["input_size"][-1])
        crop = float(cfg.get("crop_pct", 0.875))
    if mean is not None and std is not None:
        how = "given"
    elif cfg_mean is not None:
        how = "model config"
    else:
        how = "assumed"
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ((0.0,), (1.0,))
    size = int(input_size or cfg_size or 224)
    return Model(
        net,
        name,
        preferred_layers=preferred_layers(net),
        mean=tuple(mean if mean is not None else cfg_mean or default_mean),
        std=tuple(std if std is not None else cfg_std or default_std),
        input_size=size,
        resize_size=round(size / crop),
        in_channels=c,
        weights=weights,
        categories=categories,
        normalization=how,
    )
