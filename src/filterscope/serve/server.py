"""Starting the explorer (``filterscope serve``): the guard's settings, the token off loopback, the cache (or a
temporary one), the atlas's renders, the worker pool and uvicorn. The CLI only declares the options."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from .guard import Access, is_loopback


def access_for(host: str, port: int | None, allow_hosts: tuple[str, ...] = ()) -> Access:
    """The guard for a server bound to ``host:port``: a fresh token when that is beyond loopback."""
    token = None if is_loopback(host) else secrets.token_urlsafe(24)
    return Access(host=host, port=port or None, allow_hosts=tuple(allow_hosts), token=token)


def _url(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _uvicorn(app, host: str, port: int):
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    return uvicorn.Server(config)


def _check_atlas(atlas_dir) -> None:
    if atlas_dir is not None and not (Path(atlas_dir) / "index.html").is_file():
        raise UsageError(f"{atlas_dir} has no index.html; build it with 'filterscope atlas --out {atlas_dir}'")


def _check_images(images_dir) -> None:
    from ..errors import ImageError
    from ..models.inputs import list_images

    if images_dir is None:
        return
    try:
        list_images(images_dir)
    except ImageError as e:
        raise UsageError(f"--images: {e.message}") from None


def run_static(
    atlas_dir, host: str = "127.0.0.1", port: int = 8000, allow_hosts: tuple[str, ...] = (), echo=print
) -> None:
    """Serve a built atlas as static files, behind the explorer's guard, until Ctrl-C."""
    from .app import create_static_app

    if atlas_dir is None:
        raise UsageError("--static needs an ATLAS_DIR")
    _check_atlas(atlas_dir)
    access = access_for(host, port, allow_hosts)
    server = _uvicorn(create_static_app(atlas_dir, access), host, port)
    echo(f"serving {atlas_dir} at {_url(host, port, access.token)} (Ctrl-C stops)")
    server.run()
    if not server.started:
        raise UsageError(f"cannot listen on {host}:{port}")


def run_server(
    load_model: Callable[[], object],
    *,
    atlas_dir=None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    cache_dir=None,
    no_cache: bool = False,
    allow_hosts: tuple[str, ...] = (),
    max_jobs: int = 16,
    images_dir=None,
    load_model_b: Callable[[], object] | None = None,
    echo=print,
) -> None:
    """The live explorer until Ctrl-C: ``load_model()`` is called once the cache folder is known to be
    writable; with ``no_cache`` a temporary cache is used and removed at exit. ``images_dir``: a folder whose
    photos (up to ``store.MAX_PHOTO_SET``) join the bundled ones, to explain and to learn concepts from.
    ``load_model_b``: the second model (``--model-b``), loaded after the first; the explorer then has a diff
    page per layer."""
    from ..jobs.pool import cpu_cores
    from ..outputs.cache import RenderCache, configure, default_cache_dir
    from ..outputs.rundir import check_writable
    from .app import Explorer, create_app
    from .store import import_atlas

    _check_atlas(atlas_dir)
    _check_images(images_dir)
    if max_jobs < 1:
        raise UsageError("--max-jobs must be at least 1")
    access = access_for(host, port, allow_hosts)
    tmp = tempfile.mkdtemp(prefix="filterscope-serve-") if no_cache else None
    try:
        root = Path(tmp or cache_dir or default_cache_dir()).expanduser()
        check_writable(root, keep=True)
        configure(root, enabled=True)
        model = load_model()
        model_b = load_model_b() if load_model_b is not None else None
        explorer = Explorer(
            model,
            RenderCache(root),
            workers=workers or cpu_cores(),
            atlas=atlas_dir,
            token=access.token,
            max_jobs=max_jobs,
            images=images_dir,
            model_b=model_b,
        )
        try:
            if atlas_dir is not None:
                n = import_atlas(model, explorer.cache, atlas_dir)
                if n:
                    echo(f"atlas: {n} renders added to the cache")
            explorer.jobs.warm()
            server = _uvicorn(create_app(explorer, access), host, port)
            echo(
                f"filterscope explorer on {_url(host, port, access.token)} ({model.name}"
                + (f" and {model_b.name}: diff pages" if model_b is not None else "")
                + f", cache {root}; Ctrl-C stops)"
            )
            server.run()
        finally:
            explorer.jobs.close()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
