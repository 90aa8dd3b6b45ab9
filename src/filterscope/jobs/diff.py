"""The diff of two models (two checkpoints of one network, or two networks) on the user's images: which units
of B match which of A, which are new, and which changes move the predictions.

One streamed pass over the folder runs both models on every batch (:func:`~filterscope.optvis.hooks.capture`
on layer A of model A and layer B of model B). From it:

- **matching** (:mod:`~filterscope.jobs.unit_match`): the Pearson correlation of every unit of A with every
  unit of B over images × positions (maps pooled to the smaller of the two sizes), then the Hungarian method:
  each live unit of B gets one partner in A; a partner below ``threshold`` makes the unit *new* (``match``
  null). Dead units are said to be dead and never ranked. Live units of A that no unit of B kept are *lost*.
- **what the change does**: top-1 flips between A and B on each image. Classes are listed by their flips
  *into* them (where the change sends images: a backdoor or a shortcut shows here), then out of them, then by
  the mean probability change; up to :data:`N_CLASSES`. The units of B that *carry* a class: gradient ×
  activation, summed over positions, of B's **margin** ``logit_B[new] − logit_B[old]`` on each image that
  flipped (``new``/``old``: B's and A's top-1), averaged over the images that flipped into or out of the
  class. The margin is what turned, and units that push every class alike cancel in it. One extra forward and
  backward pass of B over the flipped images only.
- **most changed first** (:data:`METRICS`, chosen by ``benchmarks/bench_diff.py``): ``rank`` by default, the
  mean of the unit's rank by its attribution to the class listed first and its rank by ``1 − r`` (``r``
  clipped to [0, 1]). On 16 held-out backdoor pairs it put a unit with ≥ 80 % marked top images among the
  top 3 in 15 (as many as ``1 − r`` alone, more than every attribution-only or value-mean measure), with a
  top-3 marked share of 0.87 against 0.76 for ``1 − r`` alone, whose next units are mostly unmarked (a
  fine-tune drifts many units that have nothing to do with the backdoor); attribution alone is blind to
  changes that flip nothing. Ranks rather than values, so neither part's scale decides.

- **features** (``features`` > 0, :mod:`~filterscope.jobs.feature_diff`): a TopK SAE dictionary of each
  model's layer, trained on the two models' vectors at the same sampled positions, B's features matched to A's
  by the Hungarian method on the correlation of their codes: features gained and lost, named and scored.

Each unit has its top exemplars in B and its match's in A (``{"image", "x", "y", "activation"}``, ``x``/``y``
in each model's own map); the top few changed units are rendered in both models (through the render cache).
Writes ``diff.json``, ``diff.npz`` (the correlation matrix), ``figure_diff.png``, ``report.html`` and the
renders ``b/<layer_b>/channel_0042.png`` beside ``a/<layer>/channel_0007.png``. An interrupted run keeps
the pass's state, the margin attribution's batches, each model's feature dictionary and each render for
``--resume``, which goes on from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import LayerError, UsageError
from ..models.hooks import run
from ..models.inputs import list_images, load_image, model_input
from ..models.layers import LayerInfo, capture_layers, map_views, network_layer
from ..models.model import Model
from .contract import KEPT, Job, JobResult, RunContext, opt, run_job
from .feature_diff import PairedSample, feature_diff
from .pieces import Pieces, png_array
from .unit_match import DEAD_RULE, CorrelationTally, common_maps, dead_units, match_units

BATCH = 16  # images per forward pass of each model
N_CLASSES = 5  # classes listed in ``classes``
N_CARRIERS = 8  # units listed per class
N_RENDERS = 4  # changed units rendered in both models
METRICS = ("rank", "mean", "mean_all", "class", "attribution", "r")
DEFAULT_METRIC = "rank"
METRIC_TEXT = {
    "rank": "mean of the unit's rank (over live units) by attribution to the class listed first and by 1 − r",
    "mean": "mean of the unit's share of the largest attribution to the class listed first and 1 − r",
    "mean_all": "mean of the unit's share of the largest flip attribution (all flipped images) and 1 − r",
    "class": "the unit's attribution to the class listed first (share of the largest); ties by 1 − r",
    "attribution": "the unit's flip attribution over all flipped images (share of the largest); ties by 1 − r",
    "r": "1 − r with the matched unit of A (r clipped to [0, 1])",
}
ATTRIBUTION = (
    "gradient × activation, summed over positions, of B's margin logit_B[new top-1] − logit_B[old top-1] on each "
    "image whose top-1 differs between A and B, averaged over the images (per class: those that flipped into or "
    "out of it)"
)


@dataclass
class DiffRequest:
    """The arguments of ``filterscope diff``."""

    images: str | None = opt(None, "Folder of images both models see.", argument=True)
    model_b: Model = opt(None, "The second model (B), compared against the first (A).")
    layer: str = opt("default", "Layer of model A with spatial maps.")
    layer_b: str | None = opt(None, "Layer of model B [default: the same name as --layer].")
    top: int = opt(10, "Exemplars per unit.", min=1)
    threshold: float = opt(0.3, "A unit of B whose matched r is below this is new.")
    metric: str = opt(DEFAULT_METRIC, "How units are ranked (most changed first).", choices=METRICS)
    seed: int = opt(0, "Seed of the renders and of the feature dictionaries.", min=0)
    features: int = opt(
        0, "Features of a TopK SAE dictionary per model, matched to list features gained and lost (0: off).", min=0
    )
    no_renders: bool = opt(False, "Skip the renders of the top changed units.")


@dataclass
class DiffPlan:
    model: Model
    model_b: Model
    info: LayerInfo
    info_b: LayerInfo
    files: list[Path]
    root: Path
    request: DiffRequest
    settings: dict


@dataclass
class Diff:
    """What :func:`diff` found; ``record()`` is ``diff.json``."""

    model: str
    model_b: str
    layer: str
    layer_b: str
    shape: tuple[int, ...]
    shape_b: tuple[int, ...]
    common: tuple[int, int]
    images: list[str]
    metric: str
    threshold: float
    r: np.ndarray  # [Ca, Cb]
    units: list[dict]  # every unit of B, most changed first
    lost: list[dict]  # live units of A no unit of B kept
    classes: list[dict]
    scores: dict[str, np.ndarray]  # candidate measure → [Cb] (nan for dead units)
    flipped: int
    classes_note: str | None = None
    models: dict[str, Model] = field(default_factory=dict, repr=False)  # "a", "b": for the exemplar tiles
    images_root: Path = Path(".")
    label_source: str | None = None  # where the names' labels came from: folders or B's predictions
    renders: dict[tuple[str, int], bytes] = field(default_factory=dict)  # ("a"|"b", channel) → PNG
    timings: dict = field(default_factory=dict)
    run_dir: Path | None = None
    features: dict | None = None  # gained and lost features (--features), see jobs/feature_diff.py

    def counts(self) -> dict[str, int]:
        live = [u for u in self.units if not u["dead"]]
        return {
            "units": len(self.units),
            "matched": sum(u["match"] is not None for u in live),
            "new": sum(u["match"] is None for u in live),
            "dead": len(self.units) - len(live),
            "lost": len(self.lost),
        }

    def record(self) -> dict:
        """``diff.json`` (``shared/README.md``)."""
        return {
            "model": self.model,
            "model_b": self.model_b,
            "layer": self.layer,
            "layer_b": self.layer_b,
            "shape": list(self.shape),
            "shape_b": list(self.shape_b),
            "common_map": list(self.common),
            "images": len(self.images),
            "metric": self.metric,
            "metric_text": METRIC_TEXT[self.metric],
            "threshold": self.threshold,
            "correlation": "Pearson r over images × positions of the maps pooled to common_map; one-to-one "
            "partners by the Hungarian method (scipy linear_sum_assignment); r below threshold: new",
            "dead": DEAD_RULE,
            "attribution": ATTRIBUTION,
            "names": "INVERT names (jobs/names.py) of each unit's per-image maximum against the images' labels, "
            f"from {self.label_source or 'nothing (no labels)'}",
            "flipped_images": self.flipped,
            "counts": self.counts(),
            "classes": self.classes,
            "classes_note": self.classes_note,
            "units": self.units,
            "lost": self.lost,
            **({"features": self.features} if self.features is not None else {}),
        }

    def html(self, figure_png: bytes | None = None, tiles=None) -> str:
        from ..outputs.figures_diff import diff_report

        return diff_report(self, figure_png, tiles)

    def _repr_html_(self) -> str:
        return self.html()


# ---------------------------------------------------------------- plan


def _check_images(req: DiffRequest) -> None:
    if not req.images:
        raise UsageError("diff needs a folder of images (IMAGES)")
    list_images(req.images)


def _layer(model: Model, name: str, tag: str) -> LayerInfo:
    try:
        info = network_layer(model, name, "diff")
    except LayerError as e:
        raise LayerError(f"model {tag} ({model.name}): {e.message}", hint=e.hint) from None
    if not info.spatial:
        raise LayerError(
            f"diff compares maps (C×H×W), but layer {info.name} of model {tag} ({model.name}) is "
            f"{info.shape_str()}: its activations cannot be compared position by position"
        )
    return info


def _plan(model: Model, req: DiffRequest) -> DiffPlan:
    if req.model_b is None:
        raise UsageError("diff needs a second model: --model-b (model_b= in Python)")
    if not isinstance(req.model_b, Model):
        raise UsageError("model_b must be a filterscope Model (fs.load_model(...))")
    if not -1.0 <= req.threshold <= 1.0:
        raise UsageError(f"--threshold is a correlation, between -1 and 1; got {req.threshold}")
    _check_images(req)
    files = list_images(req.images)
    info = _layer(model, req.layer, "A")
    info_b = _layer(req.model_b, req.layer_b or req.layer, "B")
    settings = {
        "model": model.describe(),
        "model_b": req.model_b.describe(),
        "layer": info.name,
        "layer_b": info_b.name,
        "images": str(req.images),
        "n_images": len(files),
        "top": req.top,
        "threshold": req.threshold,
        "metric": req.metric,
        "seed": req.seed,
        "features": req.features,
        "renders": 0 if req.no_renders else N_RENDERS,
    }
    return DiffPlan(model, req.model_b, info, info_b, files, Path(req.images), req, settings)


# ---------------------------------------------------------------- the pass


def _acts(model: Model, info: LayerInfo, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Maps ``[N, C, H, W]`` of ``info`` and the logits (None when the output is not ``[N, classes]``)."""
    with (
        capture_layers(model, [info]) as cap,
        torch.inference_mode(),
    ):
        out = run(model.forward, x.to(model.device), cap)
        acts = cap.acts[info.name].float().cpu()
    logits = out.float().cpu() if isinstance(out, torch.Tensor) and out.ndim == 2 else None
    return acts, logits


@dataclass
class _Pass:
    tally: CorrelationTally
    max_a: np.ndarray  # [N, Ca] per image, max over positions
    arg_a: np.ndarray  # [N, Ca] flat position of the max
    max_b: np.ndarray
    arg_b: np.ndarray
    logits_a: torch.Tensor | None
    logits_b: torch.Tensor | None
    common: tuple[int, int]
    paired: PairedSample | None = None  # A's and B's vectors at the same sampled positions (--features)


CHECKPOINT_S = 30.0  # at most this long between two kept states of the streamed pass (--resume)


def _both_models(ctx: RunContext, p: DiffPlan) -> _Pass | None:
    """The streamed pass: every batch through A and B; None when stopped. Its state (the running sums, the
    per-image maxima and logits so far, the paired sample) is kept for ``--resume`` when it stops, when it
    ends and at most every :data:`CHECKPOINT_S`, and taken back, resuming, to go on from there."""
    import time

    n, ca, cb = len(p.files), p.info.channels, p.info_b.channels
    st = _PassState(n, ca, cb, PairedSample(ca, cb, seed=p.request.seed) if p.request.features else None)
    kept = ctx.kept("pass")
    if kept is not None:
        st.restore(*kept)
    last = time.perf_counter()
    with ctx.progress(n, "diff: both models", unit="image", initial=st.done) as bar:
        for i in range(st.done, n, BATCH):
            if ctx.stop():
                ctx.mark_partial(i, n, "images of the pass through both models")
                return None
            ims = [load_image(f) for f in p.files[i : i + BATCH]]
            a, out_a = _acts(p.model, p.info, torch.cat([model_input(p.model, im) for im in ims]))
            b, out_b = _acts(p.model_b, p.info_b, torch.cat([model_input(p.model_b, im) for im in ims]))
            st.add(i, a, b, out_a, out_b)
            bar.update(len(ims))
            if st.done == n or ctx.stop() or time.perf_counter() - last > CHECKPOINT_S:
                ctx.keep("pass", *st.state())
                last = time.perf_counter()
    return st.result()


class _PassState:
    """What the streamed pass gathers, batch by batch, and its exact state for ``--resume``."""

    def __init__(self, n: int, ca: int, cb: int, paired: PairedSample | None) -> None:
        self.done = 0
        self.tally = CorrelationTally(ca, cb)
        self.max_a, self.arg_a = np.zeros((n, ca), np.float32), np.zeros((n, ca), np.int32)
        self.max_b, self.arg_b = np.zeros((n, cb), np.float32), np.zeros((n, cb), np.int32)
        self.la: list[torch.Tensor] | None = []
        self.lb: list[torch.Tensor] | None = []
        self.common = (0, 0)
        self.paired = paired

    def add(self, i: int, a: torch.Tensor, b: torch.Tensor, out_a, out_b) -> None:
        """One batch's maps ``a``, ``b`` and logits, its first image ``i``."""
        pa, pb = common_maps(a, b)
        self.common = tuple(pa.shape[2:])
        self.tally.update(pa, pb)
        if self.paired is not None:
            self.paired.add(i, pa, pb)
        j = slice(i, i + a.shape[0])
        m, k = a.flatten(2).max(2)
        self.max_a[j], self.arg_a[j] = m.numpy(), k.numpy()
        m, k = b.flatten(2).max(2)
        self.max_b[j], self.arg_b[j] = m.numpy(), k.numpy()
        self.la = self.la + [out_a] if self.la is not None and out_a is not None else None
        self.lb = self.lb + [out_b] if self.lb is not None and out_b is not None else None
        self.done = i + a.shape[0]

    def result(self) -> _Pass:
        return _Pass(
            self.tally,
            self.max_a,
            self.arg_a,
            self.max_b,
            self.arg_b,
            torch.cat(self.la) if self.la else None,
            torch.cat(self.lb) if self.lb else None,
            self.common,
            self.paired,
        )

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, meta)``: everything gathered so far, exactly (the paired sample's random state too)."""
        t, d = self.tally, self.done
        arrays = {"sa": t.sa, "sb": t.sb, "saa": t.saa, "sbb": t.sbb, "sab": t.sab}
        arrays.update(max_a=self.max_a[:d], arg_a=self.arg_a[:d], max_b=self.max_b[:d], arg_b=self.arg_b[:d])
        for side, logits in (("la", self.la), ("lb", self.lb)):
            if logits:
                arrays[side] = torch.cat(logits).numpy()
        meta = {"done": d, "n": t.n, "common": list(self.common), "la": self.la is not None, "lb": self.lb is not None}
        if self.paired is not None:
            s = self.paired.sample
            arrays.update(rows=s.data, meta=s.provenance)
            meta.update(seen=s.seen, rng=s.rng.bit_generator.state)
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """The state :meth:`state` kept."""
        t, d = self.tally, int(meta["done"])
        t.n, t.sa, t.sb, t.saa, t.sbb, t.sab = int(meta["n"]), *(arrays[k] for k in ("sa", "sb", "saa", "sbb", "sab"))
        for name in ("max_a", "arg_a", "max_b", "arg_b"):
            getattr(self, name)[:d] = arrays[name]
        self.la = [torch.from_numpy(arrays["la"])] if "la" in arrays else [] if meta["la"] else None
        self.lb = [torch.from_numpy(arrays["lb"])] if "lb" in arrays else [] if meta["lb"] else None
        self.common, self.done = tuple(meta["common"]), d
        if self.paired is not None:
            s = self.paired.sample
            m = len(arrays["rows"])
            s.rows[:m], s.meta[:m] = arrays["rows"], arrays["meta"]
            s.seen, s.rng.bit_generator.state = int(meta["seen"]), meta["rng"]


def margin_attribution(
    model: Model,
    info: LayerInfo,
    files: list[Path],
    new: np.ndarray,
    old: np.ndarray,
    stop: Callable[[], bool],
    pieces: Pieces | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray | None:
    """``[len(files), C]``: gradient × activation of ``logit[new] − logit[old]`` at ``info``, summed over
    positions, per image (one forward and one backward of ``model`` per batch). None when stopped.
    ``pieces``: each batch's rows are kept there and, resuming, taken back; ``on_batch(n)``: after each batch
    of ``n`` images."""
    view = map_views(model, [info.name]).get(info.name)
    module = dict(model.net.named_modules())[info.name]
    held: dict[str, torch.Tensor] = {}
    seen = [0]

    def hook(mod, inputs, output):  # the layer's last call: its output becomes a leaf we take gradients at
        seen[0] += 1
        if seen[0] == info.calls:
            held["a"] = output.detach().requires_grad_(True)
            return held["a"]
        return None

    out = []
    handle = module.register_forward_hook(hook)
    try:
        for i in range(0, len(files), BATCH):
            got = pieces.get(f"attribution/{i:05d}") if pieces is not None else None
            if got is not None:
                out.append(torch.from_numpy(got[0]["rows"]))
                if on_batch is not None:
                    on_batch(len(out[-1]))
                continue
            if stop():
                return None
            x = torch.cat([model_input(model, load_image(f)) for f in files[i : i + BATCH]]).to(model.device)
            held.clear()
            seen[0] = 0
            rows = torch.arange(len(x), device=x.device)
            hi = torch.as_tensor(new[i : i + BATCH], device=x.device)
            lo = torch.as_tensor(old[i : i + BATCH], device=x.device)
            with torch.enable_grad():
                logits = model.forward(x)
                (g,) = torch.autograd.grad((logits[rows, hi] - logits[rows, lo]).sum(), held["a"])
            ga = g * held["a"].detach()
            ga = view(ga) if view is not None else ga
            out.append(ga.float().flatten(2).sum(2).cpu())
            if pieces is not None:
                pieces.put(f"attribution/{i:05d}", {"rows": out[-1]})
            if on_batch is not None:
                on_batch(len(out[-1]))
    finally:
        handle.remove()
    return torch.cat(out).numpy() if out else np.zeros((0, info.channels), np.float32)


def _share(v: np.ndarray) -> np.ndarray:
    """The positive part of ``v`` as a share of its largest value (all zeros when nothing is positive)."""
    v = np.clip(np.nan_to_num(v), 0, None)
    top = float(v.max()) if v.size else 0.0
    return v / top if top > 0 else v


def _ranks(v: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Ranks of ``v`` over the live units scaled to (0, 1] (ties share their mean rank); 0 for dead units."""
    from scipy.stats import rankdata

    out = np.zeros(len(v))
    if live.any():
        out[live] = rankdata(v[live]) / live.sum()
    return out


def change_scores(
    r: np.ndarray, attr_all: np.ndarray, attr_classes: list[np.ndarray], dead: np.ndarray
) -> dict[str, np.ndarray]:
    """Every candidate measure of :data:`METRICS` per unit of B (nan for dead units): higher = more changed.
    ``attr_all``: flip attribution over every flipped image; ``attr_classes``: per listed class (first first)."""
    drop = 1.0 - np.clip(np.nan_to_num(r, nan=1.0), 0.0, 1.0)
    att = _share(attr_all)
    first = _share(attr_classes[0]) if attr_classes else np.zeros_like(drop)
    live = ~dead
    out = {
        "rank": (_ranks(first, live) + _ranks(drop, live)) / 2,
        "mean": (first + drop) / 2,
        "mean_all": (att + drop) / 2,
        "class": first,
        "attribution": att,
        "r": drop,
    }
    for v in out.values():
        v[dead] = np.nan
    return out


def rank_units(scores: dict[str, np.ndarray], metric: str) -> np.ndarray:
    """B's channels, most changed first by ``metric`` (ties: 1 − r, then channel); dead units last."""
    s, drop = scores[metric], scores["r"]
    dead = np.isnan(s)
    key = (np.arange(len(s)), -np.nan_to_num(drop, nan=-1), -np.nan_to_num(s, nan=-1), dead)
    return np.lexsort(key)


def _exemplars(maxes: np.ndarray, args: np.ndarray, c: int, width: int, names: list[str], k: int) -> list[dict]:
    order = np.argsort(-maxes[:, c], kind="stable")[:k]
    return [
        {
            "image": names[i],
            "x": int(args[i, c] % width),
            "y": int(args[i, c] // width),
            "activation": round(float(maxes[i, c]), 5),
        }
        for i in order
    ]


def _labels(p: DiffPlan, ps: _Pass) -> tuple[list[str] | None, str | None]:
    """The images' labels for the names (class sub-folders, else B's top-1 predictions) and where they came
    from; ``(None, None)`` when the folder has neither or only one label."""
    from .names import image_labels

    preds = ps.logits_b.argmax(1).tolist() if ps.logits_b is not None else None
    try:  # without predictions only class sub-folders can label the images
        labels, source = image_labels(p.files, p.root, p.model_b if preds is not None else None, predictions=preds)
    except UsageError:
        return None, None
    if len(set(labels)) < 2:
        return None, None
    return labels, "class sub-folders" if source == "folders" else "B's top-1 predictions"


def _names(p: DiffPlan, ps: _Pass, labels: list[str] | None) -> tuple[list, list]:
    """INVERT names of B's and A's units (each unit's per-image maximum against the images' labels); no names
    without labels."""
    from .names import name_units

    if labels is None:
        return [None] * p.info_b.channels, [None] * p.info.channels
    return name_units(ps.max_b, labels), name_units(ps.max_a, labels)


def _class_name(models: tuple[Model, Model], c: int) -> str:
    for m in models:
        if m.categories and c < len(m.categories):
            return m.categories[c]
    return str(c)


def _compute(ctx: RunContext, p: DiffPlan) -> Diff | None:
    req = p.request
    pc = Pieces(ctx)
    with ctx.timed("pass"):
        ps = _both_models(ctx, p)
    if ps is None:
        return None
    names = [f.relative_to(p.root).as_posix() for f in p.files]
    r = ps.tally.correlation()
    sda, sdb = ps.tally.std()
    dead_a, dead_b = dead_units(ps.max_a.max(0), sda), dead_units(ps.max_b.max(0), sdb)
    m = match_units(r, dead_a, dead_b, req.threshold)

    # what the change does: flips, classes, the units that carry them
    cb = p.info_b.channels
    classes: list[dict] = []
    attr_all, attr_classes = np.zeros(cb), []
    note = None
    flipped = 0
    la, lb = ps.logits_a, ps.logits_b
    if la is None or lb is None:
        note = "a model's output is not one logit per class, so no class moves are measured"
    elif la.shape[1] != lb.shape[1]:
        note = f"the models have different outputs ({la.shape[1]} and {lb.shape[1]} classes): no class moves"
    else:
        old, new = la.argmax(1).numpy(), lb.argmax(1).numpy()
        flip = np.flatnonzero(old != new)
        flipped = len(flip)
        ga = np.zeros((0, cb))
        if flipped:
            files = [p.files[i] for i in flip]
            with ctx.timed("attribution"), ctx.progress(flipped, "diff: attribution", unit="image") as bar:
                counted = [0]

                def on_batch(n: int) -> None:
                    counted[0] += n
                    bar.update(n)

                ga = margin_attribution(p.model_b, p.info_b, files, new[flip], old[flip], ctx.stop, pc, on_batch)
            if ga is None:
                ctx.mark_partial(counted[0], flipped, "flipped images of the attribution")
                return None
            attr_all = ga.mean(0)
        classes = _classes(la, lb, old, new, flip, ga, names, (p.model_b, p.model), m)
        attr_classes = [c.pop("_attr") for c in classes]
        attr_classes = [a for a in attr_classes if a is not None]

    with ctx.timed("names"):
        labels, label_source = _labels(p, ps)
        names_b, names_a = _names(p, ps, labels)
    features = None
    if ps.paired is not None:
        with ctx.timed("features"), ctx.progress(2, "diff: feature dictionaries", unit="model") as bar:
            features = feature_diff(
                ps.paired,
                req.features,
                req.threshold,
                names,
                labels,
                label_source,
                p.files,
                top=req.top,
                seed=req.seed,
                device=p.model_b.device,
                stop=ctx.stop,
                pieces=pc,
                on_side=bar.update,
            )
        if features is None:
            done = sum(ctx.run.done(f"{KEPT}:features/{t}") for t in "ab")
            ctx.mark_partial(done, 2, "feature dictionaries (one per model)")
            return None
    scores = change_scores(m.r, attr_all, attr_classes, dead_b)
    order = rank_units(scores, req.metric)
    wa, wb = p.info.shape[2], p.info_b.shape[2]
    units = []
    for c in order:
        c = int(c)
        dead = bool(dead_b[c])
        partner = int(m.partner[c])
        rr = None if dead else round(float(m.r[c]), 4)
        matched = not dead and partner >= 0 and rr is not None and rr >= req.threshold
        show_a = partner if partner >= 0 else int(m.best[c])
        units.append(
            {
                "channel": c,
                "match": partner if matched else None,
                "r": rr,
                "partner": partner if partner >= 0 else None,
                "best": None if dead else int(m.best[c]),
                "r_best": None if dead else round(float(m.r_best[c]), 4),
                "dead": dead,
                "new": not dead and not matched,
                "score": None if dead else round(float(scores[req.metric][c]), 5),
                "attribution": round(float(attr_all[c]), 6),
                "name": None if dead else names_b[c],
                "name_a": None if dead or show_a < 0 else names_a[show_a],
                "top": _exemplars(ps.max_b, ps.arg_b, c, wb, names, req.top),
                "top_a": [] if dead or show_a < 0 else _exemplars(ps.max_a, ps.arg_a, show_a, wa, names, req.top),
            }
        )
    lost = [
        {
            "channel": int(a),
            "r_best": round(float(rb), 4),
            "name": names_a[int(a)],
            "top_a": _exemplars(ps.max_a, ps.arg_a, int(a), wa, names, req.top),
        }
        for a, rb in sorted(zip(m.lost, m.lost_r), key=lambda t: t[1])
    ]
    res = Diff(
        p.model.name,
        p.model_b.name,
        p.info.name,
        p.info_b.name,
        p.info.shape,
        p.info_b.shape,
        ps.common,
        names,
        req.metric,
        req.threshold,
        r,
        units,
        lost,
        classes,
        scores,
        flipped,
        note,
        {"a": p.model, "b": p.model_b},
        p.root,
        label_source,
    )
    res.features = features
    if not req.no_renders:
        with ctx.timed("renders"):
            done, total = _render(ctx, p, res)
        if done < total:
            ctx.mark_partial(done, total, "renders (B's changed units and their partners in A)")
            return None
    res.run_dir = ctx.path
    return res


def _classes(la, lb, old, new, flip, ga, names, models, m) -> list[dict]:
    """The classes that move most (flips into, then out of, then |mean probability change|), with their
    carriers."""
    n_cls = la.shape[1]
    into = np.bincount(new[flip], minlength=n_cls)
    out = np.bincount(old[flip], minlength=n_cls)
    dp = (torch.softmax(lb, 1) - torch.softmax(la, 1)).mean(0).numpy()
    moved = into + out
    order = np.lexsort((np.arange(n_cls), -np.abs(dp), -out, -into))
    listed = []
    for c in order[:N_CLASSES]:
        c = int(c)
        if moved[c] == 0 and abs(dp[c]) < 1e-4:
            break
        rows = np.flatnonzero((new[flip] == c) | (old[flip] == c))
        attr = ga[rows].mean(0) if len(rows) else None
        carriers = []
        if attr is not None:
            for u in np.argsort(-attr, kind="stable")[:N_CARRIERS]:
                if attr[u] <= 0:
                    break
                u = int(u)
                carriers.append(
                    {
                        "channel": u,
                        "attribution": round(float(attr[u]), 6),
                        "match": int(m.partner[u]) if m.partner[u] >= 0 else None,
                        "r": None if np.isnan(m.r[u]) else round(float(m.r[u]), 4),
                    }
                )
        listed.append(
            {
                "class": c,
                "name": _class_name(models, c),
                "into": int(into[c]),
                "out_of": int(out[c]),
                "mean_prob_change": round(float(dp[c]), 5),
                "images_into": [names[int(flip[i])] for i in rows if new[flip[i]] == c][:10],
                "images_out_of": [names[int(flip[i])] for i in rows if old[flip[i]] == c][:10],
                "units": carriers,
                "_attr": attr,
            }
        )
    return listed


def _render(ctx: RunContext, p: DiffPlan, res: Diff) -> tuple[int, int]:
    """Render the top :data:`N_RENDERS` live units of B and their partners in A (render cache), each kept for
    ``--resume`` as it finishes (and, resuming, taken back); ``(finished, total)``: fewer when stopped."""
    from ..optvis.presets import default_method, get_preset
    from .stream import render_stream

    pc = Pieces(ctx)
    top = [u for u in res.units if not u["dead"]][:N_RENDERS]
    jobs = [
        ("b", p.model_b, p.info_b, [u["channel"] for u in top]),
        ("a", p.model, p.info, sorted({u["partner"] if u["partner"] is not None else u["best"] for u in top})),
    ]
    total = sum(len(c) for *_, c in jobs)
    done = 0
    with ctx.progress(total, "diff: renders", unit="filter") as bar:
        for side, model, info, chans in jobs:
            todo = []
            for c in chans:
                got = pc.get(f"render/{side}/{c:04d}")
                if got is None:
                    todo.append(c)
                    continue
                if got[0]["png"].size:
                    res.renders[(side, c)] = got[0]["png"].tobytes()
                done += 1
                bar.update(1)
            if not todo:
                continue
            settings = get_preset(default_method(info.name, model))
            for rr in render_stream(model, info, todo, settings, p.request.seed, batch=1, should_stop=ctx.stop):
                png = rr.png if rr.status == "ok" else None
                pc.put(f"render/{side}/{rr.channel:04d}", {"png": png_array(png)}, {"status": rr.status})
                if png is not None:
                    res.renders[(side, rr.channel)] = png
                done += 1
                bar.update(1)
            if ctx.stop():
                break
    return done, total


# ---------------------------------------------------------------- write


def render_file(side: str, layer: str, c: int) -> str:
    """Where a render of the diff goes: ``b/<layer>/channel_0042.png`` (model B) or ``a/<layer>/…`` (A)."""
    from ..outputs.naming import channel_file

    return f"{side}/{channel_file(layer, c)}"


def _write(ctx: RunContext, res: Diff | None) -> None:
    if res is None:
        return
    import io

    import matplotlib.pyplot as plt

    from ..outputs.figures_diff import Tiles, diff_figure
    from ..outputs.naming import REPORT, figure_file
    from ..outputs.rundir import json_bytes

    res.timings = ctx.record["timings"]
    with ctx.timed("write"):
        layer_of = {"a": res.layer, "b": res.layer_b}
        for (side, c), png in res.renders.items():
            ctx.run.write(render_file(side, layer_of[side], c), png)
        for u in res.units:
            u["render"] = render_file("b", res.layer_b, u["channel"]) if ("b", u["channel"]) in res.renders else None
            a = u["partner"] if u["partner"] is not None else u["best"]
            u["render_a"] = render_file("a", res.layer, a) if ("a", a) in res.renders else None
        rec = res.record()
        ctx.run.write("diff.json", json_bytes(rec))
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            r=res.r.astype(np.float32),
            **{f"score_{k}": v.astype(np.float32) for k, v in res.scores.items()},
        )
        ctx.run.write("diff.npz", buf.getvalue())
        tiles = Tiles(res, res.images_root)
        fig = diff_figure(res, tiles)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
        plt.close(fig)
        ctx.run.write(figure_file("diff"), buf.getvalue())
        ctx.run.write_text(REPORT, res.html(figure_png=buf.getvalue(), tiles=tiles))
        c = res.counts()
        ctx.run.result(
            "diff",
            {
                "layer": res.layer,
                "layer_b": res.layer_b,
                "metric": res.metric,
                **c,
                "first_class": res.classes[0]["class"] if res.classes else None,
                "most_changed": [u["channel"] for u in res.units[:5]],
            },
        )


def _summary(r: JobResult) -> list[str]:
    d: Diff = r.data
    c = d.counts()
    lines = [
        f"{d.model} {d.layer} → {d.model_b} {d.layer_b} · {len(d.images)} images · "
        f"{c['matched']} matched, {c['new']} new, {c['dead']} dead of {c['units']}; {c['lost']} of A lost",
    ]
    for k in d.classes[:3]:
        carriers = ", ".join(str(u["channel"]) for u in k["units"][:4]) or "—"
        lines.append(
            f"  class {k['class']} ({k['name']}): {k['into']} in, {k['out_of']} out, Δp {k['mean_prob_change']:+.3f}"
            f" · carried by {carriers}"
        )
    if d.classes_note:
        lines.append(f"  {d.classes_note}")
    if d.features is not None:
        f = d.features
        lines.append(
            f"features ({f['features']} per model): {f['matched']} of B matched, {len(f['gained'])} gained, "
            f"{len(f['lost'])} lost"
        )
    lines.append(f"most changed ({d.metric}):")
    for u in [u for u in d.units if not u["dead"]][:5]:
        match = f"A {u['match']}" if u["match"] is not None else "new"
        lines.append(f"  {u['channel']:5d}  {match:>8}  r {u['r']:+.2f}  score {u['score']:.3f}")
    lines.append(f"wrote {r.run_dir}/diff.json, figure_diff.png, report.html, run.json")
    return lines


JOB = Job(
    "diff",
    DiffRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="The diff of two models on IMAGES: units of B matched to A's, new and lost units, the classes whose "
    "predictions move and the units that carry them; diff.json, figure_diff.png, report.html.",
    renders=True,
    resumable=True,
    precheck=_check_images,
)


def diff(
    model: Model,
    images: str | Path | None = None,
    *,
    model_b: Model | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    **options,
) -> JobResult:
    """The diff of ``model`` (A) and ``model_b`` (B) on the ``images`` folder: units of B matched to A's (r,
    new, dead), most changed first, and the classes whose predictions move with the units that carry them.
    ``options``: ``layer``, ``layer_b``, ``top``, ``threshold``, ``metric``, ``seed``, ``features``,
    ``no_renders``. Writes
    ``diff.json``, ``figure_diff.png``, ``report.html`` in ``out``; ``.data`` is the :class:`Diff`.
    ``resume``: finish an interrupted run of ``out``, keeping its finished pieces."""
    return run_job(
        JOB,
        model,
        out=out,
        resume=resume,
        progress=progress,
        should_stop=should_stop,
        images=None if images is None else str(images),
        model_b=model_b,
        **options,
    )
