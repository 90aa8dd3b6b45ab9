"""The live explorer: a Starlette app over the render cache and a pool of render workers.

Every page has a stable URL made of the model, the layer, the photo's sha256 and the filter:
``/m/<model>/<layer>/img/<sha256>`` (the explanation), ``…/f/<channel>`` (a filter with that photo),
``/m/<model>/<layer>/f/<channel>`` (a filter alone, with its circuit and tuning), ``/m/<model>/<layer>/class/<k>``
(a class's concepts over the server's photos), ``/m/<model>/<layer>/features`` (the layer's dictionary, one page
per feature: ``serve/features.py``). Progress is polled from small JSON endpoints
(``/api/…``). Path parameters are checked against the model's layers, a 64-hex-digit hash or a channel
range, so no URL names a file; the atlas is served by Starlette's ``StaticFiles`` (which refuses paths that
leave its folder and lists no directory).

Jobs start only from POST requests (``/api/…``, what the pages' JavaScript sends); a GET of the same URL only
reports. Every request passes :class:`~filterscope.serve.guard.Guard` first (Host allow-list, token off
loopback, same origin for POSTs, a signed client id). Handlers that compute (thumbnails, maps, decoding an
upload) run in Starlette's thread pool, never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import FilterscopeError
from ..models.inputs import decode_image, load_image
from ..optvis.presets import DEFAULT_METHOD, default_method
from ..outputs.naming import channel_page
from ..outputs.site import name_rows, stylesheet
from . import compute, store
from .explorer import (
    CONCEPT_SEED,
    CSRF_SLOT,
    HEX64,
    MAX_UPLOAD,
    Explorer,
    cached_or_job,
    csrf,
    render_job,
    run_file,
    submit,
)
from .guard import Access, Guard
from .workers import (
    run_accent,
    run_circuit,
    run_concept_renders,
    run_concepts,
    run_diff,
    run_examples,
    run_explanation,
    run_map,
    run_render,
    run_tuning,
)


class _Index(Convertor):
    """A path's whole number: at most 18 digits (Starlette's ``int`` takes any length, and Python refuses to
    convert more than 4300 digits: a 500); longer is no route, a 404."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("idx", _Index())


def _etag_matches(request: Request, etag: str) -> bool:
    """Whether the request's If-None-Match names ``etag`` (weak or strong, or ``*``)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


def _error_page(request: Request, exc: Exception) -> Response:
    ex: Explorer = request.app.state.explorer
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or str(exc)
    headers = getattr(exc, "headers", None)
    titles = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed", 413: "Too large"}
    titles[429] = "Too many jobs"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"state": "error", "error": detail}, status_code=status, headers=headers)
    resp = ex.page("error.html", status, request, status=status, title=titles.get(status, "Error"), message=detail)
    resp.headers.update(headers or {})
    return resp


# ---------------------------------------------------------------- routes


def home(request: Request) -> Response:
    """The home page, rendered once per photo set; its ETag names that page and the client's form token, so a
    browser revalidating it gets 304 without a body."""
    ex: Explorer = request.app.state.explorer
    html, page_hash = ex.home_html()
    token = csrf(request)
    etag = f'"{page_hash}-{hashlib.sha256(token.encode()).hexdigest()[:12]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    return HTMLResponse(html.replace(CSRF_SLOT, token), headers=headers)


def go(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    h, layer = request.query_params.get("photo", ""), request.query_params.get("layer", ex.default_layer)
    ex.image_path(h)
    if layer not in ex.layer_names:
        raise HTTPException(400, f"{ex.model.name} has no layer {layer!r} with filters")
    return RedirectResponse(f"/m/{ex.model.name}/{layer}/img/{h}", status_code=303)


def go_class(request: Request) -> Response:
    """The home page's class form: to ``/m/<model>/<layer>/class/<k>``."""
    ex: Explorer = request.app.state.explorer
    k, layer = request.query_params.get("k", ""), request.query_params.get("layer", ex.default_layer)
    if layer not in ex.layer_names:
        raise HTTPException(400, f"{ex.model.name} has no layer {layer!r} with filters")
    n = ex.n_classes or 0
    if not (re.fullmatch(r"[0-9]{1,7}", k) and int(k) < n):
        raise HTTPException(400, f"a class is a number 0-{max(n - 1, 0)}")
    return RedirectResponse(f"/m/{ex.model.name}/{layer}/class/{int(k)}", status_code=303)


def go_diff(request: Request) -> Response:
    """The home page's diff form: to ``/m/<model>/<layer>/diff`` (404 without a second model)."""
    ex: Explorer = request.app.state.explorer
    if ex.model_b is None:
        raise HTTPException(404, "this server has no second model (start it with --model-b)")
    layer = request.query_params.get("layer", ex.default_layer)
    if layer not in ex.layer_names:
        raise HTTPException(400, f"{ex.model.name} has no layer {layer!r} with filters")
    return RedirectResponse(f"/m/{ex.model.name}/{layer}/diff", status_code=303)


async def upload(request: Request) -> Response:
    import secrets

    ex: Explorer = request.app.state.explorer
    length = request.headers.get("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > MAX_UPLOAD + 65536:
        raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD // 2**20} MB")
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_UPLOAD)
    except HTTPException:
        raise
    except Exception as e:  # malformed multipart
        raise HTTPException(400, f"cannot read the upload: {' '.join(str(e).split())[:120]}") from None
    expected = request.scope.get("state", {}).get("fs_csrf_ok")
    sent = form.get("csrf")
    if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent, expected):
        raise HTTPException(403, "the form's session token is missing or stale; reload the page and try again")
    f = form.get("file")
    layer = str(form.get("layer") or ex.default_layer)
    if f is None or isinstance(f, str):
        raise HTTPException(400, "no file in the upload (field 'file')")
    data = await f.read()
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD // 2**20} MB")
    if layer not in ex.layer_names:
        raise HTTPException(400, f"{ex.model.name} has no layer {layer!r} with filters")
    try:  # size caps, decompression-bomb guard, broken files: CPU work, off the event loop
        await run_in_threadpool(decode_image, data, "the upload")
    except FilterscopeError as e:
        raise HTTPException(400, e.message) from None
    h = await run_in_threadpool(store.store_upload, ex.cache, data, quota=ex.upload_quota, max_age=ex.upload_max_age)
    return RedirectResponse(f"/m/{ex.model.name}/{layer}/img/{h}", status_code=303)


def explain_page(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    h = request.path_params["h"]
    ex.image_path(h)
    got = ex.maps(layer, h)  # not there yet: the page's script starts the job (POST) and polls it
    base = f"/m/{ex.model.name}/{layer}/img/{h}"
    concepts = _photo_concepts(ex, request, layer, h, got[0]) if got and ex.n_classes else None
    return ex.page(
        "explain.html", request=request, layer=layer, h=h, ex=got[0] if got else None, base=base, concepts=concepts
    )


def api_explain(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    h = request.path_params["h"]
    path = ex.image_path(h)
    key = ex.explanation_key(layer, h)
    start = lambda: submit(ex, request, key, "explanation", run_explanation, str(path), layer)
    return cached_or_job(ex, request, key, ex.maps(layer, h) is not None, start)


def api_examples(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    key = ex.examples_key(layer)
    start = lambda: submit(ex, request, key, "examples", run_examples, layer)
    return cached_or_job(ex, request, key, store.load_json(ex.cache, key) is not None, start)


def _render_args(request: Request, layer: str, model=None) -> tuple[str, int, int]:
    from ..optvis.presets import PRESETS

    q = request.query_params
    method = q.get("method") or default_method(layer, model)
    if method not in PRESETS:
        raise HTTPException(400, f"unknown method {method!r}; use one of {', '.join(PRESETS)}")
    seed, div = q.get("seed", "0"), q.get("diversity", "0")
    if not (re.fullmatch(r"[0-9]{1,10}", seed) and re.fullmatch(r"[0-9]{1,2}", div)):
        raise HTTPException(400, "seed and diversity must be whole numbers")
    seed, div = int(seed), int(div)
    if not (0 <= seed < 2**31 and (div == 0 or 2 <= div <= 8)):
        raise HTTPException(400, "seed must be ≥ 0 and diversity 0 or 2-8")
    return method, seed, div


def api_render(request: Request) -> Response:
    """A filter's render (or its diversity variants): done with the picture URLs, or the job's progress;
    POST starts it."""
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c = ex.channel(request, info)
    method, seed, div = _render_args(request, layer, ex.model)
    if div:
        key, keys, _ = store.diversity_keys(ex.model, layer, c, method, seed, div)
    else:
        key = ex.render_key(layer, c, method, seed)
        keys = [key]
    args = (layer, c, method, seed, div)
    return render_job(ex, request, key, keys, lambda: submit(ex, request, key, "render", run_render, *args))


def api_accent(request: Request) -> Response:
    """A filter's accentuation of a photo: done with the two picture URLs, or the job's progress; POST
    starts it."""
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c, h = ex.channel(request, info), request.path_params["h"]
    path = ex.image_path(h)
    keys = ex.accent_keys(layer, h, c)
    hit = ex.cache.get(keys[0]) if all(ex.cache.has(k) for k in keys) else None
    fields = {"gain": hit.record.get("gain"), "ssim": hit.record.get("ssim")} if hit is not None else None
    start = lambda: submit(ex, request, keys[0], "accentuation", run_accent, str(path), layer, c, keys)
    urls = [f"/png/{k}.png" for k in keys]
    return cached_or_job(ex, request, keys[0], hit is not None, start, urls=urls, fields=fields)


def png(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    key = request.path_params["key"]
    if not HEX64.match(key):
        raise HTTPException(404, "not a render key")
    hit = ex.cache.get(key)
    if hit is None:
        raise HTTPException(404, "no such render in the cache")
    return Response(hit.png, media_type="image/png", headers={"Cache-Control": "max-age=86400, immutable"})


def _side(request: Request, default: int) -> int:
    s = request.query_params.get("side", str(default))
    if not re.fullmatch(r"[0-9]{2,3}", s) or not 32 <= int(s) <= 512:
        raise HTTPException(400, "side must be 32-512")
    return int(s)


def photo(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    h, side = request.path_params["h"], _side(request, 128)
    path = ex.image_path(h)
    pic = ex.memo((h, side), lambda: compute.thumbnail(path, ex.model, side))
    return Response(pic, media_type="image/png", headers={"Cache-Control": "max-age=86400"})


def where(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c, h, side = ex.channel(request, info), request.path_params["h"], _side(request, 96)
    path = ex.image_path(h)
    got = ex.maps(layer, h)
    if got is None:
        raise HTTPException(404, "explain this photo first")
    pic = ex.memo((layer, h, c, side), lambda: compute.where_it_fires(load_image(path), ex.model, got[1][c], side))
    return Response(pic, media_type="image/png", headers={"Cache-Control": "max-age=86400"})


def filter_page(request: Request) -> Response:
    from . import features

    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c = ex.channel(request, info)
    h = request.path_params.get("h")
    if h:
        ex.image_path(h)
    method, seed, div = _render_args(request, layer, ex.model)
    base = f"/m/{ex.model.name}/{layer}" + (f"/img/{h}" if h else "")
    render_api = f"/api/render/{ex.model.name}/{layer}/{c}?method={method}&seed={seed}"
    table: list[tuple[str, Any]] = [("layer", layer), ("filter", c), ("method", method), ("seed", seed)]
    key = ex.render_key(layer, c, method, seed)
    hit = ex.cache.get(key)
    if hit is not None:
        r = hit.record
        table += [
            ("activation on start noise", f"{r['activation_before']:.4f}"),
            ("activation of render", f"{r['activation_after']:.4f}"),
            ("render time", f"{r.get('seconds', 0):.2f} s"),
        ]
    if hit is not None:
        table.append(("render settings", json.dumps(hit.record.get("settings"))))
    table.append(("cache key", key))
    if h:
        got = ex.maps(layer, h)
        if got is not None:
            rec, maps = got
            table += [("mean activation on the photo", f"{float(maps[c].astype('float32').mean()):.4f}")]
            for name in ("by_contribution", "by_mean"):
                rank = [r["channel"] for r in rec[name]]
                if c in rank:
                    table.append((f"rank {name.replace('_', ' ')}", rank.index(c) + 1))
    examples = []
    exm = store.load_json(ex.cache, ex.examples_key(layer))  # not there yet: the page's script starts it
    if exm is not None:
        vals = sorted(((row[c], n) for n, row in zip(exm["names"], exm["means"])), reverse=True)[:6]
        examples = [{"name": n, "value": v, "src": f"/photo/{ex.photo_hash.get(n, '')}.png"} for v, n in vals]
        if exm.get("units"):  # the filter's name, purity and score over the photos (jobs/names.py)
            table += name_rows(exm["units"][c], exm.get("scoring") or {})
    atlas_page = None
    if ex.atlas is not None and (ex.atlas / layer / channel_page(c)).is_file():
        atlas_page = f"/atlas/{layer}/{channel_page(c)}"
    relu = next((e.relu for e in ex.outline if e.name == layer), None)
    return ex.page(
        "filter.html",
        request=request,
        layer=layer,
        channel=c,
        channels=info.channels,
        h=h,
        base=base,
        render_api=render_api,
        diversity=div,
        table=table + ([("ends in a ReLU", f"{relu} (the render optimises its pre-activation)")] if relu else []),
        examples=examples,
        n_photos=len(exm["names"]) if exm else 36,
        atlas_page=atlas_page,
        circuit=_circuit_view(ex, request, layer, c),
        tuning=_tuning_view(ex, request, layer, c),
        unit_features=features.channel_features(ex, layer, c),
    )


# ---------------------------------------------------------------- concepts (issue 23)


def _concepts_job(ex: Explorer, request: Request, layer: str, k: int):
    """The key of a class's concepts over the current photo set, the finished result (or None) and a
    function that starts the job."""
    photos = ex.photo_set()
    set_hash = store.photo_set_hash([h for h, _ in photos])
    key = ex.concepts_key(layer, k, set_hash)

    def start():
        _, folder = store.photo_set_dir(ex.cache, photos)
        args = (str(folder), layer, k, ex.n_concepts, CONCEPT_SEED, ex.concept_crops)
        return submit(ex, request, key, "concepts", run_concepts, *args)

    return key, ex.concepts(key), start, len(photos)


def _concept_cards(ex: Explorer, layer: str, key: str, rec: dict, maps) -> list[dict]:
    """What the class page shows per concept: its record, crop and heatmap URLs, its strongest channels."""
    import numpy as np

    cards = []
    for c in rec["concepts"]:
        j = c["concept"]
        vec = np.asarray(c["vector"], dtype=np.float32)
        top = [int(i) for i in np.argsort(-np.abs(vec))[:3]]
        cards.append(
            {
                **c,
                "crops": [
                    {"url": f"/png/{k2}.png", "image": t["image"], "coefficient": t["coefficient"]}
                    for k2, t in zip(c["crop_keys"], c["top_crops"])
                ],
                "heat": [
                    {"url": f"/cmap/{key}/{r}/{j}.png", "photo": f"/m/{ex.model.name}/{layer}/img/{rec['images'][r]}"}
                    for r in c["heat_rows"]
                ],
                "channels": [{"channel": i, "weight": round(float(vec[i]), 3)} for i in top],
            }
        )
    return cards


def class_page(request: Request) -> Response:
    """A class's concepts over the server's photos (``jobs.concepts``: dictionary, importance, ablation,
    top crops, maps; renders on request)."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    k = ex.class_index(request)
    key, got, _, n_photos = _concepts_job(ex, request, layer, k)
    ctx: dict[str, Any] = {"rec": None, "cards": [], "renders": None}
    if got is not None:
        rec, maps = got
        ctx = {"rec": rec, "cards": _concept_cards(ex, layer, key, rec, maps)}
        rkeys = store.concept_render_keys(
            ex.model, layer, [c["vector"] for c in rec["concepts"]], DEFAULT_METHOD, CONCEPT_SEED
        )
        ctx["renders"] = [f"/png/{r}.png" for r in rkeys] if all(ex.cache.has(r) for r in rkeys) else None
    return ex.page(
        "class.html",
        request=request,
        layer=layer,
        k=k,
        class_name=ex.class_name(k),
        n_photos=n_photos,
        n_concepts=ex.n_concepts,
        api=f"/api/concepts/{ex.model.name}/{layer}/{k}",
        render_api=f"/api/concept-renders/{ex.model.name}/{layer}/{k}",
        key=key,
        **ctx,
    )


def api_concepts(request: Request) -> Response:
    """A class's concepts over the photo set: done, or the job's progress; POST starts it."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    k = ex.class_index(request)
    key, got, start, _ = _concepts_job(ex, request, layer, k)
    # retry_errors off: e.g. fewer photos than concepts is a refusal
    return cached_or_job(ex, request, key, got is not None, start, retry_errors=False)


def api_concept_renders(request: Request) -> Response:
    """The renders of a class's concepts (the default preset, render cache): done with their URLs, or the
    job's progress; POST starts it. The concepts must be computed first."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    k = ex.class_index(request)
    key, got, _, _ = _concepts_job(ex, request, layer, k)
    if got is None:
        raise HTTPException(404, "compute this class's concepts first")
    bank = [c["vector"] for c in got[0]["concepts"]]
    rkeys = store.concept_render_keys(ex.model, layer, bank, DEFAULT_METHOD, CONCEPT_SEED)
    job = store.result_key(ex.model, "concept-renders", concepts=key, method=DEFAULT_METHOD)[0]
    args = (layer, bank, DEFAULT_METHOD, CONCEPT_SEED)
    return render_job(
        ex, request, job, rkeys, lambda: submit(ex, request, job, "concept-renders", run_concept_renders, *args)
    )


def concept_map(request: Request) -> Response:
    """Where concept ``j`` sits on photo ``row`` of a concepts result: its coefficient map over the photo, on
    one scale for the concept over all photos (``norm=concept``) or for all concepts on this photo (``photo``)."""
    ex: Explorer = request.app.state.explorer
    key, row, j, side = (
        request.path_params["key"],
        request.path_params["row"],
        request.path_params["j"],
        _side(request, 96),
    )
    if not HEX64.match(key):
        raise HTTPException(404, "not a concepts key")
    got = ex.concepts(key)
    if got is None:
        raise HTTPException(404, "no such concepts result in the cache")
    rec, maps = got
    if not (0 <= row < maps.shape[0] and 0 <= j < maps.shape[1]):
        raise HTTPException(404, f"the result has photos 0-{maps.shape[0] - 1} and concepts 0-{maps.shape[1] - 1}")
    norm = request.query_params.get("norm", "concept")
    if norm not in ("concept", "photo"):
        raise HTTPException(400, "norm must be concept (one scale per concept over the photos) or photo")
    path = ex.image_path(rec["images"][row])
    vmax = float(maps[:, j].max()) if norm == "concept" else float(maps[row].max())
    pic = ex.memo(
        ("cmap", key, row, j, side, norm),
        lambda: compute.where_it_fires(load_image(path), ex.model, maps[row, j].astype("float32"), side, vmax),
    )
    return Response(pic, media_type="image/png", headers={"Cache-Control": "max-age=86400"})


def _photo_concepts(ex: Explorer, request: Request, layer: str, h: str, rec: dict) -> dict[str, Any]:
    """The explanation page's concepts: those of the photo's predicted class over the photo set, ordered by
    this photo's coefficients (summed over its map)."""
    k = int(rec["target_class"])
    key, got, _, _ = _concepts_job(ex, request, layer, k)
    out: dict[str, Any] = {"k": k, "class_name": ex.class_name(k), "api": f"/api/concepts/{ex.model.name}/{layer}/{k}"}
    out["url"] = f"/m/{ex.model.name}/{layer}/class/{k}"
    out["tiles"], out["done"], out["missing"] = [], got is not None, False
    if got is None:
        return out
    crec, maps = got
    if h not in crec["images"]:
        out["missing"] = True
        return out
    row = crec["images"].index(h)
    m = maps[row].astype("float32")  # concepts × h × w
    total = m.reshape(m.shape[0], -1).sum(1)
    for c in sorted(crec["concepts"], key=lambda c: -float(total[c["concept"]])):
        j = c["concept"]
        out["tiles"].append(
            {"concept": j, "label": c["label"], "importance": c["importance"], "coefficient": float(total[j]),
             "url": f"/cmap/{key}/{row}/{j}.png?norm=photo"}
        )  # fmt: skip
    return out


# ---------------------------------------------------------------- circuit and tuning (issue 24)


def _filter_jobs(ex: Explorer, request: Request, layer: str, c: int, kind: str):
    """The key, the finished record (or None) and a starter of a filter's circuit or tuning job, over the
    bundled and ``--images`` photos (not uploads: a filter's evidence stays put when someone uploads)."""
    photos = list(ex.photos.items())
    set_hash = store.photo_set_hash([h for h, _ in photos])
    # circuits: records listed by measured effect (issue 43) are not read from an older cache's records
    extra = {"order": "measured-effect"} if kind == "circuit" else {}
    key = store.result_key(ex.model, kind, layer=layer, channel=c, photo_set=set_hash, seed=0, **extra)[0]
    fig = store.result_key(ex.model, kind + "-figure", job=key)[0]

    def start():
        _, folder = store.photo_set_dir(ex.cache, photos)
        if kind == "circuit":
            return submit(ex, request, key, kind, run_circuit, layer, c, str(folder))
        return submit(ex, request, key, kind, run_tuning, layer, c, str(folder), 0, fig)

    return key, store.load_json(ex.cache, key), start


def _api_filter_job(request: Request, kind: str) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c = ex.channel(request, info)
    key, got, start = _filter_jobs(ex, request, layer, c, kind)
    # retry_errors off: e.g. a circuit of the first layer is a refusal
    return cached_or_job(ex, request, key, got is not None, start, retry_errors=False)


def api_circuit(request: Request) -> Response:
    """A filter's circuit (``jobs.circuit``): done, or the job's progress; POST starts it."""
    return _api_filter_job(request, "circuit")


def api_tuning(request: Request) -> Response:
    """A filter's tuning curves and description (``jobs.tuning``): done, or the job's progress; POST starts it."""
    return _api_filter_job(request, "tuning")


def _circuit_view(ex: Explorer, request: Request, layer: str, c: int) -> dict[str, Any]:
    """The filter page's circuit: the first inputs of ``circuit.json``'s order (measured effect, strongest
    first) with sign, effect, attribution and normalised expanded weight, their render (from the cache, or a
    render job) and a link to their own filter page; the expanded weights' agreement with the order."""
    key, rec, _ = _filter_jobs(ex, request, layer, c, "circuit")
    out: dict[str, Any] = {"api": f"/api/circuit/{ex.model.name}/{layer}/{c}", "rec": rec, "inputs": []}
    if rec is None:
        return out
    lin = rec.get("expanded_weights", {}).get("linearize", "identity")
    out["agree"] = rec.get("ranking", {}).get("weights_agreement", {}).get(lin)
    for i in rec["inputs"][: rec.get("top", 8)]:
        src, ch = i["layer"], i["channel"]
        live = src in ex.layer_names
        rkey = ex.render_key(src, ch, DEFAULT_METHOD, 0) if live else None
        out["inputs"].append(
            {
                **i,
                "url": f"/m/{ex.model.name}/{src}/f/{ch}" if live else None,
                "render": f"/png/{rkey}.png" if rkey and ex.cache.has(rkey) else None,
                "render_api": f"/api/render/{ex.model.name}/{src}/{ch}" if live else None,
            }
        )
    return out


def _tuning_view(ex: Explorer, request: Request, layer: str, c: int) -> dict[str, Any]:
    key, rec, _ = _filter_jobs(ex, request, layer, c, "tuning")
    out: dict[str, Any] = {"api": f"/api/tuning/{ex.model.name}/{layer}/{c}", "rec": rec}
    if rec is not None:
        out["figure"] = f"/png/{rec['figure']}.png" if ex.cache.has(rec["figure"]) else None
    return out


# ---------------------------------------------------------------- diff of two models (issue 46)


def _diff_job(ex: Explorer, request: Request):
    """The layer, B's layer, the key, the finished record (or None) and a starter of the diff of the explorer's
    model (A) against the second model (B) over the bundled and ``--images`` photos; 404 without a second
    model or for a layer either model lacks."""
    from ..outputs.cache import model_key
    from .workers import DIFF_TILES, DIFF_UNITS

    if ex.model_b is None:
        raise HTTPException(404, "this server has no second model (start it with --model-b)")
    layer, _ = ex.check(request)
    layer_b = ex.layer_b(request, layer)
    photos = list(ex.photos.items())
    set_hash = store.photo_set_hash([h for h, _ in photos])
    key = store.result_key(
        ex.model, "diff", model_b=model_key(ex.model_b), layer=layer, layer_b=layer_b, photo_set=set_hash,
        units=DIFF_UNITS, tiles=DIFF_TILES,
    )[0]  # fmt: skip

    def start():
        _, folder = store.photo_set_dir(ex.cache, photos)
        out = ex.cache.root / "results" / "diff" / key  # the job's run folder (diff.json, figure, report)
        args = (ex.model_b_bytes(), ex.model_b.code, str(folder), layer, layer_b, str(out))
        return submit(ex, request, key, "diff", run_diff, *args)

    return layer, layer_b, key, store.load_json(ex.cache, key), start


def diff_page(request: Request) -> Response:
    """The diff of the two models at a layer: the classes whose predictions move most, then the units of B most
    changed first with their match in A, r and top exemplars in both (``jobs.diff``)."""
    ex: Explorer = request.app.state.explorer
    layer, layer_b, key, rec, _ = _diff_job(ex, request)
    units = []
    if rec is not None:
        for u in [u for u in rec["units"] if "tiles_b" in u]:
            a = u["partner"] if u["partner"] is not None else u["best"]
            units.append(
                {
                    **u,
                    "shown_a": a,
                    "url_a": f"/m/{ex.model.name}/{layer}/f/{a}" if a is not None else None,
                    "crops_b": [f"/png/{k}.png" for k in u["tiles_b"]],
                    "crops_a": [f"/png/{k}.png" for k in u.get("tiles_a", [])],
                }
            )
    q = f"?layer_b={layer_b}"
    return ex.page(
        "diff.html",
        request=request,
        layer=layer,
        layer_b=layer_b,
        model_b=ex.model_b.name,
        n_photos=len(ex.photos),
        api=f"/api/diff/{ex.model.name}/{layer}{q}",
        rec=rec,
        units=units,
        key=key,
    )


def api_diff(request: Request) -> Response:
    """The diff of the two models at a layer: done, or the job's progress; POST starts it."""
    ex: Explorer = request.app.state.explorer
    _, _, key, rec, start = _diff_job(ex, request)
    # retry_errors off: a layer whose maps cannot be compared is a refusal
    return cached_or_job(ex, request, key, rec is not None, start, retry_errors=False)


def atlas_channel(request: Request) -> Response:
    """An atlas channel page with a link to the same filter in the explorer."""
    ex: Explorer = request.app.state.explorer
    layer, name = request.path_params["layer"], request.path_params["page"]
    m = re.fullmatch(r"channel_([0-9]{4,9})\.html", name)
    if ex.atlas is None or layer not in ex.layer_names or m is None:
        raise HTTPException(404, "no such atlas page")
    path = ex.atlas / layer / name
    if not path.is_file():
        raise HTTPException(404, "no such atlas page")
    link = f'<p class="live"><a href="/m/{ex.model.name}/{layer}/f/{int(m.group(1))}">open in the live explorer</a></p>'
    html = path.read_text().replace("<main>", "<main>\n" + link, 1)
    return HTMLResponse(html)


def static(request: Request) -> Response:
    """The stylesheet the explorer shares with the atlas and the explorer's script. ``serve.css`` (the
    explorer's stylesheet before there was one for both) answers the same sheet, for pages still open in a
    browser from an earlier version."""
    from importlib import resources

    name = request.path_params["name"]
    if name in ("style.css", "serve.css"):
        return Response(stylesheet(), media_type="text/css")
    if name == "live.js":
        js = resources.files("filterscope.serve").joinpath("templates/live.js").read_bytes()
        return Response(js, media_type="text/javascript")
    raise HTTPException(404, "no such file")


# ---------------------------------------------------------------- the map of a layer (issue 45)

MAP_GRID, CLASS_MAP_GRID, MAP_SEED = 12, 6, 0  # a class keeps few of the photos: a coarser grid
MAP_FILE = re.compile(r"^(map\.png|[A-Za-z0-9_.\-]+/cell_[0-9]{4}\.png)$")


def _map_job(ex: Explorer, request: Request, layer: str, k: int | None):
    """The map job of ``layer`` (or of class ``k``) over the current photo set: its key, its summary and
    ``map.json`` when finished (else ``None``), a function that starts it, and the number of photos."""
    photos = ex.photo_set()
    set_hash = store.photo_set_hash([h for h, _ in photos])
    grid = MAP_GRID if k is None else CLASS_MAP_GRID
    key = store.result_key(ex.model, "map", layer=layer, target_class=k, photo_set=set_hash, grid=grid, seed=MAP_SEED)[
        0
    ]
    out = ex.cache.root / "results" / "maps" / key  # under results: "cache clear" removes it

    def start():
        _, folder = store.photo_set_dir(ex.cache, photos)
        return submit(ex, request, key, "map", run_map, str(folder), layer, k, grid, MAP_SEED, str(out))

    got = store.load_json(ex.cache, key)
    rec = None
    if got is not None:
        try:
            rec = json.loads((out / "map.json").read_text())
        except (OSError, ValueError):
            got = None
    return key, got, rec, start, len(photos)


def _map_base(ex: Explorer, layer: str, k: int | None) -> str:
    return f"/m/{ex.model.name}/{layer}" + (f"/class/{k}" if k is not None else "")


def _map_cells(ex: Explorer, key: str, got: dict, rec: dict, base: str) -> list[dict]:
    out = []
    for c in rec["cells"]:
        n = c["i"] * rec["grid"] + c["j"]
        crops = [f"/png/{x}.png" for x in got["crop_keys"].get(str(n), [])]
        out.append(
            {
                **c,
                "k": n,
                "url": f"{base}/map/cell/{n}",
                "render_url": f"/mapfile/{key}/{c['render']}" if c["render"] else None,
                "crops": [{**e, "url": u, "hash": Path(e["image"]).stem} for e, u in zip(c["top"], crops)],
            }
        )
    return out


def map_page(request: Request) -> Response:
    """The map of a layer (or of one class's photos) over the server's photos: ``jobs.activation_map`` run
    once as a job with progress; the rendered grid to pan and zoom, a cell's name and exemplars on hover."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    k = ex.class_index(request) if "k" in request.path_params else None
    key, got, rec, _, n_photos = _map_job(ex, request, layer, k)
    base = _map_base(ex, layer, k)
    cells = _map_cells(ex, key, got, rec, base) if rec is not None else []
    return ex.page(
        "map.html",
        request=request,
        layer=layer,
        k=k,
        class_name=ex.class_name(k) if k is not None else None,
        n_photos=n_photos,
        rec=rec,
        cells=cells,
        map_png=f"/mapfile/{key}/map.png",
        api=f"/api/map/{ex.model.name}/{layer}" + (f"/{k}" if k is not None else ""),
        grid=rec["grid"] if rec else (MAP_GRID if k is None else CLASS_MAP_GRID),
    )


def map_cell_page(request: Request) -> Response:
    """One cell of a map: its render, its exemplars (each opening its photo's page), its class, name, the
    channels nearest its direction (each opening its filter page) and, when the layer's dictionary is
    computed, the features nearest it."""
    from . import features

    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    k = ex.class_index(request) if "k" in request.path_params else None
    key, got, rec, _, _ = _map_job(ex, request, layer, k)
    base = _map_base(ex, layer, k)
    if rec is None:
        return RedirectResponse(f"{base}/map", status_code=303)
    n = request.path_params["c"]
    cell = next((c for c in _map_cells(ex, key, got, rec, base) if c["k"] == n), None)
    if cell is None:
        raise HTTPException(404, f"the map has no drawn cell {n}")
    name = ex.class_name(k) if k is not None else None
    near = features.cell_features(ex, layer, Path(got["run"]), cell["i"], cell["j"])
    return ex.page(
        "map_cell.html", request=request, layer=layer, k=k, class_name=name, cell=cell, rec=rec, base=base,
        cell_features=near, features_url=f"/m/{ex.model.name}/{layer}/features",
    )  # fmt: skip


def api_map(request: Request) -> Response:
    """The map job: done, or its progress; POST starts it (a cancelled one resumes its renders)."""
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    k = ex.class_index(request) if "k" in request.path_params else None
    key, got, _, start, _ = _map_job(ex, request, layer, k)
    # retry_errors off: e.g. a class no photo is predicted as is a refusal
    return cached_or_job(ex, request, key, got is not None, start, retry_errors=False)


def map_file(request: Request) -> Response:
    """``map.png`` or a cell render of a finished map run (nothing else of the run folder)."""
    ex: Explorer = request.app.state.explorer
    return run_file(ex, "maps", request.path_params["key"], request.path_params["path"], MAP_FILE, "map file")


def go_map(request: Request) -> Response:
    """The home page's map form: to ``/m/<model>/<layer>/map``."""
    ex: Explorer = request.app.state.explorer
    layer = request.query_params.get("layer", ex.default_layer)
    if layer not in ex.layer_names:
        raise HTTPException(400, f"{ex.model.name} has no layer {layer!r} with filters")
    return RedirectResponse(f"/m/{ex.model.name}/{layer}/map", status_code=303)


API = ["GET", "POST"]  # GET reports a job, POST starts it


def create_app(explorer: Explorer, access: Access | None = None) -> Starlette:
    """The Starlette application for ``explorer``, behind the guard ``access`` (by default: loopback names on
    any port, the explorer's token, a fresh signing secret)."""
    from . import features  # the feature browser (serve/features.py imports this module)

    access = access or Access(token=explorer.token)
    routes = [
        Route("/", home),
        Route("/go", go),
        Route("/class", go_class),
        Route("/diff", go_diff),
        Route("/upload", upload, methods=["POST"]),
        Route("/m/{model}/{layer}/img/{h}", explain_page),
        Route("/m/{model}/{layer}/img/{h}/f/{c:idx}", filter_page),
        Route("/m/{model}/{layer}/f/{c:idx}", filter_page),
        Route("/api/explain/{model}/{layer}/{h}", api_explain, methods=API),
        Route("/api/examples/{model}/{layer}", api_examples, methods=API),
        Route("/api/render/{model}/{layer}/{c:idx}", api_render, methods=API),
        Route("/api/accent/{model}/{layer}/{h}/{c:idx}", api_accent, methods=API),
        Route("/m/{model}/{layer}/class/{k:idx}", class_page),
        Route("/api/concepts/{model}/{layer}/{k:idx}", api_concepts, methods=API),
        Route("/api/concept-renders/{model}/{layer}/{k:idx}", api_concept_renders, methods=API),
        Route("/cmap/{key}/{row:idx}/{j:idx}.png", concept_map),
        Route("/mapgo", go_map),
        Route("/m/{model}/{layer}/map", map_page),
        Route("/m/{model}/{layer}/map/cell/{c:idx}", map_cell_page),
        Route("/m/{model}/{layer}/class/{k:idx}/map", map_page),
        Route("/m/{model}/{layer}/class/{k:idx}/map/cell/{c:idx}", map_cell_page),
        Route("/api/map/{model}/{layer}", api_map, methods=API),
        Route("/api/map/{model}/{layer}/{k:idx}", api_map, methods=API),
        Route("/mapfile/{key}/{path:path}", map_file),
        Route("/api/circuit/{model}/{layer}/{c:idx}", api_circuit, methods=API),
        Route("/api/tuning/{model}/{layer}/{c:idx}", api_tuning, methods=API),
        Route("/m/{model}/{layer}/diff", diff_page),
        Route("/api/diff/{model}/{layer}", api_diff, methods=API),
        Route("/png/{key}.png", png),
        Route("/photo/{h}.png", photo),
        Route("/where/{model}/{layer}/{h}/{c:idx}.png", where),
        Route("/static/{name}", static),
        *features.routes(),
    ]
    if explorer.atlas is not None:
        routes += [
            Route("/atlas/{layer}/{page}", atlas_channel),
            Mount("/atlas", StaticFiles(directory=str(explorer.atlas), html=True)),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, access=access)],
        exception_handlers={HTTPException: _error_page, 500: _error_page},
    )
    app.state.explorer = explorer
    app.state.access = access
    return app


def create_static_app(directory: str | Path, access: Access | None = None) -> Starlette:
    """A built atlas as static files (Starlette's ``StaticFiles``: no directory listing, no path out of the
    folder) behind the same guard as the live explorer."""
    from starlette.responses import PlainTextResponse

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return PlainTextResponse(f"{status} {getattr(exc, 'detail', '') or 'error'}\n", status_code=status)

    app = Starlette(
        routes=[Mount("/", StaticFiles(directory=str(directory), html=True))],
        middleware=[Middleware(Guard, access=access or Access(), clients=False)],
        exception_handlers={HTTPException: not_found, 500: not_found},
    )
    app.state.access = access
    return app
