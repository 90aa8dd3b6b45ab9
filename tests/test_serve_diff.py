"""The explorer's diff page (issue 46): ``serve --model-b``, ``/m/<model>/<layer>/diff`` computed by the diff
job in a worker with progress, cached, and refused like every other route.

The explorer explores the clean net of ``tests/backdoor_net.py``'s pair (A) with its backdoored fine-tune as the
second model (B), over the pair's 80 held-out images only (no bundled photos): the page knows its answer, the
backdoor's class first and the first changed unit's exemplars marked.
"""

from __future__ import annotations

import re
import time
import urllib.parse

import pytest
from starlette.testclient import TestClient

from filterscope.cli import main
from filterscope.outputs.cache import RenderCache
from filterscope.serve.guard import Access

BASE = "http://127.0.0.1:8000"
LAYER = "relu3"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from backdoor_net import make_pair

    return make_pair(tmp_path_factory.mktemp("backdoor"), seed=0, target=7, pos=(3, 3))


def _load(pair, weights):
    from filterscope.models import load_model

    return load_model(f"{pair.code}:Net", weights=str(weights), input_size=24)


@pytest.fixture(scope="module")
def ex(pair, tmp_path_factory):
    from filterscope.serve.app import Explorer

    e = Explorer(
        _load(pair, pair.weights_a),
        RenderCache(tmp_path_factory.mktemp("diffserve") / "cache"),
        workers=1,
        bundled=False,
        images=pair.images,
        model_b=_load(pair, pair.weights_b),
    )
    yield e
    e.jobs.close()


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """Two random-weight checkpoints of the backdoor net and three images: enough for the refusals."""
    import backdoor_net

    return backdoor_net.untrained_pair(tmp_path_factory.mktemp("untrained"))


@pytest.fixture(scope="module")
def small(untrained, tmp_path_factory):
    from filterscope.models import load_model
    from filterscope.serve.app import Explorer

    a, b = (
        load_model(f"{untrained / 'net.py'}:Net", weights=str(untrained / f"w{s}.pt"), input_size=24) for s in (0, 1)
    )
    e = Explorer(a, RenderCache(tmp_path_factory.mktemp("small") / "cache"), workers=1, bundled=False,
                 images=untrained / "images", model_b=b)  # fmt: skip
    yield e
    e.jobs.close()


def _client(ex, access: Access | None = None) -> TestClient:
    from filterscope.serve.app import create_app

    return TestClient(create_app(ex, access or Access(port=8000)), base_url=BASE)


def _wait(c: TestClient, url: str, timeout: float = 120) -> dict:
    t, seen = time.monotonic(), []
    while (j := c.post(url).json())["state"] not in ("done", "error", "cancelled"):
        assert time.monotonic() - t < timeout, j
        if j.get("progress"):
            seen.append(j["progress"])
        time.sleep(0.1)
    return {**j, "seen": seen}


@pytest.mark.slow
def test_diff_page_computes_the_backdoor_diff_in_a_worker_and_caches_it(pair, ex):
    m = urllib.parse.quote(ex.model.name)
    page, api = f"/m/{m}/{LAYER}/diff", f"/api/diff/{m}/{LAYER}"
    with _client(ex) as c:
        home = c.get("/").text
        assert 'action="/diff"' in home and ex.model_b.name in home
        r = c.get(f"/diff?layer={LAYER}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == page
        first = c.get(page)
        assert first.status_code == 200 and 'data-job="' in first.text  # not computed yet: the page polls
        assert c.get(api).json()["state"] == "none"  # a GET only reports
        t = time.monotonic()
        j = _wait(c, api)
        seconds = time.monotonic() - t
        assert j["state"] == "done", j
        # progress came from the job's own bars (run_job's on_progress), with what they count
        assert any(len(p) == 3 and str(p[2]).startswith("diff") for p in j["seen"]) or seconds < 1, j["seen"]
        done = c.get(page).text
        again = c.post(api).json()
        assert again["state"] == "done" and ex.jobs.started == 1  # the finished run is not started again
    rec = __import__("filterscope.serve.store", fromlist=["load_json"]).load_json(ex.cache, j["id"])
    assert rec["classes"][0]["class"] == pair.target  # the backdoor's class moves most
    units = [u for u in rec["units"] if "tiles_b" in u]
    assert len(units) == 12 and all(len(u["tiles_b"]) == 4 for u in units)
    names = {h: p.name for h, p in ex.photos.items()}
    top = [names[e["image"].split(".")[0]] for e in units[0]["top"][:10]]
    assert sum(n in pair.marked for n in top) >= 8, top  # the first changed unit fires on the mark
    # the page: the classes first, then the units most changed first with their crops and links into A
    assert done.index('id="diff-classes"') < done.index(f'id="unit-{units[0]["channel"]}"')
    assert f"<td>{pair.target} · " in done
    for u in units[:3]:
        a = u["partner"] if u["partner"] is not None else u["best"]
        assert f'href="/m/{m}/{LAYER}/f/{a}"' in done
    crops = re.findall(r'<img src="(/png/[0-9a-f]{64}\.png)"', done)
    assert len(crops) >= 12 * 4
    with _client(ex) as c:
        assert c.get(crops[0]).headers["content-type"] == "image/png"
        assert "diff with" in c.get(f"/m/{m}/{LAYER}/f/0").text  # the filter page links the diff
    assert (ex.cache.root / "results" / "diff" / j["id"] / "diff.json").is_file()  # the job's own run folder
    ex.jobs.jobs.clear()  # forgotten by the job table (as after 10 minutes): read from the cache
    with _client(ex) as c:
        assert c.post(api).json()["cached"] is True and ex.jobs.started == 1
    print(f"diff job over {len(ex.photos)} images: {seconds:.1f} s wall (worker start included)")


def test_diff_routes_refuse_forged_layers_and_foreign_requests(small):
    ex = small
    m = urllib.parse.quote(ex.model.name)
    with _client(ex) as c:
        started = ex.jobs.started
        for url in (
            f"/m/{m}/nolayer/diff",
            f"/m/{m}/..%2F..%2Fetc/diff",
            f"/m/other/{LAYER}/diff",
            f"/m/{m}/{LAYER}/diff?layer_b=nolayer",
            f"/m/{m}/{LAYER}/diff?layer_b=..%2Fetc",
            f"/api/diff/{m}/nolayer",
            f"/api/diff/{m}/{LAYER}?layer_b=fc",  # a layer without maps
        ):
            for method in ("GET", "POST") if url.startswith("/api/") else ("GET",):
                r = c.request(method, url)
                assert r.status_code == 404, (method, url, r.status_code)
                assert "root:" not in r.text
        assert c.get("/diff?layer=nolayer", follow_redirects=False).status_code == 400
        # cross-site POST and a foreign Host start nothing
        for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}, {"host": "evil.example"}):
            r = c.post(f"/api/diff/{m}/{LAYER}", headers=headers)
            assert r.status_code in (400, 403), (headers, r.status_code)
        assert c.get(f"/m/{m}/{LAYER}/diff", headers={"host": "evil.example"}).status_code == 400
        assert ex.jobs.started == started


def test_without_a_second_model_the_diff_is_404_and_nothing_links_to_it(untrained, small, tmp_path):
    from filterscope.serve.app import Explorer

    e = Explorer(small.model, RenderCache(tmp_path / "cache"), workers=1, bundled=False, images=untrained / "images")
    try:
        m = urllib.parse.quote(e.model.name)
        with _client(e) as c:
            for url in (f"/m/{m}/{LAYER}/diff", f"/api/diff/{m}/{LAYER}", f"/diff?layer={LAYER}"):
                for method in ("GET", "POST") if url.startswith("/api/") else ("GET",):
                    assert c.request(method, url, follow_redirects=False).status_code == 404, url
            for url in ("/", f"/m/{m}/{LAYER}/f/0"):
                text = c.get(url).text
                assert "/diff" not in text and "diff with" not in text, url
        assert e.jobs.started == 0
    finally:
        e.jobs.close()


def test_serve_b_options_without_model_b_are_one_line_exit_2(capsys):
    for args in (["--weights-b", "w.pt"], ["--input-size-b", "24"], ["--trust-checkpoint-b"]):
        rc = main(["serve", "--port", "0", *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "needs --model-b" in err, (args, err)


def test_serve_loads_the_second_model_with_its_b_options(untrained, monkeypatch):
    import torch

    import filterscope.serve.server as server

    got = {}
    monkeypatch.setattr(server, "run_server", lambda load, **kw: got.update(kw, a=load()))
    code = f"{untrained / 'net.py'}:Net"
    rc = main(["serve", "--model", code, "--weights", str(untrained / "w0.pt"), "--input-size", "24",
               "--model-b", code, "--weights-b", str(untrained / "w1.pt"), "--input-size-b", "24"])  # fmt: skip
    assert rc == 0
    b = got["load_model_b"]()
    assert b.input_size == 24 and got["a"].input_size == 24
    wa, wb = got["a"].net.conv1.weight, b.net.conv1.weight
    assert not torch.equal(wa, wb)  # B's own checkpoint
    assert wb.equal(torch.load(untrained / "w1.pt")["conv1.weight"].to(wb.device))
    got.clear()
    assert main(["serve", "--model", code, "--weights", str(untrained / "w0.pt"), "--input-size", "24"]) == 0
    assert got["load_model_b"] is None
