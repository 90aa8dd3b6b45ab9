"""The render cache shared by every command: a render is computed once per model, layer, target, settings
and seed, and reused by ``render``, ``boost``, ``atlas`` and ``serve``.

An entry is two files under ``<root>/renders/<key[:2]>/``: ``<key>.png`` (the PNG bytes exactly as
rendered, so a reused channel's file is byte-identical to a fresh render at the same thread count) and
``<key>.json`` (every setting that made the key plus the render's results and the PNG's sha256). Both are
written atomically (:func:`~filterscope.outputs.rundir.atomic_write`), the PNG first: the JSON is the commit
record, and an entry whose PNG does not match its record's hash is treated as missing and rewritten. Two
processes that write the same key write the same bytes; ``os.replace`` makes the last one win whole.

Where: ``--cache DIR`` / ``FILTERSCOPE_CACHE``, else ``$XDG_CACHE_HOME/filterscope``, else
``~/.cache/filterscope``; ``--no-cache`` / ``FILTERSCOPE_NO_CACHE=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rundir import atomic_write, json_bytes

ENV_DIR = "FILTERSCOPE_CACHE"
ENV_OFF = "FILTERSCOPE_NO_CACHE"
KEY_VERSION = 1  # bump when what a key means changes


def default_cache_dir() -> Path:
    """``$FILTERSCOPE_CACHE``, else ``$XDG_CACHE_HOME/filterscope``, else ``~/.cache/filterscope``."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "filterscope"


def configure(path: str | os.PathLike | None = None, *, enabled: bool = True) -> None:
    """Choose the cache for this process and the worker processes it starts (through the environment)."""
    if path is not None:
        os.environ[ENV_DIR] = str(Path(path).expanduser().resolve())
    if enabled:
        os.environ.pop(ENV_OFF, None)
    else:
        os.environ[ENV_OFF] = "1"


def active_cache() -> RenderCache | None:
    """The cache the environment chose, or ``None`` when it is turned off."""
    if os.environ.get(ENV_OFF, "") not in ("", "0"):
        return None
    return RenderCache(default_cache_dir())


def weights_hash(model) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes, bytes); computed once and kept on the model."""
    cached = getattr(model, "_weights_sha256", None)
    if cached:
        return cached
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.net.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    model._weights_sha256 = h.hexdigest()
    return model._weights_sha256


def model_key(model) -> dict[str, Any]:
    """What of a model decides its renders: its weights and how an image becomes its input."""
    arch = hashlib.sha256(repr(model.net).encode()).hexdigest()  # the modules and their hyperparameters
    return {
        "weights_sha256": weights_hash(model),
        "architecture_sha256": arch,
        "name": model.name,
        "mean": list(model.mean),
        "std": list(model.std),
        "input_size": model.input_size,
        "in_channels": model.in_channels,
    }


def key_fields(model, layer: str, target: str, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """The fields a cache key is made of (``settings``: ``RenderSettings.for_model(model).as_dict()``)."""
    return {
        "v": KEY_VERSION,
        "model": model_key(model),
        "layer": layer,
        "target": target,
        "settings": json.loads(json_bytes(settings)),
        "seed": int(seed),
    }


def render_key(model, objective, settings, seed: int, *, layer: str | None = None, **extra: Any) -> tuple[str, dict]:
    """The cache key of any render, and the fields it is made of: the model (weights, architecture, input),
    the objective's full description (:attr:`~filterscope.optvis.objectives.Objective.key`: every term and
    argument, penalties included), the settings (a ``RenderSettings``, resolved for the model, or its
    ``as_dict()``), the seed, and ``extra`` fields (e.g. ``diversity``, ``variant``). The one function that
    jobs, the explorer and the atlas import use."""
    if layer is None:
        layer = objective.target.layer if objective.target is not None else ",".join(sorted(objective.layers))
    if not isinstance(settings, dict):
        settings = settings.for_model(model).as_dict()
    fields = {**key_fields(model, layer, objective.key, settings, seed), **extra}
    return make_key(fields), fields


def make_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``fields``."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_verified(data_path: Path, record_path: Path, data: bytes, record: dict, field: str) -> dict:
    """Write ``data``, then ``record`` with the data's sha256 under ``field``, each atomically, so a reader
    never takes a record for data that is missing or from another write. Returns the record written."""
    record = {**record, field: hashlib.sha256(data).hexdigest()}
    atomic_write(data_path, data)
    atomic_write(record_path, json_bytes(record))
    return record


def read_verified(data_path: Path, record_path: Path, field: str) -> tuple[dict, bytes] | None:
    """``(record, data)`` written by :func:`write_verified`, or ``None`` when either is missing, unreadable
    or the data's sha256 is not the record's ``field``."""
    try:
        record = json.loads(record_path.read_bytes())
        data = data_path.read_bytes()
    except (OSError, ValueError):
        return None
    return (record, data) if record.get(field) == hashlib.sha256(data).hexdigest() else None


@dataclass
class CacheEntry:
    key: str
    png: bytes
    record: dict[str, Any]


class RenderCache:
    """A folder of rendered PNGs and their records, keyed by :func:`make_key`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        if len(key) != 64 or any(ch not in "0123456789abcdef" for ch in key):
            raise ValueError(f"not a cache key: {key!r}")
        d = self.root / "renders" / key[:2]
        return d / f"{key}.png", d / f"{key}.json"

    def get(self, key: str) -> CacheEntry | None:
        """The entry, or ``None`` when it is missing or incomplete (a PNG without a matching record)."""
        got = read_verified(*self._paths(key), "png_sha256")
        return None if got is None else CacheEntry(key, got[1], got[0])

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def put(self, key: str, png: bytes, record: dict[str, Any]) -> CacheEntry:
        """Store ``png`` and its ``record`` (the key's fields and the results), PNG first, each atomically."""
        record = write_verified(*self._paths(key), png, {**record, "key": key}, "png_sha256")
        return CacheEntry(key, png, record)

    def files(self, kind: str = "renders") -> list[Path]:
        base = self.root / kind
        return sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []

    def info(self) -> dict[str, Any]:
        """Where the cache is, how many complete entries it holds and how many bytes it uses."""
        files = self.files()
        entries = sum(1 for p in files if p.suffix == ".json" and self.get(p.stem) is not None)
        total = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0
        uploads = len(self.files("uploads"))
        return {"path": str(self.root), "entries": entries, "files": len(files), "uploads": uploads, "bytes": total}

    def clear(self) -> int:
        """Remove every entry (renders, uploads, explanations); returns the number of files removed."""
        n = 0
        for kind in ("renders", "uploads", "results"):
            base = self.root / kind
            if base.is_dir():
                n += sum(1 for p in base.rglob("*") if p.is_file())
                shutil.rmtree(base)
        return n
