"""The live explorer: a Starlette app over the render cache and a pool of render workers.

Every page has a stable URL made of the model, the layer, the photo's sha256 and the filter:
``/m/<model>/<layer>/img/<sha256>`` (the explanation), ``…/f/<channel>`` (a filter with that photo),
``/m/<model>/<layer>/f/<channel>`` (a filter alone). Progress is polled from small JSON endpoints
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
import threading
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import FilterscopeError
from ..models.inputs import decode_image, list_images, load_image, sample_image_path, sample_photos_dir
from ..models.layers import default_layer, get_layer, layer_outline, list_layers
from ..optvis.presets import DEFAULT_METHOD
from ..outputs.cache import RenderCache
from ..outputs.naming import channel_page
from ..version import __version__
from . import compute, store
from .guard import Access, Guard
from .jobs import JobManager, TooManyJobs, run_accent, run_examples, run_explanation, run_render

MAX_UPLOAD = 20 * 1024 * 1024
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Explorer:
    """The app's state: the model, the cache, the jobs, the bundled photos and the optional atlas."""

    def __init__(
        self,
        model,
        cache: RenderCache,
        *,
        workers: int = 2,
        atlas: str | Path | None = None,
        token: str | None = None,
        per_client: int = 4,
        max_jobs: int = 16,
        jobs: JobManager | None = None,
        upload_quota: int = store.UPLOAD_QUOTA,
        upload_max_age: float = store.UPLOAD_MAX_AGE,
    ):
        self.model = model
        self.cache = cache
        self.atlas = Path(atlas) if atlas else None
        self.token = token
        self.layers = [i for i in list_layers(model) if i.spatial]
        self.layer_names = {i.name for i in self.layers}
        self.default_layer = default_layer(model)
        self.upload_quota, self.upload_max_age = upload_quota, upload_max_age
        self.outline = [e for e in layer_outline(model) if e.info.spatial]
        self.jobs = jobs or JobManager(model, workers, cache.root, per_client=per_client, max_jobs=max_jobs)
        self.photos: dict[str, Path] = {}
        for p in [sample_image_path(), *list_images(sample_photos_dir())]:
            self.photos.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), p)
        self.photo_hash = {p.name: h for h, p in self.photos.items()}
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("filterscope.serve", "templates"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
        )
        self._thumbs: dict[tuple, bytes] = {}
        self._maps: dict[str, Any] = {}
        self._lock = threading.Lock()  # the two memos above, read and written from the thread pool

    # -- helpers
    def page(self, name: str, code: int = 200, request: Request | None = None, **ctx: Any) -> HTMLResponse:
        state = request.scope.get("state", {}) if request is not None else {}
        base = {
            "csrf": state.get("fs_csrf", ""),
            "model_name": self.model.name,
            "version": __version__,
            "cache_dir": str(self.cache.root),
            "atlas": self.atlas is not None,
        }
        return HTMLResponse(self.env.get_template(name).render(**base, **ctx), status_code=code)

    def check(self, request: Request) -> tuple[str, Any]:
        p = request.path_params
        if p.get("model") != self.model.name:
            raise HTTPException(404, f"this server explores {self.model.name}, not {p.get('model')!r}")
        layer = p.get("layer")
        if layer not in self.layer_names:
            raise HTTPException(404, f"{self.model.name} has no layer {layer!r} with filters")
        return layer, get_layer(self.model, layer)

    def channel(self, request: Request, info) -> int:
        c = request.path_params["c"]
        if not 0 <= c < info.channels:
            raise HTTPException(404, f"{info.name} has filters 0-{info.channels - 1}, not {c}")
        return c

    def image_path(self, h: str) -> Path:
        if not HEX64.match(h):
            raise HTTPException(404, "a photo is named by the 64 hex digits of its sha256")
        if h in self.photos:
            return self.photos[h]
        path = store.upload_path(self.cache, h)
        if not path.is_file():
            raise HTTPException(404, "no such photo here (upload it again)")
        return path

    def client(self, request: Request) -> str:
        """The id the job caps count against: the signed client id, or ``anon:<address>`` (see guard.py)."""
        cid = request.scope.get("state", {}).get("fs_client")
        return cid or f"anon:{request.client.host if request.client else '?'}"

    def render_key(self, layer: str, c: int, method: str, seed: int) -> str:
        from ..jobs.stream import unit_objective
        from ..optvis.presets import get_preset
        from ..outputs.cache import render_key

        info = get_layer(self.model, layer)
        return render_key(self.model, unit_objective(info, c), get_preset(method), seed, layer=layer)[0]

    def explanation_key(self, layer: str, h: str) -> str:
        return store.result_key(self.model, "explanation", image_sha256=h, layer=layer)[0]

    def accent_keys(self, layer: str, h: str, c: int) -> tuple[str, str]:
        """Cache keys of a filter's accentuation of a photo and of its change map."""
        return tuple(
            store.result_key(self.model, "accentuation", image_sha256=h, layer=layer, channel=c, picture=p)[0]
            for p in ("accentuation", "change")
        )

    def examples_key(self, layer: str) -> str:
        return store.result_key(self.model, "examples", photos="bundled", layer=layer)[0]

    def maps(self, layer: str, h: str):
        key = self.explanation_key(layer, h)
        with self._lock:
            got = self._maps.get(key)
        if got is None:
            got = store.load_explanation(self.cache, key)
            if got is None:
                return None
            with self._lock:
                if len(self._maps) > 64:
                    self._maps.pop(next(iter(self._maps)))
                self._maps[key] = got
        return got

    def memo(self, key: tuple, make) -> bytes:
        """A small picture made once (thumbnails, maps): at most 512 kept, the oldest dropped first."""
        with self._lock:
            got = self._thumbs.get(key)
        if got is None:
            got = make()
            with self._lock:
                if len(self._thumbs) > 512:
                    self._thumbs.pop(next(iter(self._thumbs)))
                self._thumbs[key] = got
        return got

    def picker(self) -> dict[str, Any]:
        """The layer picker: stage and block outputs (default marked), and every module grouped by block."""
        short = [e for e in self.outline if e.primary and not e.duplicate]

        def row(e) -> dict:
            return {"name": e.name, "shape": e.info.shape_str(), "relu": bool(e.relu), "same_as": e.same_as}

        inner: dict[str, list] = {}
        for e in self.outline:
            if e.parent is not None:
                inner.setdefault(e.parent, []).append(row(e))
        groups = [{"head": row(e), "inner": inner.get(e.name, [])} for e in self.outline if e.primary]
        return {"layers": [row(e) for e in short], "groups": groups, "n_all": len(self.outline)}


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
    ex: Explorer = request.app.state.explorer
    photos = [{"hash": h, "name": p.name} for h, p in ex.photos.items()]
    return ex.page(
        "home.html",
        request=request,
        photos=photos,
        default_layer=ex.default_layer,
        max_mb=MAX_UPLOAD // 2**20,
        **ex.picker(),
    )


def go(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    h, layer = request.query_params.get("photo", ""), request.query_params.get("layer", ex.default_layer)
    ex.image_path(h)
    if layer not in ex.layer_names:
        raise HTTPException(400, f"{ex.model.name} has no layer {layer!r} with filters")
    return RedirectResponse(f"/m/{ex.model.name}/{layer}/img/{h}", status_code=303)


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
    return ex.page("explain.html", request=request, layer=layer, h=h, ex=got[0] if got else None, base=base)


def _submit(ex: Explorer, request: Request, key: str, kind: str, fn, *args):
    try:
        return ex.jobs.submit(key, kind, ex.client(request), fn, *args)
    except TooManyJobs as e:
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None


def _not_started(key: str) -> JSONResponse:
    return JSONResponse({"id": key, "state": "none", "progress": None, "error": "not started (POST to start it)"})


def _job(request: Request, key: str, start) -> dict | None:
    """The job's status; a POST starts it first when it is not running (or stopped: cancelled, failed, or
    done but no longer in the cache)."""
    ex: Explorer = request.app.state.explorer
    st = ex.jobs.status(key, ex.client(request))
    if request.method == "POST" and (st is None or st["state"] in ("cancelled", "done", "error")):
        start()
        st = ex.jobs.status(key, ex.client(request))
    return st


def api_explain(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    h = request.path_params["h"]
    path = ex.image_path(h)
    key = ex.explanation_key(layer, h)
    if ex.maps(layer, h) is not None:
        return JSONResponse({"id": key, "state": "done", "cached": True, "urls": []})
    st = _job(request, key, lambda: _submit(ex, request, key, "explanation", run_explanation, str(path), layer))
    return JSONResponse(st) if st else _not_started(key)


def api_examples(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    key = ex.examples_key(layer)
    if store.load_json(ex.cache, key) is not None:
        return JSONResponse({"id": key, "state": "done", "cached": True, "urls": []})
    st = _job(request, key, lambda: _submit(ex, request, key, "examples", run_examples, layer))
    return JSONResponse(st) if st else _not_started(key)


def _render_args(request: Request) -> tuple[str, int, int]:
    from ..optvis.presets import PRESETS

    q = request.query_params
    method = q.get("method", DEFAULT_METHOD)
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
    method, seed, div = _render_args(request)
    if div:
        key, keys, _ = store.diversity_keys(ex.model, layer, c, method, seed, div)
    else:
        key = ex.render_key(layer, c, method, seed)
        keys = [key]
    urls = [f"/png/{k}.png" for k in keys]
    if all(ex.cache.has(k) for k in keys):
        st = ex.jobs.status(key, ex.client(request))
        if st is not None and st["state"] == "done":  # rendered by this server just now, not read from the cache
            return JSONResponse({**st, "cached": False, "urls": urls})
        return JSONResponse({"id": key, "state": "done", "cached": True, "urls": urls})
    st = _job(request, key, lambda: _submit(ex, request, key, "render", run_render, layer, c, method, seed, div))
    if st is None:
        return _not_started(key)
    if st["state"] == "done":
        st = {**st, "cached": False, "urls": urls}
    return JSONResponse(st)


def api_accent(request: Request) -> Response:
    """A filter's accentuation of a photo: done with the two picture URLs, or the job's progress; POST
    starts it."""
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c, h = ex.channel(request, info), request.path_params["h"]
    path = ex.image_path(h)
    keys = ex.accent_keys(layer, h, c)
    urls = [f"/png/{k}.png" for k in keys]
    if all(ex.cache.has(k) for k in keys):
        st = ex.jobs.status(keys[0], ex.client(request))
        rec = ex.cache.get(keys[0]).record
        done = {"gain": rec.get("gain"), "ssim": rec.get("ssim"), "urls": urls}
        if st is not None and st["state"] == "done":  # computed by this server just now
            return JSONResponse({**st, "cached": False, **done})
        return JSONResponse({"id": keys[0], "state": "done", "cached": True, **done})
    st = _job(
        request,
        keys[0],
        lambda: _submit(ex, request, keys[0], "accentuation", run_accent, str(path), layer, c, keys),
    )
    if st is None:
        return _not_started(keys[0])
    if st["state"] == "done":
        st = {**st, "cached": False, "urls": urls}
    return JSONResponse(st)


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
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c = ex.channel(request, info)
    h = request.path_params.get("h")
    if h:
        ex.image_path(h)
    method, seed, div = _render_args(request)
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
        examples = [{"name": n, "value": v, "hash": ex.photo_hash.get(n, "")} for v, n in vals]
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
    )


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
    from importlib import resources

    name = request.path_params["name"]
    where = {
        "style.css": ("filterscope.outputs", "templates/style.css"),
        "serve.css": ("filterscope.serve", "templates/serve.css"),
    }
    if name not in where:
        raise HTTPException(404, "no such file")
    pkg, rel = where[name]
    return Response(resources.files(pkg).joinpath(rel).read_bytes(), media_type="text/css")


API = ["GET", "POST"]  # GET reports a job, POST starts it


def create_app(explorer: Explorer, access: Access | None = None) -> Starlette:
    """The Starlette application for ``explorer``, behind the guard ``access`` (by default: loopback names on
    any port, the explorer's token, a fresh signing secret)."""
    access = access or Access(token=explorer.token)
    routes = [
        Route("/", home),
        Route("/go", go),
        Route("/upload", upload, methods=["POST"]),
        Route("/m/{model}/{layer}/img/{h}", explain_page),
        Route("/m/{model}/{layer}/img/{h}/f/{c:int}", filter_page),
        Route("/m/{model}/{layer}/f/{c:int}", filter_page),
        Route("/api/explain/{model}/{layer}/{h}", api_explain, methods=API),
        Route("/api/examples/{model}/{layer}", api_examples, methods=API),
        Route("/api/render/{model}/{layer}/{c:int}", api_render, methods=API),
        Route("/api/accent/{model}/{layer}/{h}/{c:int}", api_accent, methods=API),
        Route("/png/{key}.png", png),
        Route("/photo/{h}.png", photo),
        Route("/where/{model}/{layer}/{h}/{c:int}.png", where),
        Route("/static/{name}", static),
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
