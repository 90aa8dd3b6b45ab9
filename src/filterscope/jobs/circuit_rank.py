"""The order in which a circuit lists a filter's inputs: by what the network does as it runs.

Expanded weights (:mod:`filterscope.optvis.linearize`) are exact on a linear path, but across ReLUs that are
off, ReLU6 caps that saturate and squeeze-excite gates that close, they credit inputs the network never lets
through. The default order is therefore *measured* on the images:

- :func:`removal_effects`: per image, how much the filter's mean falls when one input channel alone is set to
  zero (the network runs on, every non-linearity included); ``[N, C]``, > 0 where the input excites;
- :func:`effect_order`: the inputs in the order a user reads them, strongest first: the first k (the
  ablation's k) greedily, adding at each step the input whose per-image effect, summed with those of the
  inputs already listed, moves the filter most (mean over images of ``|Σ effect|``): inputs that push the
  filter the same way on the same images come together, and inputs that cancel do not fill the top of the
  list; then the others by their own mean ``|effect|``. Inputs with no effect on any image come last.

:data:`RANKINGS` names the orders ``benchmarks/bench_circuits.py`` compares (the default is chosen there on
held-out photos); :func:`rank_agreement` says how well another order (the expanded weights') agrees.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

DEFAULT_RANKING = "effect"
RANKINGS = ("effect", "effect_single", "attribution", "attribution_image", "weight")
RANKING_TEXT = {
    "effect": "measured: each input zeroed alone on every image of the ranking's images; the first k (the "
    "ablation's) greedily, each the input that with those listed before it moves the filter's mean most (mean "
    "over images of |sum of their effects|), then the others by their mean |effect|; inputs with no effect last",
    "effect_single": "measured: mean over images of |change of the filter's mean| with the input zeroed alone",
    "attribution": "|mean over images of gradient × activation|",
    "attribution_image": "greedy on per-image gradient × activation (the network linearised at each image)",
    "weight": "|summed expanded weight| (linear copy of the network)",
}
ROUNDING = 1e-5  # relative: changes of the filter's mean below this are float32 rounding
MASK_ROWS = 192  # images × masks through the rest of the network at once (memory)


def mask_pieces(n_images: list[int], n_channels: int) -> list[tuple[int, int, int]]:
    """The pieces :func:`removal_effects` measures one at a time, ``(batch, first channel, end channel)``:
    per batch of images, as many single-channel masks as fit :data:`MASK_ROWS` rows."""
    out = []
    for i, b in enumerate(n_images):
        per = max(1, MASK_ROWS // max(b, 1))
        out += [(i, c0, min(n_channels, c0 + per)) for c0 in range(0, n_channels, per)]
    return out


def removal_effects(
    masked_means: Callable[[torch.Tensor, int], torch.Tensor],
    n_images: list[int],
    n_channels: int,
    base: np.ndarray,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], bool] | None = None,
    kept: dict[tuple[int, int], torch.Tensor] | None = None,
    on_piece: Callable[[int, int, torch.Tensor], None] | None = None,
) -> np.ndarray | None:
    """``[N, C]``: per image, the filter's mean without input ``c`` subtracted from its mean with all inputs
    (``base``). ``masked_means(masks, i)`` gives ``[B_i, M]`` for batch ``i`` (``n_images[i]`` images) with
    the source's output times each mask row. None when stopped (checked after each piece of
    :func:`mask_pieces`). ``kept``: pieces ``(batch, first channel) → [B_i, M]`` finished before (an
    interrupted run's, not measured again); ``on_piece(i, c0, means)``: each piece measured here."""
    rows: list[list[torch.Tensor]] = [[] for _ in n_images]
    for i, c0, c1 in mask_pieces(n_images, n_channels):
        got = kept.get((i, c0)) if kept else None
        if got is None:
            masks = torch.ones(c1 - c0, n_channels)
            masks[torch.arange(c1 - c0), torch.arange(c0, c1)] = 0.0
            got = masked_means(masks.to(device), i)
            if on_piece is not None:
                on_piece(i, c0, got)
        rows[i].append(got)
        if should_stop and should_stop():
            return None
    ablated = torch.cat([torch.cat(cols, 1) for cols in rows]).numpy().astype(np.float64)
    effects = base[:, None].astype(np.float64) - ablated
    # float32 rounding of the filter's mean: an input whose removal changes it by less on every image
    # changes nothing
    tol = ROUNDING * max(float(np.abs(base).max()), float(np.abs(effects).max()), 1e-30)
    effects[:, np.abs(effects).max(0) <= tol] = 0.0
    return effects


def greedy_order(effects: np.ndarray, k: int | None = None) -> np.ndarray:
    """All channels, strongest first. The first ``k`` (default: all) greedily: at each step the channel whose
    per-image effect added to the sum of those already chosen gives the largest mean ``|Σ|`` over images
    (the set that moves the filter most together, which the ablation checks); then the others by their own
    mean ``|effect|`` (so a strong inhibitor of a mostly excited filter is not listed after weak inputs);
    channels that change nothing on any image (exactly 0: :func:`removal_effects` zeroes float rounding)
    come last (by index)."""
    n, c = effects.shape
    live = np.abs(effects).max(0) > 0
    k = int(live.sum()) if k is None else min(k, int(live.sum()))
    order: list[int] = []
    left = np.flatnonzero(live)
    total = np.zeros(n)
    while len(order) < k:
        score = np.abs(total[:, None] + effects[:, left]).mean(0)
        j = int(np.argmax(score))
        order.append(int(left[j]))
        total += effects[:, left[j]]
        left = np.delete(left, j)
    order += left[np.argsort(-np.abs(effects[:, left]).mean(0), kind="stable")].tolist()
    order += np.flatnonzero(~live).tolist()
    return np.asarray(order, dtype=int)


def by_magnitude(score: np.ndarray) -> np.ndarray:
    """Channels by ``|score|``, largest first (ties by index)."""
    return np.argsort(-np.abs(score), kind="stable")


def effect_order(
    ranking: str,
    effects: np.ndarray | None,
    attribution: np.ndarray,
    weights: np.ndarray,
    k: int | None = None,
) -> np.ndarray:
    """The order of ``ranking`` (:data:`RANKINGS`): ``effect`` (greedy on the removal effects for the first
    ``k``, the default), ``effect_single`` (mean |removal effect| per input), ``attribution`` (|mean gradient
    × activation|), ``attribution_image`` (greedy on per-image gradient × activation), ``weight`` (|summed
    expanded weight|). ``effects`` and ``attribution`` are per image ``[N, C]``."""
    if ranking == "effect":
        return greedy_order(effects, k)
    if ranking == "effect_single":
        return by_magnitude(np.abs(effects).mean(0))
    if ranking == "attribution":
        return by_magnitude(attribution.mean(0))
    if ranking == "attribution_image":
        return greedy_order(attribution, k)
    if ranking == "weight":
        return by_magnitude(weights)
    raise ValueError(f"unknown ranking {ranking!r}")


def rank_agreement(score: np.ndarray, effect: np.ndarray, order: np.ndarray, n: int = 8) -> dict:
    """How well ``score`` (one value per input, e.g. the summed expanded weight) agrees with the measured
    effect: Spearman correlation of ``|score|`` with ``|effect|`` (mean per input), and the share of the first
    ``n`` inputs of ``order`` that ``|score|`` puts in its own first ``n``."""
    from scipy.stats import spearmanr

    n = min(n, len(score))
    a, b = np.abs(score), np.abs(effect)
    rho = spearmanr(a, b).statistic if np.std(a) > 0 and np.std(b) > 0 else float("nan")
    top = set(by_magnitude(score)[:n].tolist())
    return {"spearman_effect": round(float(rho), 4), "top_overlap": round(len(top & set(order[:n].tolist())) / n, 4)}
