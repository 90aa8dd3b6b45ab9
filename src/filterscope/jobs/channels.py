"""Rendering many channels: a stream of batches, each finished channel written and recorded at once.

Channels are rendered in batches (``batch`` images at a time; on a CPU one image per step is as fast as
any batch, on a GPU the batch is sized from free memory). Each image has its own seed
(:func:`~filterscope.renderer.channel_seed`), so a channel's picture does not depend on its batch. With a
:class:`~filterscope.outputs.RunDir`, finished channels are skipped on ``--resume``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import RenderError, UsageError
from ..models.layers import LOGIT, LayerInfo, get_layer
from ..models.model import Model
from ..optvis.objectives import Objective, channel, logit
from ..optvis.presets import DEFAULT_METHOD, get_preset, resolve_settings
from ..optvis.render import Renderer, RenderResult, RenderSettings, channel_seed
from ..outputs.cache import CacheEntry, RenderCache, active_cache, render_key
from ..outputs.images import band_grid, png_bytes, to_pil
from ..outputs.naming import bands_file, channel_file, default_out, grid_file
from .contract import JobResult, open_run

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

    def record(self) -> dict:
        return {
            "layer": self.layer,
            "channel": self.channel,
            "activation_before": round(self.before, 6),
            "activation_after": round(self.after, 6),
            "status": self.status,
            "loss_curve": [round(-v, 5) for v in self.curve],
        }


def target(layer: LayerInfo, c: int) -> Objective:
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
    Renderer(model, probe).render(target(layer, 0), [0])
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
    objective_of = (lambda c: target(layer, c) + extra(c)) if extra else (lambda c: target(layer, c))
    keys: dict[int, tuple[str, dict]] = {}
    todo = list(channels)
    if cache is not None:
        settings_dict = settings.for_model(model).as_dict()
        keys = {c: render_key(model, objective_of(c), settings_dict, seed, layer=layer.name) for c in channels}
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
) -> list[tuple[dict, bytes | None, float]]:
    """Render ``channels`` one at a time as ``(record, PNG or None, seconds)``: what a worker process or a Ray
    actor sends back for the driver to write with :func:`finish_channel`."""
    return [
        (r.record(), r.png if r.status == "ok" else None, r.seconds)
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


@dataclass
class StreamSummary:
    rendered: list[int]
    skipped: list[int]
    failed: dict[int, str]
    interrupted: bool
    seconds: float


def pending(run, layer: str, channels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split ``channels`` into those still to render and those ``run`` already finished (resume)."""
    done = {c for c in channels if run.done(f"{layer}:{c}")}
    return [c for c in channels if c not in done], [c for c in channels if c in done]


def finish_channel(run, rec: dict, png: bytes | None, seconds: float, summary: StreamSummary) -> None:
    """Write one finished channel (its PNG, its record, its time) into ``run`` and count it in ``summary``:
    shared by all backends, so their outputs are the same."""
    key = f"{rec['layer']}:{rec['channel']}"
    run.record["timings"].setdefault("channel_seconds", {})[key] = round(seconds, 3)
    if png is not None:
        rec["file"] = channel_file(rec["layer"], rec["channel"])
        run.write(rec["file"], png)
        summary.rendered.append(rec["channel"])
    else:
        summary.failed[rec["channel"]] = rec["status"]
    run.result(key, rec)


def render_to_dir(
    model: Model,
    layer: LayerInfo,
    channels: Sequence[int],
    settings: RenderSettings,
    seed: int,
    run,
    *,
    batch: int | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    bar=None,
    extra: Callable[[int], Objective] | None = None,
) -> StreamSummary:
    """Render ``channels`` into ``run`` (a :class:`~filterscope.outputs.RunDir`): one PNG per channel, a
    record in ``run.json`` after each; channels already recorded there are skipped (resume).

    ``bar`` is an optional shared tqdm bar over channels (one bar across several layers)."""
    import time

    from tqdm import tqdm

    todo, skipped = pending(run, layer.name, channels)
    summary = StreamSummary([], skipped, {}, False, 0.0)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(
            total=len(channels),
            initial=len(skipped),
            unit="ch",
            disable=not progress,
            desc=f"render {layer.name}",
            dynamic_ncols=True,
        )
    t0 = time.perf_counter()
    steps = settings.steps

    def on_step(i: int) -> None:
        bar.set_postfix_str(f"step {i}/{steps}", refresh=i == steps or i % 8 == 0)

    try:
        for r in render_stream(
            model, layer, todo, settings, seed, batch=batch, on_step=on_step, should_stop=should_stop, extra=extra
        ):
            if r.status == "ok" and r.image.shape[0] > 3:  # more than 3 bands: the PNG is bands 0-2, this is all
                run.write(bands_file(r.layer, r.channel), png_bytes(band_grid(r.image)))
            finish_channel(run, r.record(), r.png if r.status == "ok" else None, r.seconds, summary)
            bar.update(1)
    finally:
        if own_bar:
            bar.close()
    finished = len(summary.rendered) + len(summary.failed)
    summary.interrupted = bool(should_stop and should_stop()) and finished < len(todo)
    summary.seconds = time.perf_counter() - t0
    return summary


def check_diversity(n: int) -> int:
    """Diverse variants are pushed away from each other, so there must be none or at least 2."""
    if n == 1:
        raise UsageError("--diversity needs at least 2 variants (each is pushed away from the others); 0 turns it off")
    return n


def diversity_seeds(seed: int, c: int, n: int) -> list[int]:
    return [channel_seed(seed, c + (v + 1) * 1_000_003) for v in range(n)]


def render_layer(
    model: Model,
    layer: LayerInfo,
    channels: Sequence[int],
    settings: RenderSettings,
    seed: int,
    run,
    *,
    batch: int | None = None,
    diversity: int = 0,
    diversity_weight: float = 1.0,
    penalty: Objective | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    bar=None,
) -> StreamSummary:
    """Render channels into ``run`` plus, with ``diversity=N``, N jointly optimised variants per channel
    (Lucid's diversity term at the same layer), and write ``grid_<layer>.png``."""
    check_diversity(diversity)
    extra = (lambda c: -1.0 * penalty) if penalty is not None else None
    summary = render_to_dir(
        model,
        layer,
        channels,
        settings,
        seed,
        run,
        batch=batch,
        progress=progress,
        should_stop=should_stop,
        bar=bar,
        extra=extra,
    )
    if diversity > 1 and not summary.interrupted:
        summary.interrupted = render_diversity(
            model,
            layer,
            channels,
            settings,
            seed,
            run,
            diversity,
            weight=diversity_weight,
            penalty=penalty,
            should_stop=should_stop,
        )
    write_grid(run, layer.name, channels)
    return summary


def diversity_objective(model: Model, layer: LayerInfo, c: int, weight: float = 1.0) -> Objective:
    """Channel ``c`` plus Lucid's diversity term at its layer (the default layer for class logits)."""
    from ..models.layers import default_layer
    from ..optvis.objectives import diversity as diversity_term

    div_layer = layer.name if layer.name != LOGIT else default_layer(model)
    return target(layer, c) + weight * diversity_term(div_layer)


def render_diversity(
    model: Model,
    layer: LayerInfo,
    channels: Sequence[int],
    settings: RenderSettings,
    seed: int,
    run,
    n: int,
    *,
    weight: float = 1.0,
    penalty: Objective | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """``n`` jointly optimised variants per channel into ``diversity_<v>/``; returns whether it was stopped."""
    renderer = Renderer(model, settings)
    for c in channels:
        key = f"{layer.name}:{c}:diversity"
        if run.done(key):
            continue
        if should_stop and should_stop():
            return True
        obj = diversity_objective(model, layer, c, weight)
        if penalty is not None:
            obj = obj - penalty
        res = renderer.render(obj, diversity_seeds(seed, c, n), should_stop=should_stop)
        if res.interrupted:
            return True
        files = []
        for v in range(n):
            if res.status[v] == "ok":
                files.append(channel_file(layer.name, c, v + 1))
                run.write_png(files[-1], res.images[v])
        run.result(
            key,
            {
                "layer": layer.name,
                "channel": c,
                "files": files,
                "activation_after": [round(a, 6) for a in res.after],
                "status": res.status,
            },
        )
    return False


def write_grid(run, layer: str, channels: Sequence[int]) -> str | None:
    """``grid_<layer>.png`` from the channel PNGs on disk, labelled with channel numbers."""
    from ..outputs.figures import grid

    have = [c for c in channels if run.file(channel_file(layer, c)).is_file()]
    if not have:
        return None
    tile = 128 if len(have) <= 64 else 96 if len(have) <= 256 else 64
    images = []
    for c in have:  # shrink while reading, so a whole layer's grid does not hold every full-size PNG
        with Image.open(run.file(channel_file(layer, c))) as im:
            images.append(im.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR, reducing_gap=2.0))
    name = grid_file(layer)
    run.write_png(name, grid(images, [str(c) for c in have], tile=tile))
    return name


@dataclass
class ChannelRender:
    """One channel's boosted features, as :func:`render` returns them (shows itself in Jupyter)."""

    image: Image.Image
    layer: str
    channel: int
    activation_before: float
    activation_after: float
    curve: list[float]
    seconds: float
    settings: RenderSettings

    @property
    def gain(self) -> float:
        return self.activation_after / self.activation_before if self.activation_before > 0 else float("inf")

    def _repr_png_(self) -> bytes:
        return png_bytes(self.image)


def render(
    model: Model,
    layer: str = "default",
    channel_index: int = 0,
    *,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    steps: int | None = None,
    lr: float | None = None,
    size: int | None = None,
    **overrides,
) -> ChannelRender:
    """Render one channel's boosted features (the tutorial's ``render``, any preset).

    Returns the image (PIL) and the channel's mean activation on the starting noise and on the result.
    """
    info = get_layer(model, layer)
    info.check_channels([channel_index])
    settings = get_preset(method).with_(steps=steps, lr=lr, size=size, **overrides)
    result = Renderer(model, settings).render(target(info, channel_index), [channel_seed(seed, channel_index)])
    if result.status[0] != "ok":
        raise RenderError(f"channel {channel_index}: {result.status[0]}")
    return ChannelRender(
        to_pil(result.images[0]),
        info.name,
        channel_index,
        result.before[0],
        result.after[0],
        result.curves[0],
        result.seconds,
        settings,
    )


@dataclass
class RenderRun(JobResult):
    """:class:`~filterscope.jobs.contract.JobResult` of ``render_channels``: the layer, channels, summary."""

    layer: LayerInfo | None = None
    channels: list[int] = field(default_factory=list)
    summary: StreamSummary | None = None


def render_channels(
    model: Model,
    layer: str = "default",
    channels: Sequence[int] | None = None,
    *,
    method: str | None = None,
    settings: RenderSettings | None = None,
    seed: int = 0,
    out: str | Path = default_out("render"),
    batch: int | None = None,
    diversity: int = 0,
    penalty: Objective | str | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> RenderRun:
    """``filterscope render``: channels of ``layer`` (default: all) into ``out``, one PNG per channel, a
    grid and ``run.json``; ``penalty`` (an objective or its text, e.g. ``"0.05*tv"``) is subtracted from
    every channel's objective. An interrupted run is ``partial`` and resumable."""
    from .objective import objective_for

    info = get_layer(model, layer)
    chans = list(range(info.channels)) if channels is None else sorted(set(channels))
    info.check_channels(chans)
    check_diversity(diversity)
    settings = resolve_settings(method, settings)
    text = penalty if isinstance(penalty, str) else (penalty.name if penalty is not None else None)
    pen = objective_for(model, penalty) if isinstance(penalty, str) else penalty
    record = {
        "model": model.describe(),
        "layer": info.name,
        "channels": chans,
        "method": settings.preset,
        "render": settings.for_model(model).as_dict(),
        "seed": seed,
        "batch": batch,
        "diversity": diversity,
        "penalty": text,
    }
    with open_run("render", out, record, resume=resume, progress=progress, should_stop=should_stop) as ctx:
        summary = render_layer(
            model,
            info,
            chans,
            settings,
            seed,
            ctx.run,
            batch=batch,
            diversity=diversity,
            penalty=pen,
            progress=progress,
            should_stop=ctx.stop,
        )
        if summary.interrupted:
            ctx.mark_partial(len(summary.rendered) + len(summary.skipped), len(chans), "channels")
    r = ctx.result
    return RenderRun(r.run_dir, r.status, r.record, None, r.interruption, info, chans, summary)
