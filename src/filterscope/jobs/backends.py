"""Backends: where a layer's channels render — in this process, on a pool of worker processes
(:mod:`~filterscope.jobs.pool`) or on Ray (:mod:`~filterscope.jobs.ray_backend`) — behind one interface,
:class:`Backend`. Every backend writes each finished channel through :func:`finish_channel`, so the files
and the resume record are the same whichever ran; diversity variants and grids run after any backend
(:func:`~filterscope.jobs.channels.render_layer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..models.layers import LayerInfo
from ..models.model import Model
from ..optvis.objectives import Objective
from ..optvis.render import RenderSettings
from ..outputs.naming import bands_file, channel_file
from .stream import render_stream


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


def finish_channel(
    run, rec: dict, png: bytes | None, seconds: float, summary: StreamSummary, bands: bytes | None = None
) -> None:
    """Write one finished channel (its PNG, for models of more than 3 bands its band grid, its record, its
    time) into ``run`` and count it in ``summary``: shared by all backends, so their outputs are the same."""
    key = f"{rec['layer']}:{rec['channel']}"
    run.record["timings"].setdefault("channel_seconds", {})[key] = round(seconds, 3)
    if png is not None:
        if bands is not None:
            run.write(bands_file(rec["layer"], rec["channel"]), bands)
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
            ok = r.status == "ok"
            finish_channel(run, r.record(), r.png if ok else None, r.seconds, summary, r.bands_png() if ok else None)
            bar.update(1)
    finally:
        if own_bar:
            bar.close()
    finished = len(summary.rendered) + len(summary.failed)
    summary.interrupted = bool(should_stop and should_stop()) and finished < len(todo)
    summary.seconds = time.perf_counter() - t0
    return summary


class Backend(Protocol):
    """Renders a layer's channels into a run folder; :meth:`close` frees its workers."""

    def render_layer(
        self,
        layer: LayerInfo,
        channels: Sequence[int],
        settings: RenderSettings,
        seed: int,
        run,
        *,
        bar=None,
        should_stop: Callable[[], bool] | None = None,
    ) -> StreamSummary: ...

    def close(self) -> None: ...


class InProcess:
    """The backend that renders in this process, ``batch`` images per step; ``extra`` adds terms (a penalty)."""

    def __init__(
        self,
        model: Model,
        *,
        batch: int | None = None,
        progress: bool = True,
        extra: Callable[[int], Objective] | None = None,
    ) -> None:
        self.model, self.batch, self.progress, self.extra = model, batch, progress, extra

    def render_layer(self, layer, channels, settings, seed, run, *, bar=None, should_stop=None) -> StreamSummary:
        return render_to_dir(
            self.model,
            layer,
            channels,
            settings,
            seed,
            run,
            batch=self.batch,
            progress=self.progress,
            should_stop=should_stop,
            bar=bar,
            extra=self.extra,
        )

    def close(self) -> None:
        pass
