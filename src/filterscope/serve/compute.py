"""ADAPTERS between the explorer and the jobs: the only place the app asks *what* to compute.

Interim implementations made from what this branch has. When ``jobs/explain.py`` and
``jobs/accentuate.py`` are merged, switch:

- :func:`explanation` → ``explain(model, image, layer=...)`` (prediction, filters ranked by contribution and
  by mean activation, where they fire);
- :func:`filter_pictures` → add the accentuation of the photo (``accentuate``); today it gives the filter's
  activation map over the photo ("where it fires").

The rest of the app only reads the dictionaries these return.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..models.layers import map_views, network_layer
from ..models.model import Model
from ..optvis.hooks import capture, run
from ..outputs.images import list_images, load_image, model_input, png_bytes, sample_photos_dir

TOP = 12  # filters listed per ranking


def _ranked(order: np.ndarray, means, maxes, contrib) -> list[dict]:
    return [
        {
            "filter": int(i),
            "mean": round(float(means[i]), 5),
            "max": round(float(maxes[i]), 5),
            "contribution": round(float(contrib[i]), 5),
        }
        for i in order
    ]


def explanation(model: Model, image: Image.Image, layer: str = "default", top: int = TOP) -> tuple[dict, np.ndarray]:
    """Prediction, the filters of ``layer`` ranked by contribution and by mean activation, and every
    filter's map (where it fires) as a ``[C, h, w]`` float16 array.

    Contribution of filter c to the top class: Σ over its map of activation × ∂logit/∂activation (gradient
    × activation, Simonyan et al. 2013 / Shrikumar et al. 2016)."""
    info = network_layer(model, layer, "explain")
    x = model_input(model, image).to(model.device).requires_grad_(True)
    module = dict(model.net.named_modules())[info.name]
    view = map_views(model, [info.name]).get(info.name, lambda t: t)
    kept: dict[str, torch.Tensor] = {}

    def hook(mod, inputs, output):  # the last call's output, and the gradient that reaches it
        kept["act"] = view(output.detach()).clone()
        output.register_hook(lambda g: kept.__setitem__("grad", view(g.detach()).clone()))

    handle = module.register_forward_hook(hook)
    try:
        logits = model.forward(x)
        probs = torch.softmax(logits[0].detach().float(), 0)
        cls = int(probs.argmax())
        logits[0, cls].backward()
    finally:
        handle.remove()
    act, grad = kept["act"], kept["grad"]
    a, g = act[0].float(), grad[0].float()
    flat_a = a.flatten(1) if a.dim() == 3 else a[:, None]
    contrib = (a * g).flatten(1).sum(1) if a.dim() == 3 else a * g
    means, maxes = flat_a.mean(1).cpu().numpy(), flat_a.amax(1).cpu().numpy()
    contrib = contrib.cpu().numpy()
    k = max(1, min(top, info.channels))
    names = model.categories or []
    pv, pi = probs.topk(min(5, probs.numel()))
    preds = [
        {
            "class": int(i),
            "name": names[int(i)] if int(i) < len(names) else str(int(i)),
            "probability": round(float(p), 5),
        }
        for p, i in zip(pv, pi)
    ]
    result = {
        "layer": info.name,
        "channels": info.channels,
        "predictions": preds,
        "by_contribution": _ranked(np.argsort(-contrib, kind="stable")[:k], means, maxes, contrib),
        "by_mean": _ranked(np.argsort(-means, kind="stable")[:k], means, maxes, contrib),
        "contribution": "gradient × activation of the top class's logit, summed over the map",
        "maps_from": info.name if a.dim() == 3 else "none (no spatial maps)",
    }
    maps = a.cpu().numpy() if a.dim() == 3 else np.ones((info.channels, 1, 1), np.float32)
    return result, maps.astype(np.float16)


def where_it_fires(image: Image.Image, model: Model, fmap: np.ndarray, size: int = 224) -> bytes:
    """The photo (as the model saw it) darkened where the filter is quiet: one filter's map over it, PNG."""
    x = model_input(model, image)[0]
    base = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((size, size))
    m = np.asarray(fmap, dtype=np.float32)
    m = np.clip(m, 0, None)
    m = m / m.max() if m.max() > 0 else m
    heat = Image.fromarray((m * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    h = np.asarray(heat, dtype=np.float32)[..., None] / 255.0
    out = np.asarray(base, dtype=np.float32) * (0.15 + 0.85 * h)
    return png_bytes(Image.fromarray(out.clip(0, 255).astype(np.uint8)))


def filter_pictures(
    model: Model, image: Image.Image, layer: str, channel: int, maps: np.ndarray, side: int = 224
) -> dict[str, bytes]:
    """The pictures of one filter for one photo, besides its render from noise (a job of its own):
    today ``{"where": PNG}``; after the merge also ``{"accent": PNG}`` from ``accentuate``."""
    return {"where": where_it_fires(image, model, maps[channel], side)}


def photo_examples(model: Model, layer: str) -> dict:
    """Every filter's mean activation on each bundled photo (the natural images the explorer ranks by
    filter): ``{"names": [...], "means": [[...] per photo]}``."""
    info = network_layer(model, layer, "examples")
    files = list_images(sample_photos_dir())
    rows = []
    with (
        capture(
            model.net, [info.name], calls={info.name: info.calls}, stop=True, views=map_views(model, [info.name])
        ) as cap,
        torch.inference_mode(),
    ):
        for f in files:
            run(model.forward, model_input(model, load_image(f)).to(model.device), cap)
            a = cap.acts[info.name][0].float()
            rows.append((a.flatten(1).mean(1) if a.dim() == 3 else a).cpu().numpy().round(5).tolist())
    return {"layer": info.name, "names": [f.name for f in files], "means": rows}


def thumbnail(path, model: Model, side: int = 128) -> bytes:
    """A bundled or uploaded photo as the model sees it (resized, centre-cropped), as PNG."""
    x = model_input(model, load_image(path))[0]
    im = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((side, side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
