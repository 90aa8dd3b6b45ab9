"""Reading weights files safely and loading them into an architecture (by name or by position)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError


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
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {first_line(e)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {first_line(e)}") from None
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


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _mismatch_message(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> str:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
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
        raise CheckpointError(f"weights in {source} have {len(theirs)} tensors, the architecture has {len(own_items)}")
    mapped = {}
    for (k, v), (k2, v2) in zip(own_items, theirs):
        if v.shape != v2.shape:
            raise CheckpointError(
                f"weights in {source} do not fit this architecture: tensor {k2} has shape "
                f"{tuple(v2.shape)}, {k} needs {tuple(v.shape)}"
            )
        mapped[k] = v2
    net.load_state_dict(mapped)
