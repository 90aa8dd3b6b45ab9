"""What a filter is tuned to: its answers to synthetic stimuli (:mod:`filterscope.optvis.stimuli`).

Every stimulus goes through the network once (all channels of the layer at once); a channel's response is
its activation at the **centre position** of its map (as the Circuits thread measures a neuron), and the
stimulus sets are:

- oriented gratings: 12 orientations (0-165°, stripes on screen, counter-clockwise from horizontal) × 8
  periods (3 px to a quarter of the input, geometric) × 4 phases;
- colour fields (3-channel models only): 24 hues × 3 saturations at HSV value 0.8;
- curves (after Cammarata et al. 2020): 12 bulge directions (0-330°) × 4 radii (1/32-1/4 of the input)
  plus a straight segment, light and dark on mid-grey.

Per channel, with responses above the grey field's clipped at 0 (``r``):

- **orientation**: at the preferred period, ``r(θ)`` = max over phases; the preferred orientation is half
  the angle of ``Σ r(θ)·e^{2iθ}`` and the orientation selectivity index ``OSI = |Σ r·e^{2iθ}| / Σ r``
  (1 − circular variance on the doubled angle);
- **hue**: ``r(h)`` = max over saturations (baseline: the grey field of the same value); the preferred hue is
  the angle of ``Σ r(h)·e^{ih}`` and the hue selectivity ``|Σ r·e^{ih}| / Σ r``;
- **curve**: the best arc's radius and direction, and the curvature index ``(c − l) / (c + l)`` of the best
  arc's response against the best straight segment's.

**Significance** (:data:`RULE`): a selectivity is reported in the description only when (1) its index is
≥ 0.2 (curves: curvature index ≥ 0.2 and direction selectivity ≥ 0.2), (2) the peak response above grey is
≥ 10 % of the channel's natural range at that position (the largest |response − grey| over the natural
photos), and (3) p < 0.01 against a shuffle null: 1000 permutations (seeded) of the orientation (hue,
curve direction) labels, independently per phase (saturation, polarity), so the tuning must be the same
across phases to count.

The best stimulus's spatial-mean activation is compared with the channel's natural maximum (the highest
spatial-mean activation over the photos, as :func:`~filterscope.jobs.evaluate.natural_max`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import LayerError
from ..models.hooks import run
from ..models.inputs import list_images, sample_photos_dir
from ..models.layers import LayerInfo, capture_layers, network_layer
from ..models.model import Model
from ..optvis import stimuli as S
from ..optvis.stimuli import (
    ALPHA,
    BATCH,
    CURVE_DIRECTIONS,
    CURVE_RADII,
    HUES,
    MIN_AMPLITUDE,
    MIN_INDEX,
    N_PERIODS,
    N_SHUFFLES,
    ORIENTATIONS,
    PHASES,
    RULE,
    SATURATIONS,
    VALUE,
    hue_name,
)
from .contract import Job, JobResult, RunContext, opt, run_job


def periods_for(size: int) -> list[float]:
    """Grating periods in px: 3 px to a quarter of the input, geometric."""
    return [round(float(p), 2) for p in np.geomspace(3.0, max(size / 4, 4.0), N_PERIODS)]


@dataclass
class Stimuli:
    """The stimulus sets at one input size, with their parameters."""

    size: int
    in_channels: int
    periods: list[float]
    radii: list[float]
    width: float

    @property
    def colour(self) -> bool:
        return self.in_channels == 3

    def names(self) -> list[str]:
        """The families' names, in the order :meth:`families` gives them."""
        return ["grey", "gratings", "curves"] + (["colour", "grey_value"] if self.colour else [])

    def family(self, name: str) -> tuple[torch.Tensor, bool]:
        """One family: (stimuli with their parameter axes first, is RGB)."""
        if name == "grey":
            return torch.full((1, self.size, self.size), S.GREY), False
        if name == "gratings":
            return S.gratings(self.size, ORIENTATIONS, self.periods, PHASES), False
        if name == "curves":
            return S.curves(self.size, CURVE_DIRECTIONS, self.radii + [math.inf], self.width), False
        if name == "colour" and self.colour:
            return S.colour_fields(self.size, HUES, SATURATIONS, VALUE), True
        if name == "grey_value" and self.colour:
            return S.colour_fields(self.size, [0], [0.0], VALUE)[0], True
        raise KeyError(name)

    def families(self) -> dict[str, tuple[torch.Tensor, bool]]:
        """name → (stimuli with their parameter axes first, is RGB)."""
        return {n: self.family(n) for n in self.names()}

    def count(self) -> int:
        n = 1 + len(ORIENTATIONS) * len(self.periods) * len(PHASES) + len(CURVE_DIRECTIONS) * (len(self.radii) + 1) * 2
        return n + (len(HUES) * len(SATURATIONS) + 1 if self.colour else 0)

    def record(self) -> dict:
        return {
            "size": self.size,
            "orientations": list(ORIENTATIONS),
            "periods_px": self.periods,
            "phases": list(PHASES),
            "hues": list(HUES) if self.colour else [],
            "saturations": [round(s, 4) for s in SATURATIONS] if self.colour else [],
            "value": VALUE,
            "curve_directions": list(CURVE_DIRECTIONS),
            "curve_radii_px": self.radii + ["inf"],
            "curve_width_px": self.width,
            "count": self.count(),
            "convention": "orientation: stripes on screen, counter-clockwise from horizontal (0 horizontal, 90 "
            "vertical, 45 rising to the right); curve direction: where the arc bulges, counter-clockwise from "
            "screen right",
        }


def make_stimuli(model: Model) -> Stimuli:
    size = model.input_size
    return Stimuli(
        size,
        model.in_channels,
        periods_for(size),
        [round(size * r, 2) for r in CURVE_RADII],
        max(1.5, size / 112),
    )


def responses(
    model: Model, info: LayerInfo, x: torch.Tensor, batch: int = BATCH, rgb: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Centre activations and spatial means ``[N, C]`` of ``info`` for stimuli ``x`` (``[..., S, S]`` grey, or
    ``[..., 3, S, S]`` with ``rgb``)."""
    return _centre_and_mean(model, info, S.to_channels(x, model.in_channels, rgb), batch)


def _centre_and_mean(model: Model, info: LayerInfo, x: torch.Tensor, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre activations and spatial means ``[N, C]`` of ``info`` for model inputs ``x``, ``batch`` at a time."""
    centre, mean = [], []
    h, w = info.shape[1] // 2, info.shape[2] // 2
    with (
        capture_layers(model, [info], stop=True) as cap,
        torch.inference_mode(),
    ):
        for i in range(0, x.shape[0], batch):
            run(model.forward, x[i : i + batch].to(model.device), cap)
            a = cap.acts[info.name].float()
            centre.append(a[:, :, h, w].cpu())
            mean.append(a.flatten(2).mean(2).cpu())
    return torch.cat(centre).numpy(), torch.cat(mean).numpy()


def _nat(model: Model, info: LayerInfo, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Centre activations and spatial means ``[N, C]`` over natural photos ``x`` ``[N, C_in, S, S]``."""
    return _centre_and_mean(model, info, x, 16)


# ---------------------------------------------------------------- analysis


def vector_index(r: np.ndarray, angles_deg: Sequence[float], double: bool) -> tuple[float, float]:
    """(preferred angle in degrees, selectivity) of non-negative responses ``r[..., A]`` over angles: the
    angle of ``Σ r·e^{i·k·a}`` (k = 2 for orientation, 0-180; k = 1 for hue or direction, 0-360) and
    ``|Σ r·e^{ika}| / Σ r`` (0 when nothing responds)."""
    k = 2.0 if double else 1.0
    a = np.radians(np.asarray(angles_deg, dtype=np.float64)) * k
    z = (r * np.exp(1j * a)).sum(-1)
    tot = r.sum(-1)
    sel = np.where(tot > 0, np.abs(z) / np.where(tot > 0, tot, 1), 0.0)
    pref = (np.degrees(np.angle(z)) / k) % (180.0 if double else 360.0)
    return pref, sel


def shuffle_p(
    table: np.ndarray, base: float, angles: Sequence[float], double: bool, rng: np.random.Generator, n: int = N_SHUFFLES
) -> tuple[float, float, float]:
    """``table[A, K]`` (angle × phase-like axis): the selectivity of ``max_K(table) − base`` (clipped ≥ 0)
    and its p-value against ``n`` shuffles of the angle labels done independently per column."""
    r = np.clip(table.max(1) - base, 0, None)
    pref, sel = vector_index(r, angles, double)
    if r.sum() <= 0:
        return float(pref), 0.0, 1.0
    null = rng.permuted(np.broadcast_to(table, (n, *table.shape)), axis=1)
    _, sel0 = vector_index(np.clip(null.max(2) - base, 0, None), angles, double)
    p = (1 + int((sel0 >= sel - 1e-12).sum())) / (n + 1)
    return float(pref), float(sel), float(p)


@dataclass
class ChannelTuning:
    """One channel's tuning; the arrays are kept for the figures."""

    channel: int
    grey: float
    orientation: float
    orientation_selectivity: float
    orientation_p: float
    orientation_significant: bool
    period: float
    frequency: float  # cycles per pixel
    orientation_curve: np.ndarray  # [O, phases] at the preferred period
    frequency_curve: np.ndarray  # [P] max over orientation × phase
    hue: float | None
    hue_selectivity: float | None
    hue_p: float | None
    hue_significant: bool
    hue_curve: np.ndarray | None  # [H, saturations]
    curve_radius: float
    curve_direction: float
    curvature_index: float
    curve_selectivity: float
    curve_p: float
    curve_significant: bool
    curve_table: np.ndarray  # [directions, radii + line] max over polarity
    natural_range: float
    best_stimulus: str
    best_activation: float
    natural_max: float
    best_centre: float
    natural_max_centre: float
    description: str | None
    best_image: torch.Tensor | None = None
    hue_baseline: float | None = None  # response to the grey field of the colour fields' value

    def record(self) -> dict:
        def r(v, n=4):
            return None if v is None else round(float(v), n)

        return {
            "orientation": r(self.orientation, 1),
            "orientation_selectivity": r(self.orientation_selectivity),
            "orientation_p": r(self.orientation_p, 5),
            "orientation_significant": self.orientation_significant,
            "frequency": r(self.frequency, 5),
            "period_px": r(self.period, 2),
            "hue": r(self.hue, 1),
            "hue_name": hue_name(self.hue) if self.hue is not None else None,
            "hue_selectivity": r(self.hue_selectivity),
            "hue_p": r(self.hue_p, 5),
            "hue_significant": self.hue_significant,
            "curve": {
                "radius_px": r(self.curve_radius, 2),
                "direction": r(self.curve_direction, 1),
                "curvature_index": r(self.curvature_index),
                "direction_selectivity": r(self.curve_selectivity),
                "p": r(self.curve_p, 5),
                "significant": self.curve_significant,
            },
            "grey_response": r(self.grey, 6),
            "grey_response_colour_value": r(self.hue_baseline, 6),
            "natural_range": r(self.natural_range, 6),
            "best_stimulus": self.best_stimulus,
            "best_activation": r(self.best_activation, 6),
            "natural_max": r(self.natural_max, 6),
            # a ratio only means "times the natural maximum" when that maximum is positive
            "best_vs_natural": r(self.best_activation / self.natural_max if self.natural_max > 1e-9 else None),
            "best_centre": r(self.best_centre, 6),
            "natural_max_centre": r(self.natural_max_centre, 6),
            "description": self.description,
        }


@dataclass
class Tuning:
    """What :func:`tuning` found; shows itself as the report in Jupyter."""

    model: str
    layer: str
    shape: tuple[int, ...]
    position: tuple[int, int]
    stimuli: Stimuli
    channels: list[ChannelTuning]
    images: str
    seed: int
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    status: str = "complete"
    run_dir: Path | None = None
    pieces: int = 0  # pieces of the stimulus and photo passes (kept for --resume), and how many are finished
    pieces_done: int = 0

    @property
    def n_stimuli(self) -> int:
        return self.stimuli.count()

    def record(self) -> dict:
        """``tuning.json`` (``shared/README.md``): layer, channels: index → orientation, …, description."""
        return {
            "model": self.model,
            "layer": self.layer,
            "position": list(self.position),
            "response": "activation at the centre position of the map",
            "significance": RULE,
            "seed": self.seed,
            "stimuli": self.stimuli.record(),
            "images": self.images,
            "channels": {str(c.channel): c.record() for c in self.channels},
        }

    def figure(self, channels: Sequence[int] | None = None):
        from ..outputs.figures_circuits import tuning_figure

        return tuning_figure(self, channels)

    def html(self, figure_png: bytes | None = None) -> str:
        from ..outputs.figures_circuits import tuning_report

        return tuning_report(self, figure_png)

    def _repr_html_(self) -> str:
        return self.html()


def _describe(c: ChannelTuning) -> str | None:
    parts = []
    if c.orientation_significant:
        parts.append(f"orientation ≈ {c.orientation:.0f}°, OSI {c.orientation_selectivity:.2f}")
    if c.hue_significant and c.hue is not None:
        parts.append(f"hue: {hue_name(c.hue)}")
    if c.curve_significant:
        parts.append(f"curve, radius ≈ {c.curve_radius:.0f} px, bulging towards {c.curve_direction:.0f}°")
    return "; ".join(parts) or None


def analyse(
    channel: int,
    resp: dict[str, np.ndarray],
    means: dict[str, np.ndarray],
    stim: Stimuli,
    nat_centre: np.ndarray,
    nat_mean: np.ndarray,
    rng: np.random.Generator,
) -> ChannelTuning:
    """One channel's tuning from the centre responses ``resp`` (family → ``[N, C]``) and spatial means."""
    c = channel
    grey = float(resp["grey"][0, c])
    natural_range = float(np.abs(nat_centre[:, c] - grey).max())
    floor = MIN_AMPLITUDE * natural_range
    no, npd, nph = len(ORIENTATIONS), len(stim.periods), len(PHASES)
    g = resp["gratings"][:, c].reshape(no, npd, nph)
    fcurve = g.max((0, 2))
    best_p = int(np.argmax(fcurve))
    table = g[:, best_p, :]
    o_pref, osi, o_p = shuffle_p(table, grey, ORIENTATIONS, True, rng)
    o_sig = osi >= MIN_INDEX and o_p < ALPHA and table.max() - grey >= floor and floor > 0

    hue = hue_sel = hue_p = None
    h_sig = False
    hcurve = None
    if stim.colour:
        base = float(resp["grey_value"][0, c])
        hcurve = resp["colour"][:, c].reshape(len(HUES), len(SATURATIONS))
        hue, hue_sel, hue_p = shuffle_p(hcurve, base, HUES, False, rng)
        h_sig = hue_sel >= MIN_INDEX and hue_p < ALPHA and hcurve.max() - base >= floor and floor > 0

    nr = len(stim.radii) + 1
    cv = resp["curves"][:, c].reshape(len(CURVE_DIRECTIONS), nr, 2)
    ctab = cv.max(2)
    arcs = np.clip(ctab[:, :-1] - grey, 0, None)
    di, ri = np.unravel_index(int(np.argmax(arcs)), arcs.shape)
    best_arc, best_line = float(arcs[di, ri]), float(np.clip(ctab[:, -1] - grey, 0, None).max())
    ci = (best_arc - best_line) / (best_arc + best_line) if best_arc + best_line > 0 else 0.0
    c_dir, c_sel, c_p = shuffle_p(cv[:, ri, :], grey, CURVE_DIRECTIONS, False, rng)
    c_sig = ci >= MIN_INDEX and c_sel >= MIN_INDEX and c_p < ALPHA and best_arc >= floor and floor > 0

    # best stimulus by spatial mean, against the natural maximum of the same measure
    best_name, best_val, best_centre = "", -np.inf, -np.inf
    for fam, m in means.items():
        i = int(np.argmax(m[:, c]))
        if m[i, c] > best_val:
            best_name, best_val = f"{fam}[{i}]", float(m[i, c])
        best_centre = max(best_centre, float(resp[fam][:, c].max()))
    res = ChannelTuning(
        c,
        grey,
        o_pref,
        osi,
        o_p,
        bool(o_sig),
        stim.periods[best_p],
        1.0 / stim.periods[best_p],
        table,
        fcurve,
        hue,
        hue_sel,
        hue_p,
        bool(h_sig),
        hcurve,
        stim.radii[ri],
        float(CURVE_DIRECTIONS[di]),
        float(ci),
        c_sel,
        c_p,
        bool(c_sig),
        ctab,
        natural_range,
        best_name,
        best_val,
        float(nat_mean[:, c].max()),
        best_centre,
        float(nat_centre[:, c].max()),
        None,
    )
    res.hue_baseline = float(resp["grey_value"][0, c]) if stim.colour else None
    res.description = _describe(res)
    return res


def stimulus_image(families: dict, name: str) -> torch.Tensor:
    """The stimulus ``family[index]`` (of :meth:`Stimuli.families`) as ``[3, S, S]`` for display."""
    fam, idx = name.rstrip("]").split("[")
    x, rgb = families[fam]
    img = S.to_channels(x, 3 if rgb else 1, rgb)[int(idx)]
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img


# ---------------------------------------------------------------- the job


def validate(model: Model, layer: str, channels: Sequence[int] | None) -> tuple[LayerInfo, list[int]]:
    """The layer has spatial maps and every channel is in range (what the CLI and API both refuse)."""
    info = network_layer(model, layer, "tuning")
    if not info.spatial:
        raise LayerError(f"tuning needs a layer with spatial maps (C×H×W); {info.name} is {info.shape_str()}")
    chans = list(range(info.channels)) if channels is None else sorted(set(int(c) for c in channels))
    info.check_channels(chans)
    if not chans:
        raise LayerError("no channels to tune")
    return info, chans


def tuning(
    model: Model,
    layer: str = "default",
    channels: Sequence[int] | None = None,
    *,
    images: str | Path | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    """Tuning curves and descriptions of ``channels`` of ``layer`` (default: all) from synthetic stimuli;
    ``images`` (default: the bundled photos) give the natural maximum.

    Returns the job's :class:`~.contract.JobResult`; its ``data`` is the :class:`Tuning`. Without ``out`` it
    runs in memory and writes nothing; with ``out`` it writes ``tuning.json``, ``figure_tuning.png``,
    ``report.html`` and ``run.json`` there (the job :data:`JOB`; ``resume``: finish an interrupted run of
    ``out``, keeping its finished pieces)."""
    chans = None if channels is None else list(channels)
    req = TuningRequest(layer, chans, None if images is None else str(images), seed)
    return run_job(
        JOB, model, req, out=out, in_memory=out is None, resume=resume, progress=progress, should_stop=should_stop
    )


CHUNK = 4 * BATCH  # stimuli per piece of the stimulus pass (a whole number of batches: the same batches as one pass)
PHOTO_BATCH = 16  # photos per batch (and per piece) of the natural pass


def compute_tuning(
    model: Model,
    info: LayerInfo,
    chans: list[int],
    files: list[Path],
    images_label: str,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
    memo: dict | None = None,
    ctx: RunContext | None = None,
) -> Tuning:
    """The work of :func:`tuning` on validated arguments (no files).

    ``memo``: a dict owned by a caller whose model does not change (the explorer's worker): the layer's
    responses to the stimuli and to the photos are kept there, for every channel at once, so the next channel
    of the same layer skips both passes (~95 % of the time). At most :data:`MEMO_LAYERS` layers are kept.

    ``ctx``: the run of the job: each finished piece of the two passes (:data:`CHUNK` stimuli of a family,
    :data:`PHOTO_BATCH` photos) is kept there for ``--resume`` and, resuming, taken from it; a progress bar
    counts the pieces. A stopped run is ``partial`` with ``pieces_done`` of ``pieces`` finished."""
    stop = should_stop if should_stop is not None else (lambda: False)  # a StopRequest is falsy until signalled
    timings: dict[str, float] = {}
    t = time.perf_counter()
    stim = make_stimuli(model)
    families: dict = {}  # made here when the stimuli run; from the memo, only the best stimuli's families
    key, nat_key = memo_keys(model, info, files)
    units = [(fam, i) for fam in stim.names() for i in range(0, _family_size(stim, fam), CHUNK)]
    units += [("photos", i) for i in range(0, len(files), PHOTO_BATCH)]
    done = 0
    bar = ctx.progress(len(units), "tuning", unit="piece") if ctx is not None else None

    def piece(fam: str, i: int, make: Callable[..., tuple], *args) -> tuple[np.ndarray, np.ndarray]:
        """The (centre, mean) responses of one piece: kept by an earlier run, else ``make(*args)``."""
        nonlocal done
        got = ctx.kept(f"{info.name}/{fam}_{i:05d}") if ctx is not None else None
        if got is not None:
            value = got[0]["centre"], got[0]["mean"]
        else:
            value = make(*args)
            if ctx is not None:
                ctx.keep(f"{info.name}/{fam}_{i:05d}", {"centre": value[0], "mean": value[1]})
        done += 1
        if bar is not None:
            bar.update()
        return value

    if memo is not None and key in memo:
        resp, means = memo[key]
        done += sum(u[0] != "photos" for u in units)
    else:
        resp, means = {}, {}
        families = stim.families()
        for fam, (x, rgb) in families.items():
            flat = x.reshape(-1, *x.shape[-3 if rgb else -2 :])
            parts = []
            for i in range(0, flat.shape[0], CHUNK):
                parts.append(piece(fam, i, responses, model, info, flat[i : i + CHUNK], BATCH, rgb))
                if stop():
                    break
            if len(parts) * CHUNK >= flat.shape[0]:
                resp[fam], means[fam] = (np.concatenate([pp[j] for pp in parts]) for j in (0, 1))
            if stop():
                break
        if memo is not None and len(resp) == len(families):
            _remember(memo, key, (resp, means))
    timings["stimuli_s"] = time.perf_counter() - t
    status = "complete" if len(resp) == len(stim.names()) else "partial"
    t = time.perf_counter()
    nat_c = nat_m = None
    if status == "partial":
        pass
    elif memo is not None and nat_key in memo:
        nat_c, nat_m = memo[nat_key]
        done += sum(u[0] == "photos" for u in units)
    else:
        parts = []
        for i in range(0, len(files), PHOTO_BATCH):
            parts.append(piece("photos", i, _photo_responses, model, info, files[i : i + PHOTO_BATCH]))
            if stop():
                break
        if len(parts) * PHOTO_BATCH >= len(files):
            nat_c, nat_m = (np.concatenate([pp[j] for pp in parts]) for j in (0, 1))
            if memo is not None:
                _remember(memo, nat_key, (nat_c, nat_m))
        else:
            status = "partial"
    if bar is not None:
        bar.close()
    timings["natural_s"] = time.perf_counter() - t
    t = time.perf_counter()
    out = []
    if status == "complete":
        for c in chans:
            rng = np.random.default_rng([seed, c])
            ct = analyse(c, resp, means, stim, nat_c, nat_m, rng)
            fam = ct.best_stimulus.split("[")[0]
            if fam not in families:
                families[fam] = stim.family(fam)
            ct.best_image = stimulus_image(families, ct.best_stimulus).clone()
            out.append(ct)
    timings["analysis_s"] = time.perf_counter() - t
    res = Tuning(
        model.name,
        info.name,
        info.shape,
        (info.shape[1] // 2, info.shape[2] // 2),
        stim,
        out,
        images_label,
        seed,
        {"layer": info.name, "channels": chans, "images": images_label, "seed": seed},
        {k: round(v, 3) for k, v in timings.items()},
        status,
    )
    res.pieces, res.pieces_done = len(units), done
    return res


def _photo_responses(model: Model, info: LayerInfo, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    from ..models.inputs import load_image, model_input

    return _nat(model, info, torch.cat([model_input(model, load_image(f)) for f in files]))


def _family_size(stim: Stimuli, name: str) -> int:
    """How many stimuli the family ``name`` has (without drawing them)."""
    if name in ("grey", "grey_value"):
        return 1
    if name == "gratings":
        return len(ORIENTATIONS) * len(stim.periods) * len(PHASES)
    if name == "curves":
        return len(CURVE_DIRECTIONS) * (len(stim.radii) + 1) * 2
    return len(HUES) * len(SATURATIONS)


def memo_keys(model: Model, info: LayerInfo, files: list[Path]) -> tuple[tuple, tuple]:
    """The memo keys of ``info``'s stimulus responses and of its responses to the photos ``files``."""
    key = (info.name, info.calls, model.input_size, model.in_channels)
    return key, (*key, tuple(str(f) for f in files))


MEMO_LAYERS = 4  # layers a tuning memo keeps (stimulus and photo responses: ~6 MB for 1280 channels)


def _remember(memo: dict, key: tuple, value) -> None:
    """Keep ``value`` under ``key``, dropping the oldest entries past :data:`MEMO_LAYERS` × 2 (two per layer)."""
    memo[key] = value
    while len(memo) > 2 * MEMO_LAYERS:
        del memo[next(iter(memo))]


@dataclass
class TuningRequest:
    """The arguments of ``filterscope tuning``."""

    layer: str = opt("default", "Layer with spatial maps.")
    channels: list[int] | None = opt(None, "e.g. 0-23, 1,5,9 or all.", channels=True, cli_default="0-7")
    images: str | None = opt(None, "Folder of natural images for the natural maximum (default: bundled).")
    seed: int = opt(0, "Seed of the shuffle null.", min=0)


@dataclass
class TuningPlan:
    model: Model
    info: LayerInfo
    channels: list[int]
    files: list[Path]
    label: str
    seed: int
    settings: dict


def _check_images(req: TuningRequest) -> None:
    if req.images:
        list_images(req.images)


def _plan(model: Model, req: TuningRequest) -> TuningPlan:
    info, chans = validate(model, req.layer, req.channels)
    files = list_images(req.images or sample_photos_dir())
    label = str(req.images or "bundled photos")
    settings = {
        "model": model.describe(),
        "layer": info.name,
        "channels": chans,
        "images": label,
        "seed": req.seed,
        "shuffles": N_SHUFFLES,
        "rule": RULE,
    }
    return TuningPlan(model, info, chans, files, label, req.seed, settings)


def _compute(ctx: RunContext, p: TuningPlan) -> Tuning:
    res = compute_tuning(p.model, p.info, p.channels, p.files, p.label, p.seed, ctx.stop, ctx=ctx)
    ctx.record["timings"].update(res.timings)
    res.run_dir = ctx.path
    if res.status == "partial":
        ctx.mark_partial(res.pieces_done, res.pieces, "pieces of the stimulus and photo passes")
    return res


def _write(ctx: RunContext, res: Tuning) -> None:
    if res.status == "partial":
        return
    with ctx.timed("write"):
        write_tuning(ctx.run, res)
    res.timings = ctx.record["timings"]


def _summary(r: JobResult) -> list[str]:
    t = r.data
    lines = [f"{t.model} · {t.layer} · {len(t.channels)} channels · {t.n_stimuli} stimuli"]
    for ch in t.channels:
        lines.append(f"  {ch.channel:4d}  {ch.description or '(no significant selectivity)'}")
    lines.append(f"wrote {r.run_dir}/tuning.json, figure_tuning.png, report.html, run.json")
    return lines


JOB = Job(
    "tuning",
    TuningRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="What CHANNELS answer to synthetic stimuli: gratings, colour fields, curves; tuning.json, report.html.",
    resumable=True,
    precheck=_check_images,
)


def write_tuning(run, res: Tuning) -> None:
    import io

    import matplotlib.pyplot as plt

    from ..outputs.naming import REPORT, figure_file
    from ..outputs.rundir import json_bytes

    rec = res.record()
    run.write("tuning.json", json_bytes(rec))
    fig = res.figure()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
    plt.close(fig)
    run.write(figure_file("tuning"), buf.getvalue())
    run.write_text(REPORT, res.html(figure_png=buf.getvalue()))
    run.result(
        "tuning",
        {"layer": res.layer, "descriptions": {str(c.channel): c.description for c in res.channels}},
    )
