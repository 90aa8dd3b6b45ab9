"""A TopK / BatchTopK sparse autoencoder (SAE) over a layer's activation vectors, in a few lines of torch.

A vector ``x`` (``C`` channels) is encoded as ``z = TopK(W_enc (x − b_pre) / s + b_enc)`` (``F`` features,
``k`` of them non-zero) and decoded as ``x̂ = s · z W_dec + b_pre``; the rows of ``W_dec`` are the features'
directions. The recipe, from the published ones (facts carried over, code written here):

- **TopK** activation (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; OpenAI's
  ``sparse_autoencoder``): sparsity is set by ``k``, no L1 coefficient to tune; **BatchTopK** (Bussmann,
  Leask & Nanda 2024; ``dictionary_learning``'s ``BatchTopKSAE``) keeps the ``k × batch`` largest over the
  batch while training and a learnt global threshold afterwards, so a vector may use more or fewer features.
- **Centring and scale**: ``b_pre`` starts at the data's mean and is subtracted before the encoder and added
  after the decoder (OpenAI's pre-encoder bias; saev and dictionary_learning start it at the geometric median);
  inputs are divided by one scalar ``s`` so that their mean squared norm is ``C`` (saev's normalisation), which
  makes one learning rate fit every layer.
- **Unit-norm decoder**: rows renormalised after every step, and the gradient's component parallel to each
  row removed before it (OpenAI; dictionary_learning's ``remove_gradient_parallel_to_decoder_directions``).
- **Data-based initialisation**: the decoder's rows start at spherical k-means++ centres of the centred data
  followed by a few spherical k-means (Lloyd) steps — directions where the data is — and the encoder at the
  decoder's transpose (Gao et al.; Conerly et al. 2024 for the transpose), scaled by the least-squares factor
  that makes the first reconstructions the data's size (k neighbouring centres would otherwise each take the
  vector's whole projection). The seed draws the k-means++ centres,
  so another seed is another initialisation, as the stability metric requires.
- **Dead latents**: the AuxK loss (Gao et al.): features that have not fired for ``dead_steps`` steps
  reconstruct the residual ``x − x̂`` with their own top ``aux_k``, weighted 1/32.
- **Adam** with a linear warm-up over the first 5 % of steps and a linear decay to zero over the last 20 %
  (dictionary_learning's schedule), batch 256, trained where the model runs (a GPU when there is one).

Why not a library: ``overcomplete`` (PyPI 0.3.0, the field's library for vision SAEs) fails on import with a
current matplotlib (it calls the removed ``matplotlib.cm.get_cmap``) and pulls ``opencv-python``; saev, OpenAI's
``sparse_autoencoder`` and dictionary_learning are GPU/LLM training pipelines, not installable pieces. Its
README's TopK recipe (Adam 5e-4, batch 1024, 20 epochs, random init) and a naive TopK (no dead-latent
handling, random init) are the baselines in ``benchmarks/bench_dictionary.py`` (``init="random",
aux_coef=0``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

EPS = 1e-8


@dataclass
class SAEConfig:
    """How an SAE is trained (recorded in run.json)."""

    features: int
    k: int
    epochs: int = 20
    batch: int = 256
    lr: float = 2e-3
    mode: str = "topk"  # topk | batchtopk
    init: str = "kmeans"  # kmeans (spherical k-means++ then Lloyd) | data (random data rows) | random (Gaussian)
    kmeans_iters: int = 10
    aux_k: int | None = None  # default: min(F/2, C/2, 4k) (_aux_k)
    aux_coef: float = 1 / 32
    dead_steps: int | None = None  # default: one epoch's steps
    warmup: float = 0.05
    decay: float = 0.2
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class SAE(nn.Module):
    """A trained TopK / BatchTopK sparse autoencoder (see the module docstring for the parametrisation)."""

    def __init__(self, channels: int, features: int, k: int, mode: str = "topk"):
        super().__init__()
        self.k, self.mode = int(k), mode
        self.b_pre = nn.Parameter(torch.zeros(channels))
        self.w_enc = nn.Parameter(torch.zeros(features, channels))
        self.b_enc = nn.Parameter(torch.zeros(features))
        self.w_dec = nn.Parameter(torch.zeros(features, channels))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("threshold", torch.zeros(()))  # BatchTopK's inference threshold

    @property
    def features(self) -> int:
        return self.w_dec.shape[0]

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[n, F]`` of raw vectors ``x`` ``[n, C]``."""
        return ((x - self.b_pre) / self.scale) @ self.w_enc.T + self.b_enc

    def sparsify(self, pre: torch.Tensor, train: bool = False) -> torch.Tensor:
        """The codes: the top ``k`` of each row (TopK), or of the batch (BatchTopK while training; its
        threshold afterwards), negatives dropped."""
        vals, idx = self.select(pre, train)
        return torch.zeros_like(pre).scatter(1, idx, vals)

    def select(self, pre: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The non-zero codes as ``(values [n, m], feature indices [n, m])`` (zeros where a row has fewer):
        what a sparse decode (:meth:`decode_sparse`) takes, ``m`` = ``k`` for TopK."""
        pre = pre.clamp(min=0)
        if self.mode == "topk":
            return pre.topk(self.k, dim=1)
        if train:
            flat = pre.flatten()
            vals, idx = flat.topk(min(self.k * pre.shape[0], flat.numel()))
            keep = torch.zeros_like(flat, dtype=torch.bool).scatter(0, idx, True).view_as(pre)
        else:
            keep = pre > self.threshold
        m = max(1, int(keep.sum(1).max()))
        vals, idx = (pre * keep).topk(min(m, pre.shape[1]), dim=1)
        return vals, idx

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``Σ vals · W_dec[idx]`` per row, in the scaled units (no bias): the decode of :meth:`select` (a dense
        product with the scattered codes: on a CPU faster than gathering ``k`` decoder rows per vector)."""
        z = torch.zeros(vals.shape[0], self.w_dec.shape[0], dtype=vals.dtype, device=vals.device)
        return z.scatter(1, idx, vals) @ self.w_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``[n, F]`` (≥ 0, sparse) of raw vectors ``x`` ``[n, C]``, in the data's units (× scale)."""
        return self.sparsify(self.pre(x)) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Vectors ``[n, C]`` from codes ``z`` (as :meth:`encode` returns them)."""
        return z @ self.w_dec + self.b_pre

    def arrays(self) -> dict[str, np.ndarray]:
        """What encodes new vectors outside torch: ``z = sparsify((x − b_pre)/scale · W_encᵀ + b_enc)·scale``."""
        return {
            "encoder": self.w_enc.detach().cpu().numpy().astype(np.float32),
            "encoder_bias": self.b_enc.detach().cpu().numpy().astype(np.float32),
            "decoder": self.w_dec.detach().cpu().numpy().astype(np.float32),
            "pre_bias": self.b_pre.detach().cpu().numpy().astype(np.float32),
            "scale": np.float32(self.scale.item()),
            "threshold": np.float32(self.threshold.item()),
            "k": np.int64(self.k),
            "mode": np.array(self.mode),
        }

    @classmethod
    def from_arrays(cls, a) -> SAE:
        """The SAE saved by :meth:`arrays` (e.g. ``np.load("dictionary.npz")``)."""
        f, c = a["decoder"].shape
        sae = cls(c, f, int(a["k"]), str(a["mode"]))
        with torch.no_grad():
            sae.w_enc.copy_(torch.from_numpy(a["encoder"]))
            sae.b_enc.copy_(torch.from_numpy(a["encoder_bias"]))
            sae.w_dec.copy_(torch.from_numpy(a["decoder"]))
            sae.b_pre.copy_(torch.from_numpy(a["pre_bias"]))
            sae.scale.fill_(float(a["scale"]))
            sae.threshold.fill_(float(a["threshold"]))
        return sae


@dataclass
class FitResult:
    """A trained SAE and how training went."""

    sae: SAE
    config: SAEConfig
    seconds: float
    steps: int
    history: list[dict] = field(default_factory=list)  # per epoch: loss, fraction of variance unexplained, dead
    stopped: bool = False


def _aux_k(cfg: SAEConfig, channels: int) -> int:
    return int(cfg.aux_k) if cfg.aux_k else max(1, min(cfg.features // 2, channels // 2, 4 * cfg.k))


def spherical_kmeans(x: torch.Tensor, n: int, gen: torch.Generator, iters: int) -> torch.Tensor:
    """``n`` unit-norm centres of the rows of ``x`` (which need not be normalised): k-means++ seeding on the
    cosine distance (drawn from ``gen``), then ``iters`` spherical Lloyd steps (an empty cluster keeps its
    centre). Chunked, so memory stays ``O(n·C + chunk·n)``."""
    xn = x / (x.norm(dim=1, keepdim=True) + EPS)
    m = xn.shape[0]
    first = int(torch.randint(m, (1,), generator=gen))
    centres = [xn[first]]
    d = (1 - xn @ xn[first]).clamp(min=0)
    # k-means++ by blocks: draw several centres from one distance update (a greedy-free, cheap variant)
    while len(centres) < n:
        want = min(n - len(centres), max(1, n // 32))
        p = d / d.sum() if float(d.sum()) > 0 else torch.full_like(d, 1.0 / m)
        idx = torch.multinomial(p, want, replacement=False, generator=gen)
        new = xn[idx]
        centres.extend(new)
        d = torch.minimum(d, (1 - xn @ new.T).min(1).values.clamp(min=0))
    c = torch.stack(centres[:n])
    for _ in range(iters):
        assign = torch.cat([(xn[s : s + 4096] @ c.T).argmax(1) for s in range(0, m, 4096)])
        sums = torch.zeros_like(c).index_add_(0, assign, xn)
        norms = sums.norm(dim=1, keepdim=True)
        c = torch.where(norms > EPS, sums / (norms + EPS), c)
    return c


def _init(sae: SAE, x: torch.Tensor, cfg: SAEConfig, gen: torch.Generator) -> None:
    f, c = sae.w_dec.shape
    with torch.no_grad():
        mean = x.mean(0)
        sae.b_pre.copy_(mean)
        xc = x - mean
        sae.scale.fill_(float((xc.pow(2).sum(1).mean() / c).sqrt().clamp(min=EPS)))
        xc = xc / sae.scale
        if cfg.init == "kmeans":
            dec = spherical_kmeans(xc, f, gen, cfg.kmeans_iters)
        elif cfg.init == "data":
            dec = xc[torch.randint(xc.shape[0], (f,), generator=gen)]
        else:
            dec = torch.randn(f, c, generator=gen)
        dec = dec / (dec.norm(dim=1, keepdim=True) + EPS)
        sae.w_dec.copy_(dec)
        if cfg.init == "random":
            sae.w_enc.copy_(torch.randn(f, c, generator=gen) / math.sqrt(c))
        else:
            sae.w_enc.copy_(dec)
            # k similar directions each take the vector's full projection: scale the encoder so that the
            # initial reconstruction has the least-squares size on a sample (otherwise it starts ~k× too big)
            xs = xc[torch.randperm(xc.shape[0], generator=gen)[:2048]]
            r = sae.decode_sparse(*sae.select(sae.pre(xs * sae.scale + mean)))
            alpha = float((r * xs).sum() / (r.pow(2).sum() + EPS))
            if alpha > 0:
                sae.w_enc.mul_(alpha)


def _renorm(sae: SAE) -> None:
    with torch.no_grad():
        sae.w_dec /= sae.w_dec.norm(dim=1, keepdim=True) + EPS


@torch.no_grad()
def _drop_parallel_grad(sae: SAE) -> None:
    # without no_grad the in-place update records a graph through the decoder on every step, which keeps
    # two decoder-sized tensors alive per step (4 GB over 600 steps at 653 × 1280)
    g, w = sae.w_dec.grad, sae.w_dec
    if g is not None:
        g -= (g * w).sum(1, keepdim=True) * w


def fit_sae(
    vectors: np.ndarray,
    cfg: SAEConfig,
    *,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train an SAE of ``cfg`` on ``vectors`` ``[n, C]`` (float32), on ``device``; ``progress(epochs done)``
    after each epoch; stops after the current epoch when ``stop()`` (the SAE so far is returned)."""
    t0 = time.perf_counter()
    stop = stop if stop is not None else (lambda: False)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x_all = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    n, c = x_all.shape
    sae = SAE(c, cfg.features, cfg.k, cfg.mode)
    _init(sae, x_all, cfg, gen)
    sae.to(device)
    x_all = x_all.to(device)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch))
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))
    decay_from = int((1 - cfg.decay) * total)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if step >= decay_from:
            return max(0.0, (total - step) / max(1, total - decay_from))
        return 1.0

    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    aux_k = _aux_k(cfg, c)
    dead_steps = cfg.dead_steps or steps_per_epoch
    last_fired = torch.zeros(cfg.features, dtype=torch.long, device=device)
    thresholds: list[float] = []
    history: list[dict] = []
    step = 0
    stopped = False
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        tot_loss = tot_err = tot_var = 0.0
        for s in range(0, n, cfg.batch):
            xb = x_all[order[s : s + cfg.batch]]
            xs = (xb - sae.b_pre) / sae.scale  # the target, centred by the learnt pre-bias
            pre = sae.pre(xb)
            vals, idx = sae.select(pre, train=True)
            err = xs - sae.decode_sparse(vals, idx)
            mse = err.pow(2).sum(1).mean()
            loss = mse
            last_fired[idx[vals > 0]] = step
            dead = (step - last_fired) >= dead_steps
            if cfg.aux_coef > 0 and bool(dead.any()):
                ka = min(aux_k, int(dead.sum()))
                dpre = pre.clamp(min=0) * dead  # only the dead features' pre-activations
                av, ai = dpre.topk(ka, dim=1)
                e = err.detach()
                aux = (e - sae.decode_sparse(av, ai)).pow(2).sum(1).mean() / (e.pow(2).sum(1).mean() + EPS)
                loss = loss + cfg.aux_coef * torch.nan_to_num(aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _drop_parallel_grad(sae)
            opt.step()
            sched.step()
            _renorm(sae)
            if cfg.mode == "batchtopk":
                pos = vals[vals > 0]
                if pos.numel():
                    thresholds.append(float(pos.min()))
            step += 1
            tot_loss += loss.item() * len(xb)
            tot_err += mse.item() * len(xb)
            tot_var += float((xs.detach() - xs.detach().mean(0)).pow(2).sum(1).mean()) * len(xb)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(tot_loss / n, 5),
                "fvu": round(tot_err / max(tot_var, EPS), 5),
                "dead": round(float(((step - last_fired) >= dead_steps).float().mean()), 4),
            }
        )
        if progress is not None:
            progress(epoch + 1)
        if stop():
            stopped = True
            break
    if cfg.mode == "batchtopk" and thresholds:
        tail = thresholds[-max(1, len(thresholds) // 5) :]  # the threshold of the trained SAE: its last steps
        sae.threshold.fill_(float(np.mean(tail)))
    sae.eval()
    return FitResult(sae.cpu(), cfg, round(time.perf_counter() - t0, 3), step, history, stopped)


@torch.no_grad()
def encode(sae: SAE, vectors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Codes ``[n, F]`` float32 of ``vectors`` ``[n, C]`` (chunked)."""
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    out = [sae.encode(x[s : s + chunk]).numpy() for s in range(0, len(x), chunk)]
    return np.concatenate(out) if out else np.zeros((0, sae.features), np.float32)


@torch.no_grad()
def reconstruct(sae: SAE, vectors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    out = [sae.decode(sae.encode(x[s : s + chunk])).numpy() for s in range(0, len(x), chunk)]
    return np.concatenate(out) if out else np.zeros_like(vectors)
