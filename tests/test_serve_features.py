"""The explorer's feature browser (issue 44, item 5): ``/m/<model>/<layer>/features`` is the dictionary job
(``jobs.layer_dictionary``'s ``JOB`` through ``run_job``) run once in a worker with progress and cached; an index
with a search (name, class, channel number) working without JS (``?q=``), one page per feature, the filter
pages' links to the features a channel takes part in, the map cells' nearest features, and every route refused
like the others (forged ids, unknown layers, path traversal, long searches, foreign hosts, cross-site POSTs).

The explorer explores the planted net of ``tests/planted_dictionary.py`` (eight pattern detectors mixed into the
four channels of ``mix``) over 16 of its pattern images, the dictionary trained for 3 epochs with 2 renders:
the worker test takes seconds. On loopback (Starlette's TestClient), every loop bounded.
"""

from __future__ import annotations

import json
import re
import urllib.parse

import numpy as np
import pytest
from planted_dictionary import CLASSES, make_folder, planted_model
from serve_jobs import follow_job, wait_job
from starlette.testclient import TestClient

from filterscope.outputs.cache import RenderCache
from filterscope.serve.guard import Access

BASE = "http://127.0.0.1:8000"
LAYER = "mix"
OPTIONS = {"epochs": 3, "renders": 2, "crops": 0}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("planted") / "images", per_class=2)


@pytest.fixture(scope="module")
def fex(images, tmp_path_factory):
    from filterscope.serve.app import Explorer

    model = planted_model(0)
    model.categories = list(CLASSES)  # the classes by name: the votes and the predicted labels are words
    e = Explorer(
        model, RenderCache(tmp_path_factory.mktemp("featserve") / "cache"), workers=1, bundled=False,
        images=images, dictionary_options=OPTIONS,
    )  # fmt: skip
    yield e
    e.jobs.close()


def _client(ex, access: Access | None = None) -> TestClient:
    from filterscope.serve.app import create_app

    return TestClient(create_app(ex, access or Access(port=8000)), base_url=BASE)


@pytest.fixture(scope="module")
def client(fex):
    with _client(fex) as c:
        yield c


def _m(ex) -> str:
    return f"/m/{ex.model.name}/{LAYER}"


def _wait(client, url, timeout=300.0):
    return wait_job(client, url, timeout, 0.3)


def _shown(page: str) -> set[int]:
    """The features an index page lists and does not hide."""
    return {int(i) for i in re.findall(r'data-id="([0-9]+)"(?![^>]*hidden)', page)}


# ---------------------------------------------------------------- the search and sort rules (no server)


def _feat(j, name=None, label="", votes=(), channels=(), freq=0.1, score=None):
    named = {"name": name, "auc": 0.9, "p": 1e-4} if name else None
    return {
        "feature": j, "frequency": freq, "score": score, "name": named,
        "purity": {"label": label, "share": 0.5} if label else None,
        "votes": [{"class": 0, "name": v, "logit_rise": 0.5} for v in votes],
        "channels": [{"channel": c, "weight": 0.5} for c in channels],
    }  # fmt: skip


def test_search_words_match_name_class_votes_and_a_number_a_channel():
    from filterscope.serve.features import matches

    f = _feat(3, name="espresso OR cup", label="coffee mug", votes=["espresso", "plate"])
    chans = {12, 7, 300}
    assert matches(f, [], chans) and matches(f, ["espresso"], chans) and matches(f, ["mug"], chans)
    assert matches(f, ["plate"], chans) and matches(f, ["12"], chans) and matches(f, ["012"], chans)
    assert matches(f, ["300", "cup"], chans)
    assert not matches(f, ["1"], chans) and not matches(f, ["3"], chans)  # a whole channel: no feature id, no prefix
    assert not matches(f, ["espresso", "zebra"], chans)  # every word must match
    assert not matches(_feat(4), ["espresso"], chans)  # no name, label or votes


def test_a_channel_takes_part_in_the_live_features_with_its_largest_decoder_weights(monkeypatch):
    from filterscope.serve import features as fmod

    monkeypatch.setattr(fmod, "PART_OF", 2)
    dec = np.array([[0.6, 0.0, 0.8], [0.0, -1.0, 0.0], [0.0, 0.3, -0.9], [0.0, 0.2, 0.98]], np.float32)
    feats = [_feat(j) for j in range(4)]
    feats[3]["frequency"] = 0.0  # dead: takes no part
    assert fmod.takes_part(dec, feats) == [
        [(0, pytest.approx(0.6))],  # the only non-zero weight on channel 0
        [(1, -1.0), (2, pytest.approx(0.3))],  # largest |weight| first, signs kept
        [(2, pytest.approx(-0.9)), (0, pytest.approx(0.8))],  # two at most; the dead feature 3 left out
    ]


def test_sort_orders_score_frequency_and_name_unscored_and_unnamed_last():
    from filterscope.serve.features import sort_key

    fs = [
        _feat(0, name="b", freq=0.2, score=0.6), _feat(1, freq=0.5), _feat(2, name="a", freq=0.1, score=0.9),
        _feat(3, name="c", freq=0.0, score=0.6),
    ]  # fmt: skip
    order = {s: [f["feature"] for f in sorted(fs, key=sort_key(s))] for s in ("score", "frequency", "name")}
    assert order == {"score": [2, 0, 3, 1], "frequency": [1, 0, 2, 3], "name": [2, 0, 3, 1]}


def test_cell_features_are_the_decoder_rows_nearest_the_cell_mean(fex, tmp_path):
    """A map whose cell (1, 0) has feature 2's direction as its mean: feature 2 comes first, cosine 1."""
    from filterscope.serve import features as fmod

    dec = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] + 0.01
    rec = {"features": [_feat(j, name=f"f{j}") for j in range(5)]}
    rec["features"][3]["frequency"] = 0.0  # dead: never listed
    run = tmp_path / "dict"
    run.mkdir()
    (run / "dictionary.json").write_text(json.dumps(rec))
    np.savez(run / "dictionary.npz", decoder=dec)
    d = fmod.LayerDictionary("0" * 64, run, rec)
    np.savez(tmp_path / "map.npz", cells=np.array([[0, 0], [1, 0]]), means=np.array([[0, 0, 0, 1], dec[2] * 3]))
    orig = fmod.layer_dictionary
    fmod.layer_dictionary = lambda ex, layer: d
    try:
        near = fmod.cell_features(fex, LAYER, tmp_path, 1, 0)
        other = fmod.cell_features(fex, LAYER, tmp_path, 0, 0)
    finally:
        fmod.layer_dictionary = orig
    assert near[0]["feature"] == 2 and near[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert near[0]["url"].endswith("/features/2") and len(near) == 4  # 5 features, one dead
    assert 3 not in [u["feature"] for u in other]  # the dead one, though it is the cell's own direction


# ---------------------------------------------------------------- refusals before anything is computed


def test_routes_refuse_unknown_models_layers_forged_ids_and_long_searches(client, fex):
    m = _m(fex)
    for url in (
        f"/m/nomodel/{LAYER}/features", f"/m/{fex.model.name}/nolayer/features", f"{m}/features/-1",
        f"{m}/features/abc", f"{m}/features/{'9' * 19}", f"{m}/features/1.5", f"/m/{fex.model.name}/fc/features",
        f"/api/feature-render/{fex.model.name}/{LAYER}/0", f"/api/feature-render/{fex.model.name}/{LAYER}/-3",
    ):  # fmt: skip
        assert client.get(url).status_code == 404, url
    assert client.post(f"/api/features/{fex.model.name}/nolayer").status_code == 404
    r = client.get(f"{m}/features/3", follow_redirects=False)  # not computed yet: to the index, which starts it
    assert r.status_code == 303 and r.headers["location"] == f"{m}/features"
    r = client.get(f"{m}/features?q=" + "x" * 101)
    assert r.status_code == 400 and "at most 100 characters" in r.text
    assert client.get(f"{m}/features?q=" + urllib.parse.quote("é" * 100)).status_code == 200
    assert client.get(f"{m}/features?sort=evil").status_code == 400
    page = client.get(f"{m}/f/1")  # the filter page asks for the dictionary instead of listing features
    assert page.status_code == 200 and "Compute the layer's dictionary" in page.text
    assert f'href="{m}/features"' in page.text
    assert not any(j.kind == "dictionary" for j in fex.jobs.jobs.values())  # GETs start nothing


def test_feature_files_refuse_anything_but_a_render_or_strip(client):
    key = "a" * 64
    for rel in (
        "run.json", "dictionary.npz", "dictionary.json", f"{LAYER}/feature_0001.npy", "..%2F..%2Fx.png",
        f"{LAYER}/..%2F..%2F..%2Fetc%2Fpasswd", f"..%2F{LAYER}/feature_0001.png", "%2Fetc/feature_0001.png",
    ):  # fmt: skip
        assert client.get(f"/featfile/{key}/{rel}").status_code == 404, rel
    assert client.get(f"/featfile/{'A' * 64}/{LAYER}/feature_0001.png").status_code == 404  # not a key
    assert client.get(f"/featfile/{key}/{LAYER}/feature_0001.png").status_code == 404  # no such run


def test_foreign_host_and_cross_site_post_start_no_dictionary(fex):
    url = f"/api/features/{fex.model.name}/{LAYER}"
    with _client(fex) as c:
        assert c.post(url, headers={"host": "evil.example:8000"}).status_code == 400
        assert c.get(f"{_m(fex)}/features", headers={"host": "evil.example"}).status_code == 400
        r = c.post(url, headers={"origin": "http://evil.example", "sec-fetch-site": "cross-site"})
        assert r.status_code == 403
        assert c.post(url, headers={"origin": "http://evil.example"}).status_code == 403
        r = c.post(f"/api/feature-render/{fex.model.name}/{LAYER}/0", headers={"sec-fetch-site": "cross-site"})
        assert r.status_code == 403
    assert not any(j.kind in ("dictionary", "feature-render") for j in fex.jobs.jobs.values())


def test_a_scored_dictionary_from_the_cache_is_listed_by_score(fex, images):
    """A finished dictionary put where the job leaves one (its run folder, then its summary): the index and the
    pages read it with no job, scores and all (the worker test's 16 photos are too few for scores)."""
    from filterscope.serve import store
    from filterscope.serve.app import Explorer
    from filterscope.serve.features import dictionary_key

    ex = Explorer(fex.model, fex.cache, jobs=fex.jobs, bundled=False, images=images, dictionary_options={"epochs": 1})
    key, run, _ = dictionary_key(ex, LAYER)
    feats = [
        _feat(0, name="red", label="red", votes=["red"], channels=[2, 0], score=0.7),
        _feat(1, label="blue", votes=["blue"], channels=[1], freq=0.3, score=0.9),
        _feat(2, name="green", votes=["green"], channels=[3, 2], freq=0.0),
    ]
    for f in feats:
        f.update(mean=1.0, top=[], histogram={"of": "peak activation per image", "edges": [0, 1, 2], "counts": [3, 1]})
        f.update(render=None, exemplars=None)
    metrics = {"features": 3, "explained_variance": 0.9, "explained_variance_held_out": None, "l0": 1.0,
               "dead_fraction": 0.33, "dense_fraction": 0.0, "stability": 0.7}  # fmt: skip
    rec = {"layer": LAYER, "basis": "sae", "metrics": metrics, "scoring": {"labels": "predictions"}, "features": feats}
    run.mkdir(parents=True)
    (run / "dictionary.json").write_text(json.dumps(rec))
    dec = np.array([[0.6, 0, 0.8, 0], [0, 1, 0, 0], [0, 0, 0.6, 0.8]], np.float32)
    np.savez(run / "dictionary.npz", decoder=dec)
    (run / "run.json").write_text(json.dumps({"settings": {"seed": 0}}))
    store.store_json(ex.cache, key, {"run": str(run), "features": 3})
    started = ex.jobs.started
    with _client(ex) as c:
        m = _m(ex)
        page = c.get(f"{m}/features")
        assert page.status_code == 200 and "no scores" not in page.text
        assert [int(i) for i in re.findall(r'data-id="([0-9]+)"', page.text)] == [1, 0, 2]
        assert 'class="dead"' in page.text and "3 of 3 features (1 dead" in page.text
        assert _shown(c.get(f"{m}/features?q=2").text) == {0}  # feature 2 writes on channel 2 too, but it is dead
        assert _shown(c.get(f"{m}/features?q=BLUE").text) == {1} and _shown(c.get(f"{m}/features?q=3").text) == set()
        one = c.get(f"{m}/features/1").text
        assert "0.90 (MIS 2-AFC" in one and f'href="{m}/f/1"' in one and "no name" in one
        assert f'data-job="/api/feature-render/{ex.model.name}/{LAYER}/1"' in one  # no render yet: a render job
        unit = c.get(f"{m}/f/2").text
        assert re.findall(rf'href="{m}/features/([0-9]+)">feature', unit) == ["0"] and "(weight +0.80)" in unit
        assert "No live feature writes on filter 3" in c.get(f"{m}/f/3").text
    assert ex.jobs.started == started


# ---------------------------------------------------------------- the dictionary computed in a worker


@pytest.fixture(scope="module")
def computed(client, fex):
    j, seen = _wait(client, f"/api/features/{fex.model.name}/{LAYER}")
    assert j["state"] == "done", j.get("error")
    from filterscope.serve.features import dictionary_key

    _, run, _ = dictionary_key(fex, LAYER)
    return json.loads((run / "dictionary.json").read_text()), run, seen


@pytest.mark.slow
def test_dictionary_job_runs_once_in_a_worker_with_progress_and_is_cached(client, fex, computed, images):
    from filterscope.serve.app import Explorer

    rec, run, seen = computed
    assert any(p and len(p) == 3 and "dictionary" in p[2] for p in seen)  # the job's own bars
    run_rec = json.loads((run / "run.json").read_text())
    assert run_rec["status"] == "complete" and run_rec["settings"]["layer"] == LAYER
    assert run_rec["settings"]["epochs"] == 3 and len(rec["features"]) == 8  # the JOB with the explorer's options
    assert client.post(f"/api/features/{fex.model.name}/{LAYER}").json()["state"] == "done"
    started = fex.jobs.started
    again = Explorer(fex.model, fex.cache, jobs=fex.jobs, bundled=False, images=images, dictionary_options=OPTIONS)
    with _client(again) as c:  # another server on the same cache: done, no new job
        j = c.post(f"/api/features/{fex.model.name}/{LAYER}").json()
        assert j["state"] == "done" and fex.jobs.started == started
        assert "data-id=" in c.get(f"{_m(fex)}/features").text
    other = Explorer(fex.model, fex.cache, jobs=fex.jobs, bundled=False, images=images, dictionary_options={})
    with _client(other) as c:  # other options (the defaults): another dictionary, not computed
        assert c.get(f"/api/features/{fex.model.name}/{LAYER}").json()["state"] == "none"


@pytest.mark.slow
def test_the_page_follows_the_activation_pass_before_training(images, tmp_path):
    """Issue 44: while the layer's activation pass runs (here a net slowed to 0.4 s a batch, 2 batches), the job's
    status reports the pass (``[done, total, "activation pass"]``), before the first training epoch; the page's
    script prints it (live.js: ``running · activation pass 1/2 · 3.1 s``, then ``training the dictionary …``)."""

    from planted_dictionary import planted_model

    from filterscope.serve.app import Explorer

    model = planted_model(0, delay=0.4)
    model.categories = list(CLASSES)
    opts = {"epochs": 2, "no_renders": True, "crops": 0, "features": 8}
    e = Explorer(model, RenderCache(tmp_path / "cache"), workers=1, bundled=False, images=images,
                 dictionary_options=opts)  # fmt: skip
    api = f"/api/features/{model.name}/{LAYER}"
    try:
        with _client(e) as c:
            j, seen = follow_job(c, api)
            assert j["state"] == "done", j
            assert e.jobs.started == 1
    finally:
        e.jobs.close()
    descs = [p[2] for p in seen]
    assert "activation pass" in descs, seen
    at = descs.index("activation pass")
    training = [d.startswith("training the dictionary (") for d in descs]
    assert not any(training[:at]) and any(training[at:]), seen  # the pass first, then the epochs
    assert {tuple(p[1:]) for p in seen if p[2] == "activation pass"} == {(2, "activation pass")}  # 16 images, 8 a batch
    assert all(0 <= p[0] <= 2 for p in seen if p[2] == "activation pass")


@pytest.mark.slow
def _takes_part(rec: dict, run) -> list[list[tuple[int, float]]]:
    """Per channel, the 8 live features with the largest |decoder weight| on it (from the run's npz)."""
    dec = np.load(run / "dictionary.npz")["decoder"]
    live = np.array([f["frequency"] > 0 for f in rec["features"]])
    out = []
    for c in range(dec.shape[1]):
        order = sorted((j for j in range(len(dec)) if live[j] and dec[j, c] != 0), key=lambda j: (-abs(dec[j, c]), j))
        out.append([(j, float(dec[j, c])) for j in order[:8]])
    return out


def test_index_sorted_searched_on_the_server_and_linked(client, fex, computed):
    rec, run, _ = computed
    m = _m(fex)
    r = client.get(f"{m}/features")
    assert r.status_code == 200 and 'id="q"' in r.text
    ids = [int(i) for i in re.findall(r'data-id="([0-9]+)"', r.text)]
    from filterscope.serve.features import sort_key

    assert ids == [f["feature"] for f in sorted(rec["features"], key=sort_key("score"))]
    assert re.findall(r"<tr [^>]*hidden", r.text) == []
    by_freq = [int(i) for i in re.findall(r'data-id="([0-9]+)"', client.get(f"{m}/features?sort=frequency").text)]
    assert [rec["features"][i]["frequency"] for i in by_freq] == sorted(
        (f["frequency"] for f in rec["features"]), reverse=True
    )
    # a channel number finds the features it takes part in, without JS
    c = rec["features"][0]["channels"][0]["channel"]
    want = {j for j, _ in _takes_part(rec, run)[c]}
    assert want and len(want) <= 8
    page = client.get(f"{m}/features?q={c}").text
    assert _shown(page) == want and f'value="{c}"' in page
    # a word: the name, label or votes of the features it finds, and of no other
    word = rec["features"][0]["votes"][0]["name"].split("_")[0]  # e.g. "stripes"
    assert word in CLASSES or word == "stripes"
    page = client.get(f"{m}/features?q={urllib.parse.quote(word)}").text
    shown = _shown(page)
    from filterscope.serve.features import matches

    assert shown == {f["feature"] for f in rec["features"] if matches(f, [word.lower()], set())} and shown
    assert f"{len(shown)} of 8 features" in page
    assert client.get(f"{m}/features?q=zzzz-nothing").text.count(" hidden") >= 8


@pytest.mark.slow
def test_feature_page_shows_its_parts_and_links_both_ways(client, fex, computed):
    rec, run, _ = computed
    m = _m(fex)
    f = next(f for f in rec["features"] if f["render"])
    r = client.get(f"{m}/features/{f['feature']}")
    assert r.status_code == 200
    for c in f["channels"]:
        assert f'href="{m}/f/{c["channel"]}"' in r.text
    for v in f["votes"]:
        assert f'href="{m}/class/{v["class"]}"' in r.text  # the planted net's 8 classes have pages
    imgs = re.findall(r'src="([^"]+)"', r.text)
    assert any("/feature_" in u for u in imgs) and any("/exemplars_" in u for u in imgs)
    for u in imgs:
        assert client.get(u).status_code == 200, u
    assert len(re.findall(r'href="/m/[^"]+/img/[0-9a-f]{64}"', r.text)) == len(f["top"])
    assert '<svg class="fhist"' in r.text and r.text.count("<rect") == len(f["histogram"]["counts"])
    # forged ids, traversal on the real run's key
    assert client.get(f"{m}/features/8").status_code == 404
    assert client.get(f"{m}/features/{'9' * 18}").status_code == 404
    key = re.search(r"/featfile/([0-9a-f]{64})/", r.text).group(1)
    for rel in ("run.json", "dictionary.npz", f"{LAYER}/..%2Frun.json", f"..%2F{key}/run.json"):
        assert client.get(f"/featfile/{key}/{rel}").status_code == 404, rel
    # the filter page lists the features its channel takes part in, largest |weight| first, and links to them
    c = f["channels"][0]["channel"]
    page = client.get(f"{m}/f/{c}").text
    listed = [int(i) for i in re.findall(rf'href="{m}/features/([0-9]+)">feature', page)]
    assert listed == [j for j, _ in _takes_part(rec, run)[c]] and listed


@pytest.mark.slow
def test_an_unrendered_feature_renders_on_request_under_the_jobs_cache_key(client, fex, computed):
    rec, _, _ = computed
    m = _m(fex)
    done = next(f for f in rec["features"] if f["render"])
    todo = next(f for f in rec["features"] if not f["render"])
    api = f"/api/feature-render/{fex.model.name}/{LAYER}"
    j = client.get(f"{api}/{done['feature']}").json()  # the job's render is in the render cache under this key
    assert j["state"] == "done" and j["cached"] is True
    page = client.get(f"{m}/features/{todo['feature']}").text
    assert f'data-job="{api}/{todo["feature"]}"' in page
    j, seen = _wait(client, f"{api}/{todo['feature']}")
    assert j["state"] == "done", j.get("error")
    png = client.get(j["urls"][0])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert f'src="{j["urls"][0]}"' in client.get(f"{m}/features/{todo['feature']}").text


@pytest.mark.slow
def test_map_cell_lists_its_nearest_features_once_the_dictionary_is_computed(client, fex, computed, images):
    from filterscope.serve import app as app_mod
    from filterscope.serve.app import Explorer

    rec, run, _ = computed
    old = app_mod.MAP_GRID
    app_mod.MAP_GRID = 2  # few cells: few renders
    try:
        j, _ = _wait(client, f"/api/map/{fex.model.name}/{LAYER}")
        assert j["state"] == "done", j.get("error")
        cells = re.findall(r'<a class="mcell" href="([^"]+)"', client.get(f"{_m(fex)}/map").text)
        assert cells
        page = client.get(cells[0]).text
        near = [int(i) for i in re.findall(rf'href="{_m(fex)}/features/([0-9]+)">', page)]
        assert near and all(rec["features"][k]["frequency"] > 0 for k in near)
        # the nearest first: cosine of the cell's mean with the decoder rows, from the map's own map.npz
        cos = [float(x) for x in re.findall(r'/features/[0-9]+">[0-9]+</a>[^(]*\(([-0-9.]+)\)', page)]
        assert cos == sorted(cos, reverse=True) and len(cos) == len(near)
        other = Explorer(fex.model, fex.cache, jobs=fex.jobs, bundled=False, images=images, dictionary_options={})
        with _client(other) as c:  # the same map, a dictionary not computed: the link that computes it
            page = c.get(cells[0]).text
            assert "compute the layer's dictionary" in page and f'href="{_m(fex)}/features"' in page
    finally:
        app_mod.MAP_GRID = old
