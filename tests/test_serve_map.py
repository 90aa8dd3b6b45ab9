"""The explorer's map pages (issue 45): the map of a layer over the server's photos, computed once by
``jobs.activation_map`` (through ``run_job``) in a worker with progress and cached; hovering data, a cell's page,
the class map, and the file route that serves only the map's pictures. The real efficientnet_lite0 on a
6-photo set with a 2×2 grid, so the job takes a minute; on loopback (Starlette's TestClient), loops bounded."""

from __future__ import annotations

import re
import shutil

import pytest
from serve_jobs import wait_job

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
