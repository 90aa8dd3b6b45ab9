"""Dataset examples: for every channel, the images of a folder that excite it most, and where.

The folder is streamed through a torch ``DataLoader`` once for all requested layers (the network stops at
the deepest one). Memory does not grow with the number of images: per channel only the running top-N
(value, image index, peak position), exact count/min/max/sum, and a fixed-size reservoir sample of the
per-image mean activations (for the histogram) are kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ImageError
from ..models.hooks import run
from ..models.inputs import list_images, load_image, model_input
from ..models.layers import LayerInfo, capture_layers
from ..models.model import Model

RESERVOIR = 512


class ImageFolder(Dataset):
    """Image files under a folder, each as the model's input; unreadable files are flagged, not fatal."""

    def __init__(self, files: Sequence[Path], model: Model):
        self.files = list(files)
        self.resize, self.size = model.resize_size, model.input_size
        self._model = model

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            x = model_input(self._model, load_image(self.files[i]))[0]
            return x, i, True
        except ImageError:
            return torch.zeros(self._model.in_channels, self.size, self.size), i, False


@dataclass
class ChannelStats:
    """Streaming statistics of one layer: top-N per channel, and summary + reservoir for histograms."""

    channels: int
    n_top: int
    top_values: torch.Tensor = field(init=False)
    top_index: torch.Tensor = field(init=False)
    top_pos: torch.Tensor = field(init=False)  # flat position of the peak in the map
    count: int = 0
    minimum: torch.Tensor = field(init=False)
    maximum: torch.Tensor = field(init=False)
    total: torch.Tensor = field(init=False)
    reservoir: torch.Tensor = field(init=False)
    map_shape: tuple[int, int] = (1, 1)
    keep_means: bool = False  # keep every image's mean activation (images × channels) for names and scores
    means: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # image index → [C] when keep_means

    def __post_init__(self) -> None:
        c, n = self.channels, self.n_top
        self.top_values = torch.full((c, n), -float("inf"))
        self.top_index = torch.full((c, n), -1, dtype=torch.long)
        self.top_pos = torch.zeros((c, n), dtype=torch.long)
        self.minimum = torch.full((c,), float("inf"))
        self.maximum = torch.full((c,), -float("inf"))
        self.total = torch.zeros(c, dtype=torch.float64)
        self.reservoir = torch.empty((0, c))

    def update(self, acts: torch.Tensor, index: torch.Tensor, rng: np.random.Generator) -> None:
        """``acts`` ``[B, C, H, W]`` (or ``[B, C]``) for the images ``index``."""
        a = acts.float().cpu()
        if a.dim() == 2:
            a = a[:, :, None, None]
        self.map_shape = tuple(a.shape[-2:])
        flat = a.flatten(2)
        means = flat.mean(2)  # [B, C]
        pos = flat.argmax(2)  # [B, C]
        vals = torch.cat([self.top_values, means.T], 1)
        idx = torch.cat([self.top_index, index[None].expand(self.channels, -1)], 1)
        ps = torch.cat([self.top_pos, pos.T], 1)
        # stable ranking: ties keep the earlier image (lower index), like a brute-force sort would
        order = torch.argsort(-vals, dim=1, stable=True)[:, : self.n_top]
        self.top_values = vals.gather(1, order)
        self.top_index = idx.gather(1, order)
        self.top_pos = ps.gather(1, order)
        self.minimum = torch.minimum(self.minimum, means.amin(0))
        self.maximum = torch.maximum(self.maximum, means.amax(0))
        self.total += means.double().sum(0)
        if self.keep_means:
            for i, row in zip(index.tolist(), means.numpy(), strict=True):
                self.means[int(i)] = row.astype(np.float32)
        for row in means:  # reservoir sampling (Algorithm R) over images
            self.count += 1
            if self.reservoir.shape[0] < RESERVOIR:
                self.reservoir = torch.cat([self.reservoir, row[None]])
            else:
                j = int(rng.integers(0, self.count))
                if j < RESERVOIR:
                    self.reservoir[j] = row

    def histogram(self, c: int, bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
        return np.histogram(self.reservoir[:, c].numpy(), bins=bins)

    def mean_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept per-image means as ``(image indices, images × channels)``, in image order."""
        idx = np.array(sorted(self.means), dtype=np.int64)
        rows = np.stack([self.means[int(i)] for i in idx]) if len(idx) else np.zeros((0, self.channels), np.float32)
        return idx, rows


def collect_examples(
    model: Model,
    layers: Sequence[LayerInfo],
    folder: str | Path,
    *,
    n_top: int = 6,
    batch: int = 16,
    workers: int = 0,
    progress: bool = True,
    seed: int = 0,
    should_stop=None,
    keep_means: bool = False,
    predictions: dict[int, int] | None = None,
) -> tuple[list[Path], dict[str, ChannelStats]]:
    """One streamed pass over ``folder``; returns the file list and per-layer statistics. ``keep_means``:
    the statistics also keep every image's mean activation per channel (for names and scores, a few bytes
    per image and channel); ``predictions``: filled with each readable image's top-1 class (the pass then runs
    to the logits instead of stopping at the deepest layer)."""
    from tqdm import tqdm

    files = list_images(folder)
    loader = DataLoader(ImageFolder(files, model), batch_size=batch, shuffle=False, num_workers=workers)
    stats = {i.name: ChannelStats(i.channels, min(n_top, len(files)), keep_means=keep_means) for i in layers}
    rng = np.random.default_rng(seed)
    names = [i.name for i in layers]
    skipped = 0
    with (
        capture_layers(model, layers, stop=predictions is None) as cap,
        torch.inference_mode(),
    ):
        for x, index, ok in tqdm(
            loader, desc="dataset examples", unit="batch", disable=not progress, dynamic_ncols=True
        ):
            if should_stop and should_stop():
                break
            skipped += int((~ok).sum())
            if not ok.any():
                continue
            x, index = x[ok], index[ok]
            logits = run(model.forward, x.to(model.device), cap)
            if predictions is not None and logits is not None:
                predictions.update(zip(index.tolist(), logits.argmax(1).tolist(), strict=True))
            for name in names:
                stats[name].update(cap.acts[name], index, rng)
    if skipped:
        warnings.warn(f"{skipped} unreadable images in {folder} were skipped", stacklevel=2)
    return files, stats


def peak_box(pos: int, map_shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """The input-image box (left, top, right, bottom) around a peak at flat map position ``pos``."""
    h, w = map_shape
    y, x = divmod(int(pos), w)
    cy, cx = (y + 0.5) * size / h, (x + 0.5) * size / w
    side = int(max(48, min(size, size * 3 / max(h, w))))
    left = int(min(max(0, cx - side / 2), size - side))
    top = int(min(max(0, cy - side / 2), size - side))
    return left, top, left + side, top + side
