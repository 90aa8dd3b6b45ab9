"""Stand-ins for the two modules the map job shares with other branches, for as long as they are not merged
here: ``filterscope.jobs.vectors`` (the layer pass, branch ``dictionary``) and ``filterscope.jobs.names``
(names and purity, branch ``names``). :func:`install` registers a stand-in only where the real module cannot be
imported; the stand-ins follow the modules' documented API with the simplest honest implementation."""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class LayerVectors:
    vectors: np.ndarray
    image: np.ndarray
    view: np.ndarray
    y: np.ndarray
    x: np.ndarray
    files: list
    map_size: tuple
    predictions: np.ndarray


def layer_vectors(model, info, files, *, crops=0, max_vectors=20000, seed=0, backend="local", address=None,
                  workers=2, progress=False, stop=None):
    """Every position of every image (no crops), reservoir-free: the test folders are small."""
    from filterscope.models.inputs import load_image, model_input
    from filterscope.optvis.hooks import capture

    vecs, img, ys, xs, preds = [], [], [], [], []
    for i in range(0, len(files), 16):
        x = torch.cat([model_input(model, load_image(f)) for f in files[i : i + 16]])
        with capture(model.net, [info.name], calls={info.name: info.calls}) as cap, torch.inference_mode():
            logits = model.forward(x)
        a = cap.acts[info.name].float()
        b, c, h, w = a.shape
        vecs.append(a.permute(0, 2, 3, 1).reshape(-1, c).numpy())
        img.append(np.repeat(np.arange(i, i + b), h * w))
        yy, xx = np.mgrid[:h, :w]
        ys.append(np.tile(yy.ravel(), b))
        xs.append(np.tile(xx.ravel(), b))
        preds.append(logits.argmax(1).numpy())
    v = np.concatenate(vecs)
    return LayerVectors(v, np.concatenate(img), np.zeros(len(v), np.int64), np.concatenate(ys), np.concatenate(xs),
                        list(files), (h, w), np.concatenate(preds))


def image_labels(files, root, model=None, predictions=None):
    root = Path(root).resolve()
    rel = [Path(f).resolve().relative_to(root) for f in files]
    if all(len(r.parts) >= 2 for r in rel) and len({r.parts[0] for r in rel}) >= 2:
        return [r.parts[0] for r in rel], "folders"
    cats = getattr(model, "categories", None)
    return [cats[int(p)] if cats else f"class {int(p)}" for p in predictions], "predictions"


def name_units(acts, labels, alpha=0.01):
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    names = sorted(set(labels.tolist()))
    out = []
    for u in range(acts.shape[1]):
        best = None
        for n in names:
            y = labels == n
            if y.all() or not y.any():
                continue
            auc = roc_auc_score(y, acts[:, u])
            if best is None or auc > best[1]:
                best = (n, auc, y)
        if best is None:
            out.append(None)
            continue
        p = mannwhitneyu(acts[best[2], u], acts[~best[2], u], alternative="greater").pvalue * len(names)
        out.append({"name": best[0], "auc": float(best[1]), "p": float(p)} if p < alpha else None)
    return out


def purity(top_images, labels):
    if not len(top_images):
        return None
    got = [labels[i] for i in top_images]
    best = max(set(got), key=got.count)
    return {"label": best, "share": got.count(best) / len(got)}


def install() -> list[str]:
    """Register the stand-ins whose real module is missing; returns their names."""
    done = []
    for name, attrs in (
        ("filterscope.jobs.vectors", {"layer_vectors": layer_vectors, "LayerVectors": LayerVectors}),
        ("filterscope.jobs.names", {"image_labels": image_labels, "name_units": name_units, "purity": purity}),
    ):
        try:
            importlib.import_module(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
            done.append(name)
    return done
