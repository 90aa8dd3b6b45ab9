"""The geometry of a layer's map (Carter et al., "Activation Atlas", Distill 2019): activation vectors laid
out in two dimensions, a grid over the layout, and the cells that hold enough points.

- :func:`layout_2d`: UMAP (umap-learn, the atlas's own choice: cosine metric, 20 neighbours, ``min_dist``
  0.01), or PCA / t-SNE from scikit-learn; ``random_state`` from the seed, so the same seed gives the same map.
- :func:`grid_cells`: the layout with outliers clipped at the 1st/99th percentiles of each axis, scaled to
  the unit square and cut into ``G × G`` cells; a cell is kept when it holds at least ``min_points`` points
  (captum's default 8). Cell ``(i, j)`` is row ``i`` from the top (layout y, high y on top) and column ``j``
  from the left (layout x).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("umap", "pca", "tsne")
CLIP = (1.0, 99.0)  # percentiles: points beyond are clipped to the edge (the atlas's outlier rule)
MIN_POINTS = 8  # captum's default minimum of points per cell
UMAP_NEIGHBORS, UMAP_MIN_DIST = 20, 0.01  # the atlas notebook's UMAP settings
PCA_BEFORE = 50  # UMAP and t-SNE run on the first 50 principal components (fast, and the usual practice)
UMAP_SMALL = 4096  # below this many points UMAP uses exact neighbours from the whole distance matrix (umap-learn's)


def layout_2d(
    vectors: np.ndarray, method: str = "umap", seed: int = 0, on_epoch: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """``[n, 2]`` positions of ``vectors`` ``[n, C]`` in a 2-D layout (``umap``, ``pca`` or ``tsne``);
    deterministic for a seed. UMAP and t-SNE use the cosine metric on the vectors reduced to
    :data:`PCA_BEFORE` principal components when they have more dimensions. ``on_epoch(done, total)``: UMAP's
    optimisation epochs as they pass (read from umap-learn's own epoch bar, :class:`EpochSink`; the layout is
    the same with or without it); PCA and t-SNE report nothing."""
    from sklearn.decomposition import PCA

    x = np.asarray(vectors, dtype=np.float32)
    n, c = x.shape
    if method == "pca" or n < 4:
        if n < 2 or c < 2:
            return np.zeros((n, 2), np.float32)
        return PCA(2, random_state=seed).fit_transform(x).astype(np.float32)
    if c > PCA_BEFORE and n > PCA_BEFORE:
        x = PCA(PCA_BEFORE, random_state=seed).fit_transform(x).astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        t = TSNE(2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed)
        return t.fit_transform(x).astype(np.float32)
    if method != "umap":
        raise ValueError(f"unknown layout {method!r}")
    import warnings

    _sleeping_numba_threads()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*")  # a seed makes UMAP single-threaded: wanted
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        import umap

        metric, data = "cosine", x
        if n < UMAP_SMALL:  # UMAP would compute every pair's distance with its numba cosine called from Python
            metric, data = "precomputed", cosine_distances(x)
        u = umap.UMAP(
            n_components=2,
            n_neighbors=min(UMAP_NEIGHBORS, n - 1),
            min_dist=UMAP_MIN_DIST,
            metric=metric,
            random_state=seed,
            tqdm_kwds=EpochSink.kwds(on_epoch) if on_epoch is not None and EpochSink.usable() else None,
        )
        return u.fit_transform(data).astype(np.float32)


def cosine_distances(x: np.ndarray) -> np.ndarray:
    """``[n, n]`` cosine distances (float32) as UMAP's ``cosine`` defines them — two zero vectors at 0, a zero
    vector and any other at 1 — from one matrix product. UMAP's own small-data path (under :data:`UMAP_SMALL`
    points) gets the same matrix through scikit-learn's pairwise loop over its numba metric, one Python call
    per pair: measured on 3,000 points × 50, 9.4 CPU-seconds for a whole layout against 3.7 this way."""
    from sklearn.metrics import pairwise_distances

    xd = np.asarray(x, dtype=np.float64)
    d = pairwise_distances(xd, metric="cosine")
    zero = ~xd.any(axis=1)
    d[np.ix_(zero, zero)] = 0.0
    return d.astype(np.float32)


class EpochSink:
    """Where umap-learn's epoch bar is written, as ``done/total`` (its ``bar_format``): each write calls
    ``on_epoch(done, total)``. umap-learn has no epoch callback; its optimiser loops over
    ``tqdm(range(n_epochs), **tqdm_kwds)``, refreshed at most every :data:`EVERY_S` seconds, so following it
    costs nothing measurable (a bar refresh, not a call per epoch)."""

    EVERY_S = 0.25
    _STEP = re.compile(r"(\d+)/(\d+)")

    def __init__(self, on_epoch: Callable[[int, int], None]) -> None:
        self.on_epoch = on_epoch

    @classmethod
    def kwds(cls, on_epoch: Callable[[int, int], None]) -> dict:
        """umap-learn's ``tqdm_kwds`` that send its epoch bar to ``on_epoch``."""
        return {
            "disable": False, "file": cls(on_epoch), "bar_format": "{n}/{total}", "mininterval": cls.EVERY_S,
            "leave": True, "dynamic_ncols": False, "ascii": True,
        }  # fmt: skip

    @staticmethod
    def usable() -> bool:
        """umap-learn's bar writes to a file (not a notebook widget, which ``tqdm.auto`` picks in Jupyter)."""
        from umap import layouts

        bar = getattr(layouts, "tqdm", None)
        return bar is not None and not any(c.__module__.startswith("tqdm.notebook") for c in bar.__mro__)

    def write(self, text: str) -> int:
        found = self._STEP.findall(text)
        if found:
            done, total = found[-1]
            self.on_epoch(int(done), int(total))
        return len(text)

    def flush(self) -> None:
        pass


def _sleeping_numba_threads() -> None:
    """Have numba (UMAP's compiler) use its ``workqueue`` threading layer, whose idle threads sleep, unless the
    user chose one (``NUMBA_THREADING_LAYER``). Its OpenMP layer's threads keep spinning after UMAP's parallel
    loops and take the CPU from torch: measured on 2 cores, a cell render after a UMAP layout cost 64 CPU
    seconds instead of 2.7. Only a process that has not started numba's threads yet is changed."""
    import os

    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    import numba

    numba.config.THREADING_LAYER = "workqueue"


@dataclass
class Grid:
    """Where every point falls: ``xy`` the clipped layout scaled to [0, 1]², ``cell`` ``[n, 2]`` its ``(i, j)``,
    and ``cells`` the kept cells ``(i, j) -> point indices`` (row-major order)."""

    size: int
    xy: np.ndarray
    cell: np.ndarray
    cells: dict[tuple[int, int], np.ndarray]
    bounds: tuple[tuple[float, float], tuple[float, float]]  # the clip bounds of x and y in layout units


def grid_cells(layout: np.ndarray, size: int, min_points: int = MIN_POINTS) -> Grid:
    """Cut ``layout`` ``[n, 2]`` into a ``size × size`` grid after clipping each axis at its 1st/99th
    percentiles; keep the cells with at least ``min_points`` points."""
    lo = np.percentile(layout, CLIP[0], axis=0)
    hi = np.percentile(layout, CLIP[1], axis=0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    xy = (np.clip(layout, lo, hi) - lo) / span
    j = np.minimum((xy[:, 0] * size).astype(np.int64), size - 1)
    i = np.minimum(((1.0 - xy[:, 1]) * size).astype(np.int64), size - 1)  # row 0 at the top: high y
    cell = np.stack([i, j], 1)
    flat = i * size + j
    cells: dict[tuple[int, int], np.ndarray] = {}
    for k in np.unique(flat):
        idx = np.flatnonzero(flat == k)
        if len(idx) >= min_points:
            cells[(int(k // size), int(k % size))] = idx
    bounds = ((float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1])))
    return Grid(size, xy.astype(np.float32), cell, cells, bounds)


def nearest_points(vectors: np.ndarray, idx: np.ndarray, centre: np.ndarray, images: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` of the points ``idx`` nearest ``centre`` (Euclidean, in activation space), at most one per
    image, nearest first: the exemplars of a cell."""
    d = np.linalg.norm(vectors[idx] - centre[None], axis=1)
    out, seen = [], set()
    for p in idx[np.argsort(d, kind="stable")]:
        im = int(images[p])
        if im in seen:
            continue
        seen.add(im)
        out.append(int(p))
        if len(out) == k:
            break
    return out
