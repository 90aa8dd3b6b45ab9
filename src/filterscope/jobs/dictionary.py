"""Concept dictionaries: activation vectors ``A`` (``n × C``) ≈ coefficients ``U`` (``n × K``, ≥ 0) × bank
``W`` (``K × C``), and the one-to-one matching of two dictionaries.

- ``nmf``: scikit-learn's :class:`~sklearn.decomposition.NMF` (coordinate descent, random init from the
  seed), for non-negative layers (after a ReLU/ReLU6), as CRAFT (Fel et al. 2023).
- ``semi-nmf``: for signed layers: ``U ≥ 0`` and ``W`` signed, Ding, Li & Jordan (2010) — ``W`` by least
  squares, ``U`` by their multiplicative rule. A few lines of torch: the maintained implementation
  (``overcomplete`` 0.3.0's ``SemiNMF``) runs the same two updates, but ``import overcomplete`` imports
  ``cv2`` (``opencv-python``, a 60+ MB wheel) and ``einops`` for its plotting helpers; filterscope has
  neither.

Both encode new vectors with the bank fixed (:meth:`Dictionary.encode`): NMF with scikit-learn's
``transform``, semi-NMF with the same multiplicative rule on ``U`` alone.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError

METHODS = ("nmf", "semi-nmf")
SEMI_ITERS = 200
ENCODE_ITERS = 150
EPS = 1e-9


def check_method(method: str) -> str:
    if method not in METHODS + ("auto",):
        raise UsageError(f"unknown concept method {method!r}", hint="use auto, " + " or ".join(METHODS))
    return method


@dataclass
class Dictionary:
    """A learnt bank of ``K`` concept vectors over ``C`` channels and how to encode activations with it."""

    method: str
    bank: np.ndarray  # [K, C]
    seed: int
    fit_seconds: float
    explained_variance: float  # on the vectors it was fitted on
    _nmf: object = None

    @property
    def k(self) -> int:
        return self.bank.shape[0]

    def encode(self, rows: np.ndarray) -> np.ndarray:
        """Coefficients ``[n, K]`` (≥ 0) of activation vectors ``rows`` ``[n, C]``."""
        rows = np.asarray(rows, dtype=np.float32)
        if self.method == "nmf":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence warnings of the per-batch solve
                return self._nmf.transform(np.maximum(rows, 0)).astype(np.float32)
        return _semi_encode(torch.from_numpy(rows), torch.from_numpy(self.bank), ENCODE_ITERS).numpy()

    def reconstruct(self, coeffs: np.ndarray) -> np.ndarray:
        return coeffs @ self.bank


def explained_variance(rows: np.ndarray, recon: np.ndarray) -> float:
    """1 − ‖A − Â‖² / ‖A − mean(A)‖² (the share of the vectors' variance around their mean that Â keeps)."""
    rows = rows.astype(np.float64)
    tot = float(((rows - rows.mean(0)) ** 2).sum())
    return 1.0 - float(((rows - recon) ** 2).sum()) / max(tot, EPS)


def fit(rows: np.ndarray, k: int, method: str, seed: int = 0, max_iter: int = 400) -> Dictionary:
    """Learn ``k`` concepts from ``rows`` ``[n, C]`` with ``method`` (``nmf`` or ``semi-nmf``)."""
    t = time.perf_counter()
    rows = np.asarray(rows, dtype=np.float32)
    if method == "nmf":
        from sklearn.decomposition import NMF

        if rows.min() < 0:
            raise UsageError("nmf needs non-negative activations; use --method semi-nmf for this layer")
        nmf = NMF(n_components=k, init="random", random_state=seed, max_iter=max_iter, tol=1e-4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            u = nmf.fit_transform(rows)
        bank = nmf.components_.astype(np.float32)
        d = Dictionary("nmf", bank, seed, 0.0, 0.0, nmf)
    elif method == "semi-nmf":
        u_t, w_t = _semi_nmf(torch.from_numpy(rows), k, seed, SEMI_ITERS)
        u, bank = u_t.numpy(), w_t.numpy()
        d = Dictionary("semi-nmf", bank, seed, 0.0, 0.0)
    else:
        raise UsageError(f"unknown concept method {method!r}", hint="use " + " or ".join(METHODS))
    d.fit_seconds = round(time.perf_counter() - t, 3)
    d.explained_variance = round(explained_variance(rows, u @ bank), 5)
    return d


def _semi_update(u: torch.Tensor, awt: torch.Tensor, wwt: torch.Tensor) -> torch.Tensor:
    """Ding et al.'s rule for ``U ≥ 0`` in ``A ≈ U W``: U ← U ⊙ √(([AWᵀ]⁺ + U[WWᵀ]⁻) / ([AWᵀ]⁻ + U[WWᵀ]⁺))."""
    num = awt.clamp(min=0) + u @ (-wwt).clamp(min=0)
    den = (-awt).clamp(min=0) + u @ wwt.clamp(min=0)
    return u * torch.sqrt(num / (den + EPS))


def _bank(u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Least-squares ``W`` for fixed ``U``: (UᵀU)⁻¹ UᵀA (a small ridge keeps it defined for an unused concept)."""
    utu = u.T @ u
    return torch.linalg.solve(utu + 1e-6 * utu.diagonal().mean() * torch.eye(u.shape[1]), u.T @ a)


def _semi_nmf(a: torch.Tensor, k: int, seed: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(a.shape[0], k, generator=g) + 0.1
    for _ in range(iters):
        w = _bank(u, a)
        u = _semi_update(u, a @ w.T, w @ w.T)
    return u, _bank(u, a)


def _semi_encode(a: torch.Tensor, w: torch.Tensor, iters: int) -> torch.Tensor:
    awt, wwt = a @ w.T, w @ w.T  # fixed while only U moves
    u = torch.linalg.solve(wwt, awt.T).T.clamp(min=0) + 1e-3  # least squares, projected: a warm start
    for _ in range(iters):
        u = _semi_update(u, awt, wwt)
    return u


def match(bank_a: np.ndarray, bank_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of two banks' concepts by cosine (Hungarian, scipy's ``linear_sum_assignment``):
    ``(partner in b of each concept of a, its cosine)``."""
    from scipy.optimize import linear_sum_assignment

    na = bank_a / (np.linalg.norm(bank_a, axis=1, keepdims=True) + EPS)
    nb = bank_b / (np.linalg.norm(bank_b, axis=1, keepdims=True) + EPS)
    cos = na @ nb.T
    rows, cols = linear_sum_assignment(-cos)
    partner = np.empty(len(bank_a), dtype=np.int64)
    partner[rows] = cols
    return partner, cos[np.arange(len(bank_a)), partner]
