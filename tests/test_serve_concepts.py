"""The explorer's concept pages (issue 23 item 6): a class page and a photo's concepts, computed by
``jobs.concepts`` in a worker and cached; on the real efficientnet_lite0 with a 6-photo set (3 concepts, 1
crop per photo) so a job takes seconds. All on loopback (Starlette's TestClient), every loop bounded."""

from __future__ import annotations

import io
import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from filterscope.models.inputs import list_images, sample_photos_dir
from filterscope.outputs.cache import RenderCache
from filterscope.serve import store

BASE = "http://127.0.0.1:8000"
MODEL = "efficientnet_lite0"
PHOTOS = ["coffee_0.jpg", "coffee_1.jpg", "astronaut_0.jpg", "brick_0.jpg", "rocket_0.jpg", "chelsea_0.jpg"]


def _photo_dir(tmp_path):
    """The six photos, a third coffee photo and mirror images of two: five espresso photos, enough for concepts of
    espresso (issue 44: a class needs at least 5 images of it), and none of a coffee mug."""
    d = tmp_path / "photos"
    d.mkdir()
    for name in PHOTOS:
        shutil.copy(sample_photos_dir() / name, d / name)
    shutil.copy(sample_photos_dir() / "coffee_2.jpg", d / "coffee_2.jpg")
    for name in ("coffee_0.jpg", "coffee_1.jpg"):
        with Image.open(sample_photos_dir() / name) as im:
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / name.replace(".jpg", "_mirror.jpg"), quality=95)
    return d


@pytest.fixture(scope="module")
def cex(model, tmp_path_factory):
    from filterscope.serve.app import Explorer

    root = tmp_path_factory.mktemp("concepts")
    e = Explorer(
        model,
        RenderCache(root / "cache"),
        workers=1,
        images=_photo_dir(root),
        bundled=False,
        concepts=3,
        concept_crops=1,
    )
    e.jobs.warm()
    yield e
    e.jobs.close()


@pytest.fixture(scope="module")
def cclient(cex):
    from starlette.testclient import TestClient

    from filterscope.serve.app import create_app

    with TestClient(create_app(cex), base_url=BASE) as c:
        yield c


def _wait(client, url, timeout=120.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        r = client.post(url)
        j = r.json()
        if r.status_code >= 400 or j["state"] in ("done", "error", "cancelled"):
            return j
        time.sleep(0.2)
    raise AssertionError(f"{url} not done in {timeout} s: {j}")


def _png(client, url) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", (url, r.status_code)
    return Image.open(io.BytesIO(r.content))


def test_photo_set_folder_is_named_by_its_photos(tmp_path):
    """Fast: the set's name changes with its photos, not their order; its folder is what concepts read."""
    cache = RenderCache(tmp_path / "cache")
    files = list_images(sample_photos_dir())[:3]
    import hashlib

    photos = [(hashlib.sha256(p.read_bytes()).hexdigest(), p) for p in files]
    h, folder = store.photo_set_dir(cache, photos)
    assert h == store.photo_set_hash([p[0] for p in reversed(photos)])
    assert h != store.photo_set_hash([p[0] for p in photos[:2]])
    assert sorted(p.stem for p in list_images(folder)) == sorted(p[0] for p in photos)
    assert store.photo_set_dir(cache, photos) == (h, folder)  # made once
    assert cache.root / "results" in folder.parents  # "cache clear" removes it (links only, not the photos)
    up = cache.root / "uploads" / f"{'a' * 64}.img"
    up.parent.mkdir(parents=True)
    shutil.copy(files[0], up)
    _, f2 = store.photo_set_dir(cache, [("a" * 64, up)])
    assert [p.name for p in list_images(f2)] == [f"{'a' * 64}.jpg"]  # an upload gets a suffix from its format
    cache.clear()
    assert not folder.exists() and all(p.is_file() for p in files)


@pytest.mark.slow
def test_class_with_too_few_photos_asks_for_a_folder(cclient, cex):
    """Coffee mug: none of the photos is one, so the page shows no concepts (they would be of other things)
    and asks for a folder of mugs; the record says why."""
    k = 504
    page, api = f"/m/{MODEL}/bn2/class/{k}", f"/api/concepts/{MODEL}/bn2/{k}"
    done = _wait(cclient, api)
    assert done["state"] == "done", done
    html = cclient.get(page).text
    assert 'id="class-warning"' in html and 'class="concept"' not in html and "--images" in html
    rec, _ = store.load_explanation(cex.cache, done["id"])
    support = rec["data"]["class_support"]
    assert support["images"] == 0 and support["minimum"] == 5 and "coffee mug" in support["warning"]


@pytest.mark.slow
def test_class_page_job_then_cache(cclient, cex):
    k = 967  # espresso: the five coffee photos
    page, api = f"/m/{MODEL}/bn2/class/{k}", f"/api/concepts/{MODEL}/bn2/{k}"
    first = cclient.get(page)
    assert first.status_code == 200 and f'data-job="{api}"' in first.text and 'class="concept"' not in first.text
    assert cclient.get(api).json()["state"] == "none"  # a GET only reports
    started = cex.jobs.started
    done = _wait(cclient, api)
    assert done["state"] == "done" and done["kind"] == "concepts", done
    assert cex.jobs.started == started + 1
    html = cclient.get(page).text
    assert html.count('class="concept"') == 3 and "espresso" in html and 'id="class-warning"' not in html
    again = cclient.post(api).json()  # a second request: from the cache, no new job
    assert again["state"] == "done" and cex.jobs.started == started + 1
    key = done["id"]
    rec, maps = store.load_explanation(cex.cache, key)
    assert rec["class"] == k and rec["n_concepts"] == 3 and maps.shape == (len(cex.photos), 3, 7, 7)
    imp = [c["importance"] for c in rec["concepts"]]
    assert imp == sorted(imp, reverse=True)
    assert sorted(rec["images"]) == sorted(cex.photos)  # the maps' rows are the server's photos
    for c in rec["concepts"]:
        assert {"label", "ablation_drop", "stability", "top_crops", "votes"} <= set(c) and c["label"]
        assert {"name", "purity", "score"} <= set(c)  # issue 44: the same names and scores as the atlas
    assert rec["data"]["class_support"]["images"] >= 5 and "warning" not in rec["data"]["class_support"]
    assert "interpretability score" in html
    pics = re.findall(r'src="(/(?:png|cmap)/[^"]+)"', html)
    assert sum("/png/" in u for u in pics) >= 3 and sum("/cmap/" in u for u in pics) >= 3
    for u in pics:
        _png(cclient, u)
    links = re.findall(rf'href="/m/{MODEL}/bn2/f/(\d+)"', html)  # each concept's strongest channels
    assert len(links) == 9 and cclient.get(f"/m/{MODEL}/bn2/f/{links[0]}").status_code == 200
    # a photo with its concepts: the coffee photo is predicted as a cup or a mug; its page starts that class's job
    h = next(h for h, p in cex.photos.items() if p.name.startswith("coffee"))
    assert _wait(cclient, f"/api/explain/{MODEL}/bn2/{h}")["state"] == "done"
    ep = cclient.get(f"/m/{MODEL}/bn2/img/{h}").text
    target = cex.maps("bn2", h)[0]["target_class"]
    assert f'href="/m/{MODEL}/bn2/class/{target}"' in ep
    if target != k:
        assert f'data-api="/api/concepts/{MODEL}/bn2/{target}"' in ep  # a button starts it
        assert _wait(cclient, f"/api/concepts/{MODEL}/bn2/{target}")["state"] == "done"
        ep = cclient.get(f"/m/{MODEL}/bn2/img/{h}").text
    tiles = re.findall(r'src="(/cmap/[0-9a-f]{64}/(\d+)/(\d+)\.png\?norm=photo)"', ep)
    assert len(tiles) == 3 and len({row for _, row, _ in tiles}) == 1  # this photo's row, every concept
    crec = cex.concepts(tiles[0][0].split("/")[2])[0]
    assert crec["images"][int(tiles[0][1])] == h
    pics = [np.asarray(_png(cclient, u).convert("L"), dtype=np.float32) for u, _, _ in tiles]
    assert all(p.shape == (96, 96) for p in pics)
    coefs = [float(v) for v in re.findall(r"coef\. ([0-9.]+)<", ep)]
    assert coefs == sorted(coefs, reverse=True)  # ordered by this photo's coefficient
    if coefs[0] > 2 * coefs[-1]:  # one scale for the photo's concepts: the strongest is the brightest
        assert pics[0].mean() > pics[-1].mean()
    assert cclient.get(tiles[0][0].replace("norm=photo", "norm=x")).status_code == 400


@pytest.mark.slow
def test_concept_pages_refuse_bad_input_and_keep_the_guard(cclient, cex):
    for url, code in [
        (f"/m/{MODEL}/bn2/class/1000", 404),
        (f"/m/{MODEL}/bn2/class/-1", 404),
        (f"/m/{MODEL}/bn2/class/99999999999999999999", 404),
        (f"/m/{MODEL}/nolayer/class/1", 404),
        ("/m/other/bn2/class/1", 404),
        (f"/m/{MODEL}/bn2/class/x", 404),
        (f"/m/{MODEL}/bn2/class/{'0' * 5000}", 404),  # more digits than Python converts: no route, not a 500
        (f"/m/{MODEL}/bn2/f/{'9' * 5000}", 404),
        (f"/cmap/{'0' * 64}/0/0.png", 404),
        ("/cmap/..%2F..%2Fetc/0/0.png", 404),
        (f"/cmap/{'0' * 64}/0/0.png?side=9999", 400),
    ]:
        r = cclient.get(url)
        assert r.status_code == code, (url, r.status_code, r.text[:200])
    home = cclient.get("/").text
    assert 'action="/class"' in home and 'max="999"' in home
    r = cclient.get("/class?k=504&layer=bn2", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/m/{MODEL}/bn2/class/504"
    for q in ("k=1000&layer=bn2", "k=-1&layer=bn2", "k=x&layer=bn2", "k=1&layer=nolayer", "layer=bn2"):
        assert cclient.get(f"/class?{q}", follow_redirects=False).status_code == 400, q
    for url in (f"/api/concepts/{MODEL}/bn2/1000", f"/api/concept-renders/{MODEL}/bn2/1000"):
        assert cclient.post(url).status_code == 404
    # renders before the concepts: refused, nothing started
    started = cex.jobs.started
    assert cclient.post(f"/api/concept-renders/{MODEL}/bn2/7").status_code == 404
    # a cross-origin POST starts nothing
    r = cclient.post(f"/api/concepts/{MODEL}/bn2/7", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and cex.jobs.started == started
    # the server-wide bound counts concept jobs too
    old = cex.jobs.max_jobs
    cex.jobs.max_jobs = 1
    try:
        assert cclient.post(f"/api/concepts/{MODEL}/bn2/7").json()["state"] in ("queued", "running")
        busy = cclient.post(f"/api/concepts/{MODEL}/bn2/8")
        assert busy.status_code == 429 and busy.headers["retry-after"]
    finally:
        cex.jobs.max_jobs = old
        for j in list(cex.jobs.jobs.values()):
            cex.jobs.cancel(j.id)
    # a row or concept past the result's: 404 (with a real result key)
    key = next((j.id for j in cex.jobs.jobs.values() if j.kind == "concepts" and j.state == "done"), None)
    if key is not None:
        assert cclient.get(f"/cmap/{key}/{len(cex.photos)}/0.png").status_code == 404
        assert cclient.get(f"/cmap/{key}/0/3.png").status_code == 404


# ---------------------------------------------------------------- circuit and tuning on the filter page (issue 24)


@pytest.mark.slow
def test_filter_page_circuit_and_tuning(cclient, cex):
    layer, c = "blocks.1", 2
    page = f"/m/{MODEL}/{layer}/f/{c}"
    api_c, api_t = f"/api/circuit/{MODEL}/{layer}/{c}", f"/api/tuning/{MODEL}/{layer}/{c}"
    first = cclient.get(page).text
    assert f'data-job="{api_c}"' in first and f'data-job="{api_t}"' in first
    started = cex.jobs.started
    done = _wait(cclient, api_c)
    assert done["state"] == "done" and done["kind"] == "circuit", done
    html = cclient.get(page).text
    tiles = re.findall(r'class="tile filter input (excites|inhibits|none)" href="/m/[^/]+/([^/]+)/f/(\d+)"', html)
    assert len(tiles) == 8 and {t[1] for t in tiles} == {"blocks.0"}, tiles  # the layer that feeds blocks.1
    rec = store.load_json(cex.cache, done["id"])
    assert rec["from"] == "blocks.0" and rec["channel"] == c
    # issue 43: listed by measured effect (the record's order, first = strongest), the sign is the effect's
    assert [i["rank"] for i in rec["inputs"]] == list(range(len(rec["inputs"])))
    assert rec["ranking"]["method"] == "effect" and rec["ablation"]["first"] == [
        i["channel"] for i in rec["inputs"][:8]
    ]
    for (sign, _, ch), i in zip(tiles, rec["inputs"]):
        assert int(ch) == i["channel"] and sign == ("excites" if i["effect"] > 0 else "inhibits")
    assert "Expanded weight (second view)" in html and f"×{rec['ablation']['change_ratio']}" in html
    # each input's render: a render job on its own layer (the page's script starts it), then a cache hit
    renders = re.findall(rf'data-job="/api/render/{MODEL}/blocks.0/(\d+)"', html)
    assert [int(r) for r in renders] == [i["channel"] for i in rec["inputs"][:8]]
    walk = cclient.get(f"/m/{MODEL}/blocks.0/f/{tiles[0][2]}")  # walk the network: the input's own page
    assert walk.status_code == 200 and "Built from" in walk.text
    assert cclient.post(api_c).json()["state"] == "done" and cex.jobs.started == started + 1  # from the cache
    tuned = _wait(cclient, api_t, timeout=240)
    assert tuned["state"] == "done", tuned
    t = store.load_json(cex.cache, tuned["id"])
    assert 0 <= t["orientation"] < 180 and t["channel"] == c and "description" in t
    html = cclient.get(page).text
    assert (t["description"] or "no significant selectivity") in html
    fig = re.findall(r'<img class="tuning" src="(/png/[0-9a-f]{64}\.png)"', html)
    assert len(fig) == 1 and _png(cclient, fig[0]).size[0] > 500
    # a second filter of the layer: the layer's responses come from the memo or the shared cache, not a rerun
    again = _wait(cclient, f"/api/tuning/{MODEL}/{layer}/{c + 1}", timeout=240)
    assert again["state"] == "done" and "computed" not in store.load_json(cex.cache, again["id"])["responses_from"]
    # the first layer has no earlier layer: the job's refusal is reported, not restarted at every poll
    stem = f"/api/circuit/{MODEL}/conv_stem/0"
    err = _wait(cclient, stem)
    n = cex.jobs.started
    assert err["state"] == "error" and "no earlier layer" in err["error"], err
    assert cclient.post(stem).json()["state"] == "error" and cex.jobs.started == n
    for url in (f"/api/circuit/{MODEL}/{layer}/24", f"/api/tuning/{MODEL}/{layer}/99999", f"/api/tuning/x/{layer}/0"):
        assert cclient.post(url).status_code == 404, url


def test_serve_images_option_is_checked_before_anything_starts(tmp_path, capsys):
    """Fast: ``serve --images`` with a missing or empty folder: one line, exit 2, no model loaded."""
    from filterscope.cli import main

    (tmp_path / "empty").mkdir()
    for folder, said in [(tmp_path / "missing", "not found"), (tmp_path / "empty", "no images")]:
        code = main(["serve", "--images", str(folder), "--port", "0", "--no-cache"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: --images:") and said in err and "\n" not in err
