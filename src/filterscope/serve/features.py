"""The explorer's feature browser: a layer's dictionary (issue 44, item 5) learnt from the server's photos.

``/m/<model>/<layer>/features`` is ``filterscope dictionary`` (``jobs.layer_dictionary``'s ``JOB``, its defaults)
run once per (model, layer, photo set) in a worker through ``run_job`` (``serve.workers.run_dictionary``), its run
folder kept under the cache's results like the map's; the page polls the job's progress, then lists the
features sorted by score with a search box (name, class voted for or named, channel number). Every feature has
its page ``…/features/<j>``; the filter pages say which features a channel takes part in, the map's cells which
features lie nearest. The photos are the bundled ones and ``--images``' (not uploads: a layer's features, which
filter pages link to, stay put when someone uploads a photo). Only a feature's render and exemplar strip are
served from the run folder (``/featfile/<key>/<layer>/feature_0003.png``), by a pattern and a path check.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import store
from .explorer import HEX64, Explorer, cached_or_job, render_job, run_file, submit
from .workers import run_dictionary, run_feature_render

DICT_SEED = 0
MAX_Q = 100  # characters of a search: longer is refused (400), so a URL cannot make the server scan a novel
SORTS = ("score", "frequency", "name")
FEAT_FILE = re.compile(r"^[A-Za-z0-9_.\-]+/(feature|exemplars)_[0-9]{4,9}\.png$")
PART_OF = 8  # a channel takes part in the features with the largest |decoder weight| on it: this many
CELL_FEATURES = 5  # nearest features listed on a map cell's page


@dataclass
class LayerDictionary:
    """A finished dictionary of one layer: its job key, run folder and ``dictionary.json``."""

    key: str
    run: Path
    rec: dict

    @property
    def features(self) -> list[dict]:
        return self.rec["features"]

    def settings(self) -> dict:
        """The run's settings (``run.json``): the seed and the render preset its renders used."""
        try:
            return json.loads((self.run / "run.json").read_text()).get("settings", {})
        except (OSError, ValueError):
            return {}


def dictionary_key(ex: Explorer, layer: str) -> tuple[str, Path, list[tuple[str, Path]]]:
    """The cache key of ``layer``'s dictionary over the server's photos, its run folder and the photos."""
    photos = list(ex.photos.items())
    set_hash = store.photo_set_hash([h for h, _ in photos])
    opts = dict(ex.dictionary_options)
    key = store.result_key(ex.model, "dictionary", layer=layer, photo_set=set_hash, seed=DICT_SEED, options=opts)[0]
    return key, ex.cache.root / "results" / "dictionaries" / key, photos


def layer_dictionary(ex: Explorer, layer: str) -> LayerDictionary | None:
    """``layer``'s dictionary when its job has finished (its summary in the cache's results), else None;
    ``dictionary.json`` is read once per process."""
    key, out, _ = dictionary_key(ex, layer)
    if store.load_json(ex.cache, key) is None:
        return None

    def read():
        try:
            return json.loads((out / "dictionary.json").read_text())
        except (OSError, ValueError):
            return None

    rec = ex.memo(("dictionary", key), read)
    return LayerDictionary(key, out, rec) if rec is not None else None


def _decoder(ex: Explorer, d: LayerDictionary) -> np.ndarray | None:
    """The dictionary's decoder rows ``[F, C]`` (``dictionary.npz``), read once per process."""

    def read():
        try:
            with np.load(d.run / "dictionary.npz", allow_pickle=False) as z:
                return z["decoder"].astype(np.float32)
        except (OSError, ValueError, KeyError):
            return None

    return ex.memo(("dictionary-decoder", d.key), read)


def _start(ex: Explorer, request: Request, layer: str):
    key, out, photos = dictionary_key(ex, layer)

    def start():
        _, folder = store.photo_set_dir(ex.cache, photos)
        opts = {"seed": DICT_SEED, **ex.dictionary_options}
        return submit(ex, request, key, "dictionary", run_dictionary, str(folder), layer, opts, str(out))

    return key, start


# ---------------------------------------------------------------- search and sort


def _text(f: dict) -> str:
    """What a word of a search is looked for in: the feature's name, its top images' label, the classes it
    votes for (lower case, ``|`` between)."""
    parts = [f["name"]["name"] if f.get("name") else "", (f.get("purity") or {}).get("label", "")]
    parts += [v["name"] for v in f.get("votes", [])]
    return "|".join(str(p) for p in parts).lower()


def _is_number(word: str) -> bool:
    return re.fullmatch(r"[0-9]+", word) is not None


def matches(f: dict, words: list[str], chans: set[int]) -> bool:
    """Whether feature ``f`` answers every word of a search: a number is a channel that takes part in it (one
    of ``chans``: see :func:`takes_part`), any other word part of its name, label or a class it votes for."""
    text = _text(f)
    return all(int(w) in chans if _is_number(w) else w in text for w in words)


def sort_key(sort: str):
    """The order of the index: score (highest first, unscored last), frequency, or name (unnamed last)."""
    if sort == "frequency":
        return lambda f: (-f["frequency"], f["feature"])
    if sort == "name":
        return lambda f: (f.get("name") is None, (f["name"] or {}).get("name", "").lower(), f["feature"])
    return lambda f: (f.get("score") is None, -(f.get("score") or 0.0), -f["frequency"], f["feature"])


def _query(request: Request) -> tuple[str, str]:
    q = request.query_params.get("q", "")
    if len(q) > MAX_Q:
        raise HTTPException(400, f"a search is at most {MAX_Q} characters")
    sort = request.query_params.get("sort", "score")
    if sort not in SORTS:
        raise HTTPException(400, "sort must be score, frequency or name")
    return " ".join(q.split()), sort


# ---------------------------------------------------------------- what the pages show


def _class_link(ex: Explorer, layer: str, k: int) -> str | None:
    return f"/m/{ex.model.name}/{layer}/class/{k}" if 0 <= k < (ex.n_classes or 0) else None


def _file_url(d: LayerDictionary, rel: str | None) -> str | None:
    return f"/featfile/{d.key}/{rel}" if rel and FEAT_FILE.match(rel) else None


def takes_part(decoder: np.ndarray | None, feats: list[dict]) -> list[list[tuple[int, float]]]:
    """Per channel, the live features it takes part in: the :data:`PART_OF` with the largest |decoder
    weight| on it (non-zero), largest first, as ``(feature, weight)``; what a filter page lists and what a
    channel number finds in the index. Without a decoder: the features listing it among their channels."""
    live = np.array([f["frequency"] > 0 for f in feats], bool)
    if decoder is None or decoder.shape[0] != len(feats):
        n = 1 + max((c["channel"] for f in feats for c in f.get("channels", [])), default=-1)
        out: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        for f in feats:
            for c in f.get("channels", []) if live[f["feature"]] else []:
                out[c["channel"]].append((f["feature"], c["weight"]))
        return [sorted(r, key=lambda t: (-abs(t[1]), t[0]))[:PART_OF] for r in out]
    a = np.abs(decoder) * live[:, None]
    top = np.argsort(-a, axis=0, kind="stable")[:PART_OF]  # [PART_OF, C]
    return [[(int(j), float(decoder[j, c])) for j in top[:, c] if a[j, c] > 0] for c in range(decoder.shape[1])]


def _parts(ex: Explorer, d: LayerDictionary) -> tuple[list[list[tuple[int, float]]], list[set[int]]]:
    """:func:`takes_part` of a dictionary, and its inverse (per feature, the channels that take part in it)."""

    def make():
        per_channel = takes_part(_decoder(ex, d), d.features)
        per_feature: list[set[int]] = [set() for _ in d.features]
        for c, rows in enumerate(per_channel):
            for j, _ in rows:
                per_feature[j].add(c)
        return per_channel, per_feature

    return ex.memo(("dictionary-parts", d.key), make)


def _row(ex: Explorer, layer: str, d: LayerDictionary, f: dict) -> dict:
    """An index row: the record, its URL, render, the words the search looks in, the channels and votes."""
    base = f"/m/{ex.model.name}/{layer}"
    return {
        **f,
        "url": f"{base}/features/{f['feature']}",
        "render_url": _file_url(d, f.get("render")),
        "text": _text(f),
        "chan": " " + " ".join(str(c) for c in sorted(_parts(ex, d)[1][f["feature"]])) + " ",
        "chan_links": [{**c, "url": f"{base}/f/{c['channel']}"} for c in f.get("channels", [])[:4]],
        "vote_links": [{**v, "url": _class_link(ex, layer, v["class"])} for v in f.get("votes", [])[:2]],
    }


def _histogram(h: dict, width: int = 320, height: int = 80) -> dict:
    """An SVG bar chart's rectangles of a feature's histogram (peak activation per image); bar heights grow
    with the square root of the count, so that the few strong images show beside the many quiet ones."""
    counts = h.get("counts", [])
    top = max(counts, default=0) or 1
    w = width / max(1, len(counts))
    bars = []
    for i, c in enumerate(counts):
        bar = round(height * (c / top) ** 0.5, 1)
        bars.append({"x": round(i * w, 1), "w": round(w - 1, 1), "h": bar, "y": round(height - bar, 1), "n": c})
    edges = h.get("edges", [0, 0])
    return {"bars": bars, "width": width, "height": height, "lo": edges[0], "hi": edges[-1], "of": h.get("of", "")}


def _render_key(ex: Explorer, d: LayerDictionary, layer: str, j: int) -> tuple[str, list, str, int] | None:
    """The render-cache key of feature ``j``'s render as the dictionary job makes it (the ``direction``
    objective along its decoder row, the run's preset, seed ``channel_seed(seed, j)``), the row, the preset's
    name and the seed; None when the decoder cannot be read."""
    import torch

    from ..optvis.objectives import direction
    from ..optvis.presets import DEFAULT_METHOD, get_preset
    from ..optvis.render import channel_seed
    from ..outputs.cache import render_key

    dec = _decoder(ex, d)
    if dec is None or j >= len(dec):
        return None
    st = d.settings()
    method = DEFAULT_METHOD
    seed = channel_seed(int(st.get("seed", DICT_SEED)), j)
    obj = direction(layer, torch.from_numpy(dec[j]))
    key = render_key(ex.model, obj, get_preset(method), seed, layer=layer)[0]
    return key, dec[j].tolist(), method, seed


def _exemplars(ex: Explorer, layer: str, f: dict) -> list[dict]:
    out = []
    for t in f.get("top", []):
        h = Path(t["image"]).stem
        known = HEX64.match(h) is not None and (h in ex.photos or store.upload_path(ex.cache, h).is_file())
        out.append({**t, "hash": h if known else None, "url": f"/m/{ex.model.name}/{layer}/img/{h}" if known else None})
    return out


def channel_features(ex: Explorer, layer: str, c: int) -> dict[str, Any]:
    """The filter page's part: the features of ``layer``'s dictionary that channel ``c`` takes part in (the
    live ones with the largest |decoder weight| on ``c``, :func:`takes_part`), largest first, each with its
    weight on ``c``; or, before the dictionary is computed, the link that computes it."""
    base = f"/m/{ex.model.name}/{layer}/features"
    d = layer_dictionary(ex, layer)
    out: dict[str, Any] = {"index": base, "computed": d is not None, "channel": c, "features": []}
    if d is None:
        return out
    per_channel = _parts(ex, d)[0]
    for j, w in per_channel[c] if c < len(per_channel) else []:
        f = d.features[j]
        out["features"].append({"feature": j, "weight": w, "name": f.get("name"), "url": f"{base}/{j}"})
    out["search"] = f"{base}?q={c}"
    return out


def cell_features(ex: Explorer, layer: str, run: Path, i: int, j: int) -> list[dict] | None:
    """The live features of ``layer``'s dictionary nearest a map cell's mean direction (cosine with their
    decoder rows, from the map's ``map.npz``), or None when the dictionary is not computed."""
    d = layer_dictionary(ex, layer)
    if d is None:
        return None
    dec = _decoder(ex, d)
    try:
        with np.load(run / "map.npz", allow_pickle=False) as z:
            cells, means = z["cells"], z["means"]
    except (OSError, ValueError, KeyError):
        return None
    at = np.nonzero((cells[:, 0] == i) & (cells[:, 1] == j))[0]
    if dec is None or not len(at) or means.shape[1] != dec.shape[1]:
        return None
    m = means[at[0]]
    live = np.array([f["frequency"] > 0 for f in d.features])
    cos = dec @ m / (np.linalg.norm(dec, axis=1) * np.linalg.norm(m) + 1e-12)
    cos[~live] = -np.inf
    base = f"/m/{ex.model.name}/{layer}/features"
    out = []
    for k in np.argsort(-cos, kind="stable")[:CELL_FEATURES]:
        if np.isfinite(cos[k]):
            f = d.features[int(k)]
            out.append({"feature": int(k), "cosine": float(cos[k]), "name": f.get("name"), "url": f"{base}/{int(k)}"})
    return out


# ---------------------------------------------------------------- routes


def features_page(request: Request) -> Response:
    """The index of a layer's features (sorted by score, frequency or name; ``?q=`` searched on the server,
    the page's script filters as one types), or the job's progress while the dictionary is learnt."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    q, sort = _query(request)
    d = layer_dictionary(ex, layer)
    api = f"/api/features/{ex.model.name}/{layer}"
    rows, shown, dead = [], 0, 0
    if d is not None:
        words = q.lower().split()
        for f in sorted(d.features, key=sort_key(sort)):
            row = _row(ex, layer, d, f)
            row["hidden"] = not matches(f, words, _parts(ex, d)[1][f["feature"]])
            shown += not row["hidden"]
            dead += f["frequency"] == 0
            rows.append(row)
    return ex.page(
        "features.html", request=request, layer=layer, rec=d.rec if d else None, rows=rows, q=q, sort=sort,
        sorts=SORTS, shown=shown, dead=dead, api=api, n_photos=len(ex.photos), max_q=MAX_Q,
    )  # fmt: skip


def feature_page(request: Request) -> Response:
    """One feature: its name, purity, score, frequency, exemplars (strip and photos), render (from the run,
    the render cache, or a render job), histogram, the channels it is made of and the classes it votes for."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    d = layer_dictionary(ex, layer)
    if d is None:
        return RedirectResponse(f"/m/{ex.model.name}/{layer}/features", status_code=303)
    j = request.path_params["j"]
    if not 0 <= j < len(d.features):
        raise HTTPException(404, f"the dictionary of {layer} has features 0-{len(d.features) - 1}, not {j}")
    f = _row(ex, layer, d, d.features[j])
    base = f"/m/{ex.model.name}/{layer}"
    render = {"url": f["render_url"], "api": None}
    if render["url"] is None:
        got = _render_key(ex, d, layer, j)
        if got is not None and ex.cache.has(got[0]):
            render["url"] = f"/png/{got[0]}.png"
        elif got is not None:
            render["api"] = f"/api/feature-render/{ex.model.name}/{layer}/{j}"
    return ex.page(
        "feature.html",
        request=request,
        layer=layer,
        f=f,
        n=len(d.features),
        rec=d.rec,
        base=base,
        strip=_file_url(d, f.get("exemplars")),
        render=render,
        exemplars=_exemplars(ex, layer, f),
        hist=_histogram(f.get("histogram") or {}),
        channels=[{**c, "url": f"{base}/f/{c['channel']}"} for c in f.get("channels", [])],
        votes=[{**v, "url": _class_link(ex, layer, v["class"])} for v in f.get("votes", [])],
    )


def api_features(request: Request) -> Response:
    """A layer's dictionary: done, or the job's progress; POST starts it (a cancelled one resumes)."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    key, start = _start(ex, request, layer)
    # retry_errors off: e.g. too few vectors for the features is a refusal
    return cached_or_job(ex, request, key, layer_dictionary(ex, layer) is not None, start, retry_errors=False)


def api_feature_render(request: Request) -> Response:
    """A feature's render from noise (render cache): done with its URL, or the job's progress; POST starts it.
    The dictionary must be computed first."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    d = layer_dictionary(ex, layer)
    if d is None:
        raise HTTPException(404, "compute the layer's dictionary first")
    j = request.path_params["j"]
    if not 0 <= j < len(d.features):
        raise HTTPException(404, f"the dictionary of {layer} has features 0-{len(d.features) - 1}, not {j}")
    got = _render_key(ex, d, layer, j)
    if got is None:
        raise HTTPException(404, "the dictionary's decoder cannot be read")
    key, vec, method, seed = got
    args = (layer, vec, method, seed)
    return render_job(
        ex, request, key, [key], lambda: submit(ex, request, key, "feature-render", run_feature_render, *args)
    )


def feature_file(request: Request) -> Response:
    """A feature's render or exemplar strip from a finished dictionary run (nothing else of its folder)."""
    ex: Explorer = request.app.state.explorer
    key, rel = request.path_params["key"], request.path_params["path"]
    return run_file(ex, "dictionaries", key, rel, FEAT_FILE, "feature file")


def routes() -> list:
    """The feature browser's routes (added by ``create_app``)."""
    from starlette.routing import Route

    api = ["GET", "POST"]
    return [
        Route("/m/{model}/{layer}/features", features_page),
        Route("/m/{model}/{layer}/features/{j:idx}", feature_page),
        Route("/api/features/{model}/{layer}", api_features, methods=api),
        Route("/api/feature-render/{model}/{layer}/{j:idx}", api_feature_render, methods=api),
        Route("/featfile/{key}/{path:path}", feature_file),
    ]
