"""Concepts: what makes a mug a mug, for this network — a dictionary of directions in a layer's activation
space, learnt from the user's images, ranked by what they do for a class, and shown four ways.

One run of :func:`concepts` (a pure function of the model and its arguments, so a worker can call it):

1. **Activation pass** (streamed, :mod:`.activations`): every image of the folder (through the atlas's
   :class:`~.dataset.ImageFolder` loader) and ``crops`` random crops of it (CRAFT, Fel et al. 2023) pass
   through the model; the layer's ``C``-vector at every position goes into a fixed-size uniform sample, the
   prediction of every whole image into a count. Without ``target_class`` the class is the one predicted
   most often. One photo instead of a folder: its random crops are the data.
2. **Dictionary** (:mod:`.dictionary`): ``K`` concepts by scikit-learn's NMF for a non-negative layer, by
   semi-NMF for a signed one; a second fit with ``seed + 1`` on another random 80 % of the sample gives
   each concept's **stability**: its cosine to its Hungarian-matched partner (under 0.7: flagged).
3. **Evidence pass** over the whole images: each position's coefficients (the concept maps), each
   concept's **ablation** (the layer's maps minus the concept's part ``u_j · w_j``, the rest of the network
   run) and from it its **importance** for the class: the drop of the class's log-probability when its part
   is removed (the log-probability, not the logit, so that a concept raising every class alike, such as the
   background, does not rank high; ``ablation_drop`` is the same removal's drop of the probability). The
   first-order estimate of that drop (gradient of log p · the concept's vector × its coefficient, summed
   over positions) is kept as ``importance_gradient`` and ranks the concepts with ``rank="gradient"`` (the
   ranking before issue 44): it undervalues a small decisive concept against one spread thinly over every
   position, and fades where p saturates — on a net trained with a shortcut mark on one class (which also
   differs in colour), the top concept by the gradient sat on the mark in 0 % of the marked images, by the
   measured removal in 87.5 % (tests/test_concepts.py). Also the **reconstruction**'s top-1 agreement and
   explained variance, and each concept's top natural crops (the input region around its strongest
   position). All are averaged over the images predicted as the class (all images when none is); with
   fewer than :data:`MIN_CLASS_IMAGES` images of the class (predicted, or in a sub-folder named after it)
   the record carries a warning: the concepts are then those of other things.
4. **Deletion curves** on up to 32 of those images: the class probability as the top-k concepts (by
   importance) or k random ones are removed together.
5. **Votes and renders**: the concept vector over the mean activation map pushed through the rest of the
   network (the classes whose logits it raises most give the one-line label), and its render from noise
   (``direction`` objective along it, the render loop, a preset and the render cache).
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError, UsageError
from ..models.hooks import run
from ..models.inputs import IMAGE_SUFFIXES, list_images, load_image, model_input
from ..models.layers import LayerInfo, capture_layers, network_layer
from ..models.model import Model
from ..optvis.presets import DEFAULT_METHOD, get_preset
from ..outputs.images import png_bytes
from ..outputs.site import data_uri as _uri
from ..outputs.site import figure_uri as _fig_uri
from . import dictionary as dic
from .activations import (
    Bars,
    PositionSample,
    check_maps_layer,
    forward_variants,
    pass_bar,
    positions,
    random_crops,
    to_maps,
)
from .attribution import check_class
from .contract import Job, JobResult, RunContext, opt, run_job

DEFAULT_CONCEPTS = 10
FOLDER_CROPS = 3  # random crops per image of a folder
PHOTO_CROPS = 64  # random crops of a single photo
MAX_VECTORS = 16384  # activation vectors the dictionary is learnt from (a uniform sample of all positions)
STABILITY_SHARE = 0.8  # the second fit sees this share of the sample
STABLE_COSINE = 0.7  # a concept whose matched cosine is below this "does not come back"
N_CROPS = 6  # top natural crops kept per concept
N_HEAT = 4  # images its map is shown on: those where it is strongest
DELETION_IMAGES = 32
RANDOM_ORDERS = 8
N_VOTES = 5
BATCH = 8
CROP_PX = 112
RANKS = ("ablation", "gradient")  # what orders the concepts: measured removal, or its first-order estimate
MIN_CLASS_IMAGES = 5  # fewer images of the class than this: its concepts would be those of other things
BASES = ("nmf", "dictionary")  # learnt here, or the most important features of a dictionary run

BANK_FILE = "concept_bank.npy"
MAPS_FILE = "concept_maps.npz"
CONCEPTS_FILE = "concepts.json"


def concept_file(layer: str, j: int) -> str:
    """A concept's render from noise: ``<layer>/concept_0003.png``."""
    return f"{layer}/concept_{j:04d}.png"


@dataclass
class Concept:
    """One concept: its vector, what it does for the class, where it sits and what it looks like."""

    concept: int  # id: rank by importance, 0 = most important
    vector: np.ndarray  # [C]
    importance: float  # what it does for the class: mean drop of log p(class) when removed (rank="ablation")
    ablation_drop: float  # mean drop of p(class) when its part is removed
    label: str
    votes: list[tuple[int, str, float]]  # classes whose logit it raises most, with the rise
    top_crops: list[dict]  # {image, box, coefficient}, strongest first
    stability: float  # cosine to its matched partner of the seed + 1 dictionary
    share: float  # share of the sampled positions where it is the strongest concept
    crops: list[torch.Tensor] = field(default_factory=list, repr=False)  # [3, CROP_PX, CROP_PX]
    heat: list[tuple[int, torch.Tensor]] = field(default_factory=list, repr=False)  # (maps row, image) where strongest
    render: torch.Tensor | None = field(default=None, repr=False)
    render_record: dict | None = None
    importance_gradient: float = 0.0  # first-order estimate: gradient of log p(class) · vector × coefficient
    name: dict | None = None  # INVERT name over the images' labels (jobs/names.py), None when not significant
    purity: dict | None = None  # most common label among its top images and its share
    score: float | None = None  # MIS interpretability score (jobs/names.py), None when skipped
    feature: int | None = None  # with --basis dictionary: the feature's id in the dictionary run

    @property
    def stable(self) -> bool:
        return self.stability >= STABLE_COSINE

    def record(self) -> dict:
        rec = {
            "concept": self.concept,
            "importance": round(self.importance, 6),
            "ablation_drop": round(self.ablation_drop, 6),
            "importance_gradient": round(self.importance_gradient, 6),
            "label": self.label,
            "votes": [{"class": c, "name": n, "logit_rise": round(v, 4)} for c, n, v in self.votes],
            "top_crops": self.top_crops,
            "stability": round(self.stability, 4),
            "stable": self.stable,
            "share": round(self.share, 4),
            "name": self.name,
            "purity": self.purity,
            "score": self.score,
        }
        if self.feature is not None:
            rec["feature"] = self.feature
        if self.render_record is not None:
            rec["render"] = self.render_record
        return rec


@dataclass
class Concepts:
    """What :func:`concepts` found; shows itself as the report in Jupyter."""

    model: str
    layer: LayerInfo
    target_class: int
    class_name: str
    method: str
    concepts: list[Concept]
    bank: np.ndarray  # [K, C] rows in concept-id order
    maps: np.ndarray  # [images, K, h, w]
    images: list[str]
    fidelity: dict
    deletion: dict
    data: dict  # images, crops, skipped, class counts …
    settings: dict
    run_dir: Path | None = None
    status: str = "complete"
    timings: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)  # where names' labels came from, the score's method (names.py)

    @property
    def warning(self) -> str | None:
        """Set when too few images are of the class for its concepts to be about it (issue 44)."""
        return self.data.get("class_support", {}).get("warning")

    def record(self) -> dict:
        return {
            "class": self.target_class,
            "class_name": self.class_name,
            "layer": self.layer.name,
            "method": self.method,
            "n_concepts": len(self.concepts),
            "fidelity": self.fidelity,
            "stability": {
                "matched_cosine": [round(c.stability, 4) for c in self.concepts],
                "median": round(float(np.median([c.stability for c in self.concepts])), 4),
                "threshold": STABLE_COSINE,
                "unstable": [c.concept for c in self.concepts if not c.stable],
            },
            "deletion": self.deletion,
            "data": self.data,
            "names": self.names,
        }

    def html(self) -> str:
        from ..outputs.site import render_template

        return render_template("concepts.html", report_context(self))

    def _repr_html_(self) -> str:
        return self.html()


# ---------------------------------------------------------------- inputs


@dataclass
class _Source:
    """The data: a folder of images (each with random crops) or one photo whose crops are the data."""

    kind: str  # folder | photo
    root: Path
    files: list[Path]  # folder: every image file; photo: the photo
    readable: int

    def name(self, i: int) -> str:
        return str(self.files[i].relative_to(self.root)) if self.kind == "folder" else self.files[0].name


def _readable(f: Path) -> bool:
    try:
        with Image.open(f) as im:
            im.size  # noqa: B018 - the header parses
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _source(images: str | Path) -> _Source:
    p = Path(images)
    if p.is_file():
        load_image(p)  # one line when it is not an image
        return _Source("photo", p.parent, [p], 1)
    if not p.exists():
        raise ImageError(f"no such folder or image: {p}")
    try:
        files = list_images(p)
    except ImageError:
        raise ImageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {p}") from None
    n = sum(_readable(f) for f in files)
    if n == 0:
        raise ImageError(f"none of the {len(files)} image files in {p} can be read")
    return _Source("folder", p, files, n)


def _crop_gen(seed: int, i: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i) + 17)


# ---------------------------------------------------------------- the job


@dataclass
class ConceptsRequest:
    """The arguments of ``filterscope concepts``."""

    images: str | None = opt(None, "A folder, or one photo whose random crops are the data.", argument=True)
    layer: str = opt("default", "Layer with spatial maps.")
    n_concepts: int = opt(DEFAULT_CONCEPTS, "Concepts to learn.", min=1, flag="--concepts")
    target_class: int | None = opt(None, "Class [default: the one predicted most often].", flag="--class")
    seed: int = opt(0, "", min=0)
    method: str = opt(
        "auto",
        "Factorisation: auto = nmf for a non-negative layer, semi-nmf for a signed one.",
        choices=("auto", "nmf", "semi-nmf"),
    )
    crops: int | None = opt(None, "Random crops per image [default: 3; one photo: 64].", min=0)
    rank: str = opt(
        "ablation",
        "Order of the concepts: the measured drop of log p when one is removed, or its first-order estimate.",
        choices=RANKS,
    )
    render_method: str | None = opt(None, "Preset of the concept renders (default: fast).", registry="method")
    render_steps: int | None = opt(None, "Render steps (default: the preset's).", min=1, flag="--steps")
    no_render: bool = opt(False, "Skip the renders from noise.")
    compare_methods: bool = opt(False, "Also fit the other method on the same vectors (run.json).")
    backend: str = opt(
        "local",
        "Where the activation pass runs: this process, or Ray Data actors (same files).",
        choices=("local", "ray"),
    )
    address: str | None = opt(None, "Ray cluster address (default: start a local Ray).")
    workers: int = opt(2, "Ray actors.", min=1)
    threads: int | None = opt(None, "CPU threads per Ray actor [default: torch's here].", min=1)
    max_vectors: int = opt(MAX_VECTORS, "Activation vectors the dictionary is learnt from.", cli=False)
    basis: str = opt(
        "nmf",
        "Where the concepts come from: nmf (learnt here, --method), or dictionary: the class's most important "
        "features of a `filterscope dictionary` run of the same layer (--dictionary RUN).",
        choices=BASES,
    )
    dictionary: str | None = opt(None, "A `filterscope dictionary` run folder (with --basis dictionary).")


@dataclass
class ConceptsPlan:
    """A validated concepts request: the layer, the data, the crops, the render preset and Ray resolved."""

    model: Model
    info: LayerInfo
    src: _Source
    images: str
    n_crops: int
    n_concepts: int
    target_class: int | None
    seed: int
    method: str
    max_vectors: int
    backend: str
    ray_settings: dict | None
    ray_started: bool
    render_settings: Any
    compare_methods: bool
    settings: dict
    t0: float
    layer_dict: Any = None  # class_dictionary.LayerDictionary with --basis dictionary


def _check_request(req: ConceptsRequest) -> None:
    """Before a model is loaded: a named images argument, and Ray Data installed for the ray backend."""
    if req.images is None:
        raise UsageError("concepts need images: a folder, or one photo")
    if req.backend == "ray":
        from .ray_data import ray_data

        ray_data()


def _plan(model: Model, req: ConceptsRequest) -> ConceptsPlan:
    t0 = time.perf_counter()
    images, n_concepts, crops, max_vectors = req.images, req.n_concepts, req.crops, req.max_vectors
    if images is None:
        raise UsageError("concepts need images: a folder, or one photo")
    dic.check_method(req.method)
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
        raise UsageError(f"the number of concepts must be at least 1, got {n_concepts}")
    if crops is not None and crops < 0:
        raise UsageError(f"crops must be ≥ 0, got {crops}")
    if req.rank not in RANKS:
        raise UsageError(f"unknown concept ranking {req.rank!r}", hint="use " + " or ".join(RANKS))
    if max_vectors < n_concepts:
        raise UsageError(f"max_vectors must be at least the number of concepts, got {max_vectors}")
    if req.basis not in BASES:
        raise UsageError(f"unknown basis {req.basis!r}", hint="use " + " or ".join(BASES))
    if req.basis == "dictionary" and not req.dictionary:
        raise UsageError("--basis dictionary needs --dictionary RUN (the folder of a `filterscope dictionary` run)")
    if req.basis != "dictionary" and req.dictionary:
        raise UsageError("--dictionary is read only with --basis dictionary")
    info = network_layer(model, req.layer, "concepts")
    check_maps_layer(info)
    layer_dict = None
    if req.basis == "dictionary":
        from .class_dictionary import read_layer_dictionary

        layer_dict = read_layer_dictionary(req.dictionary, info)
        if n_concepts > layer_dict.features:
            raise UsageError(
                f"{n_concepts} concepts is more than the {layer_dict.features} features of the dictionary in "
                f"{req.dictionary}"
            )
    elif n_concepts > info.channels:
        raise UsageError(f"{n_concepts} concepts is more than the {info.channels} channels of {info.name}")
    check_class(model, req.target_class)
    ray_settings = _check_backend(model, req.backend, req.address, req.workers, req.threads)
    render = not req.no_render
    render_settings = None
    if render:
        render_settings = get_preset(req.render_method or DEFAULT_METHOD).with_(steps=req.render_steps).for_model(model)
    src = _source(images)
    n_crops = (PHOTO_CROPS if src.kind == "photo" else FOLDER_CROPS) if crops is None else int(crops)
    if src.kind == "folder" and src.readable < n_concepts:
        raise UsageError(
            f"{src.readable} readable images in {src.root} are fewer than the {n_concepts} concepts asked for"
        )
    if src.kind == "photo" and n_crops < n_concepts:
        raise UsageError(f"one photo needs at least as many crops as concepts: --crops {n_crops} < {n_concepts}")
    settings = {
        "model": model.describe(),
        "images": str(images),
        "input": src.kind,
        "layer": info.name,
        "concepts": n_concepts,
        "target_class": req.target_class,
        "seed": req.seed,
        "method": req.method,
        "crops": n_crops,
        "crop_side": [0.3, 0.6],
        "max_vectors": max_vectors,
        "rank": req.rank,
        "basis": req.basis,
        "dictionary": str(req.dictionary) if req.dictionary else None,
        "render": render_settings.as_dict() if render_settings else None,
        "render_method": render_settings.label if render_settings is not None else None,
        "compare_methods": req.compare_methods,
        "backend": req.backend,
        **({"ray": ray_settings} if ray_settings else {}),
    }
    if req.basis == "nmf":
        _probe(model, info, src, req.method)  # logits and, for nmf, the sign: checked before the run folder opens
    ray_started = False
    if ray_settings is not None:
        from .ray_data import connect

        ray_started = connect(ray_settings)  # an unreachable --address: one line, before the run folder opens
    return ConceptsPlan(
        model, info, src, str(images), n_crops, n_concepts, req.target_class, req.seed, req.method, max_vectors,
        req.backend, ray_settings, ray_started, render_settings, req.compare_methods, settings, t0, layer_dict,
    )  # fmt: skip


def _learn(p: ConceptsPlan, progress: bool, stop: Callable[[], bool], ctx: RunContext | None = None) -> Concepts:
    """The activation pass, the dictionary, the evidence, the renders (no files); raises :class:`_Stopped`
    when stopped before the concepts are complete. A local Ray the plan started is shut down at the end.

    ``ctx``: the job's run, where the finished pieces are kept for ``--resume`` (the activation pass's state,
    the evidence pass, the deletion curves, each render) and, resuming, taken from."""
    model, info, src, n_crops, seed, n_concepts = p.model, p.info, p.src, p.n_crops, p.seed, p.n_concepts
    timings: dict[str, float] = {}
    try:
        # 1. activation pass (going on from the state an interrupted run kept)
        t = time.perf_counter()
        tally = ActivationTally(p.max_vectors, info.channels, seed)
        units = activation_units(src, n_crops)
        kept = ctx.kept("activations") if ctx is not None else None
        if kept is not None:
            tally.restore(*kept)
        checkpoint = (lambda tl: ctx.keep("activations", *tl.state())) if ctx is not None else None
        if p.backend == "ray":
            from .ray_data import collect_ray

            if tally.units < len(units):
                tally = collect_ray(
                    model,
                    info,
                    src,
                    n_crops,
                    seed,
                    tally,
                    units[tally.units :],
                    activation_batch,
                    p.ray_settings,
                    progress,
                    stop,
                    shutdown=p.ray_started,
                )
                if checkpoint is not None:
                    checkpoint(tally)
        else:
            tally = _collect(model, info, src, n_crops, seed, p.max_vectors, progress, stop, tally, checkpoint)
        sample, votes, confidence, skipped, views = (
            tally.sample,
            tally.votes,
            tally.confidence,
            tally.skipped,
            tally.used,
        )
        timings["activation_pass_s"] = time.perf_counter() - t
        if tally.units < len(units):
            raise _Stopped(f"the activation pass stopped after {tally.units} of {len(units)} batches")
        if views < n_concepts or sample.data.shape[0] < n_concepts:
            raise UsageError(f"only {views} readable images in {p.images}: fewer than the {n_concepts} concepts")
        rows = sample.data
        signed = bool(rows.min() < 0)
        chosen = ("semi-nmf" if signed else "nmf") if p.method == "auto" else p.method
        if p.layer_dict is not None:
            chosen = "dictionary"
        elif chosen == "nmf" and signed:
            raise UsageError(
                f"{info.name} has negative activations (min {rows.min():.3g}): nmf needs non-negative ones",
                hint="use --method semi-nmf or auto",
            )
        cls = p.target_class
        if cls is None:
            # predicted most often; a tie goes to the class predicted with more summed probability
            cls = min(votes, key=lambda c: (-votes[c], -confidence[c], c))
        return _run(
            model, info, src, n_crops, seed, chosen, n_concepts, cls, sample, votes, skipped,
            p.settings, p.render_settings, p.compare_methods, timings, p.t0, progress, stop, ctx, p.layer_dict,
        )  # fmt: skip
    finally:
        if p.ray_started:  # a local Ray this run started (the pass shuts it; a failure before it may not)
            from .ray_data import ray_data

            ray_data().shutdown()


def _compute(ctx: RunContext, p: ConceptsPlan) -> Concepts | None:
    try:
        res = _learn(p, ctx.show_progress, ctx.stop, ctx)
    except _Stopped as e:  # before the concepts were finished: run.json says partial, the pieces are kept
        ctx.mark_partial(0, p.n_concepts, f"concepts ({e})")
        return None
    res.run_dir = ctx.path
    done = sum(c.render is not None for c in res.concepts)
    if res.settings.get("render") is not None and done < len(res.concepts):
        ctx.mark_partial(done, len(res.concepts), "concept renders")
        res.status = "partial"
    return res


def _write(ctx: RunContext, res: Concepts | None) -> None:
    if res is None:
        return
    t = time.perf_counter()
    res.timings = {k: round(v, 3) for k, v in res.timings.items() if k != "total_s"}
    write_concepts(ctx, res)
    res.timings["write_s"] = round(time.perf_counter() - t, 3)
    ctx.record["timings"].update(res.timings)
    res.timings = ctx.record["timings"]  # total_s is added when the run closes


def _summary(r: JobResult) -> list[str]:
    res = r.data
    rec = res.record()
    lines = [
        f"{res.model} · {res.layer.name} · {len(res.concepts)} concepts ({res.method}) of {res.class_name} "
        f"({res.target_class}) from {rec['data']['images']} images"
        + (f", {rec['data']['skipped_unreadable']} unreadable skipped" if rec["data"]["skipped_unreadable"] else ""),
        f"explained variance {rec['fidelity']['explained_variance']:.3f} · reconstruction keeps top-1 on "
        f"{rec['fidelity']['reconstruction_top1_agreement']:.1%} of the class images "
        f"({rec['fidelity']['reconstruction_top1_agreement_all']:.1%} of all) · "
        f"stability median {rec['stability']['median']:.3f}",
    ]
    if res.warning:
        lines.append(f"warning: {res.warning}")
    for c in res.concepts:
        named = f" · named {c.name['name']} (AUC {c.name['auc']:.2f})" if c.name else ""
        scored = f" · score {c.score:.2f}" if c.score is not None else ""
        lines.append(
            f"  concept {c.concept:2d}: importance {c.importance:+.3f} · ablation drop {c.ablation_drop:.3f} · "
            f"stability {c.stability:.2f}{'' if c.stable else ' (unstable)'} · {c.label}{named}{scored}"
        )
    lines.append(f"wrote {r.run_dir}/report.html, concepts.json, concept_maps.npz ({res.timings['total_s']:.1f} s)")
    return lines


JOB = Job(
    "concepts",
    ConceptsRequest,
    _plan,
    _compute,
    _write,
    _summary,
    help="Concepts of IMAGES (a folder, or one photo whose random crops are the data) for a class: report.html.",
    renders=True,
    resumable=True,
    precheck=_check_request,
)


def concepts(
    model: Model,
    images: str | Path,
    *,
    render: bool = True,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    **options,
) -> JobResult:
    """Learn ``n_concepts`` concepts of ``layer`` from ``images`` (a folder, or one photo whose random crops
    are the data), rank them for ``target_class`` (default: the class predicted most often) by gradient ×
    coefficient and by ablation, and show each by its top crops, its maps, its render and its votes
    (``options``: the fields of :class:`ConceptsRequest`; ``render=False`` skips the renders).

    Returns the job's :class:`~.contract.JobResult`; its ``data`` is the :class:`Concepts` (shown as the
    report in Jupyter), or ``None`` when the run was stopped before the concepts were learnt (``partial``).
    Without ``out`` it runs in memory and writes nothing. With ``out``: ``report.html``,
    ``figure_concepts.png``, ``concepts.json``, ``concept_maps.npz``, ``concept_bank.npy``, the renders
    ``<layer>/concept_0003.png`` and ``run.json`` there (the job :data:`JOB`; ``resume`` finishes an
    interrupted run of ``out``, keeping its finished pieces). Bad arguments raise
    :class:`~filterscope.errors.UsageError` before anything is written.

    ``backend="ray"`` runs the activation pass on Ray Data (a local Ray of ``workers`` CPUs, or the cluster
    at ``address``; ``workers`` actors, each loading the model once and using ``threads`` CPU threads,
    default this process's); the dictionary is learnt here, and the files equal the local backend's."""
    req = JOB.make_request(images=None if images is None else str(images), no_render=not render, **options)
    return run_job(
        JOB, model, req, out=out, in_memory=out is None, resume=resume, progress=progress, should_stop=should_stop
    )


def _check_backend(model, backend: str, address: str | None, workers: int, threads: int | None) -> dict | None:
    """The Ray settings recorded in run.json (``None`` for the local backend); refuses bad ones, and a
    missing Ray Data, before anything starts."""
    if backend not in ("local", "ray"):
        raise UsageError(f"unknown backend {backend!r}: choose local or ray")
    if backend == "local":
        return None
    for name, v in (("workers", workers), ("threads", threads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UsageError(f"{name} must be a whole number ≥ 1, got {v!r}")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise UsageError(f"address must be a Ray cluster address such as HOST:6379, got {address!r}")
    from .ray_data import check_shippable, ray_data

    ray_data()
    check_shippable(model)
    return {
        "address": address,
        "workers": int(workers or 2),
        "threads": int(threads or torch.get_num_threads()),
        "engine": "ray.data: from_items(batches of files) → map_batches(actors, the model loaded once each)",
    }


def _probe(model, info, src, method: str) -> None:
    """One image through the model: it must output class logits, and ``nmf`` needs a non-negative layer."""
    first = next((f for f in src.files if _readable(f)), src.files[0])
    x = model_input(model, load_image(first))
    with capture_layers(model, [info]) as cap, torch.inference_mode():
        logits = run(model.forward, x.to(model.device), cap)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise UsageError(f"{model.name} does not output class logits: concepts need them")
    low = float(cap.acts[info.name].min())
    if method == "nmf" and low < 0:
        raise UsageError(
            f"{info.name} has negative activations (min {low:.3g}): nmf needs non-negative ones",
            hint="use --method semi-nmf or auto",
        )


class _Stopped(Exception):
    """A stop request arrived before the concepts were complete (the message says where)."""


class ActivationTally:
    """What the activation pass keeps, whatever backend produced the batches: a :class:`PositionSample` of
    the layer's vectors, the count (and summed probability) of whole-image predictions, the unreadable files
    skipped and the images used. Fed batch by batch in the batches' order, so the same batches in the same
    order give the same tally on every backend.

    ``provenance``: keep beside each sampled vector its (image, view, y, x) (:data:`PROVENANCE`) and the
    top-1 prediction of every whole image (``predictions``: file index → class)."""

    def __init__(self, max_vectors: int, channels: int, seed: int, provenance: bool = False):
        self.sample = PositionSample(max_vectors, channels, seed, meta=len(PROVENANCE) if provenance else 0)
        self.votes: Counter = Counter()
        self.confidence: Counter = Counter()  # summed probability of each predicted class: breaks count ties
        self.predictions: dict[int, int] = {}
        self.skipped = self.used = 0
        self.units = 0  # batches added (the first ``units`` of :func:`activation_units`)

    def add(
        self,
        rows: np.ndarray,
        top_c: list[int],
        top_p: list[float],
        skipped: int,
        used: int,
        prov: np.ndarray | None = None,
        index: list[int] | None = None,
    ) -> None:
        for c, pc in zip(top_c, top_p):
            self.votes[int(c)] += 1
            self.confidence[int(c)] += float(pc)
        if index is not None:
            self.predictions.update({int(i): int(c) for i, c in zip(index, top_c)})
        if len(rows):
            self.sample.add(rows, prov)
        self.skipped += int(skipped)
        self.used += int(used)
        self.units += 1

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """``(arrays, meta)``: everything the tally holds, exactly (the sample's random state included), for
        :meth:`restore` to go on where it stopped (``--resume``)."""
        s = self.sample
        arrays = {"rows": s.data, **({"meta": s.provenance} if s.meta is not None else {})}
        meta = {
            "seen": s.seen,
            "rng": s.rng.bit_generator.state,
            "votes": {str(k): v for k, v in self.votes.items()},
            "confidence": {str(k): v for k, v in self.confidence.items()},
            "predictions": {str(k): v for k, v in self.predictions.items()},
            "skipped": self.skipped,
            "used": self.used,
            "units": self.units,
        }
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """The tally :meth:`state` describes."""
        s = self.sample
        n = arrays["rows"].shape[0]
        s.rows[:n] = arrays["rows"]
        if s.meta is not None and "meta" in arrays:
            s.meta[:n] = arrays["meta"]
        s.seen = int(meta["seen"])
        s.rng.bit_generator.state = meta["rng"]
        self.votes = Counter({int(k): v for k, v in meta["votes"].items()})
        self.confidence = Counter({int(k): v for k, v in meta["confidence"].items()})
        self.predictions = {int(k): v for k, v in meta["predictions"].items()}
        self.skipped, self.used, self.units = int(meta["skipped"]), int(meta["used"]), int(meta["units"])


PROVENANCE = ("image", "view", "y", "x")  # the columns activation_batch gives each vector


def activation_units(src: _Source, n_crops: int) -> list[int]:
    """The start of every batch of the activation pass: of ``BATCH`` files of a folder, or of ``BATCH``
    views (the photo, then its crops) of one photo. Both backends run exactly these batches, so the float
    sums inside the network (which depend on a batch's make-up) are the same."""
    n = len(src.files) if src.kind == "folder" else 1 + n_crops
    return list(range(0, n, BATCH))


def unit_views(
    model: Model, src: _Source, start: int, n_crops: int, seed: int, memo: dict | None = None
) -> tuple[torch.Tensor, int, int, list[int]]:
    """The views of the activation batch at ``start``: ``(views [n, C, S, S], whole images among them (first),
    unreadable files skipped, the whole images' indices in the folder (a photo: its views' indices))``. A
    folder's batch: its readable images, then each one's ``n_crops`` random crops, drawn from a generator
    seeded by (seed, the image's index in the folder), never by arrival order
    (``memo``: keeps one photo's views between its batches)."""
    if src.kind == "photo":
        memo = {} if memo is None else memo
        if "photo" not in memo:
            x = model_input(model, load_image(src.files[0]))
            memo["photo"] = torch.cat([x, random_crops(x, n_crops, _crop_gen(seed, 0))[0]])
        views = memo["photo"][start : start + BATCH]
        return views, 1 if start == 0 else 0, 0, list(range(start, start + len(views)))
    from .dataset import ImageFolder

    folder = ImageFolder(src.files[start : start + BATCH], model)
    items = [folder[i] for i in range(len(folder))]
    x = torch.stack([it[0] for it in items])
    ok = torch.tensor([it[2] for it in items], dtype=torch.bool)
    index = torch.arange(start, start + len(items))[ok]
    x = x[ok]
    extra = [random_crops(x[i : i + 1], n_crops, _crop_gen(seed, int(j)))[0] for i, j in enumerate(index)]
    return torch.cat([x, *extra]), len(x), int((~ok).sum()), index.tolist()


def activation_batch(
    model: Model, info: LayerInfo, src: _Source, start: int, n_crops: int, seed: int, cap=None, memo=None
):
    """One batch of the activation pass, as :meth:`ActivationTally.add` takes it: ``(rows [n, C] float32,
    predicted classes and their probabilities of the whole images, skipped, used, provenance [n, 4] int32
    (:data:`PROVENANCE`: file index, view — 0 the whole image, j its crop j —, row and column in the layer's
    map), the whole images' file indices)``. The one function both backends run (``cap``: an open
    :func:`~filterscope.optvis.hooks.capture` of the layer, else one is opened here)."""
    if cap is None:
        with capture_layers(model, [info]) as cap:
            return activation_batch(model, info, src, start, n_crops, seed, cap, memo)
    views, whole, skipped, index = unit_views(model, src, start, n_crops, seed, memo)
    if len(views) == 0:
        return np.empty((0, info.channels), np.float32), [], [], skipped, 0, np.empty((0, 4), np.int32), []
    with torch.inference_mode():
        logits = run(model.forward, views.to(model.device), cap)
        if logits is None or logits.dim() != 2:
            raise UsageError(f"{model.name} does not output class logits: concepts need them")
        top_p, top_c = torch.softmax(logits[:whole].float(), 1).max(1)
        maps = cap.acts[info.name]
        rows = positions(maps.float()).cpu().numpy()
    used = len(views) if src.kind == "photo" else whole
    return (
        rows,
        top_c.tolist(),
        top_p.tolist(),
        skipped,
        used,
        _provenance(src, index, whole, n_crops, maps.shape),
        index,
    )


def _provenance(src: _Source, index: list[int], whole: int, n_crops: int, shape) -> np.ndarray:
    """``[n, 4]`` (image, view, y, x) of the rows of a batch's maps ``shape`` ``[B, C, h, w]`` in
    :func:`~.activations.positions` order: a folder's batch is its whole images, then each one's crops; a
    photo's views are view ``start + i`` of image 0."""
    b, _, h, w = shape
    if src.kind == "photo":
        img = np.zeros(b, np.int64)
        view = np.asarray(index, np.int64)
    else:
        img = np.concatenate([np.asarray(index, np.int64), np.repeat(np.asarray(index, np.int64), n_crops)])
        view = np.concatenate([np.zeros(whole, np.int64), np.tile(np.arange(1, n_crops + 1), whole)])
    yy, xx = np.divmod(np.arange(h * w), w)
    out = np.stack([np.repeat(img, h * w), np.repeat(view, h * w), np.tile(yy, b), np.tile(xx, b)], axis=1)
    return out.astype(np.int32)


CHECKPOINT_S = 60.0  # at most this long between two kept states of the activation pass (--resume)


def _collect(
    model,
    info,
    src,
    n_crops,
    seed,
    max_vectors,
    progress,
    stop,
    tally: ActivationTally | None = None,
    checkpoint: Callable[[ActivationTally], None] | None = None,
    bars: Bars | None = None,
    desc: str = "activations",
):
    """The streamed activation pass on this process: the batches of :func:`activation_units` in order, into
    ``tally`` (default: a new one without provenance), from the first batch ``tally`` does not hold yet.
    ``checkpoint(tally)``: called when stopped, every :data:`CHECKPOINT_S` seconds and at the end (the tally
    then holds whole batches only), so an interrupted pass goes on where it stopped. ``bars``: the job's bar
    factory (:func:`~.activations.pass_bar`), so the pass's batches reach its ``on_progress``."""
    tally = ActivationTally(max_vectors, info.channels, seed) if tally is None else tally
    units = activation_units(src, n_crops)
    memo: dict = {}
    last = time.perf_counter()
    with capture_layers(model, [info]) as cap:
        bar = pass_bar(len(units), desc, progress, bars, initial=tally.units)
        for start in units[tally.units :]:
            tally.add(*activation_batch(model, info, src, start, n_crops, seed, cap, memo))
            bar.update()
            now = time.perf_counter()
            if checkpoint is not None and (stop() or tally.units == len(units) or now - last > CHECKPOINT_S):
                checkpoint(tally)
                last = now
            if stop():
                break
        bar.close()
    return tally


def _run(
    model, info, src, n_crops, seed, method, k, cls, sample, votes, skipped, settings, render_settings,
    compare_methods, timings, t0, progress, stop, ctx=None, layer_dict=None,
) -> Concepts:  # fmt: skip
    rows, seen = sample.data, sample.seen
    names = model.categories or []

    def cname(c: int) -> str:
        return names[c] if c < len(names) else str(c)

    # 2. dictionary and its stability (or: the class's most important features of a dictionary run)
    t = time.perf_counter()
    compared = None
    if layer_dict is not None:
        from .class_dictionary import feature_importance, select_features

        imp_all = feature_importance(
            model, info, _views(model, src, n_crops, seed), layer_dict, cls, settings.get("rank", "ablation"), stop
        )
        if stop():
            raise _Stopped("stopped while ranking the dictionary's features")
        d = select_features(layer_dict, imp_all, k, seed)
        d.fit_seconds = round(time.perf_counter() - t, 3)
        d2 = d
        cosines = d.stability()
        if not np.isfinite(cosines).all():  # the run did not save its second fit: its median for every feature
            cosines = np.full(k, float(_run_stability(layer_dict.run)))
    else:
        d = dic.fit(rows, k, method, seed)
        rng = np.random.default_rng(seed + 1)
        sub = rows[rng.permutation(len(rows))[: max(k, int(STABILITY_SHARE * len(rows)))]]
        d2 = dic.fit(sub, k, method, seed + 1)
        _, cosines = dic.match(d.bank, d2.bank)
    if compare_methods and layer_dict is None:
        other = "semi-nmf" if method == "nmf" else "nmf"
        if other == "nmf" and rows.min() < 0:
            compared = {"method": other, "skipped": "the layer has negative activations"}
        else:
            o = dic.fit(rows, k, other, seed)
            o2 = dic.fit(sub, k, other, seed + 1)
            compared = {
                "method": other,
                "explained_variance": o.explained_variance,
                "fit_s": o.fit_seconds,
                "stability_median": round(float(np.median(dic.match(o.bank, o2.bank)[1])), 4),
            }
    coef_sample = d.encode(rows)
    share = np.bincount(coef_sample.argmax(1), minlength=k) / max(1, len(coef_sample))
    timings["dictionary_s"] = time.perf_counter() - t

    # 3. evidence pass over the whole images
    t = time.perf_counter()
    kept = ctx.kept("evidence") if ctx is not None else None
    if kept is not None:
        ev = {**kept[0], **kept[1]}
    else:
        ev = _evidence(model, info, src, n_crops, seed, d, cls, progress, stop)
        if stop():
            raise _Stopped("stopped during the evidence pass")
        if ctx is not None:
            ctx.keep("evidence", *_split(ev))
    timings["evidence_pass_s"] = time.perf_counter() - t
    mask = ev["pred"] == cls
    over = mask if mask.any() else np.ones_like(mask)
    rank = settings.get("rank", "ablation")
    gradient = ev["importance"][over].mean(0)
    drop = ev["drop"][over].mean(0)
    # importance: the measured drop of log p(class) when the concept's part is removed (issue 44: the
    # first-order gradient × coefficient estimate ranks a concept spread thinly over every position above a
    # small decisive one, e.g. a shortcut mark, and fades where p saturates)
    importance = ev["log_drop"][over].mean(0) if rank == "ablation" else gradient
    order = np.argsort(-importance, kind="stable")  # new id → fitted index
    rank_of = np.empty(k, dtype=np.int64)
    rank_of[order] = np.arange(k)
    bank = d.bank[order]
    maps = ev["maps"][:, order]

    # 4. deletion curves on the class images
    t = time.perf_counter()
    del_idx = [int(ev["view_ids"][i]) for i in np.nonzero(over)[0][:DELETION_IMAGES]]
    kept = ctx.kept("deletion") if ctx is not None else None
    if kept is not None:
        deletion = kept[1]
    else:
        deletion = _deletion(model, info, src, n_crops, seed, d, order, cls, del_idx, stop)
        if stop():
            raise _Stopped("stopped during the deletion curves")
        if ctx is not None:
            ctx.keep("deletion", {}, deletion)
    timings["deletion_s"] = time.perf_counter() - t

    # 5. votes, labels, top crops, renders
    t = time.perf_counter()
    peak = np.percentile(ev["maps"].reshape(len(ev["maps"]), k, -1).max(2), 90, axis=0)  # typical strong coef
    vote_rise = _votes(model, info, d.bank, ev["mean_vector"], peak)
    concepts_ = []
    for new, j in enumerate(order):
        top = np.argsort(-vote_rise[j])[:N_VOTES]
        cv = [(int(c), cname(int(c)), float(vote_rise[j][c])) for c in top]
        concepts_.append(
            Concept(
                new,
                bank[new],
                float(importance[j]),
                float(drop[j]),
                " / ".join(n for _, n, _ in cv[:3]),
                cv,
                [],
                float(cosines[j]),
                float(share[j]),
            )
        )
    for c in concepts_:
        c.importance_gradient = float(gradient[order[c.concept]])
        if layer_dict is not None:
            c.feature = int(d.features[order[c.concept]])
    _top_crops(model, src, n_crops, seed, ev, order, concepts_, info)
    timings["evidence_s"] = time.perf_counter() - t
    t = time.perf_counter()
    names_rec, support = _names(model, src, n_crops, seed, ev, order, concepts_, cls, cname(cls))
    timings["names_s"] = time.perf_counter() - t

    fidelity = {
        "explained_variance": round(ev["ev"], 5),
        "explained_variance_sample": d.explained_variance,
        "reconstruction_top1_agreement": round(float(ev["agree"][over].mean()), 4),  # on the class images
        "reconstruction_top1_agreement_all": round(float(ev["agree"].mean()), 4),
        "reconstruction_p_class": round(float(ev["p_recon"][over].mean()), 5),
        "p_class": round(float(ev["p_base"][over].mean()), 5),
    }
    pred_counts = Counter(int(c) for c in ev["pred"].tolist())
    data = {
        "input": src.kind,
        "images": len(ev["names"]),
        "files": len(src.files) if src.kind == "folder" else 1,
        "skipped_unreadable": int(max(skipped, ev["skipped"])),  # the same files fail in both passes
        "crops_per_image": n_crops,
        "vectors_seen": int(seen),
        "vectors_sampled": int(len(rows)),
        "class_images": int(mask.sum()),
        "averaged_over": "images predicted as the class" if mask.any() else "all images (none is predicted as it)",
        "class_support": support,
        "predicted": [{"class": c, "name": cname(c), "images": n} for c, n in pred_counts.most_common(5)],
        "dictionary": {
            "method": method,
            "fit_s": d.fit_seconds,
            "stability_fit_s": d2.fit_seconds,
            **({"compared": compared} if compared else {}),
            **(_dictionary_source(d) if layer_dict is not None else {}),
        },
    }
    res = Concepts(
        model.name,
        info,
        cls,
        cname(cls),
        method,
        concepts_,
        bank,
        maps,
        ev["names"],
        fidelity,
        deletion,
        data,
        settings,
        names=names_rec,
    )
    if render_settings is not None and not stop():
        t = time.perf_counter()
        _render(model, info, res, render_settings, seed, stop, progress, ctx)
        timings["render_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    res.timings = {k2: round(v, 3) for k2, v in timings.items()}
    return res


def _split(piece: dict) -> tuple[dict[str, np.ndarray], dict]:
    """A piece of work as (its numpy arrays, the rest: JSON), for :meth:`RunContext.keep`."""
    arrays = {k: v for k, v in piece.items() if isinstance(v, np.ndarray)}
    return arrays, {k: v for k, v in piece.items() if k not in arrays}


def _run_stability(run: Path) -> float:
    """A dictionary run's median stability (``dictionary.json``), NaN when it has none."""
    try:
        v = json.loads((Path(run) / "dictionary.json").read_text())["metrics"]["stability"]
        return float(v) if v is not None else float("nan")
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")


def _dictionary_source(d) -> dict:
    """What the record says about the dictionary run the concepts came from."""
    src = d.source
    return {
        "run": str(src.run),
        "basis": src.kind,
        "features": src.features,
        "selected": [int(j) for j in d.features],
        "selected_by": "importance over the class images (the same --rank)",
        "stability": "matched cosine to the run's second fit"
        if src.stability is not None
        else "the run's median stability (no second fit saved)",
    }


def _same_class(folder: str, class_name: str) -> bool:
    """Whether a class sub-folder is named after the class (``coffee_mug`` and ``coffee mug`` alike)."""

    def norm(t: str) -> str:
        return " ".join(t.replace("_", " ").replace("-", " ").lower().split())

    return norm(folder) == norm(class_name)


def class_support(pred: np.ndarray, cls: int, class_name: str, labels=None, source=None) -> dict:
    """How many images are of the class — predicted as it, or in a class sub-folder named after it — and,
    under :data:`MIN_CLASS_IMAGES`, the warning to show instead of trusting the concepts: they are then
    learnt and ranked on images of other things."""
    predicted = pred == cls
    foldered = np.array([_same_class(lab, class_name) for lab in labels]) if source == "folders" else predicted
    n = int((predicted | foldered).sum())
    out = {"images": n, "predicted": int(predicted.sum()), "minimum": MIN_CLASS_IMAGES}
    if source == "folders":
        out["in_its_folder"] = int(foldered.sum())
    if n < MIN_CLASS_IMAGES:
        out["warning"] = (
            f"only {n} of the {len(pred)} images are {class_name} (predicted or by folder): its concepts would "
            f"describe other things; give a folder with at least {MIN_CLASS_IMAGES} images of {class_name}"
        )
    return out


def _names(model, src, n_crops, seed, ev, order, concepts_, cls, class_name) -> tuple[dict, dict]:
    """Each concept's name, purity and score (jobs/names.py) from its per-image strength (the max of its map
    over positions) on the evidence pass's images, labelled by their class sub-folders or the model's
    predictions; and the class's support (how many images are of it)."""
    from .names import default_similarity, describe_units, image_labels, mis_min_images, scoring_record

    acts = ev["maps"].reshape(len(ev["maps"]), ev["maps"].shape[1], -1).max(2)[:, order]
    if src.kind == "folder":
        files = [src.files[i] for i in ev["view_ids"]]
        labels, source = image_labels(files, src.root, model, predictions=ev["pred"].tolist())
    else:
        labels, source = image_labels([src.files[0]] * len(acts), src.root, model, predictions=ev["pred"].tolist())
    support = class_support(ev["pred"], cls, class_name, labels, source)
    sim = embed = None
    if len(acts) >= mis_min_images():
        sim = default_similarity()
        if src.kind == "folder":
            embed = sim.embed(files)
        else:
            embed = sim.embed(torch.stack([_view_image(model, src, n_crops, seed, i) for i in ev["view_ids"]]))
    for c, d in zip(concepts_, describe_units(acts, labels, top=N_CROPS, embed=embed), strict=True):
        c.name, c.purity, c.score = d["name"], d["purity"], d["score"]
    return scoring_record(source, sim, len(acts)), support


def _views(model, src, n_crops, seed):
    """The whole images of the evidence pass, streamed: ``(x [B, C, S, S], view ids, ok)`` batches; a single
    photo's views are the photo and its random crops."""
    if src.kind == "photo":
        x = model_input(model, load_image(src.files[0]))
        c, _ = random_crops(x, n_crops, _crop_gen(seed, 0))
        views = torch.cat([x, c])
        for s in range(0, len(views), BATCH):
            idx = torch.arange(s, min(s + BATCH, len(views)))
            yield views[s : s + BATCH], idx, torch.ones(len(idx), dtype=torch.bool)
        return
    from torch.utils.data import DataLoader

    from .dataset import ImageFolder

    yield from DataLoader(ImageFolder(src.files, model), batch_size=BATCH, shuffle=False)


def _view_name(src, i: int) -> str:
    if src.kind == "photo":
        return src.files[0].name if i == 0 else f"{src.files[0].name}#crop{i - 1:02d}"
    return src.name(i)


def _view_image(model, src, n_crops, seed, i: int) -> torch.Tensor:
    """View ``i`` as the model saw it, ``[C, S, S]``."""
    if src.kind == "photo":
        x = model_input(model, load_image(src.files[0]))
        if i == 0:
            return x[0]
        c, _ = random_crops(x, n_crops, _crop_gen(seed, 0))
        return c[i - 1]
    return model_input(model, load_image(src.files[i]))[0]


def _evidence(model, info, src, n_crops, seed, d, cls, progress, stop) -> dict:
    """Concept maps, importance, ablation and fidelity, one batch of whole images at a time."""
    from tqdm import tqdm

    k = d.k
    w = torch.from_numpy(d.bank)
    maps, imp, drop, pred, agree, p_base, p_recon, names = [], [], [], [], [], [], [], []
    log_drop: list[np.ndarray] = []
    view_ids: list[int] = []
    sq_err = sq_sum = 0.0
    tot = None
    n_vec, skipped = 0, 0
    top: list[list[tuple[float, int, int]]] = [[] for _ in range(k)]
    kept: dict[str, torch.Tensor] = {}

    def variants(a: torch.Tensor) -> torch.Tensor:
        b, c, h, ww = a.shape
        r = positions(a.float()).cpu()
        u = torch.from_numpy(d.encode(r.numpy()))  # [n, K]
        kept["u"] = u
        full = getattr(d, "full_reconstruction", None)  # a dictionary's selected features: all of it
        kept["recon"] = torch.from_numpy(full(r.numpy())) if full is not None else u @ w
        recon = to_maps(kept["recon"], b, h, ww)  # [B, C, H, W]
        parts = to_maps(u, b, h, ww)[:, :, None] * w.view(1, k, c, 1, 1)  # [B, K, C, H, W]
        return torch.cat([recon[:, None], a.cpu().float()[:, None] - parts], 1).to(a.device)

    total = None if src.kind == "photo" else len(src.files)
    bar = tqdm(total=total, desc="concept evidence", disable=not progress, unit="image")
    for x, index, ok in _views(model, src, n_crops, seed):
        bar.update(len(index))
        skipped += int((~ok).sum())
        if not ok.any():
            continue
        x, index = x[ok], index[ok]
        a, grad, logits = forward_variants(
            model, info, x, variants, k + 1, lambda z: torch.log_softmax(z.float(), 1)[:, cls]
        )
        b, c, h, ww = a.shape
        u = kept["u"]  # [B·H·W, K]
        g = positions(grad.float()).cpu()  # [B·H·W, C]
        contrib = (g @ w.T) * u  # [n, K]: gradient · w_j × u_j at each position
        imp.append(contrib.view(b, h * ww, k).sum(1).numpy())
        p = torch.softmax(logits.float(), -1).cpu()  # [B, K+2, classes]
        drop.append((p[:, :1, cls] - p[:, 2:, cls]).numpy())
        logp = torch.log_softmax(logits.float(), -1).cpu()
        log_drop.append((logp[:, :1, cls] - logp[:, 2:, cls]).numpy())
        pred.append(p[:, 0].argmax(1).numpy())
        agree.append((p[:, 1].argmax(1) == p[:, 0].argmax(1)).numpy())
        p_base.append(p[:, 0, cls].numpy())
        p_recon.append(p[:, 1, cls].numpy())
        m = to_maps(u, b, h, ww).numpy()
        maps.append(m)
        rows = positions(a.float()).cpu().double()
        err = rows - kept["recon"].double()
        sq_err += float((err**2).sum())
        sq_sum += float((rows**2).sum())
        tot = rows.sum(0) if tot is None else tot + rows.sum(0)
        n_vec += rows.shape[0]
        flat = m.reshape(b, k, -1)
        for bi in range(b):
            i = int(index[bi])
            names.append(_view_name(src, i))
            view_ids.append(i)
            for j in range(k):
                pos = int(flat[bi, j].argmax())
                top[j].append((float(flat[bi, j, pos]), i, pos))
        for j in range(k):  # the running top crops: memory does not grow with the folder
            top[j] = sorted(top[j], key=lambda e: (-e[0], e[1]))[:N_CROPS]
        if stop():
            break
    bar.close()
    mean = (tot / max(n_vec, 1)).numpy()
    sst = sq_sum - n_vec * float((mean**2).sum())
    for j in range(k):
        top[j].sort(key=lambda e: (-e[0], e[1]))
        top[j] = top[j][:N_CROPS]
    return {
        "maps": np.concatenate(maps).astype(np.float32),
        "importance": np.concatenate(imp),
        "drop": np.concatenate(drop),
        "log_drop": np.concatenate(log_drop),
        "pred": np.concatenate(pred),
        "agree": np.concatenate(agree),
        "p_base": np.concatenate(p_base),
        "p_recon": np.concatenate(p_recon),
        "names": names,
        "view_ids": view_ids,
        "ev": 1.0 - sq_err / max(sst, 1e-12),
        "mean_vector": mean.astype(np.float32),
        "top": top,
        "skipped": skipped if src.kind == "folder" else 0,
        "vectors_seen": n_vec,
        "map_shape": (h, ww),
    }


def _deletion(model, info, src, n_crops, seed, d, order, cls, idx, stop) -> dict:
    """Drop of p(class) when the top-k concepts (by importance) or k random ones are removed together."""
    k = d.k
    w = torch.from_numpy(d.bank)
    gen = np.random.default_rng(seed + 2)
    randoms = [gen.permutation(k) for _ in range(RANDOM_ORDERS)]
    sets = [order[:n] for n in range(1, k + 1)] + [r[:n] for r in randoms for n in range(1, k + 1)]
    sel = torch.zeros(len(sets), k)
    for row, s in enumerate(sets):
        sel[row, list(s)] = 1.0

    def variants(a: torch.Tensor) -> torch.Tensor:
        b, c, h, ww = a.shape
        u = torch.from_numpy(d.encode(positions(a.float()).cpu().numpy())).view(b, h * ww, k)
        removed = torch.einsum("bpk,sk,kc->bspc", u, sel, w)  # [B, sets, H·W, C]
        removed = removed.view(b, len(sets), h, ww, c).permute(0, 1, 4, 2, 3)
        return (a.cpu().float()[:, None] - removed).to(a.device)

    top_drops, rand_drops = [], []
    for i in idx:
        if stop():
            break
        x = _view_image(model, src, n_crops, seed, i)[None]
        logits = forward_variants(model, info, x, variants, len(sets))[2]
        p = torch.softmax(logits.float(), -1)[0, :, cls].cpu().numpy()  # [1 + sets]
        dr = p[0] - p[1:]
        top_drops.append(dr[:k])
        rand_drops.append(dr[k:].reshape(RANDOM_ORDERS, k).mean(0))
    top_drops, rand_drops = np.array(top_drops), np.array(rand_drops)
    three = min(3, k) - 1
    return {
        "k": list(range(1, k + 1)),
        "images": len(idx),
        "random_orders": RANDOM_ORDERS,
        "top": [round(float(v), 5) for v in top_drops.mean(0)],
        "random": [round(float(v), 5) for v in rand_drops.mean(0)],
        "top3_median_drop": round(float(np.median(top_drops[:, three])), 5),
        "random3_median_drop": round(float(np.median(rand_drops[:, three])), 5),
    }


def _votes(model, info, bank: np.ndarray, mean_vector: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """``[K, classes]``: each logit's rise when the concept's vector (× a typical strong coefficient) is added
    at every position of the mean activation map and the rest of the network runs."""
    c, h, w = info.shape
    base = torch.from_numpy(mean_vector).view(1, c, 1, 1).expand(1, c, h, w)
    add = torch.from_numpy(bank * peak[:, None].astype(np.float32)).view(-1, c, 1, 1)
    k = bank.shape[0]

    def variants(a: torch.Tensor) -> torch.Tensor:
        v = torch.cat([base, base + add]).expand(k + 1, c, h, w)
        return v[None].expand(a.shape[0], -1, -1, -1, -1).to(a.device, a.dtype)

    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size)
    logits = forward_variants(model, info, x, variants, k + 1)[2][0].float().cpu()  # [1 + (K+1), classes]
    return (logits[2:] - logits[1:2]).numpy()


def _top_crops(model, src, n_crops, seed, ev, order, concepts_, info) -> None:
    from torchvision.transforms.v2 import functional as TF

    cache: dict[int, torch.Tensor] = {}
    row_of = {v: r for r, v in enumerate(ev["view_ids"])}
    for c in concepts_:
        j = int(order[c.concept])
        for value, i, pos in ev["top"][j]:
            if i not in cache:
                cache[i] = _view_image(model, src, n_crops, seed, i)
            img = cache[i]
            box = _peak_box(pos, ev["map_shape"], img.shape[-1])
            left, top, right, bottom = box
            crop = TF.resize(img[:3, top:bottom, left:right], [CROP_PX, CROP_PX], antialias=True).clamp(0, 1)
            c.crops.append(crop)
            if len(c.heat) < N_HEAT:
                c.heat.append((row_of[i], img[:3].float()))
            c.top_crops.append({"image": _view_name(src, i), "box": list(box), "coefficient": round(value, 5)})


def _peak_box(pos: int, map_shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """The input box (left, top, right, bottom) around map position ``pos``: 3 map cells wide, at least
    48 px (or half the input, when that is smaller), inside the image."""
    h, w = map_shape
    y, x = divmod(int(pos), w)
    cy, cx = (y + 0.5) * size / h, (x + 0.5) * size / w
    side = int(min(size, max(min(48, size // 2), size * 3 / max(h, w))))
    left = int(min(max(0, round(cx - side / 2)), size - side))
    top = int(min(max(0, round(cy - side / 2)), size - side))
    return left, top, left + side, top + side


def render_concepts(
    model: Model,
    info: LayerInfo,
    vectors: Sequence[np.ndarray],
    settings,
    seed: int,
    *,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
    done: dict[int, tuple[torch.Tensor, dict]] | None = None,
    on_render: Callable[[int, torch.Tensor, dict], None] | None = None,
) -> list[tuple[torch.Tensor | None, dict | None]]:
    """Each concept's render from noise: the ``direction`` objective along ``vectors[j]`` at ``info``, seed
    ``channel_seed(seed, j)``, through the render cache (what ``concepts`` and the explorer's concept page
    show). Returns one ``(image, record)`` per vector: ``(None, {"status": …})`` for a failed render,
    ``(None, None)`` for one not reached when ``should_stop()`` stopped the renders. ``done``: renders
    finished before (``--resume``), not redone; ``on_render(j, image, record)``: each new successful one."""
    from tqdm import tqdm

    from ..optvis.objectives import direction
    from ..optvis.render import Renderer, channel_seed
    from ..outputs.cache import active_cache, render_key

    stop = should_stop if should_stop is not None else (lambda: False)  # a StopRequest is falsy until signalled
    cache = active_cache() if model.in_channels <= 3 else None
    settings = settings.for_model(model)
    renderer = Renderer(model, settings)
    out: list[tuple[torch.Tensor | None, dict | None]] = [(None, None)] * len(vectors)
    for j in tqdm(range(len(vectors)), desc="concept renders", disable=not progress, unit="concept"):
        if done and j in done:
            out[j] = done[j]
            continue
        vec = np.asarray(vectors[j]).astype(np.float32)
        obj = direction(info.name, torch.from_numpy(vec))
        key, fields = render_key(model, obj, settings, channel_seed(seed, j), layer=info.name)
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            with Image.open(io.BytesIO(hit.png)) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            record = {
                "activation_before": hit.record.get("activation_before"),
                "activation_after": hit.record.get("activation_after"),
                "cached": True,
            }
            out[j] = (torch.from_numpy(arr.transpose(2, 0, 1).copy()), record)
        else:
            res = renderer.render(obj, [channel_seed(seed, j)], should_stop=stop)
            if res.interrupted:
                return out
            if res.status[0] == "ok":
                record = {
                    "activation_before": round(res.before[0], 6),
                    "activation_after": round(res.after[0], 6),
                    "cached": False,
                }
                out[j] = (res.images[0], record)
                if cache is not None:
                    cache.put(key, png_bytes(res.images[0]), {**fields, **record, "status": "ok"})
            else:
                out[j] = (None, {"status": res.status[0]})
        if on_render is not None and out[j][0] is not None:
            on_render(j, *out[j])
        if stop():
            return out
    return out


def _render(model, info, res: Concepts, settings, seed, stop, progress, ctx: RunContext | None = None) -> None:
    """Each concept's render (:func:`render_concepts`) into its :class:`Concept`; with ``ctx``, each kept as
    it finishes and, resuming, taken from there (when its concept's vector is the same)."""
    vectors = [c.vector for c in res.concepts]
    done: dict[int, tuple[torch.Tensor, dict]] = {}
    on_render = None
    if ctx is not None:
        for j, vec in enumerate(vectors):
            kept = ctx.kept(f"{info.name}/render_{j:04d}")
            if kept is not None and np.array_equal(kept[0]["vector"], vec):
                done[j] = (torch.from_numpy(kept[0]["image"]), kept[1])

        def on_render(j: int, image: torch.Tensor, record: dict) -> None:
            ctx.keep(f"{info.name}/render_{j:04d}", {"image": image.numpy(), "vector": vectors[j]}, record)

    renders = render_concepts(
        model, info, vectors, settings, seed, should_stop=stop, progress=progress, done=done, on_render=on_render
    )
    for c, (image, record) in zip(res.concepts, renders):
        c.render, c.render_record = image, record


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_concepts(ctx: RunContext, res: Concepts) -> None:
    """Every file of a concepts run, and its record in ``run.json``."""
    from ..outputs import figures
    from ..outputs.naming import REPORT, figure_file

    run = ctx.run
    run.write(BANK_FILE, _npy(res.bank.astype(np.float32)))
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        maps=res.maps.astype(np.float32),
        images=np.array(res.images),
        concept_ids=np.arange(len(res.concepts)),
    )
    run.write(MAPS_FILE, buf.getvalue())
    for c in res.concepts:
        if c.render is not None:
            run.write(concept_file(res.layer.name, c.concept), png_bytes(c.render))
            c.render_record = {**c.render_record, "file": concept_file(res.layer.name, c.concept)}
    run.write_text(CONCEPTS_FILE, json.dumps([c.record() for c in res.concepts], indent=1))
    for c in res.concepts:
        run.record["results"][f"concept_{c.concept:04d}"] = c.record()
    run.record["concepts"] = res.record()
    run.write_figure(figure_file("concepts"), figures.concepts_figure(res))
    run.write_text(REPORT, res.html())
    run.save()


# ---------------------------------------------------------------- report


def report_context(res: Concepts) -> dict:
    """Everything ``templates/concepts.html`` needs, pictures as data URIs (one self-contained page)."""
    from ..outputs import figures

    vmax = res.maps.reshape(res.maps.shape[0], res.maps.shape[1], -1).max((0, 2)) + 1e-8
    rows = []
    for c in res.concepts:
        heat = [
            {
                "uri": _uri(
                    png_bytes(
                        Image.fromarray(
                            figures.overlay(img, torch.from_numpy(res.maps[r, c.concept]), vmax=float(vmax[c.concept]))
                        )
                    )
                ),
                "image": res.images[r],
            }
            for r, img in c.heat
        ]
        rows.append(
            {
                **c.record(),
                "render_uri": _uri(png_bytes(c.render)) if c.render is not None else None,
                "crop_uris": [_uri(png_bytes(x)) for x in c.crops],
                "heat": heat,
            }
        )
    rec = res.record()
    return {
        "model": res.model,
        "layer": res.layer.name,
        "shape": res.layer.shape_str(),
        "target_class": res.target_class,
        "class_name": res.class_name,
        "method": res.method,
        "rec": rec,
        "concepts": rows,
        "importance_chart": _fig_uri(figures.concept_importance_figure(res)),
        "deletion_chart": _fig_uri(figures.concept_deletion_figure(res)),
        "settings": res.settings,
        "timings": res.timings,
        "status": res.status,
        "stable_cosine": STABLE_COSINE,
    }
