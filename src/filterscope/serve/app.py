"""The live explorer: a Starlette app over the render cache and a pool of render workers.

Every page has a stable URL made of the model, the layer, the photo's sha256 and the filter:
``/m/<model>/<layer>/img/<sha256>`` (the explanation), ``…/f/<channel>`` (a filter with that photo),
``/m/<model>/<layer>/f/<channel>`` (a filter alone). Progress is polled from small JSON endpoints
(``/api/…``). Path parameters are checked against the model's layers, a 64-hex-digit hash or a channel
range, so no URL names a file; the atlas is served by Starlette's ``StaticFiles`` (which refuses paths that
leave its folder).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import FilterscopeError
from ..models.inputs import decode_image, list_images, load_image, sample_image_path, sample_photos_dir
from ..models.layers import default_layer, get_layer, list_layers
from ..optvis.presets import DEFAULT_METHOD
from ..outputs.cache import RenderCache
from ..outputs.naming import channel_page
from ..version import __version__
from . import compute, store
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
        jobs: JobManager | None = None,
    ):
        self.model = model
        self.cache = cache
        self.atlas = Path(atlas) if atlas else None
        self.token = token
        self.layers = [i for i in list_layers(model) if i.spatial]
        self.layer_names = {i.name for i in self.layers}
        self.default_layer = default_layer(model)
        self.jobs = jobs or JobManager(model, workers, cache.root, per_client=per_client)
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

    # -- helpers
    def page(self, name: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        base = {
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
        return request.cookies.get("fs_client") or (request.client.host if request.client else "?")

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
        if key not in self._maps:
            got = store.load_explanation(self.cache, key)
            if got is None:
                return None
            if len(self._maps) > 64:
                self._maps.pop(next(iter(self._maps)))
            self._maps[key] = got
        return self._maps[key]


def _error_page(request: Request, exc: Exception) -> Response:
    ex: Explorer = request.app.state.explorer
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or str(exc)
    titles = {400: "Bad request", 403: "Forbidden", 404: "Not found", 413: "Too large", 429: "Too many jobs"}
    if request.url.path.startswith("/api/"):
        return JSONResponse({"state": "error", "error": detail}, status_code=status)
    return ex.page("error.html", status, status=status, title=titles.get(status, "Error"), message=detail)


# ---------------------------------------------------------------- routes


async def home(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    photos = [{"hash": h, "name": p.name} for h, p in ex.photos.items()]
    layers = [{"name": i.name, "shape": i.shape_str()} for i in ex.layers]
    return ex.page(
        "home.html", photos=photos, layers=layers, default_layer=ex.default_layer, max_mb=MAX_UPLOAD // 2**20
    )


async def go(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    h, layer = request.query_params.get("photo", ""), request.query_params.get("layer", ex.default_layer)
    ex.image_path(h)
    if layer not in ex.layer_names:
        raise HTTPException(400, f"{ex.model.name} has no layer {layer!r} with filters")
    return RedirectResponse(f"/m/{ex.model.name}/{layer}/img/{h}", status_code=303)


async def upload(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_UPLOAD + 65536:
        raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD // 2**20} MB")
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_UPLOAD)
    except HTTPException:
        raise
    except Exception as e:  # malformed multipart
        raise HTTPException(400, f"cannot read the upload: {' '.join(str(e).split())[:120]}") from None
    f = form.get("file")
    layer = str(form.get("layer") or ex.default_layer)
    if f is None or isinstance(f, str):
        raise HTTPException(400, "no file in the upload (field 'file')")
    data = await f.read()
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD // 2**20} MB")
    if layer not in ex.layer_names:
        raise HTTPException(400, f"{ex.model.name} has no layer {layer!r} with filters")
    try:
        decode_image(data, "the upload")  # size caps, decompression-bomb guard, broken files
    except FilterscopeError as e:
        raise HTTPException(400, e.message) from None
    h = store.store_upload(ex.cache, data)
    return RedirectResponse(f"/m/{ex.model.name}/{layer}/img/{h}", status_code=303)


async def explain_page(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    h = request.path_params["h"]
    path = ex.image_path(h)
    key = ex.explanation_key(layer, h)
    got = ex.maps(layer, h)
    if got is None:
        _submit(ex, request, key, "explanation", run_explanation, str(path), layer)
    base = f"/m/{ex.model.name}/{layer}/img/{h}"
    return ex.page("explain.html", layer=layer, h=h, ex=got[0] if got else None, base=base)


def _submit(ex: Explorer, request: Request, key: str, kind: str, fn, *args):
    try:
        return ex.jobs.submit(key, kind, ex.client(request), fn, *args)
    except TooManyJobs as e:
        raise HTTPException(429, str(e)) from None


async def api_explain(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    h = request.path_params["h"]
    path = ex.image_path(h)
    key = ex.explanation_key(layer, h)
    if ex.maps(layer, h) is not None:
        return JSONResponse({"id": key, "state": "done", "cached": True, "urls": []})
    st = ex.jobs.status(key, ex.client(request))
    if st is None or st["state"] in ("cancelled", "error") and request.query_params.get("retry"):
        _submit(ex, request, key, "explanation", run_explanation, str(path), layer)
        st = ex.jobs.status(key, ex.client(request))
    return JSONResponse(st, status_code=500 if st["state"] == "error" else 200)


async def api_examples(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, _ = ex.check(request)
    key = ex.examples_key(layer)
    if store.load_json(ex.cache, key) is not None:
        return JSONResponse({"id": key, "state": "done", "cached": True, "urls": []})
    st = (
        ex.jobs.status(key, ex.client(request))
        or _submit(ex, request, key, "examples", run_examples, layer)
        and (ex.jobs.status(key, ex.client(request)))
    )
    return JSONResponse(st)


def _render_args(request: Request) -> tuple[str, int, int]:
    from ..optvis.presets import PRESETS

    q = request.query_params
    method = q.get("method", DEFAULT_METHOD)
    if method not in PRESETS:
        raise HTTPException(400, f"unknown method {method!r}; use one of {', '.join(PRESETS)}")
    try:
        seed, div = int(q.get("seed", "0")), int(q.get("diversity", "0"))
    except ValueError:
        raise HTTPException(400, "seed and diversity must be whole numbers") from None
    if not (0 <= seed < 2**31 and (div == 0 or 2 <= div <= 8)):
        raise HTTPException(400, "seed must be ≥ 0 and diversity 0 or 2-8")
    return method, seed, div


async def api_render(request: Request) -> Response:
    """A filter's render (or its diversity variants): done with the picture URLs, or the job's progress."""
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c = ex.channel(request, info)
    method, seed, div = _render_args(request)
    if div:
        key, keys, _ = store.diversity_keys(ex.model, layer, c, method, seed, div)
    else:
        key = ex.render_key(layer, c, method, seed)
        keys = [key]
    st = ex.jobs.status(key, ex.client(request))
    if all(ex.cache.has(k) for k in keys):
        urls = [f"/png/{k}.png" for k in keys]
        if st is not None and st["state"] == "done":  # rendered by this server just now, not read from the cache
            return JSONResponse({**st, "cached": False, "urls": urls})
        return JSONResponse({"id": key, "state": "done", "cached": True, "urls": urls})
    if st is None or st["state"] in ("cancelled", "done"):  # done but not in the cache: cleared meanwhile
        _submit(ex, request, key, "render", run_render, layer, c, method, seed, div)
        st = ex.jobs.status(key, ex.client(request))
    if st["state"] == "done":
        st = {**st, "cached": False, "urls": [f"/png/{k}.png" for k in keys]}
    return JSONResponse(st, status_code=500 if st["state"] == "error" else 200)


async def api_accent(request: Request) -> Response:
    """A filter's accentuation of a photo: done with the two picture URLs, or the job's progress."""
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c, h = ex.channel(request, info), request.path_params["h"]
    path = ex.image_path(h)
    keys = ex.accent_keys(layer, h, c)
    st = ex.jobs.status(keys[0], ex.client(request))
    if all(ex.cache.has(k) for k in keys):
        rec = ex.cache.get(keys[0]).record
        done = {"gain": rec.get("gain"), "ssim": rec.get("ssim"), "urls": [f"/png/{k}.png" for k in keys]}
        if st is not None and st["state"] == "done":  # computed by this server just now
            return JSONResponse({**st, "cached": False, **done})
        return JSONResponse({"id": keys[0], "state": "done", "cached": True, **done})
    if st is None or st["state"] in ("cancelled", "done"):
        _submit(ex, request, keys[0], "accentuation", run_accent, str(path), layer, c, keys)
        st = ex.jobs.status(keys[0], ex.client(request))
    if st["state"] == "done":
        st = {**st, "cached": False, "urls": [f"/png/{k}.png" for k in keys]}
    return JSONResponse(st, status_code=500 if st["state"] == "error" else 200)


async def png(request: Request) -> Response:
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
    if not s.isdigit() or not 32 <= int(s) <= 512:
        raise HTTPException(400, "side must be 32-512")
    return int(s)


async def photo(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    h, side = request.path_params["h"], _side(request, 128)
    path = ex.image_path(h)
    k = (h, side)
    if k not in ex._thumbs:
        if len(ex._thumbs) > 512:
            ex._thumbs.pop(next(iter(ex._thumbs)))
        ex._thumbs[k] = compute.thumbnail(path, ex.model, side)
    return Response(ex._thumbs[k], media_type="image/png", headers={"Cache-Control": "max-age=86400"})


async def where(request: Request) -> Response:
    ex: Explorer = request.app.state.explorer
    layer, info = ex.check(request)
    c, h, side = ex.channel(request, info), request.path_params["h"], _side(request, 96)
    path = ex.image_path(h)
    got = ex.maps(layer, h)
    if got is None:
        raise HTTPException(404, "explain this photo first")
    k = (layer, h, c, side)
    if k not in ex._thumbs:
        if len(ex._thumbs) > 512:
            ex._thumbs.pop(next(iter(ex._thumbs)))
        ex._thumbs[k] = compute.where_it_fires(load_image(path), ex.model, got[1][c], side)
    return Response(ex._thumbs[k], media_type="image/png", headers={"Cache-Control": "max-age=86400"})


async def filter_page(request: Request) -> Response:
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
    exm = store.load_json(ex.cache, ex.examples_key(layer))
    if exm is None:
        _submit(ex, request, ex.examples_key(layer), "examples", run_examples, layer)
    else:
        vals = sorted(((row[c], n) for n, row in zip(exm["names"], exm["means"])), reverse=True)[:6]
        examples = [{"name": n, "value": v, "hash": ex.photo_hash.get(n, "")} for v, n in vals]
    atlas_page = None
    if ex.atlas is not None and (ex.atlas / layer / channel_page(c)).is_file():
        atlas_page = f"/atlas/{layer}/{channel_page(c)}"
    return ex.page(
        "filter.html",
        layer=layer,
        channel=c,
        channels=info.channels,
        h=h,
        base=base,
        render_api=render_api,
        diversity=div,
        table=table,
        examples=examples,
        n_photos=len(exm["names"]) if exm else 36,
        atlas_page=atlas_page,
    )


async def atlas_channel(request: Request) -> Response:
    """An atlas channel page with a link to the same filter in the explorer."""
    ex: Explorer = request.app.state.explorer
    layer, name = request.path_params["layer"], request.path_params["page"]
    m = re.fullmatch(r"channel_(\d{4,})\.html", name)
    if ex.atlas is None or layer not in ex.layer_names or m is None:
        raise HTTPException(404, "no such atlas page")
    path = ex.atlas / layer / name
    if not path.is_file():
        raise HTTPException(404, "no such atlas page")
    link = f'<p class="live"><a href="/m/{ex.model.name}/{layer}/f/{int(m.group(1))}">open in the live explorer</a></p>'
    html = path.read_text().replace("<main>", "<main>\n" + link, 1)
    return HTMLResponse(html)


async def static(request: Request) -> Response:
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


class _Guard:
    """ASGI middleware: the access token (when the server listens beyond loopback) and the client cookie."""

    def __init__(self, app, explorer: Explorer):
        self.app = app
        self.ex = explorer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        token = self.ex.token
        given = request.query_params.get("token")
        if token and not (
            secrets.compare_digest(request.cookies.get("fs_token", ""), token)
            or (given is not None and secrets.compare_digest(given, token))
        ):
            resp = _forbidden()
            return await resp(scope, receive, send)
        new_client = "fs_client" not in request.cookies
        cid = secrets.token_hex(8)

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if new_client:
                    headers.append((b"set-cookie", f"fs_client={cid}; Path=/; SameSite=Strict; HttpOnly".encode()))
                if token and given:
                    headers.append((b"set-cookie", f"fs_token={token}; Path=/; SameSite=Strict; HttpOnly".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _forbidden() -> Response:
    return Response("403 forbidden: this server needs its access token (?token=…, printed at start)\n", 403)


def create_app(explorer: Explorer) -> Starlette:
    """The Starlette application for ``explorer``."""
    routes = [
        Route("/", home),
        Route("/go", go),
        Route("/upload", upload, methods=["POST"]),
        Route("/m/{model}/{layer}/img/{h}", explain_page),
        Route("/m/{model}/{layer}/img/{h}/f/{c:int}", filter_page),
        Route("/m/{model}/{layer}/f/{c:int}", filter_page),
        Route("/api/explain/{model}/{layer}/{h}", api_explain),
        Route("/api/examples/{model}/{layer}", api_examples),
        Route("/api/render/{model}/{layer}/{c:int}", api_render),
        Route("/api/accent/{model}/{layer}/{h}/{c:int}", api_accent),
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
        middleware=[Middleware(_Guard, explorer=explorer)],
        exception_handlers={HTTPException: _error_page, 500: _error_page},
    )
    app.state.explorer = explorer
    return app
