"""A layer's activation vectors with their provenance — the pass the layer-wide jobs (dictionary, map) share.

- :func:`layer_vectors`: every position of every image of a folder and of ``crops`` random crops of each
  (CRAFT-style, as ``concepts``) streamed through the model, on this process or on Ray Data; a uniform
  reservoir of at most ``max_vectors`` ``C``-vectors is kept (memory is bounded by the cap, not by the
  folder), each with where it came from: its image (index into ``files``), view (0 the whole image, ``j``
  its crop ``j``) and position ``(y, x)`` in the layer's map. It is the concepts pass
  (:func:`~.concepts.activation_batch` into an :class:`~.concepts.ActivationTally`) with provenance kept,
  so both backends give the same vectors for the same seed.
- :func:`stream_maps`: the layer's maps and the logits of the whole images, batch by batch, for what needs
  every position of every image (exemplars, heatmaps, held-out scores) without holding them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ImageError
from ..models.hooks import run
from ..models.layers import LayerInfo, capture_layers
from ..models.model import Model

PASS = "activation pass"  # the pass's bar: what a job's progress (and the explorer's page) reads while it runs


@dataclass
class LayerVectors:
    """The sampled vectors of one layer and where each came from."""

    vectors: np.ndarray  # [n, C] float32
    image: np.ndarray  # [n] int32: index into files
    view: np.ndarray  # [n] int32: 0 the whole image, j its random crop j
    y: np.ndarray  # [n] int32: row in the layer's map
    x: np.ndarray  # [n] int32: column in the layer's map
    files: list[Path]
    map_size: tuple[int, int]  # (h, w) of the layer's map
    predictions: dict[int, int]  # file index → top-1 class of the whole image
    seen: int  # vectors streamed through the reservoir
    skipped: int  # unreadable files
    used: int  # readable images

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def _source(files: Sequence[Path], root: Path | None):
    from .concepts import _readable, _Source

    files = [Path(f) for f in files]
    if not files:
        raise ImageError("no image files given")
    if root is None:
        import os

        root = Path(os.path.commonpath([str(f.parent) for f in files]))
    n = sum(_readable(f) for f in files)
    if n == 0:
        raise ImageError(f"none of the {len(files)} image files can be read")
    return _Source("folder", Path(root), files, n)


def ray_settings(model: Model, address: str | None, workers: int | None, threads: int | None = None) -> dict:
    """The Ray settings (recorded in run.json) for ``backend="ray"``; refuses a missing Ray Data, bad
    numbers or a model that cannot be shipped, in one line, before anything starts."""
    from .concepts import _check_backend

    return _check_backend(model, "ray", address, workers, threads)


def layer_vectors(
    model: Model,
    info: LayerInfo,
    files: Sequence[Path],
    *,
    crops: int,
    max_vectors: int,
    seed: int,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    root: Path | None = None,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
    bars: Callable | None = None,
) -> LayerVectors:
    """Stream ``files`` and ``crops`` random crops of each (seeded per image by ``seed``) through ``model``
    and keep a uniform sample of at most ``max_vectors`` of ``info``'s position vectors with their
    provenance. ``backend="ray"`` runs the batches on Ray Data actors (``workers`` of them, or the cluster at
    ``address``); the result equals the local pass's. Stops early (keeping what arrived) when ``stop()``.
    ``bars``: a job's ``ctx.progress``: the pass's bar (:data:`PASS`, one step a batch) is then one of the
    job's, reported to its ``on_progress`` (the explorer's job status) like its other bars."""
    from .concepts import ActivationTally, _check_backend, _collect, activation_batch, activation_units

    src = _source(files, root)
    stop = stop if stop is not None else (lambda: False)
    tally = ActivationTally(max_vectors, info.channels, seed, provenance=True)
    if backend == "ray":
        from .ray_data import collect_ray

        settings = _check_backend(model, "ray", address, workers, threads)
        collect_ray(
            model, info, src, crops, seed, tally, activation_units(src, crops), activation_batch, settings,
            progress, stop, bars=bars, desc=PASS,
        )  # fmt: skip
    elif backend == "local":
        _collect(model, info, src, crops, seed, max_vectors, progress, stop, tally, bars=bars, desc=PASS)
    else:
        from ..errors import UsageError

        raise UsageError(f"unknown backend {backend!r}: choose local or ray")
    prov = tally.sample.provenance
    _, h, w = info.shape
    return LayerVectors(
        vectors=tally.sample.data,
        image=prov[:, 0].copy(),
        view=prov[:, 1].copy(),
        y=prov[:, 2].copy(),
        x=prov[:, 3].copy(),
        files=list(src.files),
        map_size=(int(h), int(w)),
        predictions=dict(tally.predictions),
        seen=int(tally.sample.seen),
        skipped=int(tally.skipped),
        used=int(tally.used),
    )


def stream_maps(
    model: Model,
    info: LayerInfo,
    files: Sequence[Path],
    batch: int = 8,
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """The whole images of ``files`` through ``model``, ``batch`` at a time: yields ``(index, maps, logits)``
    with ``index`` the file indices of the batch's readable images (int64 ``[b]``; unreadable files are left
    out), ``maps`` the layer's ``[b, C, h, w]`` float32 (CPU) and ``logits`` ``[b, classes]`` float32 (CPU).
    Stops after the current batch when ``stop()``."""
    from torch.utils.data import DataLoader

    from .dataset import ImageFolder

    stop = stop if stop is not None else (lambda: False)
    loader = DataLoader(ImageFolder(list(files), model), batch_size=batch, shuffle=False)
    with capture_layers(model, [info]) as cap, torch.inference_mode():
        for x, index, ok in loader:
            if not ok.any():
                continue
            logits = run(model.forward, x[ok].to(model.device), cap)
            maps = cap.acts[info.name].float().cpu()
            yield index[ok].numpy(), maps, logits.float().cpu()
            if stop():
                return
