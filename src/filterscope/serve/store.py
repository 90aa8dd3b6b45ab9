"""What the explorer keeps in the render cache besides channel renders: explanations, photo examples,
diversity variants and uploaded photos. Every file is written atomically, the JSON record last (it is the
commit mark: a result without its JSON does not exist), and every record holds the fields of its key."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs.cache import RenderCache, make_key, model_key, read_verified, render_key, write_verified
from ..outputs.rundir import atomic_write, json_bytes

ADAPTER = "jobs-2"  # bump when serve/compute.py changes what it computes


def _result_paths(cache: RenderCache, key: str) -> tuple[Path, Path]:
    cache._paths(key)  # validates the key
    d = cache.root / "results" / key[:2]
    return d / f"{key}.json", d / f"{key}.npy"


def result_key(model, kind: str, **fields: Any) -> tuple[str, dict]:
    f = {"v": 1, "kind": kind, "adapter": ADAPTER, "model": model_key(model), **fields}
    return make_key(f), f


def store_json(cache: RenderCache, key: str, obj: dict) -> None:
    atomic_write(_result_paths(cache, key)[0], json_bytes(obj))


def load_json(cache: RenderCache, key: str) -> dict | None:
    try:
        return json.loads(_result_paths(cache, key)[0].read_bytes())
    except (OSError, ValueError):
        return None


def store_explanation(cache: RenderCache, key: str, result: dict, maps: np.ndarray) -> None:
    """The maps first, then the JSON with the maps' sha256."""
    js, npy = _result_paths(cache, key)
    buf = io.BytesIO()
    np.save(buf, maps, allow_pickle=False)
    write_verified(npy, js, buf.getvalue(), result, "maps_sha256")


def load_explanation(cache: RenderCache, key: str) -> tuple[dict, np.ndarray] | None:
    js, npy = _result_paths(cache, key)
    got = read_verified(npy, js, "maps_sha256")
    return None if got is None else (got[0], np.load(io.BytesIO(got[1]), allow_pickle=False))


def diversity_keys(model, layer: str, channel: int, method: str, seed: int, n: int) -> tuple[str, list[str], dict]:
    """The job key of ``n`` diversity variants of a channel and the cache key of each variant."""
    from ..jobs.diversity import diversity_objective
    from ..models.layers import get_layer
    from ..optvis.presets import get_preset

    obj = diversity_objective(model, get_layer(model, layer), channel)
    key, fields = render_key(model, obj, get_preset(method), seed, layer=layer, diversity=n)
    return key, [make_key({**fields, "variant": v}) for v in range(1, n + 1)], fields


def store_diversity(model, info, channel: int, method: str, seed: int, n: int, cache, *, should_stop=None) -> str:
    """Render ``n`` jointly optimised variants (as ``render --diversity``) into the cache."""
    from ..jobs.diversity import diversity_variants
    from ..optvis.presets import get_preset
    from ..outputs.images import png_bytes

    _, keys, fields = diversity_keys(model, info.name, channel, method, seed, n)
    res = diversity_variants(model, info, channel, get_preset(method), seed, n, should_stop=should_stop)
    if res.interrupted:
        return "cancelled"
    for v, key in enumerate(keys):
        if res.status[v] != "ok":
            return res.status[v]
        rec = {**fields, "variant": v + 1, "activation_after": round(res.after[v], 6), "status": res.status[v]}
        cache.put(key, png_bytes(res.images[v]), rec)
    return "ok"


UPLOAD_QUOTA = 256 * 2**20  # bytes of uploaded photos the explorer keeps, all clients together
UPLOAD_MAX_AGE = 7 * 86400  # seconds an uploaded photo is kept


def store_upload(cache: RenderCache, data: bytes, *, quota: int = UPLOAD_QUOTA, max_age: float = UPLOAD_MAX_AGE) -> str:
    """Keep an uploaded photo under a server-made name (its sha256); returns the name's hash. Uploads older
    than ``max_age`` seconds go, then the oldest until all of them fit in ``quota`` bytes (never this one)."""
    h = hashlib.sha256(data).hexdigest()
    path = upload_path(cache, h)
    if not path.is_file():
        atomic_write(path, data)
    else:
        os.utime(path)  # uploaded again: the newest
    prune_uploads(cache, quota=quota, max_age=max_age, keep=path)
    return h


def upload_usage(cache: RenderCache) -> dict[str, Any]:
    """How many uploads the cache holds and their bytes, with the explorer's default quota and expiry."""
    files = [p for p in cache.files("uploads") if p.suffix == ".img"]
    return {
        "uploads": len(files),
        "upload_bytes": sum(p.stat().st_size for p in files),
        "upload_quota_bytes": UPLOAD_QUOTA,
        "upload_max_age_s": UPLOAD_MAX_AGE,
    }


def prune_uploads(
    cache: RenderCache, *, quota: int = UPLOAD_QUOTA, max_age: float = UPLOAD_MAX_AGE, keep: Path | None = None
) -> int:
    """Remove expired uploads, then the oldest until the rest fit in ``quota``; returns how many went."""
    now = time.time()
    files = []
    for p in cache.files("uploads"):
        try:
            st = p.stat()
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, p))
    files.sort()
    total = sum(size for _, size, _ in files)
    removed = 0
    for mtime, size, p in files:
        if p == keep:
            continue
        if now - mtime > max_age or total > quota:
            p.unlink(missing_ok=True)
            total -= size
            removed += 1
    return removed


def upload_path(cache: RenderCache, h: str) -> Path:
    cache._paths(h)  # 64 hex digits or ValueError
    return cache.root / "uploads" / f"{h}.img"


def import_atlas(model, cache: RenderCache, atlas_dir) -> int:
    """Put an atlas's renders into the cache (when it was built with this model), so the explorer shows
    them at once; returns how many were added. Atlases built with the cache on are there already."""
    from ..models.layers import get_layer
    from ..optvis.objectives import channel

    try:
        rec = json.loads((Path(atlas_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return 0
    st = rec.get("settings", {})
    if st.get("model") != json.loads(json_bytes(model.describe())):
        return 0
    added = 0
    for r in rec.get("results", {}).values():
        if r.get("status") != "ok" or "file" not in r or "channel" not in r or r["layer"] == "logit":
            continue
        try:
            get_layer(model, r["layer"])
            root = Path(atlas_dir).resolve()
            path = (root / r["file"]).resolve()
            if root not in path.parents or path.suffix != ".png":  # a run.json cannot point outside its folder
                continue
            png = path.read_bytes()
            if not png.startswith(b"\x89PNG\r\n\x1a\n"):
                continue
        except Exception:
            continue
        key, fields = render_key(model, channel(r["layer"], r["channel"]), st["render"], st["seed"])
        if not cache.has(key):
            cache.put(key, png, {**fields, **r, "imported_from": str(atlas_dir)})
            added += 1
    return added


# ---------------------------------------------------------------- concepts (issue 23)

MAX_PHOTO_SET = 200  # photos the explorer's concepts are learnt from (bundled, --images, newest uploads)


def photo_set_hash(hashes: list[str]) -> str:
    """The name of a set of photos: sha256 of their sorted sha256s (the order they are listed in does not
    matter, any photo added or removed changes it)."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def photo_set_dir(cache: RenderCache, photos: list[tuple[str, Path]]) -> tuple[str, Path]:
    """A folder holding the photos ``(sha256, path)`` as ``<sha256><suffix>`` (links, or copies where links
    cannot be made), named by :func:`photo_set_hash`: what ``jobs.concepts`` reads as its image folder.
    Made in a temporary folder and renamed, so a folder that exists is complete."""
    import shutil
    import tempfile

    from ..models.inputs import IMAGE_SUFFIXES

    h = photo_set_hash([p[0] for p in photos])
    final = cache.root / "results" / "photosets" / h  # under results: "cache clear" removes it
    if final.is_dir():
        return h, final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    for sha, path in photos:
        suffix = path.suffix.lower() if path.suffix.lower() in IMAGE_SUFFIXES else _image_suffix(path)
        dst = tmp / f"{sha}{suffix}"
        try:
            os.symlink(Path(path).resolve(), dst)
        except OSError:
            shutil.copyfile(path, dst)
    try:
        os.rename(tmp, final)
    except OSError:  # another request made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return h, final


def _image_suffix(path: Path) -> str:
    """A file suffix for an uploaded photo (kept as ``<sha256>.img``) from its format."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt = (im.format or "png").lower()
    except (OSError, ValueError):
        fmt = "png"
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, f".{fmt}")


def concept_render_keys(model, layer: str, bank, method: str, seed: int) -> list[str]:
    """The render-cache keys of the concepts' renders, as ``jobs.concepts`` makes them (the ``direction``
    objective along each concept vector, the preset ``method``, the seed of concept ``j``)."""
    import torch

    from ..optvis.objectives import direction
    from ..optvis.presets import get_preset
    from ..optvis.render import channel_seed

    settings = get_preset(method).for_model(model)
    keys = []
    for j, vec in enumerate(bank):
        obj = direction(layer, torch.as_tensor(np.asarray(vec, dtype=np.float32)))
        keys.append(render_key(model, obj, settings, channel_seed(seed, j), layer=layer)[0])
    return keys


# ---------------------------------------------------------------- a layer's tuning responses, for every worker


class TuningMemo(MutableMapping):
    """The memo ``jobs.tuning.compute_tuning`` keeps a layer's stimulus and photo responses in, shared by
    every worker process through the cache.

    The explorer runs its jobs in a pool of worker processes; a memo that lives in one process helps only
    the jobs that land on it again (with two workers, half of a layer's next filters; none after a
    restart). Here a value is kept in this process (``local``, bounded by ``compute_tuning``) and written
    to the cache's results (``.npz`` of its arrays, then its JSON record: the commit mark), where any worker
    finds it. ``source[key]`` says where the last lookup of ``key`` came from: ``"process"``, ``"cache"``;
    ``misses`` counts the lookups that found nothing (the stimuli then run)."""

    def __init__(self, cache: RenderCache, model, local: dict | None = None):
        self.cache, self.model = cache, model
        self.local: dict = {} if local is None else local
        self.source: dict = {}
        self.misses = 0

    def _key(self, key: tuple) -> str:
        return result_key(self.model, "tuning-responses", memo=[str(k) for k in key])[0]

    def _paths(self, key: tuple) -> tuple[Path, Path]:
        js, npy = _result_paths(self.cache, self._key(key))
        return js, npy.with_suffix(".npz")

    def _load(self, key: tuple):
        js, npz = self._paths(key)
        got = read_verified(npz, js, "arrays_sha256")
        if got is None:
            return None
        with np.load(io.BytesIO(got[1]), allow_pickle=False) as z:
            arrays = {n: z[n] for n in z.files}
        return _unflatten(got[0]["layout"], arrays)

    def __contains__(self, key) -> bool:
        if key in self.local:
            self.source[key] = "process"
            return True
        value = self._load(key)
        if value is None:
            self.misses += 1
            return False
        self.local[key] = value
        self.source[key] = "cache"
        return True

    def __getitem__(self, key):
        if key in self.local or key in self:
            return self.local[key]
        raise KeyError(key)

    def __setitem__(self, key, value) -> None:
        self.local[key] = value
        layout, arrays = _flatten(value)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        js, npz = self._paths(key)
        write_verified(npz, js, buf.getvalue(), {"memo": [str(k) for k in key], "layout": layout}, "arrays_sha256")

    def __delitem__(self, key) -> None:  # drops it from this process only: the cache keeps it
        del self.local[key]

    def __iter__(self):
        return iter(self.local)

    def __len__(self) -> int:
        return len(self.local)


def _flatten(value) -> tuple[Any, dict[str, np.ndarray]]:
    """A tuple of arrays and dicts of arrays → a JSON layout and named arrays (``np.savez``)."""
    arrays: dict[str, np.ndarray] = {}
    layout = []
    for i, part in enumerate(value):
        if isinstance(part, dict):
            layout.append(list(part))
            for j, (_, v) in enumerate(part.items()):
                arrays[f"a{i}_{j}"] = np.asarray(v)
        else:
            layout.append(None)
            arrays[f"a{i}"] = np.asarray(part)
    return layout, arrays


def _unflatten(layout, arrays: dict[str, np.ndarray]) -> tuple:
    out = []
    for i, names in enumerate(layout):
        out.append(arrays[f"a{i}"] if names is None else {n: arrays[f"a{i}_{j}"] for j, n in enumerate(names)})
    return tuple(out)
