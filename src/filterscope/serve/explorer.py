"""The explorer's state (the model, its layers, the photos, the render cache, the job table) and the
job plumbing every page module shares: submitting a job for a client and reporting its status."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..models.inputs import list_images, sample_image_path, sample_photos_dir
from ..models.layers import default_layer, get_layer, layer_outline, list_layers
from ..outputs.cache import RenderCache
from ..outputs.site import environment
from ..version import __version__
from . import store
from .workers import (
    JobManager,
    TooManyJobs,
)

MAX_UPLOAD = 20 * 1024 * 1024
CONCEPTS = 6  # concepts per class page: few, so the job fits a laptop (about a minute on 2 cores)
CONCEPT_SEED = 0
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
        images: str | Path | None = None,
        bundled: bool = True,
        concepts: int = CONCEPTS,
        concept_crops: int | None = None,
        model_b=None,
        dictionary_options: dict | None = None,
    ):
        self.model = model
        # serve --model-b: the second model, diffed against this one on the diff page (jobs.diff, in a worker)
        self.model_b = model_b
        self.layer_names_b = {i.name for i in list_layers(model_b) if i.spatial} if model_b is not None else set()
        self._model_b_bytes: bytes | None = None
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
        for p in [sample_image_path(), *list_images(sample_photos_dir())] if bundled else []:
            self.photos.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), p)
        self.images = Path(images) if images else None  # serve --images DIR: its photos join the bundled ones
        for p in list_images(self.images)[: store.MAX_PHOTO_SET] if self.images else []:
            self.photos.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), p)
        self.n_concepts, self.concept_crops = concepts, concept_crops
        # the feature browser's dictionary job: its defaults, unless these options (tests: a short training)
        self.dictionary_options = dict(dictionary_options or {})
        self.n_classes = model.num_classes
        self.photo_hash = {p.name: h for h, p in self.photos.items()}
        # the explorer's pages, over the layout, stylesheet and channel sections it shares with the atlas
        self.env = environment(jinja2.PackageLoader("filterscope.serve", "templates"))
        self._thumbs: dict[tuple, bytes] = {}
        self._maps: dict[str, Any] = {}
        self._lock = threading.Lock()  # the two memos above, read and written from the thread pool
        self._home: tuple[tuple[str, ...], str, str] | None = None  # photo set, HTML with CSRF_SLOT, its hash

    # -- helpers
    def page(self, name: str, code: int = 200, request: Request | None = None, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(self.render_page(name, csrf(request), **ctx), status_code=code)

    def render_page(self, name: str, csrf: str, **ctx: Any) -> str:
        """The HTML of template ``name`` with the context every page shares."""
        base = {
            "live": True,
            "csrf": csrf,
            "model_name": self.model.name,
            "version": __version__,
            "cache_dir": str(self.cache.root),
            "atlas": self.atlas is not None,
            "model_b_name": self.model_b.name if self.model_b is not None else None,
        }
        return self.env.get_template(name).render(**base, **ctx)

    def home_html(self) -> tuple[str, str]:
        """The home page (~90 KB: every photo, every layer) with :data:`CSRF_SLOT` where the client's form
        token goes, and the hash its ETag starts with: rendered once per photo set, not per request (20
        clients rendering it at once took p95 ~0.4 s on 2 cores)."""
        photo_set = tuple(self.photos)
        home = self._home
        if home is None or home[0] != photo_set:
            photos = [{"hash": h, "name": p.name} for h, p in self.photos.items()]
            html = self.render_page(
                "home.html",
                CSRF_SLOT,
                photos=photos,
                default_layer=self.default_layer,
                max_mb=MAX_UPLOAD // 2**20,
                n_classes=self.n_classes or 0,
                n_photos=len(self.photos),
                **self.picker(),
            )
            home = self._home = (photo_set, html, hashlib.sha256(html.encode()).hexdigest()[:20])
        return home[1], home[2]

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
        return store.result_key(self.model, "examples", photos="bundled", layer=layer, units=1)[0]

    def maps(self, layer: str, h: str):
        key = self.explanation_key(layer, h)
        return self._stored_maps(key, key)

    def _stored_maps(self, memo_key: str, key: str):
        """A cached explanation/concepts record and its maps, memoised (at most 64 kept, the oldest dropped)."""
        with self._lock:
            got = self._maps.get(memo_key)
        if got is None:
            got = store.load_explanation(self.cache, key)
            if got is None:
                return None
            with self._lock:
                if len(self._maps) > 64:
                    self._maps.pop(next(iter(self._maps)))
                self._maps[memo_key] = got
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

    # -- concepts (issue 23)
    def photo_set(self) -> list[tuple[str, Path]]:
        """The photos the explorer's concepts are learnt from: the bundled ones, ``--images DIR``'s and the
        uploads (newest first), at most ``store.MAX_PHOTO_SET``."""
        ups = []
        for p in self.cache.files("uploads"):
            if p.suffix == ".img" and HEX64.match(p.stem) and p.stem not in self.photos:
                try:
                    ups.append((p.stat().st_mtime, p.stem, p))
                except OSError:
                    continue
        ups.sort(reverse=True)
        return [*self.photos.items(), *((h, p) for _, h, p in ups)][: store.MAX_PHOTO_SET]

    def class_index(self, request: Request) -> int:
        k = request.path_params["k"]
        if not 0 <= k < (self.n_classes or 0):
            raise HTTPException(404, f"{self.model.name} has classes 0-{(self.n_classes or 1) - 1}, not {k}")
        return k

    def class_name(self, k: int) -> str:
        names = self.model.categories or []
        return names[k] if k < len(names) else f"class {k}"

    def concepts_key(self, layer: str, k: int, set_hash: str) -> str:
        """The cache key of a class's concepts over a photo set (the job's id)."""
        return store.result_key(
            self.model, "concepts", layer=layer, target_class=k, photo_set=set_hash, n_concepts=self.n_concepts,
            seed=CONCEPT_SEED, crops=self.concept_crops,
        )[0]  # fmt: skip

    def concepts(self, key: str) -> tuple[dict, Any] | None:
        """A finished concepts job's record and maps (images × concepts × h × w), memoised like ``maps``."""
        return self._stored_maps("concepts:" + key, key)

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

    # -- the diff of two models (issue 46)
    def model_b_bytes(self) -> bytes:
        """The second model pickled once: what a diff job carries to the worker that loads it."""
        import pickle

        if self._model_b_bytes is None:
            self._model_b_bytes = pickle.dumps(self.model_b)
        return self._model_b_bytes

    def layer_b(self, request: Request, layer: str) -> str:
        """The second model's layer for the diff at ``layer``: ``?layer_b=`` (one of its layers with maps), else
        the same name when it has one, else its default layer."""
        from ..models.layers import default_layer as default_of

        if self.model_b is None:
            raise HTTPException(404, "this server has no second model (start it with --model-b)")
        given = request.query_params.get("layer_b")
        if given is not None:
            if given not in self.layer_names_b:
                raise HTTPException(404, f"{self.model_b.name} has no layer {given!r} with filters")
            return given
        return layer if layer in self.layer_names_b else default_of(self.model_b)


# a token-shaped stand-in for the client's CSRF token in a page rendered once (nothing in it needs escaping)
CSRF_SLOT = "csrf-slot-0f1e2d3c4b5a"


def csrf(request: Request | None) -> str:
    """The form token of the client making ``request`` (set by the guard), or empty."""
    return (request.scope.get("state", {}) if request is not None else {}).get("fs_csrf", "")


def submit(ex: Explorer, request: Request, key: str, kind: str, fn, *args):
    try:
        return ex.jobs.submit(key, kind, ex.client(request), fn, *args)
    except TooManyJobs as e:
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None


def not_started(key: str) -> JSONResponse:
    return JSONResponse({"id": key, "state": "none", "progress": None, "error": "not started (POST to start it)"})


def job_status(request: Request, key: str, start, retry_errors: bool = True) -> dict | None:
    """The job's status; a POST starts it first when it is not running (or stopped: cancelled, failed, or
    done but no longer in the cache). With ``retry_errors`` off, a failed job is reported, not restarted
    (for jobs whose failure is a refusal, e.g. a circuit of the first layer)."""
    ex: Explorer = request.app.state.explorer
    st = ex.jobs.status(key, ex.client(request))
    again = ("cancelled", "done", "error") if retry_errors else ("cancelled", "done")
    if request.method == "POST" and (st is None or st["state"] in again):
        start()
        st = ex.jobs.status(key, ex.client(request))
    return st


def run_file(ex: Explorer, folder: str, key: str, rel: str, allowed: re.Pattern, what: str) -> Response:
    """A PNG of a finished job's run folder in the cache (``results/<folder>/<key>/<rel>``): only names that
    ``allowed`` matches, never outside that folder; anything else is a 404."""
    if not HEX64.match(key) or not allowed.match(rel) or ".." in rel:
        raise HTTPException(404, f"not a {what}")
    root = (ex.cache.root / "results" / folder / key).resolve()
    f = (root / rel).resolve()
    if root not in f.parents or not f.is_file():
        raise HTTPException(404, f"no such {what}")
    return Response(f.read_bytes(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def cached_or_job(
    ex: Explorer,
    request: Request,
    key: str,
    cached: bool,
    start,
    *,
    urls: list[str] | tuple[str, ...] = (),
    fields: dict[str, Any] | None = None,
    retry_errors: bool = True,
) -> JSONResponse:
    """The answer of every job route (``/api/…``): a result found in the cache (``cached``) is ``done`` with its
    ``urls`` and ``fields`` (``cached`` true when it was there before this server's job ``key`` made it, else
    that job's status with ``cached`` false); no result: the job's status (``done`` with ``urls`` too), or
    ``none`` until a POST starts it with ``start()`` (:func:`job_status`; ``retry_errors`` off for jobs whose
    failure is a refusal, reported rather than restarted). One path, so every route answers alike."""
    done = {"cached": False, **(fields or {}), "urls": list(urls)}
    if cached:
        st = ex.jobs.status(key, ex.client(request))
        if st is not None and st["state"] == "done":  # made by this server just now, not read from the cache
            return JSONResponse({**st, **done})
        return JSONResponse({"id": key, "state": "done", **done, "cached": True})
    st = job_status(request, key, start, retry_errors)
    if st is None:
        return not_started(key)
    return JSONResponse({**st, "cached": False, "urls": list(urls)} if st["state"] == "done" else st)


def render_job(ex: Explorer, request: Request, job: str, keys: list[str], start) -> JSONResponse:
    """Renders kept in the cache under ``keys``, made by the job ``job``: done with their URLs (``cached`` when
    they were there before this server made them), else the job's status; a POST starts it with ``start``."""
    urls = [f"/png/{k}.png" for k in keys]
    return cached_or_job(ex, request, job, all(ex.cache.has(k) for k in keys), start, urls=urls)
