"""The channel stream: channels rendered in batches, each yielded as soon as its batch finishes, through the
render cache.

Channels are rendered in batches (``batch`` images at a time; on a CPU one image per step is as fast as
any batch, on a GPU the batch is sized from free memory). Each image has its own seed
(:func:`~filterscope.optvis.render.channel_seed`), so a channel's picture does not depend on its batch.
Channels found in the render cache are not rendered again (:func:`~filterscope.outputs.cache.render_key`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..models.layers import LOGIT, LayerInfo
from ..models.model import Model
from ..optvis.objectives import Objective, channel, logit
from ..optvis.render import Renderer, RenderResult, RenderSettings, channel_seed
from ..outputs.cache import CacheEntry, RenderCache, active_cache, render_key
from ..outputs.images import band_grid, png_bytes

MAX_BATCH = 64


@dataclass
class ChannelResult:
    layer: str
    channel: int
    image: torch.Tensor  # [3, H, W] in [0, 1]
    before: float
    after: float
    curve: list[float]
    status: str
    seconds: float  # this channel's share of its batch's time
    png: bytes | None = None  # the PNG as written (from the render cache when ``cached``)
    cached: bool = False

    def bands_png(self) -> bytes | None:
        """For a model of more than 3 bands, every band side by side (its PNG shows bands 0-2); else ``None``."""
        return png_bytes(band_grid(self.image)) if self.image.shape[0] > 3 else None

    def record(self) -> dict:
        return {
            "layer": self.layer,
            "channel": self.channel,
            "activation_before": round(self.before, 6),
            "activation_after": round(self.after, 6),
            "status": self.status,
            "loss_curve": [round(-v, 5) for v in self.curve],
        }


def unit_objective(layer: LayerInfo, c: int) -> Objective:
    """The objective that renders channel ``c`` of ``layer`` (a class logit for the pseudo-layer ``logit``)."""
    return logit(c) if layer.name == LOGIT else channel(layer.name, c)


def auto_batch(model: Model, settings: RenderSettings, layer: LayerInfo) -> int:
    """1 on a CPU (measured: no throughput gain from batching on few cores); on CUDA, from free memory."""
    if model.device.type != "cuda":
        return 1
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    probe = settings.with_(steps=1)
    Renderer(model, probe).render(unit_objective(layer, 0), [0])
    per_image = max(1, torch.cuda.max_memory_allocated() - base)
    free, _ = torch.cuda.mem_get_info()
    return int(max(1, min(MAX_BATCH, 0.6 * free // per_image)))


def render_stream(
    model: Model,
    layer: LayerInfo,
    channels: Sequence[int],
    settings: RenderSettings,
    seed: int,
    *,
    batch: int | None = None,
    extra: Callable[[int], Objective] | None = None,
    on_step: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cache: RenderCache | None | str = "auto",
) -> Iterator[ChannelResult]:
    """Yield each channel's render as soon as its batch finishes; stop early when asked.

    ``extra(c)`` can add terms to channel ``c``'s objective (e.g. a regulariser). Channels found in the
    render ``cache`` (``"auto"``: the environment's, see :func:`~filterscope.outputs.cache.active_cache`;
    ``None``: none) are not rendered again: their PNG bytes come from the cache, and new renders go into it.
    """
    if cache == "auto":
        cache = active_cache() if model.in_channels <= 3 else None  # >3 bands also write bands_*.png
    objective_of = (lambda c: unit_objective(layer, c) + extra(c)) if extra else (lambda c: unit_objective(layer, c))
    keys: dict[int, tuple[str, dict]] = {}
    todo = list(channels)
    if cache is not None:
        settings = settings.for_model(model)
        keys = {c: render_key(model, objective_of(c), settings, seed, layer=layer.name) for c in channels}
    renderer = Renderer(model, settings)
    b = batch or (auto_batch(model, settings, layer) if todo else 1)
    pos = 0
    while pos < len(todo):
        if cache is not None:
            c = todo[pos]
            hit = cache.get(keys[c][0])
            if hit is not None:
                pos += 1
                yield result_from_cache(layer.name, c, hit)
                if should_stop and should_stop():
                    return
                continue
        chunk = []
        while pos < len(todo) and len(chunk) < b:
            if cache is not None and chunk and cache.has(keys[todo[pos]][0]):
                break
            chunk.append(todo[pos])
            pos += 1
        objs = [objective_of(c) for c in chunk]
        res: RenderResult = renderer.render(
            objs if len(objs) > 1 else objs[0],
            [channel_seed(seed, c) for c in chunk],
            on_step=on_step,
            should_stop=should_stop,
        )
        if res.interrupted:
            return
        for i, c in enumerate(chunk):
            r = ChannelResult(
                layer.name,
                c,
                res.images[i],
                res.before[i],
                res.after[i],
                res.curves[i],
                res.status[i],
                res.seconds / len(chunk),
            )
            if r.status == "ok":
                r.png = png_bytes(r.image)
                if cache is not None:
                    key, fields = keys[c]
                    cache.put(key, r.png, {**fields, **r.record(), "seconds": round(r.seconds, 3)})
            yield r
        if should_stop and should_stop():
            return


def render_records(
    model: Model, layer: LayerInfo, channels: Sequence[int], settings: RenderSettings, seed: int, cache="auto"
) -> list[tuple[dict, bytes | None, float, bytes | None]]:
    """Render ``channels`` one at a time as ``(record, PNG or None, seconds, band grid PNG or None)``: what a
    worker process or a Ray actor sends back for the driver to write with
    :func:`~filterscope.jobs.backends.finish_channel`."""
    return [
        (r.record(), r.png if r.status == "ok" else None, r.seconds, r.bands_png() if r.status == "ok" else None)
        for r in render_stream(model, layer, list(channels), settings, seed, batch=1, cache=cache)
    ]


def result_from_cache(layer: str, c: int, hit: CacheEntry) -> ChannelResult:
    """A :class:`ChannelResult` from a cache entry (its image decoded from the stored PNG)."""
    import io

    import numpy as np

    with Image.open(io.BytesIO(hit.png)) as im:
        arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im, dtype=np.float32) / 255.0
    image = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
    rec = hit.record
    curve = [-v for v in rec.get("loss_curve", [])]
    return ChannelResult(
        layer,
        c,
        image,
        float(rec["activation_before"]),
        float(rec["activation_after"]),
        curve,
        rec.get("status", "ok"),
        0.0,
        hit.png,
        True,
    )
