"""What the explorer computes, from the jobs the CLI runs: the only place the app asks *what* to compute.

- :func:`explanation`: ``jobs.inspect.inspect_image(rank="contribution")`` (prediction, filters ranked by their
  contribution to the predicted class and by mean activation, where they fire) and the ablation check of
  ``jobs.attribution`` (the class probability's drop with each ranking's top 8 zeroed);
- :func:`accentuation`: ``jobs.accentuate.accentuate`` (the photo pushed to excite one filter while it stays
  close to the photo, and where it changed);
- the render from noise is ``jobs.stream.render_stream`` (in ``serve/workers.py``).

The rest of the app only reads the dictionaries and PNGs these return.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..jobs.evaluate import layer_means
from ..jobs.inspect import inspect_image
from ..models.inputs import list_images, load_image, model_input, sample_photos_dir
from ..models.layers import network_layer
from ..models.model import Model
from ..outputs.images import png_bytes, to_pil

TOP = 12  # filters listed per ranking
ABLATE_K = 8  # filters zeroed for the ablation check


def _ranked(order, means, maxes, contrib) -> list[dict]:
    return [
        {
            "channel": int(i),
            "mean": round(float(means[i]), 5),
            "max": round(float(maxes[i]), 5),
            "contribution": round(float(contrib[i]), 5),
        }
        for i in order
    ]


def _ablation(model: Model, x: torch.Tensor, ins, k: int = ABLATE_K, seed: int = 0) -> dict[str, float]:
    """Drop of the explained class's probability with the top ``k`` of each ranking (and ``k`` random
    filters) set to zero at the layer."""
    from ..jobs.attribution import ablate

    n = ins.layer.channels
    k = min(k, n)
    rng = np.random.default_rng(seed)
    rows = {
        "contribution": ins.order("contribution", k),
        "activation": ins.order("activation", k),
        "random": rng.choice(n, k, replace=False).tolist(),
    }
    masks = torch.ones(len(rows) + 1, n)
    for i, chans in enumerate(rows.values()):
        masks[i + 1, chans] = 0.0
    probs = ablate(model, x, ins.layer, masks)[:, ins.target_class]  # probabilities, row 0 unablated
    return {name: round(float(probs[0] - probs[i + 1]), 4) for i, name in enumerate(rows)}


def explanation(model: Model, image: Image.Image, layer: str = "default", top: int = TOP) -> tuple[dict, np.ndarray]:
    """Prediction, the filters of ``layer`` ranked by contribution and by mean activation, the ablation
    check, and every filter's map (where it fires) as a ``[C, h, w]`` float16 array."""
    info = network_layer(model, layer, "explain")
    x = model_input(model, image).to(model.device)
    ins = inspect_image(model, x, info.name, top=top, rank="contribution")
    k = max(1, min(top, info.channels))
    result = {
        "layer": info.name,
        "channels": info.channels,
        "predictions": [{"class": c, "name": n, "probability": round(p, 5)} for c, n, p in ins.predictions],
        "target_class": ins.target_class,
        "by_contribution": _ranked(ins.order("contribution", k), ins.means, ins.maxes, ins.contributions),
        "by_mean": _ranked(ins.order("activation", k), ins.means, ins.maxes, ins.contributions),
        "contribution": "gradient × activation of the predicted class's logit, summed over the map",
        "ablation_top8": _ablation(model, x, ins),
        "maps_from": ins.maps_from,
    }
    maps = ins.maps.float().numpy() if ins.maps.dim() == 3 else np.ones((info.channels, 1, 1), np.float32)
    return result, maps.astype(np.float16)


def accentuation(model: Model, image: Image.Image, layer: str, channel: int) -> tuple[bytes, bytes, dict]:
    """The accentuation of one filter in the photo: its PNG, the PNG of where it changed the photo, and
    its record (activation on the photo and on the accentuation, gain, SSIM)."""
    from ..jobs.accentuate import accentuate_image

    (acc,) = accentuate_image(model, image, layer, [channel])
    return png_bytes(acc.image), png_bytes(acc.change_rgb()), acc.record()


def where_it_fires(
    image: Image.Image, model: Model, fmap: np.ndarray, size: int = 224, vmax: float | None = None
) -> bytes:
    """The photo (as the model saw it) darkened where the filter is quiet: one filter's map over it, PNG.
    Any channel count: the photo is drawn by the CLI's image writer (grey for 1 band, bands 1-3 for more).
    The map is scaled by its own maximum, or by ``vmax`` (so that several maps share one scale)."""
    base = to_pil(model_input(model, image)[0]).convert("RGB").resize((size, size))
    m = np.asarray(fmap, dtype=np.float32)
    if m.ndim != 2:  # a unit without a map: the whole photo
        m = np.ones((1, 1), np.float32)
    m = np.nan_to_num(np.clip(m, 0, None))
    top = float(vmax) if vmax is not None and vmax > 0 else float(m.max())
    m = np.clip(m / top, 0, 1) if top > 0 else m
    heat = Image.fromarray((m * 255).astype(np.uint8), "L").resize((size, size), Image.Resampling.BICUBIC)
    h = np.asarray(heat, dtype=np.float32)[..., None] / 255.0
    out = np.asarray(base, dtype=np.float32) * (0.15 + 0.85 * h)
    return png_bytes(Image.fromarray(out.clip(0, 255).astype(np.uint8), "RGB"))


def photo_examples(model: Model, layer: str) -> dict:
    """Every filter's mean activation on each bundled photo (the natural images the explorer ranks by
    filter): ``{"names": [...], "means": [[...] per photo]}``, and every filter's name, purity and
    interpretability score over those photos (``units``, ``scoring``: jobs/names.py; labels are the model's
    predictions of the photos, the same numbers the atlas and ``concepts`` use)."""
    from ..jobs.names import default_similarity, describe_units, image_labels, mis_min_images, scoring_record

    info = network_layer(model, layer, "examples")
    folder = sample_photos_dir()
    files = list_images(folder)
    rows, preds = [], []
    for f in files:
        x = model_input(model, load_image(f))
        rows.append(layer_means(model, info.name, x)[0].numpy().round(5).tolist())
        with torch.inference_mode():
            preds.append(int(model.forward(x.to(model.device)).argmax()))
    labels, source = image_labels(files, folder, model, predictions=preds)
    sim = default_similarity() if len(files) >= mis_min_images() else None
    embed = sim.embed(files) if sim is not None else None
    units = describe_units(np.asarray(rows), labels, top=6, embed=embed)
    return {
        "layer": info.name,
        "names": [f.name for f in files],
        "means": rows,
        "units": units,
        "scoring": scoring_record(source, sim, len(files)),
    }


def thumbnail(path, model: Model, side: int = 128) -> bytes:
    """A bundled or uploaded photo as the model sees it (resized, centre-cropped, the model's channels drawn
    by the CLI's image writer: grey for 1 band, RGB for 3, bands 1-3 for more), as PNG."""
    x = model_input(model, load_image(path))[0]
    return png_bytes(to_pil(x).resize((side, side), Image.Resampling.BICUBIC))
