"""README figures for small inputs: ``docs/grid_digits.png`` (class renders of ``digits_cnn``, default preset)
and ``docs/grid_small_input.png`` (the same renders before/after the small-input defaults), with a sharpness
number per row (mean gradient magnitude of the render resized to 224 px)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

import filterscope as fs
from filterscope.optvis.objectives import logit
from filterscope.outputs.images import to_pil

DOCS = Path(__file__).resolve().parents[1] / "docs"


def sharpness(x: torch.Tensor) -> float:
    """Mean absolute finite difference of the image shown at 224 px (higher: more detail)."""
    y = TF.resize(x[None], [224, 224], antialias=True)[0]
    return float((y[..., 1:, :] - y[..., :-1, :]).abs().mean() + (y[..., 1:] - y[..., :-1]).abs().mean())


def row(model, settings) -> list[torch.Tensor]:
    r = fs.Renderer(model, settings)
    return [TF.resize(r.render(logit(d), seeds=[d]).images[0], [112, 112], antialias=True) for d in range(10)]


def main() -> None:
    torch.set_num_threads(2)
    a = fs.load_model("digits_cnn")
    after = fs.get_preset("fast").with_(steps=48, converge=0.0)
    before = after.with_(size=28, transform_scale=1.0)  # the old defaults: input size, 224 px pixel amounts
    rows = {"before": row(a, before), "after": row(a, after)}
    for k, v in rows.items():
        print(k, "sharpness", round(sum(sharpness(x) for x in v) / len(v), 4))
    grid = make_grid([x.expand(3, -1, -1) for x in rows["after"]], nrow=10, padding=4, pad_value=1.0)
    to_pil(grid).save(DOCS / "grid_digits.png")
    both = make_grid([x.expand(3, -1, -1) for x in rows["before"] + rows["after"]], nrow=10, padding=4, pad_value=1.0)
    to_pil(both).save(DOCS / "grid_small_input.png")


if __name__ == "__main__":
    main()
