"""A class's concepts drawn from a layer's dictionary (``filterscope concepts --basis dictionary --dictionary RUN``).

``concepts`` learns its own NMF concepts from the images it is given. With ``--basis dictionary`` it reads
instead the dictionary a ``filterscope dictionary`` run learnt for the same layer (``RUN/dictionary.npz``: a
sparse autoencoder, or the identity of ``--basis channels``) and takes as the class's concepts its
``--concepts`` most important features for the class:

- **importance** of feature ``j`` on an image = the drop of the class's log-probability when the feature's
  part ``z_j(p) · d_j`` (its code at each position times its decoder row) is removed from the layer's maps
  and the rest of the network is run — the measured removal ``concepts`` ranks its own concepts by (the
  default ``--rank ablation``); with ``--rank gradient``, its first-order estimate
  ``Σ_p z_j(p) · (d_j · ∇_A log p(class))``. Averaged over the images predicted as the class (all images when
  none is). Only features active somewhere on those images are measured; removals run 64 features at a time.
- the selected features are then an ordinary concept bank for the rest of ``concepts``: the evidence pass
  re-measures them (maps, ablation, deletion curves), votes, names, scores and renders are the same, and the
  files and pages are the same (``concepts.json`` entries also carry ``feature``: the id in the dictionary).
  The reconstruction fidelity is that of the whole dictionary (every feature), not of the selected few;
  each concept's stability is its feature's matched cosine to the dictionary run's second fit (another seed
  and initialisation), when the run saved it.

Why read a run rather than learn a dictionary here: ``filterscope dictionary`` already learns, measures and
browses the layer's dictionary (stability, dead features, its own report); one dictionary then serves every
class, and a class's concepts link to its features' pages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..models.layers import LayerInfo
from ..models.model import Model
from .activations import forward_variants, positions, to_maps

CHUNK = 64  # feature removals per forward pass


@dataclass
class LayerDictionary:
    """A dictionary run's basis as ``concepts`` reads it."""

    run: Path
    kind: str  # sae, nmf or channels
    decoder: np.ndarray  # [F, C]
    encode: Callable[[np.ndarray], np.ndarray]  # rows [n, C] → codes [n, F]
    reconstruct: Callable[[np.ndarray], np.ndarray]  # rows [n, C] → the whole dictionary's reconstruction
    stability: np.ndarray | None  # [F] matched cosine to the run's second fit, when saved

    @property
    def features(self) -> int:
        return self.decoder.shape[0]


def read_layer_dictionary(run: str | Path, info: LayerInfo) -> LayerDictionary:
    """The dictionary of ``run`` (a ``filterscope dictionary`` run folder) for layer ``info``; a folder
    without one, or one learnt at another layer or width, is a :class:`UsageError`."""
    from .bases import read_dictionary
    from .dictionary import match

    basis, layer, twin = read_dictionary(run)
    if layer != info.name:
        raise UsageError(f"the dictionary in {run} is of layer {layer}, not {info.name}", hint=f"use --layer {layer}")
    if basis.decoder.shape[1] != info.channels:
        raise UsageError(f"the dictionary in {run} has {basis.decoder.shape[1]} channels, {info.name} {info.channels}")
    stab = None
    if basis.kind == "channels":
        stab = np.ones(basis.features)
    elif twin is not None and twin.shape == basis.decoder.shape:
        rows, cos = match(basis.decoder, twin)
        stab = np.zeros(basis.features)
        stab[rows] = cos
    return LayerDictionary(Path(run), basis.kind, basis.decoder, basis.encode, basis.reconstruct, stab)


@dataclass
class FeatureBank:
    """The selected features as the concept bank ``concepts`` works on (the interface of
    :class:`~.dictionary.Dictionary`): ``bank`` their decoder rows, ``encode`` their codes."""

    method: str
    bank: np.ndarray  # [K, C]
    features: np.ndarray  # [K] ids in the dictionary
    importance: np.ndarray  # [K] the importance that selected them
    source: LayerDictionary = field(repr=False)
    seed: int = 0
    fit_seconds: float = 0.0
    explained_variance: float = float("nan")

    @property
    def k(self) -> int:
        return self.bank.shape[0]

    def encode(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.source.encode(rows)[:, self.features], dtype=np.float32)

    def full_reconstruction(self, rows: np.ndarray) -> np.ndarray:
        """The whole dictionary's reconstruction of ``rows`` (what the fidelity numbers measure)."""
        return np.asarray(self.source.reconstruct(rows), dtype=np.float32)

    def stability(self) -> np.ndarray:
        """Each selected feature's matched cosine to the run's second fit (NaN when the run did not save it)."""
        s = self.source.stability
        return np.full(self.k, np.nan) if s is None else s[self.features]


def feature_importance(
    model: Model,
    info: LayerInfo,
    views: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    d: LayerDictionary,
    cls: int,
    rank: str = "ablation",
    stop: Callable[[], bool] = lambda: False,
) -> np.ndarray:
    """``[F]``: each dictionary feature's importance for class ``cls`` (see the module docstring), averaged
    over the images of ``views`` (batches ``(x, index, ok)``) predicted as the class, else over all."""
    w = torch.from_numpy(np.ascontiguousarray(d.decoder, dtype=np.float32))  # [F, C]
    f = d.features
    per_image, preds = [], []
    for x, _, ok in views:
        if not ok.any():
            continue
        x = x[ok]
        a, grad, logits = forward_variants(
            model, info, x, lambda t: t[:, None][:, :0], 0, lambda z: torch.log_softmax(z.float(), 1)[:, cls]
        )
        b, c, h, ww = a.shape
        rows = positions(a.float()).cpu()
        z = torch.from_numpy(d.encode(rows.numpy())).float()  # [B·H·W, F]
        preds.append(logits[:, 0].argmax(1).cpu().numpy())
        if rank == "gradient":
            g = positions(grad.float()).cpu()
            per_image.append(((g @ w.T) * z).view(b, h * ww, f).sum(1).numpy())
        else:
            drop = np.zeros((b, f), np.float32)
            zm = to_maps(z, b, h, ww)  # [B, F, H, W]
            active = np.flatnonzero((z > 0).any(0).numpy())
            logp0 = torch.log_softmax(logits[:, 0].float(), -1)[:, cls].cpu()
            for s in range(0, len(active), CHUNK):
                js = torch.from_numpy(active[s : s + CHUNK])
                parts = zm[:, js, None] * w[js].view(1, len(js), c, 1, 1)  # [B, m, C, H, W]
                lg = forward_variants(model, info, x, lambda t, p=parts: t.cpu().float()[:, None] - p, len(js))[2]
                logp = torch.log_softmax(lg[:, 1:].float(), -1)[:, :, cls].cpu()
                drop[:, js.numpy()] = (logp0[:, None] - logp).numpy()
            per_image.append(drop)
        if stop():
            break
    if not per_image:
        return np.zeros(f)
    imp, pred = np.concatenate(per_image), np.concatenate(preds)
    over = pred == cls if (pred == cls).any() else np.ones_like(pred, dtype=bool)
    return imp[over].mean(0)


def select_features(d: LayerDictionary, importance: np.ndarray, n: int, seed: int = 0) -> FeatureBank:
    """The ``n`` most important features (ties: lower id first) as a :class:`FeatureBank`."""
    if n > d.features:
        raise UsageError(f"{n} concepts is more than the {d.features} features of the dictionary in {d.run}")
    order = np.argsort(-importance, kind="stable")[:n]
    return FeatureBank(
        f"dictionary ({d.kind})",
        np.ascontiguousarray(d.decoder[order], dtype=np.float32),
        order,
        importance[order],
        d,
        seed,
    )
