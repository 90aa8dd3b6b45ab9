"""The explorer's map pages (issue 45): the map of a layer over the server's photos, computed once by
``jobs.activation_map`` (through ``run_job``) in a worker with progress and cached; hovering data, a cell's page,
the class map, and the file route that serves only the map's pictures. The real efficientnet_lite0 on a
6-photo set with a 2×2 grid, so the job takes a minute; on loopback (Starlette's TestClient), loops bounded."""

from __future__ import annotations

import re
import shutil

import pytest
from serve_jobs import follow_job, wait_job

from filterscope.models.inputs import sample_photos_dir
from filterscope.outputs.cache import RenderCache

BASE = "http://127.0.0.1:8000"
PHOTOS = ["coffee_0.jpg", "coffee_1.jpg", "coffee_2.jpg", "astronaut_0.jpg", "brick_0.jpg", "chelsea_0.jpg"]


@pytest.fixture(scope="module")
def mclient(model, tmp_path_factory):
    from starlette.testclient import TestClient

    from filterscope.serve import app as app_mod
    from filterscope.serve.app import Explorer, create_app

    root = tmp_path_factory.mktemp("map")
    d = root / "photos"
    d.mkdir()
    for name in PHOTOS:
        shutil.copy(sample_photos_dir() / name, d / name)
    e = Explorer(model, RenderCache(root / "cache"), workers=1, images=d, bundled=False)
    e.jobs.warm()
    old = app_mod.MAP_GRID, app_mod.CLASS_MAP_GRID
    app_mod.MAP_GRID, app_mod.CLASS_MAP_GRID = 2, 2  # few cells: few renders
    try:
        with TestClient(create_app(e), base_url=BASE) as c:
            yield c
    finally:
        app_mod.MAP_GRID, app_mod.CLASS_MAP_GRID = old
        e.jobs.close()


def _wait(client, url, timeout=900.0):
    return wait_job(client, url, timeout, 0.5)


@pytest.mark.slow
def test_layer_map_page_job_cells_and_files(mclient):
    page = "/m/efficientnet_lite0/bn2/map"
    r = mclient.get(page)
    assert r.status_code == 200 and 'data-job="/api/map/efficientnet_lite0/bn2"' in r.text
    j, seen = _wait(mclient, "/api/map/efficientnet_lite0/bn2")
    assert j["state"] == "done", j.get("error")
    r = mclient.get(page)
    assert r.status_code == 200
    cells = re.findall(r'<a class="mcell" href="([^"]+)"', r.text)
    assert cells, r.text[:2000]
    png = re.search(r'src="(/mapfile/[0-9a-f]{64}/map\.png)"', r.text).group(1)
    g = mclient.get(png)
    assert g.status_code == 200 and g.headers["content-type"] == "image/png"
    crops = re.findall(r'data-crops="([^"]*)"', r.text)
    assert all(c.strip() for c in crops)  # every cell has its exemplars for the hover
    assert mclient.get(crops[0].split()[0]).status_code == 200
    c = mclient.get(cells[0])
    assert c.status_code == 200 and "/mapfile/" in c.text and "/f/" in c.text  # render, nearest channels
    key = png.split("/")[2]
    for bad in (f"/mapfile/{key}/run.json", f"/mapfile/{key}/..%2F..%2Fx.png", f"/mapfile/{'0' * 64}/map.png"):
        assert mclient.get(bad).status_code == 404, bad
    assert mclient.get("/m/efficientnet_lite0/bn2/map/cell/999").status_code == 404
    # linked from the layer's pages
    assert "/m/efficientnet_lite0/bn2/map" in mclient.get("/m/efficientnet_lite0/bn2/f/3").text


@pytest.mark.slow
def test_class_map_of_the_photos_predicted_as_espresso(mclient):
    j, _ = _wait(mclient, "/api/map/efficientnet_lite0/bn2/967")  # the coffee photos: espresso
    assert j["state"] == "done", j.get("error")
    r = mclient.get("/m/efficientnet_lite0/bn2/class/967/map")
    assert r.status_code == 200 and "data-attr=" in r.text and "espresso" in r.text
    assert "/m/efficientnet_lite0/bn2/class/967/map" in mclient.get("/m/efficientnet_lite0/bn2/class/967").text


@pytest.mark.slow
def test_the_map_page_follows_the_activation_pass_then_the_layout_and_the_renders(tmp_path, monkeypatch):
    """Issues 42/44: the map job's worker runs it with ``on_progress``, so while the layer's activation pass runs
    (a planted net slowed to 0.4 s a batch, 2 batches) the job's status reports it (``[done, total, "activation
    pass"]``), before the layout's bar; then the layout, the cells, the renders (live.js prints ``running ·
    layout 120/500 · 4.2 s``, ``rendering cells 1/4``). Slow: UMAP's first layout in a fresh worker compiles
    (26 s of the 72 s on the shared 2 cores, load 9)."""

    from planted_dictionary import CLASSES, make_folder, planted_model
    from starlette.testclient import TestClient

    from filterscope.jobs.activation_map import LAYOUT_BAR, RENDERS_BAR
    from filterscope.jobs.vectors import PASS
    from filterscope.serve import app as app_mod
    from filterscope.serve.app import Explorer, create_app

    images = make_folder(tmp_path / "images", per_class=2)  # 16 images: 2 batches of 8
    model = planted_model(0, delay=0.4)
    model.categories = list(CLASSES)
    monkeypatch.setattr(app_mod, "MAP_GRID", 2)  # at most 4 cells: few renders
    e = Explorer(model, RenderCache(tmp_path / "cache"), workers=1, bundled=False, images=images)
    api = f"/api/map/{model.name}/mix"
    try:
        with TestClient(create_app(e), base_url=BASE) as c:
            j, seen = follow_job(c, api)
            assert j["state"] == "done", j
            assert e.jobs.started == 1
            assert 'class="mcell"' in c.get(f"/m/{model.name}/mix/map").text
    finally:
        e.jobs.close()
    descs = [p[2] if len(p) > 2 else None for p in seen]  # before: [0, 2], then finished renders, no bar named
    assert PASS in descs and LAYOUT_BAR in descs, seen
    assert max(i for i, d in enumerate(descs) if d == PASS) < descs.index(LAYOUT_BAR), seen  # the pass, then the layout
    assert {tuple(p[1:]) for p in seen if p[2:] == [PASS]} == {(2, PASS)}  # 16 images, 8 a batch
    assert all(0 <= p[0] <= 2 for p in seen if p[2:] == [PASS])
    assert RENDERS_BAR in descs[descs.index(LAYOUT_BAR) :], seen
