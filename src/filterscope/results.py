"""Result types of the jobs, in a module below both ``jobs`` and ``outputs`` (figures draw them, jobs make
them), so neither imports the other for a type."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import UsageError
from .models.layers import LayerInfo


@dataclass
class InspectionData:
    """What inspecting one image at one layer found: means, maxes, maps, ranking, predictions."""

    layer: LayerInfo
    image: torch.Tensor  # [3, S, S] in [0, 1]: what the model saw
    means: np.ndarray  # [C] mean activation of each filter over positions
    maxes: np.ndarray  # [C] max activation over positions
    maps: torch.Tensor  # [C, h, w] spatial maps used for "where it fires"
    maps_from: str  # which tensor the maps come from
    top: list[int]  # filter indices in the chosen ranking's order
    predictions: list[tuple[int, str, float]]  # top-5 classes (index, name, probability)
    contributions: np.ndarray | None = None  # [C] Taylor estimate of the logit drop when a filter is zeroed
    target_class: int | None = None  # the class the contributions are for
    rank: str = "activation"  # "activation" (mean) or "contribution"

    def order(self, rank: str | None = None, k: int | None = None) -> list[int]:
        """Filter indices ranked by ``rank`` (default: this inspection's), highest first."""
        rank = rank or self.rank
        scores = self.contributions if rank == "contribution" else self.means
        if scores is None:
            raise UsageError("this inspection has no contribution scores")
        return np.argsort(-scores, kind="stable")[: k or len(scores)].tolist()
