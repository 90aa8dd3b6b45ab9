"""Features, not only units: the ``--features N`` part of :mod:`~filterscope.jobs.diff`.

The diff's pass feeds one :class:`~filterscope.jobs.activations.PositionSample` with A's and B's vectors at
the same image and position side by side (maps pooled to the common size, :func:`.unit_match.common_maps`), so
one reservoir draw keeps or drops both: the kept rows pair up. From that sample a TopK SAE
(:mod:`~filterscope.jobs.sae`) of ``N`` features is trained on A's vectors and one on B's, each on its own
model's vectors; their codes over the paired positions are correlated (Pearson) and B's features matched
one-to-one to A's by the Hungarian method (:func:`.unit_match.match_units`). A live B feature whose partner's
r is below the threshold is **gained**, a live A feature no B feature kept is **lost**. Each is listed with its
top exemplars (the images where it peaks among the sampled positions, ``x``/``y`` in the common map) and
named and scored by :func:`.names.describe_units` (INVERT name, purity of its top images, MIS score).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .activations import PositionSample
from .pieces import Pieces
from .sae import SAEConfig, encode, fit_sae
from .unit_match import match_units

SAMPLE = 50_000  # paired positions kept (reservoir); the folder's positions all kept when fewer
METHOD = (
    "one TopK SAE (jobs/sae.py) per model, each trained on its own model's vectors at the same sampled images × "
    "positions (maps pooled to common_map; one reservoir draw for both, so positions pair up); B's features "
    "matched one-to-one to A's by the Hungarian method on the Pearson r of their codes over the paired positions; "
    "a live B feature whose partner r is below threshold is gained, a live A feature no B feature kept is lost; "
    "exemplars: each feature's per-image peak over the sampled positions (x, y in common_map); names and "
    "scores: jobs/names.py describe_units"
)


def sae_k(features: int) -> int:
    """Active features per vector for a dictionary of ``features``: an eighth, between 1 and 32."""
    return int(min(32, max(1, features // 8)))


class PairedSample:
    """A's and B's vectors at the same positions, one reservoir for both (``meta``: image, y, x)."""

    def __init__(self, ca: int, cb: int, cap: int = SAMPLE, seed: int = 0) -> None:
        self.ca = ca
        self.sample = PositionSample(cap, ca + cb, seed=seed, meta=3)

    def add(self, first: int, pa: torch.Tensor, pb: torch.Tensor) -> None:
        """Add one batch of maps at the common size, ``[n, Ca, h, w]`` and ``[n, Cb, h, w]``; ``first``: the
        batch's first image index in the folder."""
        n, _, h, w = pa.shape
        rows = torch.cat([pa, pb], 1).permute(0, 2, 3, 1).reshape(n * h * w, -1).numpy()
        img, y, x = np.meshgrid(np.arange(first, first + n), np.arange(h), np.arange(w), indexing="ij")
        self.sample.add(rows, np.stack([img.ravel(), y.ravel(), x.ravel()], 1).astype(np.int32))

    def split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.sample.data
        return d[:, : self.ca], d[:, self.ca :], self.sample.meta[: len(d)]


@dataclass
class _Side:
    codes: np.ndarray  # [n, F] over the paired positions
    peaks: np.ndarray  # [images, F] per-image peak over the sampled positions
    where: np.ndarray  # [images, F] row of the sample where it peaks (-1: image not sampled)
    fvu: float


def _side(x: np.ndarray, meta: np.ndarray, n_images: int, cfg: SAEConfig, device, stop) -> _Side | None:
    fit = fit_sae(x, cfg, device=device, stop=stop)
    if fit.stopped:
        return None
    z = encode(fit.sae, x)
    f = z.shape[1]
    peaks = np.zeros((n_images, f), np.float32)
    where = np.full((n_images, f), -1, np.int64)
    order = np.argsort(meta[:, 0], kind="stable")
    imgs, starts = np.unique(meta[order, 0], return_index=True)
    for i, s, e in zip(imgs, starts, list(starts[1:]) + [len(order)]):
        rows = order[s:e]
        k = z[rows].argmax(0)
        peaks[i] = z[rows[k], np.arange(f)]
        where[i] = rows[k]
    fvu = fit.history[-1].get("fvu") if fit.history else None
    return _Side(z, peaks, where, float(fvu) if fvu is not None else float("nan"))


def _exemplars(side: _Side, meta: np.ndarray, j: int, names: list[str], k: int) -> list[dict]:
    out = []
    for i in np.argsort(-side.peaks[:, j], kind="stable")[:k]:
        if side.peaks[i, j] <= 0:
            break
        row = side.where[i, j]
        out.append(
            {
                "image": names[int(i)],
                "x": int(meta[row, 2]),
                "y": int(meta[row, 1]),
                "activation": round(float(side.peaks[i, j]), 5),
            }
        )
    return out


def _correlation(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """Pearson ``r[a, b]`` of two code matrices over the same rows; 0 where a feature is constant."""
    za = za - za.mean(0)
    zb = zb - zb.mean(0)
    sa, sb = np.sqrt((za**2).sum(0)), np.sqrt((zb**2).sum(0))
    den = np.outer(sa, sb)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (za.T.astype(np.float64) @ zb) / np.where(den > 0, den, 1), 0.0)
    return np.clip(r, -1.0, 1.0)


def feature_diff(
    sample: PairedSample,
    features: int,
    threshold: float,
    names: list[str],
    labels: list[str] | None,
    label_source: str | None,
    files: list,
    *,
    top: int = 10,
    seed: int = 0,
    device="cpu",
    stop: Callable[[], bool] = lambda: False,
    pieces: Pieces | None = None,
    on_side: Callable[[], None] | None = None,
) -> dict | None:
    """``diff.json``'s ``features``: ``{"gained", "lost", "matched", "method", ...}``; None when stopped.
    ``pieces``: each model's fitted dictionary (its codes, peaks and fit) is kept there for ``--resume`` and,
    resuming, taken back instead of fitted again; ``on_side()``: after each model's dictionary."""
    from .names import default_similarity, describe_units, mis_min_images, scoring_record

    xa, xb, meta = sample.split()
    cfg = SAEConfig(features=features, k=sae_k(features), seed=seed)

    def side(tag: str, x: np.ndarray) -> _Side | None:
        got = pieces.get(f"features/{tag}") if pieces is not None else None
        if got is not None:
            out = _Side(got[0]["codes"], got[0]["peaks"], got[0]["where"], float(got[1]["fvu"]))
        else:
            out = _side(x, meta, len(names), cfg, device, stop)
            if out is None:
                return None
            if pieces is not None:
                arrays = {"codes": out.codes, "peaks": out.peaks, "where": out.where}
                pieces.put(f"features/{tag}", arrays, {"fvu": out.fvu})
        if on_side is not None:
            on_side()
        return out

    a = side("a", xa)
    b = side("b", xb) if a is not None else None
    if a is None or b is None:
        return None
    dead_a, dead_b = ~(a.codes > 0).any(0), ~(b.codes > 0).any(0)
    r = _correlation(a.codes, b.codes)
    m = match_units(r, dead_a, dead_b, threshold)
    gained_ids = [j for j in np.flatnonzero(~dead_b) if not (m.partner[j] >= 0 and m.r[j] >= threshold)]
    lost_ids = [int(i) for i in m.lost]
    sim = default_similarity() if len(names) >= mis_min_images() else None
    embed = sim.embed(files) if sim is not None and (gained_ids or lost_ids) else None
    desc_b = describe_units(b.peaks, labels, top=top, embed=embed)
    desc_a = describe_units(a.peaks, labels, top=top, embed=embed)

    def item(side: _Side, desc: list[dict], j: int, best_r: float) -> dict:
        return {
            "feature": int(j),
            "r_best": round(float(best_r), 4),
            "frequency": round(float((side.codes[:, j] > 0).mean()), 5),
            **desc[j],
            "top": _exemplars(side, meta, j, names, top),
        }

    gained = [
        {**item(b, desc_b, j, m.r_best[j]), "partner": int(m.partner[j]) if m.partner[j] >= 0 else None,
         "r": round(float(m.r[j]), 4)}
        for j in gained_ids
    ]  # fmt: skip
    gained.sort(key=lambda g: (g["r_best"], g["feature"]))
    lost = [item(a, desc_a, j, rb) for j, rb in zip(lost_ids, m.lost_r)]
    lost.sort(key=lambda g: (g["r_best"], g["feature"]))
    live_b = np.flatnonzero(~dead_b)
    return {
        "gained": gained,
        "lost": lost,
        "matched": int(len(live_b) - len(gained)),
        "method": METHOD,
        "features": features,
        "k": cfg.k,
        "positions": int(len(xa)),
        "dead": {"a": int(dead_a.sum()), "b": int(dead_b.sum())},
        "fvu": {"a": round(a.fvu, 4), "b": round(b.fvu, 4)},
        "scoring": scoring_record(label_source, sim, len(names)),
    }
