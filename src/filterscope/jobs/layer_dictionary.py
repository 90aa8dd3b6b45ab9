"""``filterscope dictionary``: a layer read as a dictionary — sparse-autoencoder features of any CNN layer,
learnt from the user's images, each with its exemplars, render, votes, name and score, in a browsable report.

One run (the job shape of :mod:`.contract`):

1. **Layer pass** (:func:`~.vectors.layer_vectors`): every position of every image and of ``crops`` random
   crops of each, into a uniform reservoir of at most ``max_vectors`` vectors with their provenance (local or
   Ray Data). Every :data:`HOLDOUT_EVERY`-th image (from 12 images on) is held out of training: the explained
   variance is reported on its vectors too.
2. **Basis** (``--basis``): ``sae`` — a TopK sparse autoencoder (:mod:`.sae`); ``nmf`` — the concepts' NMF
   (semi-NMF on a signed layer, :mod:`.dictionary`) at the same size; ``channels`` — the identity dictionary
   (each raw channel a feature), so the three read the same way. A second fit with another seed *and* another
   initialisation gives the **stability** (median cosine of the decoders matched one-to-one, Hungarian).
   ``dictionary.npz`` is written as soon as the basis is learnt (``--resume`` reuses it).
3. **Encode pass** (:func:`~.vectors.stream_maps`) over the whole images: per feature its frequency (share of
   positions where it is active), mean activation where active, dead (never active) and dense (active on more
   than a tenth of positions) shares, its top exemplars (one position per image, strongest first) with the
   feature's map on them, and each image's peak activation (what names and scores read).
4. **Votes** (the concepts' ``_votes``: the decoder direction added to the mean activation map, the rest of the
   network run), **names, purity and scores** (:mod:`.names`: INVERT names over the folder labels or the
   model's predictions, purity of the top images, MIS 2-AFC score), the **channels** a feature is made of
   (largest decoder weights).
5. **Renders** of the ``renders`` best-scored features' decoder directions (``direction`` objective, the
   render loop, the render cache), written as they finish; then ``dictionary.json``, exemplar strips
   ``<layer>/exemplars_0003.png`` and ``report.html`` (an index sortable and filterable by frequency, score,
   name and class, one section per feature; plain JS in the page).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ImageError, UsageError
from ..models.inputs import list_images, load_image, model_input
from ..models.layers import LayerInfo, network_layer
from ..models.model import Model
from ..outputs.images import png_bytes
from .bases import NPZ_FILE, Basis, channels_basis, load_basis, nmf_basis, sae_basis
from .contract import Job, JobResult, RunContext, opt, run_job

BASES = ("sae", "nmf", "channels")
DEFAULT_K = 16
DEFAULT_CROPS = 3
MAX_VECTORS = 65536
HOLDOUT_EVERY = 6  # every 6th image is held out of training (from HOLDOUT_MIN images on)
HOLDOUT_MIN = 12
DENSE = 0.1  # a feature active on more than this share of positions is dense
N_TOP = 8  # exemplars kept per feature
N_STRIP = 4  # exemplars shown (crop and heatmap) per feature
N_VOTES = 5
N_CHANNELS = 8
HIST_BINS = 12
STRIP_PX = 96
DEFAULT_RENDERS = 8
RENDER_BATCH = 4
# scikit-learn's coordinate-descent NMF at 653 features on 7,840 vectors of lite0's bn2 (48 photos): 15 / 40
# iterations explain 0.833 / 0.846 of the training and 0.617 / 0.638 of the held-out variance, at ~11 / 8 s
# an iteration on 1 thread (a shared machine); 200 took over half an hour. 30 keeps --basis nmf practical.
NMF_ITER = 30
DICT_FILE = "dictionary.json"


def feature_file(layer: str, j: int) -> str:
    """A feature's render: ``<layer>/feature_0003.png``."""
    return f"{layer}/feature_{j:04d}.png"


def strip_file(layer: str, j: int) -> str:
    """A feature's exemplars (crops over their heatmaps): ``<layer>/exemplars_0003.png``."""
    return f"{layer}/exemplars_{j:04d}.png"


def default_features(channels: int, vectors: int) -> int:
    """Features of the dictionary when not given: one per channel, fewer when the data is small (at least
    ~12 training vectors per feature, so that every feature is seen often enough to be learnt), at least 8."""
    return int(max(8, min(channels, vectors // 12)))


def default_k(features: int) -> int:
    """Active features per position when not given: an eighth of the features, at most :data:`DEFAULT_K`."""
    return int(min(DEFAULT_K, max(1, features // 8)))


def default_epochs(vectors: int) -> int:
    """Epochs when not given: ~600 optimiser steps of 256 vectors, between 10 and 60 epochs (on 48 photos of
    efficientnet_lite0's bn2, 653 features, k 16: 15 epochs explain 0.835 of the training vectors' variance
    and 0.489 held out, 39 epochs 0.849 and 0.489)."""
    return int(min(60, max(10, round(600 * 256 / max(1, vectors)))))


# ---------------------------------------------------------------- request and plan


@dataclass
class DictionaryRequest:
    """The arguments of ``filterscope dictionary``."""

    images: str | None = opt(None, "Folder of images (class sub-folders, if any, are the labels).", argument=True)
    layer: str = opt("default", "Layer with spatial maps.")
    features: int | None = opt(
        None, "Features of the dictionary [default: one per channel, fewer on small data].", min=1
    )
    k: int | None = opt(None, f"Active features per position (sae) [default: {DEFAULT_K}].")
    seed: int = opt(0, "Seed of the crops, the sample and the training.", min=0)
    epochs: int | None = opt(None, "Training epochs (sae) [default: ~600 steps].")
    basis: str = opt("sae", "sae (sparse autoencoder), nmf, or channels (the identity dictionary).", choices=BASES)
    crops: int = opt(DEFAULT_CROPS, "Random crops per image in the layer pass.")
    max_vectors: int = opt(MAX_VECTORS, "Vectors kept from the layer pass (a uniform sample).")
    renders: int = opt(DEFAULT_RENDERS, "Features rendered (the best scored).")
    no_renders: bool = opt(False, "Skip the renders.")
    method: str | None = opt(None, "Render preset [default: the renders' default].")
    compare: bool = opt(False, "Also fit NMF at the same size for the metrics table (slow on wide layers).")
    backend: str = opt("local", "local, or ray (the layer pass on Ray Data).")
    address: str | None = opt(None, "Ray cluster address (with --backend ray).")
    workers: int = opt(2, "Ray workers (with --backend ray).", min=1)


@dataclass
class DictionaryPlan:
    model: Model
    info: LayerInfo
    root: Path
    files: list[Path]
    basis: str
    features: int | None
    k: int | None
    epochs: int | None
    seed: int
    crops: int
    max_vectors: int
    renders: int
    render_settings: object
    backend: str
    address: str | None
    workers: int
    compare: bool
    settings: dict


def _check_images(req: DictionaryRequest) -> None:
    if not req.images:
        raise UsageError("dictionary needs a folder of images")
    p = Path(req.images)
    if not p.is_dir():
        raise ImageError(f"no such folder: {p}")
    list_images(p)


def _int(name: str, v, low: int) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
        raise UsageError(f"--{name.replace('_', '-')} must be a whole number ≥ {low}, got {v!r}")


def _plan(model: Model, req: DictionaryRequest) -> DictionaryPlan:
    from .activations import check_maps_layer
    from .concepts import _readable

    _check_images(req)
    if req.basis not in BASES:
        raise UsageError(f"unknown basis {req.basis!r}", hint="use " + ", ".join(BASES))
    for name in ("features", "k", "epochs"):
        _int(name, getattr(req, name), 1)
    for name in ("crops", "renders", "seed"):
        _int(name, getattr(req, name), 0)
    _int("max_vectors", req.max_vectors, 16)
    k = req.k if req.k is not None else default_k(req.features) if req.features else None
    if req.basis == "sae" and req.features is not None and k >= req.features:
        raise UsageError(f"--k {k} must be smaller than --features {req.features}")
    info = network_layer(model, req.layer, "dictionary")
    check_maps_layer(info, "dictionary")
    if req.basis == "channels" and req.features not in (None, info.channels):
        raise UsageError(f"--basis channels has the layer's {info.channels} channels as features, not {req.features}")
    files = list_images(req.images)
    readable = [f for f in files if _readable(f)]
    if not readable:
        raise ImageError(f"none of the {len(files)} image files in {req.images} can be read")
    ray = None
    if req.backend not in ("local", "ray"):
        raise UsageError(f"unknown backend {req.backend!r}: choose local or ray")
    if req.backend == "ray":
        from .vectors import ray_settings

        ray = ray_settings(model, req.address, req.workers)
    render_settings = None
    if not req.no_renders and req.renders > 0:
        from ..optvis.presets import DEFAULT_METHOD, get_preset

        render_settings = get_preset(req.method or DEFAULT_METHOD).for_model(model)
    settings = {
        "model": model.describe(),
        "images": str(req.images),
        "layer": info.name,
        "basis": req.basis,
        "features": req.features,
        "k": k if req.basis == "sae" else None,
        "epochs": req.epochs,
        "seed": req.seed,
        "crops": req.crops,
        "max_vectors": req.max_vectors,
        "holdout": f"every {HOLDOUT_EVERY}th image from {HOLDOUT_MIN} images on",
        "renders": 0 if render_settings is None else req.renders,
        "render": render_settings.as_dict() if render_settings is not None else None,
        "compare": req.compare,
        "backend": req.backend,
        **({"ray": ray} if ray else {}),
    }
    return DictionaryPlan(
        model, info, Path(req.images), files, req.basis, req.features, k, req.epochs, req.seed, req.crops,
        req.max_vectors, 0 if render_settings is None else req.renders, render_settings, req.backend, req.address,
        req.workers, req.compare, settings,
    )  # fmt: skip


# ---------------------------------------------------------------- bases


def _fit(p: DictionaryPlan, kind: str, train: np.ndarray, features: int, seed: int, ctx: RunContext | None) -> Basis:
    """One basis of ``kind`` learnt on ``train``."""
    if kind == "channels":
        return channels_basis(train.shape[1])
    if kind == "nmf":
        from . import dictionary as dic

        method = "semi-nmf" if train.min() < 0 else "nmf"
        d = dic.fit(train, features, method, seed, max_iter=NMF_ITER)
        return nmf_basis(d, {"method": method, "fit_s": d.fit_seconds})
    from .sae import SAEConfig, fit_sae

    cfg = SAEConfig(features=features, k=p.k, epochs=p.epochs or default_epochs(len(train)), seed=seed)
    bar = ctx.progress(cfg.epochs, f"training the dictionary (seed {seed})", unit="epoch") if ctx is not None else None
    last = [0]

    def tick(e: int) -> None:
        if bar is not None:
            bar.update(e - last[0])
            last[0] = e

    device = p.model.device if str(p.model.device).startswith("cuda") else "cpu"
    try:
        res = fit_sae(train, cfg, device=device, progress=tick, stop=ctx.stop if ctx is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return sae_basis(res.sae, {"config": cfg.as_dict(), "fit_s": res.seconds, "history": res.history[-1:]})


def stability(a: np.ndarray, b: np.ndarray) -> float:
    """Median cosine of two decoders' rows matched one-to-one (Hungarian, :func:`~.dictionary.match`)."""
    from .dictionary import match

    return float(np.median(match(a, b)[1]))


METRIC_CHUNK = 8192  # rows encoded at a time for the metrics: memory stays O(chunk × F), not O(sample × F)


def _explained_variance(basis: Basis, rows: np.ndarray) -> float:
    """1 − ‖A − Â‖² / ‖A − mean(A)‖² (as :func:`~.dictionary.explained_variance`), reconstructed by chunks."""
    mean = rows.mean(0, dtype=np.float64)
    err = tot = 0.0
    for s in range(0, len(rows), METRIC_CHUNK):
        x = rows[s : s + METRIC_CHUNK]
        err += float(((x - basis.reconstruct(x)).astype(np.float64) ** 2).sum())
        tot += float(((x - mean) ** 2).sum())
    return 1.0 - err / max(tot, 1e-12)


def basis_metrics(basis: Basis, train: np.ndarray, held: np.ndarray | None, second: Basis | None) -> dict:
    """Explained variance (train, held out), L0, dead and dense shares over the sample, stability."""
    count = np.zeros(basis.features, dtype=np.int64)
    for s in range(0, len(train), METRIC_CHUNK):
        count += (basis.encode(train[s : s + METRIC_CHUNK]) > 0).sum(0)
    freq = count / max(1, len(train))
    out = {
        "features": basis.features,
        "explained_variance": round(_explained_variance(basis, train), 4),
        "explained_variance_held_out": (
            round(_explained_variance(basis, held), 4) if held is not None and len(held) else None
        ),
        "l0": round(float(count.sum() / max(1, len(train))), 2),
        "dead_fraction": round(float((freq == 0).mean()), 4),
        "dense_fraction": round(float((freq > DENSE).mean()), 4),
        "stability": round(stability(basis.decoder, second.decoder), 4) if second is not None else None,
    }
    if basis.kind == "channels":
        out["stability"] = 1.0  # the identity: the same at every seed
    return out


# ---------------------------------------------------------------- the encode pass


@dataclass
class EncodeStats:
    freq: np.ndarray  # [F] share of positions active
    mean: np.ndarray  # [F] mean activation where active
    peaks: np.ndarray  # [images, F] each image's peak activation
    images: list[int]  # file index of each row of peaks
    top: list[list[tuple[float, int, int, int]]]  # per feature (activation, file index, y, x), strongest first
    maps: dict[tuple[int, int], np.ndarray]  # (feature, file index) → its map on the image (float16)
    positions: int
    map_size: tuple[int, int]


def encode_pass(p: DictionaryPlan, basis: Basis, ctx: RunContext | None) -> EncodeStats:
    """Every position of every whole image encoded: see the module docstring (step 3)."""
    from .vectors import stream_maps

    f = basis.features
    count = np.zeros(f, np.int64)
    total = np.zeros(f, np.float64)
    peaks, images = [], []
    top_v = np.full((f, N_TOP), -np.inf, np.float32)
    top_meta = np.zeros((f, N_TOP, 3), np.int64)  # file index, y, x
    maps: dict[tuple[int, int], np.ndarray] = {}
    n_pos = 0
    h = w = 0
    stop = ctx.stop if ctx is not None else None
    bar = ctx.progress(len(p.files), "features over the images", unit="image") if ctx is not None else None
    for index, m, _ in stream_maps(p.model, p.info, p.files, 8, stop):
        b, c, h, w = m.shape
        rows = m.permute(0, 2, 3, 1).reshape(-1, c).numpy()
        z = basis.encode(rows).reshape(b, h * w, f)
        act = z > 0
        count += act.sum((0, 1))
        total += np.where(act, z, 0).sum((0, 1))
        n_pos += b * h * w
        pk_pos = z.argmax(1)  # [b, F]
        pk = np.take_along_axis(z, pk_pos[:, None, :], 1)[:, 0]  # [b, F]
        peaks.append(pk.astype(np.float32))
        images.extend(int(i) for i in index)
        for bi in range(b):
            better = pk[bi] > top_v[:, -1]
            for j in np.nonzero(better & (pk[bi] > 0))[0]:
                slot = int(np.searchsorted(-top_v[j], -pk[bi, j], side="right"))
                top_v[j, slot + 1 :] = top_v[j, slot:-1].copy()
                top_meta[j, slot + 1 :] = top_meta[j, slot:-1].copy()
                y, x = divmod(int(pk_pos[bi, j]), w)
                top_v[j, slot] = pk[bi, j]
                top_meta[j, slot] = (int(index[bi]), y, x)
                if slot < N_STRIP:
                    maps[(int(j), int(index[bi]))] = z[bi, :, j].reshape(h, w).astype(np.float16)
        if bar is not None:
            bar.update(b)
    if bar is not None:
        bar.close()
    top = []
    for j in range(f):
        ok = np.isfinite(top_v[j])
        top.append([(float(top_v[j, s]), *map(int, top_meta[j, s])) for s in np.nonzero(ok)[0]])
        keep = {e[1] for e in top[j][:N_STRIP]}
        for key in [k for k in maps if k[0] == j and k[1] not in keep]:
            del maps[key]
    return EncodeStats(
        freq=count / max(1, n_pos),
        mean=np.where(count > 0, total / np.maximum(count, 1), 0.0),
        peaks=np.concatenate(peaks) if peaks else np.zeros((0, f), np.float32),
        images=images,
        top=top,
        maps=maps,
        positions=n_pos,
        map_size=(h, w),
    )


def votes(p: DictionaryPlan, decoder: np.ndarray, mean_vector: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """``[F, classes]``: each logit's rise when a feature's direction (× its typical strong activation) is
    added at every position of the mean activation map (the concepts' ``_votes``, in chunks of 64)."""
    from .concepts import _votes

    out = [
        _votes(p.model, p.info, decoder[s : s + 64], mean_vector, peak[s : s + 64]) for s in range(0, len(decoder), 64)
    ]
    return np.concatenate(out)


# ---------------------------------------------------------------- the job's result


@dataclass
class Feature:
    feature: int
    frequency: float
    mean: float
    top: list[dict]
    channels: list[dict]
    votes: list[dict]
    histogram: dict
    name: dict | None = None
    purity: dict | None = None
    score: float | None = None
    render: str | None = None
    strip: str | None = None
    render_record: dict | None = None

    def record(self) -> dict:
        return {
            "feature": self.feature,
            "frequency": round(self.frequency, 6),
            "mean": round(self.mean, 5),
            "top": self.top,
            "name": self.name,
            "purity": self.purity,
            "score": self.score,
            "channels": self.channels,
            "votes": self.votes,
            "histogram": self.histogram,
            "render": self.render,
            "exemplars": self.strip,
        }


@dataclass
class DictionaryResult:
    """What a run found (``JobResult.data``)."""

    model: str
    layer: str
    basis: str
    map_size: tuple[int, int]
    metrics: dict
    compared: dict  # basis → its metrics at the same size (channels always; nmf with --compare)
    features: list[Feature]
    data: dict
    scoring: dict
    arrays: dict
    status: str = "complete"
    timings: dict = field(default_factory=dict)
    strips: dict = field(default_factory=dict, repr=False)  # feature → PNG bytes

    def record(self) -> dict:
        return {
            "layer": self.layer,
            "basis": self.basis,
            "map_size": list(self.map_size),
            "metrics": self.metrics,
            "compared": self.compared,
            "data": self.data,
            "scoring": self.scoring,
            "features": [f.record() for f in self.features],
        }


class _Stopped(Exception):
    pass


def _labels(p: DictionaryPlan, lv) -> tuple[list[str] | None, str | None]:
    from .names import image_labels

    try:
        preds = [lv.predictions.get(i, 0) for i in range(len(p.files))]
        return image_labels(p.files, p.root, p.model, preds)
    except UsageError:
        return None, None


def _compute(ctx: RunContext, p: DictionaryPlan) -> DictionaryResult | None:
    from .vectors import layer_vectors

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    # 1. the layer pass
    lv = layer_vectors(
        p.model, p.info, p.files, crops=p.crops, max_vectors=p.max_vectors, seed=p.seed, backend=p.backend,
        address=p.address, workers=p.workers, root=p.root, progress=ctx.show_progress, stop=ctx.stop,
        bars=ctx.progress,  # the pass's bar is the job's: the explorer's page follows it (issue 44)
    )  # fmt: skip
    timings["layer_pass_s"] = time.perf_counter() - t0
    if ctx.stop():
        ctx.mark_partial(0, 1, "layer passes", resumable=True)
        return None
    readable = sorted(lv.predictions)
    held_imgs = set(readable[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY]) if len(readable) >= HOLDOUT_MIN else set()
    held_mask = np.isin(lv.image, list(held_imgs))
    train, held = lv.vectors[~held_mask], (lv.vectors[held_mask] if held_imgs else None)
    n_feat = p.info.channels if p.basis == "channels" else (p.features or default_features(p.info.channels, len(train)))
    if p.k is None:
        p.k = default_k(n_feat)
    if p.basis == "sae" and p.k >= n_feat:
        raise UsageError(f"--k {p.k} must be smaller than the {n_feat} features")
    if len(train) < n_feat and p.basis != "channels":
        raise UsageError(f"{len(train)} training vectors are fewer than the {n_feat} features; add images or crops")

    # 2. the basis (reused on --resume) and its twin for stability
    t = time.perf_counter()
    npz = ctx.run.file(NPZ_FILE)
    basis = load_basis(npz, p.basis, p.info.channels) if NPZ_FILE in ctx.record["files"] else None
    if basis is None:
        basis = _fit(p, p.basis, train, n_feat, p.seed, ctx)
        if ctx.stop():
            ctx.mark_partial(0, 1, "dictionaries", resumable=True)
            return None
        ctx.run.write(NPZ_FILE, _npz(basis, lv, p))
        ctx.run.save()
    second = None
    if p.basis != "channels":
        second = _fit(p, p.basis, train, n_feat, p.seed + 1, ctx)  # another seed: another initialisation draw
        if ctx.stop():
            ctx.mark_partial(0, 1, "dictionaries", resumable=True)
            return None
        ctx.run.write(NPZ_FILE, _npz(basis, lv, p, second))  # with the twin's decoder: per-feature stability
    timings["dictionary_s"] = time.perf_counter() - t
    metrics = basis_metrics(basis, train, held, second)
    compared = {}
    if p.basis != "channels":
        compared["channels"] = basis_metrics(channels_basis(p.info.channels), train, held, None)
    if p.compare and p.basis != "nmf":
        t = time.perf_counter()
        nmf = _fit(p, "nmf", train, n_feat, p.seed, None)
        nmf2 = _fit(p, "nmf", train, n_feat, p.seed + 1, None)
        compared["nmf"] = {**basis_metrics(nmf, train, held, nmf2), "fit_s": nmf.info.get("fit_s")}
        timings["compare_s"] = time.perf_counter() - t

    # 3. the encode pass
    t = time.perf_counter()
    st = encode_pass(p, basis, ctx)
    timings["encode_pass_s"] = time.perf_counter() - t
    if ctx.stop():
        ctx.mark_partial(0, 1, "encode passes", resumable=True)
        return None
    metrics["dead_fraction_images"] = round(float((st.freq == 0).mean()), 4)
    metrics["dense_fraction_images"] = round(float((st.freq > DENSE).mean()), 4)

    # 4. votes, names, scores, channels
    t = time.perf_counter()
    peak = np.percentile(st.peaks, 90, axis=0) if len(st.peaks) else np.ones(basis.features)
    rise = votes(p, basis.decoder, lv.vectors.mean(0), np.maximum(peak, 1e-6))
    cats = p.model.categories or []
    labels, source = _labels(p, lv)
    described, scoring = _describe(p, st, labels, source)
    timings["describe_s"] = time.perf_counter() - t
    feats = []
    for j in range(basis.features):
        row = basis.decoder[j]
        chans = np.argsort(-np.abs(row), kind="stable")[:N_CHANNELS]
        vt = np.argsort(-rise[j], kind="stable")[:N_VOTES]
        edges = np.linspace(0, float(st.peaks[:, j].max()) if len(st.peaks) else 1.0, HIST_BINS + 1)
        counts = np.histogram(st.peaks[:, j], bins=edges)[0] if edges[-1] > 0 else np.zeros(HIST_BINS, int)
        feats.append(
            Feature(
                feature=j,
                frequency=float(st.freq[j]),
                mean=float(st.mean[j]),
                top=[
                    {"image": _rel(p, i), "x": x, "y": y, "activation": round(v, 5)} for v, i, y, x in st.top[j]
                ],
                channels=[{"channel": int(c), "weight": round(float(row[c]), 4)} for c in chans if row[c] != 0],
                votes=[
                    {"class": int(c), "name": _cat(cats, c), "logit_rise": round(float(rise[j, c]), 4)} for c in vt
                ],
                histogram={"of": "peak activation per image", "edges": [round(float(e), 4) for e in edges],
                           "counts": [int(c) for c in counts]},
                **described[j],
            )
        )  # fmt: skip

    # 5. renders (the best scored first), written as they finish
    t = time.perf_counter()
    done = _render(ctx, p, basis, feats)
    timings["render_s"] = time.perf_counter() - t
    t = time.perf_counter()
    strips = _strips(p, st, feats)
    timings["exemplars_s"] = time.perf_counter() - t
    data = {
        "images": len(p.files),
        "readable": lv.used,
        "skipped_unreadable": lv.skipped,
        "held_out_images": len(held_imgs),
        "crops_per_image": p.crops,
        "vectors_seen": lv.seen,
        "vectors_sampled": len(lv),
        "vectors_train": int(len(train)),
        "vectors_held_out": int(0 if held is None else len(held)),
        "positions_encoded": st.positions,
        "fit": basis.info,
    }
    res = DictionaryResult(
        p.model.name, p.info.name, p.basis, st.map_size, metrics, compared, feats, data, scoring, basis.arrays,
        timings={k: round(v, 3) for k, v in timings.items()}, strips=strips,
    )  # fmt: skip
    if p.renders and done < min(p.renders, len(feats)):
        ctx.mark_partial(done, min(p.renders, len(feats)), "feature renders")
        res.status = "partial"
    ctx.record["timings"].update(res.timings)
    return res


def _cat(cats: list[str], c) -> str:
    return cats[c] if c < len(cats) else str(int(c))


def _rel(p: DictionaryPlan, i: int) -> str:
    return p.files[i].relative_to(p.root).as_posix()


def _npz(basis: Basis, lv, p: DictionaryPlan, twin: Basis | None = None) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        basis=np.array(basis.kind),
        layer=np.array(p.info.name),
        mean_vector=lv.vectors.mean(0).astype(np.float32),
        **basis.arrays,
        **({"decoder": basis.decoder.astype(np.float32)} if "decoder" not in basis.arrays else {}),
        **({"twin_decoder": twin.decoder.astype(np.float32)} if twin is not None else {}),
    )
    return buf.getvalue()


def _describe(p: DictionaryPlan, st: EncodeStats, labels, source) -> tuple[list[dict], dict]:
    """Name, purity and score of every feature from the images' peak activations (:mod:`.names`)."""
    from .names import default_similarity, describe_units, mis_min_images, scoring_record

    f = st.peaks.shape[1]
    if len(st.images) == 0:
        return [{} for _ in range(f)], {}
    lab = [labels[i] for i in st.images] if labels is not None else None
    sim = default_similarity() if len(st.images) >= mis_min_images() else None
    embed = sim.embed([p.files[i] for i in st.images]) if sim is not None else None
    out = describe_units(st.peaks, lab, top=9, embed=embed)
    return out, scoring_record(source, sim, len(st.images))


def _render(ctx: RunContext, p: DictionaryPlan, basis: Basis, feats: list[Feature]) -> int:
    """Render the ``p.renders`` best-scored features (score, then frequency), ``RENDER_BATCH`` at a time,
    each written as soon as its batch finishes; renders an earlier (resumed) run wrote are kept."""
    if not p.renders:
        return 0
    from ..optvis.objectives import direction
    from ..optvis.render import Renderer, channel_seed
    from ..outputs.cache import active_cache, render_key

    order = sorted(
        (f for f in feats if f.frequency > 0), key=lambda f: (-(f.score if f.score is not None else -1), -f.frequency)
    )[: p.renders]
    cache = active_cache() if p.model.in_channels <= 3 else None
    renderer = None
    done = 0
    todo = []
    for f in order:
        rel = feature_file(p.info.name, f.feature)
        if rel in ctx.record["files"] and ctx.run.file(rel).is_file():
            f.render, done = rel, done + 1
            continue
        obj = direction(p.info.name, torch.from_numpy(basis.decoder[f.feature].astype(np.float32)))
        seed = channel_seed(p.seed, f.feature)
        key, fields = render_key(p.model, obj, p.render_settings, seed, layer=p.info.name)
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            ctx.run.write(rel, hit.png)
            f.render, done = rel, done + 1
            continue
        todo.append((f, obj, seed, key, fields, rel))
    bar = ctx.progress(len(todo), "feature renders", unit="feature")
    for s in range(0, len(todo), RENDER_BATCH):
        if ctx.stop():
            break
        chunk = todo[s : s + RENDER_BATCH]
        renderer = renderer or Renderer(p.model, p.render_settings)
        out = renderer.render([c[1] for c in chunk], [c[2] for c in chunk], should_stop=ctx.stop)
        if out.interrupted:
            break
        for i, (f, _, _, key, fields, rel) in enumerate(chunk):
            if out.status[i] != "ok":
                continue
            png = png_bytes(out.images[i])
            ctx.run.write(rel, png)
            f.render, done = rel, done + 1
            rec = {"activation_before": round(out.before[i], 6), "activation_after": round(out.after[i], 6)}
            if cache is not None:
                cache.put(key, png, {**fields, **rec, "status": "ok"})
        ctx.run.save()
        bar.update(len(chunk))
    bar.close()
    return done


def _strips(p: DictionaryPlan, st: EncodeStats, feats: list[Feature]) -> dict[int, bytes]:
    """Per live feature: its first ``N_STRIP`` exemplars as crops around the peak (top row) and the same crops
    with the feature's map over them (bottom row, one scale per feature), one PNG."""
    import matplotlib
    from torch.nn import functional as F
    from torchvision.transforms.v2 import functional as TF

    from .concepts import _peak_box

    cmap = matplotlib.colormaps["inferno"]
    cache: dict[int, torch.Tensor] = {}
    out = {}
    h, w = st.map_size
    for f in feats:
        if not st.top[f.feature]:
            continue
        vmax = max(st.top[f.feature][0][0], 1e-8)
        tiles, heats = [], []
        for _, i, y, x in st.top[f.feature][:N_STRIP]:
            if i not in cache:
                cache[i] = model_input(p.model, load_image(p.files[i]))[0, :3].float()
            img = cache[i]
            size = img.shape[-1]
            left, top, right, bottom = _peak_box(y * w + x, (h, w), size)
            crop = TF.resize(img[:, top:bottom, left:right], [STRIP_PX, STRIP_PX], antialias=True).clamp(0, 1)
            tiles.append(crop)
            m = st.maps.get((f.feature, i))
            if m is None:
                heats.append(crop)
                continue
            full = F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(size, size), mode="bilinear")
            part = F.interpolate(full[:, :, top:bottom, left:right], size=(STRIP_PX, STRIP_PX), mode="bilinear")[0, 0]
            heat = torch.from_numpy(cmap((part / vmax).clamp(0, 1).numpy())[..., :3]).permute(2, 0, 1).float()
            heats.append(0.45 * crop + 0.55 * heat)
        out[f.feature] = png_bytes(torch.cat([torch.cat(tiles, 2), torch.cat(heats, 2)], 1).clamp(0, 1))
    return out


def _write(ctx: RunContext, res: DictionaryResult | None) -> None:
    if res is None:
        return
    from ..outputs.naming import REPORT
    from ..outputs.rundir import json_bytes

    for j, png in res.strips.items():
        rel = strip_file(res.layer, j)
        ctx.run.write(rel, png)
        res.features[j].strip = rel
    rec = res.record()
    ctx.run.write(DICT_FILE, json_bytes(rec))
    ctx.record["dictionary"] = {
        "layer": res.layer,
        "basis": res.basis,
        "features": len(res.features),
        "metrics": res.metrics,
        "compared": res.compared,
        "scoring": res.scoring,
        "data": res.data,
    }
    ctx.run.write_text(REPORT, report_html(res))
    ctx.run.save()


def report_html(res: DictionaryResult) -> str:
    """``report.html``: the run's feature browser (index + one section per feature, plain JS, no CDN)."""
    from ..outputs.site import render_template

    rows = [f.record() for f in res.features]
    return render_template(
        "dictionary.html",
        {
            "r": res,
            "rec": {k: v for k, v in res.record().items() if k != "features"},
            "features_json": json.dumps(rows, separators=(",", ":")).replace("</", "<\\/"),
        },
    )


def _summary(r: JobResult) -> list[str]:
    d: DictionaryResult | None = r.data
    if d is None:
        return [f"stopped; partial results in {r.run_dir}"]
    m = d.metrics
    named = sum(f.name is not None for f in d.features)
    lines = [
        f"{d.model} · {d.layer} · {d.basis} · {len(d.features)} features from {d.data['readable']} images",
        f"  explained variance {m['explained_variance']} (held out {m['explained_variance_held_out']}) · "
        f"L0 {m['l0']} · dead {m['dead_fraction']:.1%} · dense {m['dense_fraction']:.1%} · stability {m['stability']}",
        f"  {named} features named",
    ]
    for b, cm in d.compared.items():
        lines.append(
            f"  {b}: explained variance {cm['explained_variance']} (held out {cm['explained_variance_held_out']}) · "
            f"L0 {cm['l0']} · dead {cm['dead_fraction']:.1%} · stability {cm['stability']}"
        )
    lines.append(f"wrote {r.run_dir}/{DICT_FILE}, {NPZ_FILE}, report.html, run.json")
    return lines


JOB = Job(
    "dictionary",
    DictionaryRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="A layer read as a dictionary: sparse-autoencoder features learnt from IMAGES, with exemplars, "
    "renders, votes, names and scores; dictionary.json, dictionary.npz, report.html.",
    renders=True,
    resumable=True,
    precheck=_check_images,
)


def dictionary(
    model: Model,
    images: str | Path | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    **options,
) -> JobResult:
    """``filterscope dictionary``: learn a dictionary of ``layer`` from the images in ``images`` and write
    ``dictionary.json``, ``dictionary.npz``, renders, exemplar strips and ``report.html`` in ``out``; options
    as the command's (``layer``, ``features``, ``k``, ``seed``, ``epochs``, ``basis``, ``crops``, ``renders``,
    ``no_renders``, ``method``, ``compare``, ``backend``, …). Bad input raises before anything is written."""
    return run_job(
        JOB,
        model,
        out=out,
        resume=resume,
        progress=progress,
        should_stop=should_stop,
        images=None if images is None else str(images),
        **options,
    )
