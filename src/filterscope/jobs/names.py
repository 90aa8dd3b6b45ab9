"""Names and scores for every unit — a channel, a concept or a dictionary feature alike.

A *unit* here is anything with one activation per image (``acts``: images × units, e.g. a channel's max over
the positions of its map). Three things are read from those numbers and the images, with no person involved:

**A name** (:func:`name_units`), after INVERT (Bykov et al., NeurIPS 2023, "Labeling Neural Representations
with Inverse Recognition"): among the images' labels (:func:`image_labels`: the class sub-folders of an
ImageFolder, else the model's own top-1 predictions) and their compositions, the concept whose images the
unit's activation separates best from the rest, by the AUC of the activation as a score for "image belongs
to the concept", found by beam search. Every image carries exactly one label, so the labels partition the
images: ``a AND b`` of two labels is empty and ``a AND NOT b`` is ``a``. The compositions that remain — and
the grammar of a name — are

- ``a`` — the images labelled ``a``;
- ``a OR b`` — the union of up to ``max_terms`` labels;
- ``NOT a``, ``NOT a AND NOT b`` — the complement of a label or of such a union (the unit fires on
  everything except them).

The AUC of a union is computed from per-label rank sums (ranks are computed once per unit, with
:func:`scipy.stats.rankdata`; the AUC of a set of images is the Mann–Whitney U statistic of its rank sum
over ``n1·n0``, which equals :func:`sklearn.metrics.roc_auc_score`, ties counted half), so the whole search
is a few matrix products over all units at once. The beam ranks formulas of one length by AUC (INVERT's
criterion), except that a complement ``NOT a`` is named over the best single label only when it separates more
strongly, as a longer formula must (excluding a few images easily reaches a high AUC). Between lengths, a
longer formula replaces a shorter one when it separates more strongly — a Mann–Whitney z higher by at least
:data:`Z_GAIN`, one standard error (AUC alone would keep ``dog`` for a unit that fires on dogs and, a little
less, on cats) — *and* every term earns its place: each label's images alone activate the unit more (for a
union; less, for a complement) than the images outside the formula, at p < ``alpha``; otherwise a label that
happens to hold one strong image would join almost every name. A union's labels must also each lift the unit's
mean activation at least :data:`TERM_SHARE` as much as its strongest label: ranks alone cannot tell "cats a
little less than dogs" from a faint, consistent echo (a red feature that stripes nudge to a tenth of its
response is "red", not "red OR stripes").

The name's ``p`` is the one-sided Mann–Whitney p-value that the concept's images activate the unit more
than the others (:func:`mannwhitney_p`: scipy's asymptotic :func:`~scipy.stats.mannwhitneyu` with the tie
correction, vectorised), **Bonferroni-adjusted for the concepts the search compared**: choosing the best
of many concepts would otherwise name a random unit almost always. Following Tarone (1990), only concepts
that could reach ``alpha`` at all (by their sizes: one image out of 1,000 cannot) are compared and counted.
A unit gets ``None`` when ``p ≥ alpha``.

**Class purity** (:func:`purity`): the share of a unit's top images that carry its most common label.

**An interpretability score** (:func:`mis_scores`), the Machine Interpretability Score's 2-AFC task
(Zimmermann, Klindt & Brendel, NeurIPS 2024, "Measuring Mechanistic Interpretability at Scale Without
Humans", after the psychophysics task of Borowski et al. 2021): a task shows a strongly activating query
``q+`` and a weakly activating one ``q−`` with the unit's explanations, ``k`` strongly and ``k`` weakly
activating images; with ``Δ(q)`` = mean similarity of ``q`` to the strong explanations − mean similarity to
the weak ones, the probability of answering right is ``σ(α·(Δ(q+) − Δ(q−)))`` (the paper's soft
classifier), and the score is its mean over the tasks: 0.5 is chance, 1 a unit whose strong images look
alike and unlike its weak ones. In the paper's stimuli (Borowski et al.; the IMI set) the query comes from
the most extreme bin of the unit's ~200 strongest of 50,000 images and the explanations from the bins below
it: queries and explanations are both drawn from the unit's *top range*, the far tail of its activations.
With tens to hundreds of images a fixed number of ranks is no such tail: the next 9 ranks after a
detector's 12 images of its class are inactive images, which the task would call "strongly activating"
(on the planted net of the tests, 6 of 9 queries of every stripes detector were, and it scored at chance),
and ties — a ReLU unit's zeros — were ordered by file name. So here the ranges are set by **value**: the
top range is the images whose activation is at least :data:`MIS_LEVEL` of the way from the unit's median to
its maximum, the bottom range those at least as far from the median towards the minimum (a ReLU unit's
zeros); each holds at least :data:`MIS_K_MIN` + 1 images (by rank, ties in random order, when fewer pass);
each task draws, without replacement, the query and up to ``k`` explanations from the same range at either
end. A unit that answers to several things shows them in its top range (its explanations mix them, and a
query of one is unlike explanations of another); a unit with a dominant thing and weaker others is judged
on the others too as far as they reach a quarter of its peak. Tasks are drawn per unit with its own seeded
generator (``trials`` of them, 200 by default against the paper's 20: the sampling noise of 20 tasks is
~0.05), so a unit's score does not depend on the other units scored with it.

The paper's similarity is DreamSim (a download; an ensemble of DINO, CLIP and OpenCLIP embeddings tuned to
human similarity judgements, which are sensitive to colour and layout as well as to objects). Here it is the
cosine similarity of :class:`Similarity`'s offline embedding: the penultimate features of a second bundled
model (``efficientnet_lite1``) *and* a model-free colour + gradient-orientation histogram, with equal weight
(the cosine of the concatenation of the two unit vectors over √2 is the mean of the two cosines) — a pooled
penultimate layer of an ImageNet CNN is trained to ignore colour (colour-jitter augmentation) and scored a
perfect green-patch detector at 0.7 — or the histogram alone when that package is not installed. ``α`` is
fixed at :data:`MIS_ALPHA` (the paper fits α to human answers for DreamSim distances; here a gap of 0.1 in
mean cosine similarity gives ``σ(1) ≈ 0.73``).

Everything here is pure numpy/scipy/scikit-learn on arrays the jobs already have, plus one forward pass of
the embedding model over the images; nothing writes files.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special, stats
from torch import nn

from ..errors import ImageError, ModelError, UsageError
from ..models.inputs import load_image
from ..models.model import Model

ALPHA = 0.01  # a name is shown only below this (adjusted) p-value
Z_GAIN = 1.0  # a longer formula must raise the Mann–Whitney z by one standard error to replace a shorter
TERM_SHARE = 0.5  # each label of a union lifts the unit's mean activation (over the images outside it) at
# least half as much as its strongest label: "red OR stripes" is no name for a red unit that stripes nudge
TIE = 1e-9  # where a union and a complement are the same images, the union's formula is the name
MIS_ALPHA = 10.0  # slope of the soft 2-AFC decision on cosine-similarity differences
MIS_LEVEL = 0.25  # the top range: at least this share of the way from the median activation to the maximum
MIS_K_MIN = 3  # explanations per side at least (a range of fewer images is filled by rank)
MIS_TRIALS = 200  # 2-AFC tasks per unit
SIMILARITY_MODEL = "efficientnet_lite1"
FALLBACK_SIZE = 64  # side the model-free embedding resizes images to
COLOUR_BINS = 4  # per RGB channel: 64 colour bins
ORIENT_BINS, CELLS = 9, 4  # gradient orientations (unsigned) × a 4×4 grid of cells
SCORE_METHOD = (
    "MIS 2-AFC (Zimmermann, Klindt & Brendel, NeurIPS 2024) on the unit's activation ranges: the top range = "
    f"images at least {MIS_LEVEL:g} of the way from the unit's median activation to its maximum, the bottom "
    f"range likewise towards its minimum (each at least {MIS_K_MIN + 1} images, by rank when fewer); each of "
    f"{MIS_TRIALS} tasks per unit draws a query and up to 9 explanations from the same range at either end; "
    f"score = mean over tasks of sigmoid({MIS_ALPHA:g} * (Δ(q+) - Δ(q-))), Δ(q) = mean cosine similarity of q "
    "to the top explanations minus to the bottom ones, in the embedding named in the record; 0.5 = chance, "
    "1 = perfectly interpretable"
)

Label = str
Name = dict  # {"name": str, "auc": float, "p": float}


# ---------------------------------------------------------------- labels


def _folder_labels(files: Sequence[Path], root: Path) -> list[str] | None:
    """The class sub-folder of every file when ``root`` is laid out as an ImageFolder, else None."""
    root = Path(root).resolve()
    labels = []
    for f in files:
        try:
            rel = Path(f).resolve().relative_to(root)
        except ValueError:
            return None
        if len(rel.parts) < 2:  # an image directly in root: not an ImageFolder
            return None
        labels.append(rel.parts[0])
    return labels if len(set(labels)) >= 2 else None


@torch.no_grad()
def predict_labels(model: Model, files: Sequence[Path], batch_size: int = 32) -> list[int]:
    """The model's top-1 class index for every image (unreadable images raise :class:`ImageError`)."""
    out: list[int] = []
    for i in range(0, len(files), batch_size):
        x = torch.cat([model.preprocess(load_image(f)) for f in files[i : i + batch_size]]).to(model.device)
        out += model(x).argmax(1).tolist()
    return out


def class_name(model: Model | None, index: int) -> str:
    """A class index as the model's category name, or ``class <index>`` when it has none."""
    cats = getattr(model, "categories", None) if model is not None else None
    return cats[index] if cats and 0 <= index < len(cats) else f"class {index}"


def image_labels(
    files: Sequence[Path],
    root: Path,
    model: Model | None = None,
    predictions: Sequence[int] | None = None,
) -> tuple[list[str], str]:
    """The label of every image and where it came from: ``(labels, "folders")`` when ``root`` is an
    ImageFolder (every image in a class sub-folder, at least two sub-folders), else ``(labels,
    "predictions")``: the model's top-1 class names, from ``predictions`` (class indices, one per file) when
    given, else computed with ``model``. Folder names are the ground truth a user gave; predictions are the
    model's own view (INVERT's labels either way)."""
    files = [Path(f) for f in files]
    by_folder = _folder_labels(files, Path(root))
    if by_folder is not None:
        return by_folder, "folders"
    if predictions is None:
        if model is None:
            raise UsageError(f"{root} is not a folder of class sub-folders, and no model was given to label it")
        predictions = predict_labels(model, files)
    if len(predictions) != len(files):
        raise UsageError(f"{len(predictions)} predictions for {len(files)} images")
    return [class_name(model, int(p)) for p in predictions], "predictions"


# ---------------------------------------------------------------- names (INVERT)


def _formula(labels: Sequence[str], terms: Sequence[int], negated: bool) -> str:
    names = [labels[t] for t in sorted(terms, key=lambda t: labels[t])]
    return " AND ".join(f"NOT {n}" for n in names) if negated else " OR ".join(names)


def _min_p(n1: np.ndarray, n: int) -> np.ndarray:
    """The smallest one-sided asymptotic Mann–Whitney p-value a concept of ``n1`` of ``n`` images can reach
    (all its images ranked above all others, no ties): what decides whether it counts as a test (Tarone)."""
    n1 = np.asarray(n1, dtype=np.float64)
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (n1 * n0 / 2 - 0.5) / np.sqrt(n1 * n0 * (n + 1) / 12)
    return np.where((n1 > 0) & (n0 > 0), special.ndtr(-z), 1.0)


def _z(auc: np.ndarray, n_union: np.ndarray, neg: np.ndarray, n: int) -> np.ndarray:
    """The Mann–Whitney z-score (no tie correction) of concepts with this AUC, given the size of their
    labels' union and whether they are its complement: how strongly, not only how cleanly, they separate."""
    n1 = np.where(neg, n - n_union, n_union).astype(np.float64)
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (auc - 0.5) * np.sqrt(12 * n1 * n0 / (n + 1))
    return np.nan_to_num(z, nan=-np.inf)


def _auc(rank_sum: np.ndarray, n1: np.ndarray, n: int) -> np.ndarray:
    """AUC of the sets with these rank sums and sizes (nan where a set is empty or everything)."""
    n1 = np.asarray(n1, dtype=np.float64)
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), a, np.nan)


def mannwhitney_p(x: np.ndarray, y: np.ndarray, alternative: str = "greater") -> np.ndarray:
    """One-sided Mann–Whitney U p-values, column by column, of samples ``x`` (n1 × k) against ``y`` (n0 × k):
    the asymptotic test with tie and continuity corrections, as :func:`scipy.stats.mannwhitneyu` with
    ``method="asymptotic"`` (a test checks they agree). Vectorised over columns because scipy's per-call
    overhead (~7 ms) would dominate thousands of small tests. NaN p (no spread at all) becomes 1."""
    n1, n0 = x.shape[0], y.shape[0]
    z = np.concatenate([x, y])
    n, k = z.shape
    order = np.argsort(z, axis=0, kind="stable")
    zs = np.take_along_axis(z, order, axis=0)
    new = np.ones_like(zs, dtype=bool)
    new[1:] = zs[1:] != zs[:-1]
    gid = (np.cumsum(new, axis=0) - 1 + np.arange(k) * n).ravel()  # tie groups, numbered per column
    sizes = np.bincount(gid, minlength=n * k).astype(np.float64)
    pos = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64)[:, None], (n, k)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_rank = np.bincount(gid, weights=pos, minlength=n * k) / sizes  # average rank of each tie group
    ranks = mean_rank[gid].reshape(n, k)  # in sorted order
    u1 = np.where(order < n1, ranks, 0.0).sum(0) - n1 * (n1 + 1) / 2
    tie = (sizes**3 - sizes).reshape(k, n).sum(1)
    mu = n1 * n0 / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(n1 * n0 / 12 * ((n + 1) - tie / (n * (n - 1))))
        d = (u1 - mu) if alternative == "greater" else (mu - u1)
        p = special.ndtr(-(d - 0.5) / sd)
    return np.nan_to_num(p, nan=1.0)


def _terms_hold(
    acts: np.ndarray, lab: np.ndarray, terms: np.ndarray, neg: np.ndarray, units: np.ndarray, alpha: float
) -> np.ndarray:
    """Whether every term of each unit's formula separates on its own: the images of each of its labels
    activate the unit more (a union) or less (a complement) than the images outside the formula's labels, at
    one-sided Mann–Whitney p < ``alpha``. Keeps a label that merely happens to hold one strong image out of a
    formula. One test per distinct (formula, term) over all units that share it."""
    ok = np.ones(len(units), dtype=bool)
    groups: dict[tuple[tuple[int, ...], bool], list[int]] = {}
    for r, (t, g) in enumerate(zip(terms, neg, strict=True)):
        groups.setdefault((tuple(sorted(int(x) for x in t)), bool(g)), []).append(r)
    for (t, g), rows in groups.items():
        outside = np.flatnonzero(~np.isin(lab, t))
        cols = units[rows]
        y = acts[np.ix_(outside, cols)]
        lift = []
        for term in t:
            x = acts[np.ix_(np.flatnonzero(lab == term), cols)]
            ok[rows] &= mannwhitney_p(x, y, "less" if g else "greater") < alpha
            lift.append(x.mean(0) - y.mean(0))
        if not g:  # a union's every label draws a fair share of the activation its strongest label draws
            lift = np.array(lift)
            ok[rows] &= (lift >= TERM_SHARE * lift.max(0)).all(0)
    return ok


def name_units(
    acts: np.ndarray,
    labels: Sequence[str],
    *,
    alpha: float = ALPHA,
    beam: int = 5,
    max_terms: int = 2,
) -> list[Name | None]:
    """Name every unit (column of ``acts``, images × units) INVERT-style: the label or composition of up to
    ``max_terms`` labels (``a``, ``a OR b``, ``NOT a``, ``NOT a AND NOT b``; see the module docstring) that
    the unit's activation separates best by AUC, found by a beam search of width ``beam``; returns
    ``{"name", "auc", "p"}`` per unit, ``p`` one-sided Mann–Whitney, Bonferroni-adjusted for the testable
    concepts compared, or None when ``p >= alpha``. All units are searched at once (ranks once per unit)."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2:
        raise UsageError(f"acts must be images × units, got shape {acts.shape}")
    n, u = acts.shape
    if len(labels) != n:
        raise UsageError(f"{len(labels)} labels for {n} images")
    if beam < 1 or max_terms < 1:
        raise UsageError("beam and max_terms must be at least 1")
    vocab, lab = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    n_lab = len(vocab)
    if u == 0:
        return []
    if n_lab < 2:
        return [None] * u
    ranks = stats.rankdata(acts, axis=0)  # n × u, ties averaged
    onehot = np.zeros((n_lab, n), dtype=np.float64)
    onehot[lab, np.arange(n)] = 1.0
    s_lab = onehot @ ranks  # label × unit rank sums
    n_of = onehot.sum(1)  # images per label
    total = n * (n + 1) / 2  # every unit's rank sum over all images

    # step 1: every label and its complement
    cand_s = np.concatenate([s_lab, total - s_lab])  # 2L × u
    cand_n = np.concatenate([n_of, n - n_of])
    auc = _auc(cand_s, cand_n[:, None], n)
    auc[_min_p(cand_n, n) >= alpha] = np.nan  # a concept that could never be significant is no name (Tarone)
    # a complement that equals a union ("NOT a AND NOT b" of four labels) loses the tie to the union
    rank_by = np.nan_to_num(auc, nan=-1.0) - TIE * (np.arange(2 * n_lab) >= n_lab)[:, None]
    order = np.argsort(-rank_by, axis=0, kind="stable")[: min(beam, 2 * n_lab)]  # b × u
    cols = np.arange(u)
    # beam state per unit: the positive union's rank sum and size, its sign, its labels
    b_s = s_lab[order % n_lab, cols]  # b × u
    b_n = n_of[order % n_lab]
    b_neg = order >= n_lab
    b_terms = (order % n_lab)[..., None]  # b × u × terms
    # the first name: the best label by AUC, unless the best complement separates more strongly (z higher by
    # Z_GAIN) — "NOT a" of a small label reaches a high AUC while saying little about what the unit fires on
    pos = np.argmax(rank_by[:n_lab], axis=0)
    neg = n_lab + np.argmax(rank_by[n_lab:], axis=0)
    z_pos = _z(auc[pos, cols], n_of[pos], np.zeros(u, dtype=bool), n)
    z_neg = _z(auc[neg, cols], n_of[neg - n_lab], np.ones(u, dtype=bool), n)
    first = np.where(z_neg >= z_pos + Z_GAIN, neg, pos)
    best_auc = auc[first, cols]
    best_terms = [[int(t)] for t in first % n_lab]
    best_neg = first >= n_lab
    best_z = np.where(best_neg, z_neg, z_pos)
    testable = np.full(u, float((_min_p(cand_n, n) < alpha).sum()))
    can_join = _min_p(n_of, n) < alpha  # a label too small to ever be significant is no term of a formula

    for _ in range(1, min(max_terms, n_lab - 1)):
        # extend every beam entry by every label not in it: union (OR), or one more NOT for a complement
        s = b_s[..., None] + s_lab.T[None]  # b × u × L
        m = b_n[..., None] + n_of[None, None, :]
        pos_s = np.where(b_neg[..., None], total - s, s)
        pos_n = np.where(b_neg[..., None], n - m, m)
        a = _auc(pos_s, pos_n, n)
        inside = (b_terms[..., None] == np.arange(n_lab)).any(axis=2)  # label already in the formula
        ok = ~inside & can_join[None, None, :] & can_join[b_terms].all(axis=2)[..., None]
        a = np.where(ok, a, np.nan)
        testable += ((_min_p(pos_n, n) < alpha) & ok).sum(axis=(0, 2))
        a_raw = np.nan_to_num(a, nan=-1.0).transpose(1, 0, 2).reshape(u, -1)  # u × (b·L)
        flat = a_raw - TIE * np.repeat(b_neg.T, n_lab, axis=1)
        top = np.argsort(-flat, axis=1, kind="stable")[:, :beam]  # u × b (duplicates {a,b}/{b,a} are harmless)
        bi, li = top // n_lab, top % n_lab
        new_auc = a_raw[cols, top[:, 0]]
        b_s = s[bi.T, cols[None], li.T]
        b_n = m[bi.T, cols[None], li.T]
        b_neg = b_neg[bi.T, cols[None]]
        b_terms = np.concatenate([b_terms[bi.T, cols[None]], li.T[..., None]], axis=2)
        # the longer formula wins where its AUC is higher and every term of it earns its place
        # an extension that is no concept (every label already in the formula or too small: nan, ranked as
        # −1) never wins, also where the best so far is no name (z −inf)
        chosen = a.transpose(1, 0, 2).reshape(u, -1)[cols, top[:, 0]]
        new_z = _z(new_auc, b_n[0], b_neg[0], n)
        better = np.flatnonzero(np.isfinite(chosen) & (new_z >= best_z + Z_GAIN))
        keep = _terms_hold(acts, lab, b_terms[0, better], b_neg[0, better], better, alpha)
        for j in better[keep]:
            best_terms[j] = [int(t) for t in b_terms[0, j]]
            best_neg[j] = b_neg[0, j]
            best_auc[j] = new_auc[j]
            best_z[j] = new_z[j]

    # p-values: one test per distinct concept, over all the units that chose it
    groups: dict[tuple[tuple[int, ...], bool], list[int]] = {}
    for j in range(u):
        groups.setdefault((tuple(sorted(best_terms[j])), bool(best_neg[j])), []).append(j)
    p = np.ones(u)
    for (terms, neg), units in groups.items():
        inside = np.isin(lab, terms) ^ neg
        if inside.all() or not inside.any():
            continue
        p[units] = mannwhitney_p(acts[np.ix_(inside, units)], acts[np.ix_(~inside, units)])
    p_adj = np.minimum(1.0, p * np.maximum(testable, 1.0))
    out: list[Name | None] = []
    for j in range(u):
        if not np.isfinite(best_auc[j]) or p_adj[j] >= alpha:
            out.append(None)
            continue
        name = _formula(vocab, best_terms[j], bool(best_neg[j]))
        out.append({"name": name, "auc": round(float(best_auc[j]), 4), "p": float(f"{p_adj[j]:.3g}")})
    return out


def purity(top_images: Sequence[int], labels: Sequence[str]) -> dict | None:
    """The most common label among a unit's top images (indices into ``labels``) and its share of them:
    ``{"label", "share"}``, or None when there are no top images. Ties go to the label seen first."""
    got = [labels[int(i)] for i in top_images]
    if not got:
        return None
    label, count = Counter(got).most_common(1)[0]
    return {"label": label, "share": round(count / len(got), 4)}


# ---------------------------------------------------------------- similarity and the MIS score


def _penultimate(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A classifier's features before its last linear layer: timm's ``forward_head(pre_logits=True)``, else
    the input of the network's last ``nn.Linear`` (caught by a hook)."""
    if hasattr(net, "forward_features") and hasattr(net, "forward_head"):
        return net.forward_head(net.forward_features(x), pre_logits=True)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        out = net(x)
        return F.adaptive_avg_pool2d(out, 1).flatten(1) if out.ndim == 4 else out.flatten(1)
    got: list[torch.Tensor] = []
    h = linears[-1].register_forward_hook(lambda m, i, o: got.append(i[0]))
    try:
        net(x)
    finally:
        h.remove()
    return got[0].flatten(1)


def _handcrafted(x: torch.Tensor) -> torch.Tensor:
    """Model-free embedding of images ``[B, 3, H, W]`` in [0, 1]: a 4×4×4 RGB colour histogram and a
    histogram of gradient orientations (9 unsigned bins, magnitude-weighted, in a 4×4 grid of cells, as
    HOG without block normalisation), each L2-normalised, concatenated."""
    x = F.interpolate(x[:, :3], size=(FALLBACK_SIZE, FALLBACK_SIZE), mode="bilinear", antialias=True).clamp(0, 1)
    b = x.shape[0]
    q = (x * COLOUR_BINS).long().clamp(max=COLOUR_BINS - 1)
    idx = (q[:, 0] * COLOUR_BINS + q[:, 1]) * COLOUR_BINS + q[:, 2]
    colour = F.one_hot(idx.flatten(1), COLOUR_BINS**3).float().sum(1)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gx = F.conv2d(grey, kx[None, None], padding=1)[:, 0]
    gy = F.conv2d(grey, kx.T.contiguous()[None, None], padding=1)[:, 0]
    mag = torch.sqrt(gx**2 + gy**2)
    ang = torch.remainder(torch.atan2(gy, gx), torch.pi)
    o = (ang / torch.pi * ORIENT_BINS).long().clamp(max=ORIENT_BINS - 1)
    cell = FALLBACK_SIZE // CELLS
    ys = torch.arange(FALLBACK_SIZE) // cell
    cell_idx = (ys[:, None] * CELLS + ys[None, :]).expand(b, -1, -1)
    hog = torch.zeros(b, CELLS * CELLS * ORIENT_BINS)
    hog.scatter_add_(1, (cell_idx * ORIENT_BINS + o).flatten(1), mag.flatten(1))
    return torch.cat([F.normalize(colour, dim=1), F.normalize(hog, dim=1)], dim=1)


class Similarity:
    """An offline image embedding whose cosine similarity stands in for MIS's perceptual similarity.

    By default the penultimate features (global-average-pooled, 1280-d) of ``efficientnet_lite1``, a second
    bundled model — a network other than the one being explained, so a unit is not judged by its own
    features — together with the model-free colour + gradient-orientation histogram (:func:`_handcrafted`),
    each unit-normalised and weighted equally (``low_level=True``): the network sees objects and textures but
    was trained to ignore colour, the histogram sees colour and orientation but no objects; DreamSim, the
    paper's similarity, is sensitive to both. When that package is not installed (or ``model=None``), the
    histogram alone. A :class:`Model` may be passed too (e.g. the unit's own network). :attr:`name` says
    which, for the record.
    """

    def __init__(self, model: Model | str | None = SIMILARITY_MODEL, batch_size: int = 32, low_level: bool = True):
        self.batch_size = batch_size
        self.model: Model | None = None
        self.low_level = low_level
        if isinstance(model, str):
            from ..models.registry import load_model

            try:
                model = load_model(model)
            except ModelError:
                model = None
        free = (
            f"model-free: {COLOUR_BINS}³ RGB colour histogram + {ORIENT_BINS}-bin gradient-orientation "
            f"histogram in {CELLS}×{CELLS} cells at {FALLBACK_SIZE} px"
        )
        if model is not None:
            self.model = model
            self.name = f"{model.name} penultimate features" + (f" + {free}, equal weight" if low_level else "")
            self.name += " (cosine)"
        else:
            self.name = f"{free} (cosine)"

    def _tensor(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            x = images if images.ndim == 4 else images[None]
            if self.model is not None:
                s = self.model.input_size
                x = F.interpolate(x.float(), size=(s, s), mode="bilinear", antialias=True).clamp(0, 1)
            return x.float()
        ims = [load_image(im) if isinstance(im, (str, os.PathLike)) else im for im in images]
        if not ims:
            raise ImageError("no images to embed")
        if self.model is not None:
            return torch.cat([self.model.preprocess(im) for im in ims])
        from ..models.inputs import to_tensor

        return torch.stack(
            [to_tensor(im.convert("RGB").resize((FALLBACK_SIZE, FALLBACK_SIZE), resample=2)) for im in ims]
        )

    @torch.no_grad()
    def embed(self, images) -> np.ndarray:
        """L2-normalised embeddings (images × dims, float32) of images given as a tensor ``[B, C, H, W]`` in
        [0, 1], or a list of PIL images or paths."""
        out = []
        for i in range(0, len(images), self.batch_size):
            x = self._tensor(images[i : i + self.batch_size])
            if self.model is None:
                f = _handcrafted(x)
            else:
                x = x.to(self.model.device)
                f = F.normalize(_penultimate(self.model.net, self.model.normalize(x)).float().cpu().flatten(1), dim=1)
                if self.low_level and x.shape[1] >= 3:
                    f = torch.cat([f, F.normalize(_handcrafted(x[:, :3].float().cpu()), dim=1)], dim=1)
            out.append(F.normalize(f.flatten(1), dim=1))
        return torch.cat(out).numpy().astype(np.float32)


def mis_min_images(k: int = 9) -> int:
    """The fewest images :func:`mis_scores` is asked to score with ``k`` explanations per side: ``2k + 2``
    (the jobs skip the score below it)."""
    return 2 * k + 2


def activation_ranges(
    a: np.ndarray, rng: np.random.Generator, level: float = MIS_LEVEL, k_min: int = MIS_K_MIN
) -> tuple[np.ndarray, np.ndarray]:
    """A unit's top and bottom ranges (image indices) over its activations ``a``: the images at least
    ``level`` of the way from the median to the maximum, and from the median to the minimum; a range of
    fewer than ``k_min + 1`` images is replaced by that many strongest (weakest) ranks, ties in random order
    (``rng``). The two never share an image (the bottom gives way)."""
    n = len(a)
    hi, md, lo = float(a.max()), float(np.median(a)), float(a.min())
    top = np.flatnonzero(a >= md + level * (hi - md))
    bottom = np.flatnonzero(a <= md - level * (md - lo))
    if len(top) < k_min + 1 or len(bottom) < k_min + 1:
        order = np.lexsort((rng.random(n), -a))  # strongest first, ties in random order
        if len(top) < k_min + 1:
            top = order[: k_min + 1]
        if len(bottom) < k_min + 1:
            bottom = order[n - k_min - 1 :]
    bottom = np.setdiff1d(bottom, top)
    return top, bottom


def _draws(pool: np.ndarray, size: int, trials: int, rng: np.random.Generator) -> np.ndarray:
    """``trials`` draws of ``size`` distinct images of ``pool`` (``trials × size``)."""
    if len(pool) == size:
        return rng.permuted(np.tile(pool, (trials, 1)), axis=1)
    keys = rng.random((trials, len(pool)))
    return pool[np.argpartition(keys, size - 1, axis=1)[:, :size]]


def mis_scores(
    embed: np.ndarray,
    acts: np.ndarray,
    *,
    k: int = 9,
    trials: int = MIS_TRIALS,
    seed: int = 0,
    level: float = MIS_LEVEL,
) -> np.ndarray:
    """The MIS 2-AFC score of every unit (column of ``acts``, images × units) with image embeddings
    ``embed`` (images × dims, L2-normalised rows): see the module docstring. Each task draws its strong
    query and up to ``k`` strong explanations from the unit's top range, its weak query and weak explanations
    from the bottom range (:func:`activation_ranges` at ``level``); ``trials`` tasks per unit, drawn with a
    generator seeded by ``(seed, unit)``, so the result is deterministic and a unit's score does not depend on
    the others. A unit whose activation is the same on every image gets NaN. Needs
    :func:`mis_min_images` images."""
    embed = np.asarray(embed, dtype=np.float64)
    acts = np.asarray(acts, dtype=np.float64)
    n, u = acts.shape
    if embed.shape[0] != n:
        raise UsageError(f"{embed.shape[0]} embeddings for {n} images")
    if k < 1 or trials < 1:
        raise UsageError("k and trials must be at least 1")
    if not 0 < level <= 1:
        raise UsageError(f"level must be in (0, 1], got {level}")
    if n < mis_min_images(k):
        raise UsageError(f"the interpretability score needs at least {mis_min_images(k)} images for k={k}, got {n}")
    sim = embed @ embed.T
    score = np.full(u, np.nan)
    for j in range(u):
        a = acts[:, j]
        if np.ptp(a) == 0:
            continue  # a dead unit: no score
        rng = np.random.default_rng((seed, j))
        top, bottom = activation_ranges(a, rng, level, min(MIS_K_MIN, k))
        kt, kb = min(k, len(top) - 1), min(k, len(bottom) - 1)
        if kt < 1 or kb < 1:
            continue  # too few images apart to draw a task
        t = _draws(top, kt + 1, trials, rng)  # column 0: the query, the rest: the explanations
        b = _draws(bottom, kb + 1, trials, rng)

        def delta(q: np.ndarray, t=t, b=b) -> np.ndarray:  # mean similarity to the top minus to the bottom
            return sim[q[:, None], t[:, 1:]].mean(1) - sim[q[:, None], b[:, 1:]].mean(1)

        score[j] = np.mean(special.expit(MIS_ALPHA * (delta(t[:, 0]) - delta(b[:, 0]))))
    return score


# ---------------------------------------------------------------- what the jobs record


@functools.lru_cache(maxsize=1)
def default_similarity() -> Similarity:
    """The :class:`Similarity` the jobs share (loaded once per process: a server's workers reuse it)."""
    return Similarity()


def describe_units(
    acts: np.ndarray,
    labels: Sequence[str] | None,
    *,
    top: int = 9,
    embed: np.ndarray | None = None,
    alpha: float = ALPHA,
) -> list[dict]:
    """Per unit (column of ``acts``, images × units): ``{"name", "purity", "score"}`` — the INVERT name
    (None without labels or when not significant), the purity of its ``top`` most activating images (None
    without labels), and its MIS score (None without ``embed``, with too few images, or for a dead unit).
    What the atlas, the explorer and ``concepts`` write for each channel or concept."""
    acts = np.asarray(acts, dtype=np.float64)
    n, u = acts.shape
    names: list = name_units(acts, labels, alpha=alpha) if labels is not None else [None] * u
    order = np.argsort(-acts, axis=0, kind="stable")[:top].T
    pur = [purity(order[j], labels) if labels is not None else None for j in range(u)]
    scores: list = [None] * u
    if embed is not None and n >= mis_min_images():
        s = mis_scores(embed, acts)
        scores = [None if not np.isfinite(v) else round(float(v), 4) for v in s]
    return [{"name": names[j], "purity": pur[j], "score": scores[j]} for j in range(u)]


def scoring_record(labels_source: str | None, similarity: Similarity | None, n_images: int) -> dict:
    """What a run records about its names and scores: where the labels came from, the score's method and
    similarity, or why the score was skipped."""
    rec: dict = {"labels": labels_source, "alpha": ALPHA, "score_method": SCORE_METHOD}
    if n_images < mis_min_images():
        rec["score_skipped"] = f"{n_images} images: the score needs at least {mis_min_images()}"
    elif similarity is None:
        rec["score_skipped"] = "no image similarity"
    else:
        rec["similarity"] = similarity.name
    return rec
