"""Grids of a run's channel renders: ``grid_<layer>.png``, labelled with channel numbers."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from ..outputs.naming import channel_file, grid_file


def write_grid(run, layer: str, channels: Sequence[int]) -> str | None:
    """``grid_<layer>.png`` from the channel PNGs on disk, labelled with channel numbers."""
    from ..outputs.figures import grid

    have = [c for c in channels if run.file(channel_file(layer, c)).is_file()]
    if not have:
        return None
    tile = 128 if len(have) <= 64 else 96 if len(have) <= 256 else 64
    images = []
    for c in have:  # shrink while reading, so a whole layer's grid does not hold every full-size PNG
        with Image.open(run.file(channel_file(layer, c))) as im:
            images.append(im.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR, reducing_gap=2.0))
    name = grid_file(layer)
    run.write_png(name, grid(images, [str(c) for c in have], tile=tile))
    return name
