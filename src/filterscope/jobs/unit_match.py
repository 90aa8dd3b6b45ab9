"""Units of two layers matched one-to-one by the correlation of their activations (after Rosetta Neurons,
Dravid et al., ICCV 2023): streamed Pearson statistics over images × positions, then the Hungarian method.

Both layers' maps are brought to a common size first (:func:`common_maps`: adaptive average pooling of the
larger map to the smaller one), so the two models' positions line up; every position of every image is one
observation. A unit is **dead** when it is never above 0 over the folder, or constant: it has no correlation
to speak of and is never matched or ranked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEAD_RULE = "never above 0 over the images, or constant over images × positions"


def common_maps(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps ``[N, C, H, W]`` of two layers at one size: the smaller height and width of the two (adaptive
    average pooling of whichever is larger)."""
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    pool = torch.nn.functional.adaptive_avg_pool2d
    return (a if a.shape[2:] == (h, w) else pool(a, (h, w))), (b if b.shape[2:] == (h, w) else pool(b, (h, w)))


class CorrelationTally:
    """Running sums for the Pearson correlation of every unit of A with every unit of B (float64)."""

    def __init__(self, ca: int, cb: int) -> None:
        self.n = 0
        self.sa, self.sb = np.zeros(ca), np.zeros(cb)
        self.saa, self.sbb = np.zeros(ca), np.zeros(cb)
        self.sab = np.zeros((ca, cb))

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add maps of one batch, ``[N, Ca, h, w]`` and ``[N, Cb, h, w]`` at the same size."""
        ra = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).double()
        rb = b.permute(0, 2, 3, 1).reshape(-1, b.shape[1]).double()
        self.n += ra.shape[0]
        self.sa += ra.sum(0).numpy()
        self.sb += rb.sum(0).numpy()
        self.saa += (ra * ra).sum(0).numpy()
        self.sbb += (rb * rb).sum(0).numpy()
        self.sab += (ra.T @ rb).numpy()

    def std(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.n, 1)
        va = np.clip(self.saa / n - (self.sa / n) ** 2, 0, None)
        vb = np.clip(self.sbb / n - (self.sb / n) ** 2, 0, None)
        return np.sqrt(va), np.sqrt(vb)

    def correlation(self) -> np.ndarray:
        """``r[a, b]``; 0 where either unit is constant."""
        n = max(self.n, 1)
        sda, sdb = self.std()
        cov = self.sab / n - np.outer(self.sa / n, self.sb / n)
        den = np.outer(sda, sdb)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(den > 0, cov / np.where(den > 0, den, 1), 0.0)
        return np.clip(r, -1.0, 1.0)


def dead_units(max_act: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Boolean per unit: never above 0 (``max_act`` over the folder) or constant (``std`` ≈ 0 relative to the
    layer's typical spread); see :data:`DEAD_RULE`."""
    scale = float(np.median(std[std > 0])) if (std > 0).any() else 0.0
    return (max_act <= 0) | (std <= 1e-6 * max(scale, 1e-12))


@dataclass
class Matching:
    """Each unit of B's partner in A (one-to-one, Hungarian on r) and the best A unit for it (any)."""

    partner: np.ndarray  # [Cb] A channel or -1 (dead, or no A unit left)
    r: np.ndarray  # [Cb] r with the partner (best r when unpartnered); nan for dead units
    best: np.ndarray  # [Cb] A channel of highest r (not one-to-one); -1 for dead units
    r_best: np.ndarray  # [Cb]
    lost: np.ndarray  # live A channels that no live B unit matched at r ≥ threshold
    lost_r: np.ndarray  # their best r against any live unit of B


def match_units(r: np.ndarray, dead_a: np.ndarray, dead_b: np.ndarray, threshold: float) -> Matching:
    """One-to-one matching of B's live units to A's live units maximising the summed r
    (``scipy.optimize.linear_sum_assignment``); partners below ``threshold`` count as new (B) and lost (A)."""
    from scipy.optimize import linear_sum_assignment

    ca, cb = r.shape
    la, lb = np.flatnonzero(~dead_a), np.flatnonzero(~dead_b)
    partner = np.full(cb, -1, dtype=np.int64)
    rr = np.full(cb, np.nan)
    best = np.full(cb, -1, dtype=np.int64)
    r_best = np.full(cb, np.nan)
    if len(la) and len(lb):
        sub = r[np.ix_(la, lb)]
        rows, cols = linear_sum_assignment(-sub)
        partner[lb[cols]] = la[rows]
        rr[lb[cols]] = sub[rows, cols]
        bi = sub.argmax(0)
        best[lb] = la[bi]
        r_best[lb] = sub[bi, np.arange(len(lb))]
        left = lb[partner[lb] < 0]  # more live units in B than in A
        rr[left] = r_best[left]
    kept = {int(partner[j]) for j in lb if partner[j] >= 0 and rr[j] >= threshold}
    lost = np.array([a for a in la if int(a) not in kept], dtype=np.int64)
    lost_r = r[np.ix_(lost, lb)].max(1) if len(lost) and len(lb) else np.zeros(len(lost))
    return Matching(partner, rr, best, r_best, lost, lost_r)
