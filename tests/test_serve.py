"""The render cache, the output-folder lock and the live explorer (``filterscope serve``), on the real model."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from filterscope.cli import main
from filterscope.errors import UsageError
from filterscope.outputs.cache import RenderCache, key_fields, make_key, weights_hash
from filterscope.outputs.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
FAST4 = {"steps": 4}


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTERSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FILTERSCOPE_NO_CACHE", raising=False)
    return RenderCache(tmp_path / "cache")


# ---------------------------------------------------------------- cache


def test_cache_key_is_stable_and_covers_every_field(model):
    from filterscope.optvis.presets import get_preset

    s = get_preset("fast").for_model(model).as_dict()
    k = make_key(key_fields(model, "blocks.5", "blocks.5:3", s, 0))
    assert k == make_key(key_fields(pickle.loads(pickle.dumps(model)), "blocks.5", "blocks.5:3", dict(s), 0))
    assert weights_hash(model) == weights_hash(pickle.loads(pickle.dumps(model)))
    others = [
        key_fields(model, "blocks.4", "blocks.5:3", s, 0),
        key_fields(model, "blocks.5", "blocks.5:4", s, 0),
        key_fields(model, "blocks.5", "blocks.5:3", {**s, "steps": 47}, 0),
        key_fields(model, "blocks.5", "blocks.5:3", s, 1),
    ]
    assert len({k, *(make_key(f) for f in others)}) == 5


def test_cache_reuse_is_byte_identical_and_records_settings(tiny_model, tmp_path, cache_on):
    """The cache's bookkeeping, on the tiny CNN of tests/tiny_net.py."""
    from filterscope.jobs.channels import render_channels
    from filterscope.optvis.presets import get_preset

    model = tiny_model
    st = get_preset("fast").with_(**FAST4)
    a = render_channels(model, "conv3", [0, 1], settings=st, out=tmp_path / "a", progress=False)
    assert cache_on.info()["entries"] == 2
    t = time.perf_counter()
    b = render_channels(model, "conv3", [0, 1], settings=st, out=tmp_path / "b", progress=False)
    assert time.perf_counter() - t < 0.5 * a.data.summary.seconds + 0.5
    os.environ["FILTERSCOPE_NO_CACHE"] = "1"
    fresh = render_channels(model, "conv3", [0, 1], settings=st, out=tmp_path / "c", progress=False)
    for c in (0, 1):
        rel = f"conv3/channel_{c:04d}.png"
        assert (tmp_path / "b" / rel).read_bytes() == (fresh.run_dir / rel).read_bytes()
    rb, rc = (json.loads((p / "run.json").read_text())["results"] for p in (b.run_dir, fresh.run_dir))
    assert rb == rc
    entry = json.loads(next((tmp_path / "cache" / "renders").rglob("*.json")).read_text())
    assert entry["layer"] == "conv3" and entry["seed"] == 0 and entry["settings"]["steps"] == 4
    assert entry["model"]["weights_sha256"] == weights_hash(model)


def test_cache_ignores_broken_entries_and_cli_info_clear(tmp_path, capsys):
    c = RenderCache(tmp_path / "c")
    key = "ab" * 32
    png = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(png, format="PNG")
    c.put(key, png.getvalue(), {"layer": "x"})
    assert c.get(key).png == png.getvalue()
    png_path = tmp_path / "c" / "renders" / "ab" / f"{key}.png"
    png_path.write_bytes(png.getvalue()[:20])  # a torn PNG no longer matches its record
    assert c.get(key) is None
    (tmp_path / "c" / "renders" / "ab" / f"{key}.json").unlink()
    assert c.get(key) is None and c.info()["entries"] == 0
    c.put(key, png.getvalue(), {"layer": "x"})
    assert main(["cache", "info", "--cache", str(tmp_path / "c"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1
    assert main(["cache", "clear", "--cache", str(tmp_path / "c")]) == 0
    assert "removed 2 files" in capsys.readouterr().out and c.info()["entries"] == 0
    with pytest.raises(ValueError):
        c.get("../../etc/passwd")


def test_second_writer_of_an_output_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "from filterscope.outputs.rundir import lock_dir; import time; "
        f"lock_dir({str(out)!r}); print('ok', flush=True); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(UsageError, match="in use by another filterscope run"):
            RunDir(out, "render", {})
        rc = main(["render", "--layer", "blocks.5", "--channels", "0", "--steps", "2", "--out", str(out), "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: output folder") and err.count("\n") == 1
        assert not (out / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    RunDir(out, "render", {}).finish()  # free again once the holder is gone
    assert (out / "run.json").is_file()


# ---------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def explorer(model, tmp_path_factory):
    from filterscope.serve.app import Explorer

    root = tmp_path_factory.mktemp("serve")
    ex = Explorer(model, RenderCache(root / "cache"), workers=2, per_client=3)
    ex.jobs.warm()
    yield ex
    ex.jobs.close()


@pytest.fixture(scope="module")
def client(explorer):
    from starlette.testclient import TestClient

    from filterscope.serve.app import create_app

    with TestClient(create_app(explorer), base_url="http://127.0.0.1:8000") as c:
        yield c


def _csrf(client) -> str:
    """The upload form's session token (and, in the client's cookie jar, the signed client id)."""
    return client.get("/").text.split('name="csrf" value="')[1].split('"')[0]


def _wait(client, url, timeout=60.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        j = client.post(url).json()  # a job starts from a POST (and a POST polls it)
        if j["state"] in ("done", "error", "cancelled"):
            return j
        time.sleep(0.1)
    raise AssertionError(f"{url} not done in {timeout} s: {j}")


@pytest.mark.slow
def test_app_explanation_and_filter_pages(client, explorer):
    home = client.get("/")
    assert home.status_code == 200 and "bn2 (1280×7×7) — default" in home.text
    h = explorer.photo_hash["coffee.jpg"]
    r = client.get(f"/go?photo={h}&layer=blocks.5", follow_redirects=False)
    url = f"/m/efficientnet_lite0/blocks.5/img/{h}"
    assert r.status_code == 303 and r.headers["location"] == url
    assert client.get(url).status_code == 200
    assert _wait(client, f"/api/explain/efficientnet_lite0/blocks.5/{h}")["state"] == "done"
    page = client.get(url).text
    assert "espresso" in page and page.count('class="tile filter"') == 24
    rec, maps = explorer.maps("blocks.5", h)
    top = rec["by_contribution"][0]["channel"]
    assert rec["by_contribution"][0]["contribution"] >= rec["by_contribution"][-1]["contribution"]
    assert maps.shape == (192, 7, 7)
    f = client.get(f"{url}/f/{top}")
    assert f.status_code == 200 and f"filter {top}" in f.text
    where = client.get(f"/where/efficientnet_lite0/blocks.5/{h}/{top}.png")
    assert where.status_code == 200 and Image.open(io.BytesIO(where.content)).size == (96, 96)
    drop = rec["ablation_top8"]  # the contribution ranking, checked by zeroing its top 8
    assert drop["contribution"] > drop["random"] and drop["contribution"] > 0.05, drop
    acc = _wait(client, f"/api/accent/efficientnet_lite0/blocks.5/{h}/{top}")
    assert acc["state"] == "done" and len(acc["urls"]) == 2, acc
    pic = client.get(acc["urls"][0])
    assert pic.status_code == 200 and Image.open(io.BytesIO(pic.content)).size == (224, 224)
    again = client.get(f"/api/accent/efficientnet_lite0/blocks.5/{h}/{top}").json()
    assert again["state"] == "done" and again["gain"] > 1.0 and 0.5 <= again["ssim"] <= 1.0, again


@pytest.mark.slow
def test_app_refuses_bad_input(client):
    def err(r):
        return r.text.split('class="error">')[1].split("<")[0]

    tok = _csrf(client)
    bad = client.post(
        "/upload", files={"file": ("x.jpg", b"<html>not an image</html>")}, data={"layer": "bn2", "csrf": tok}
    )
    assert bad.status_code == 400 and err(bad) == "the upload is not an image Pillow can read"
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    torn = client.post("/upload", files={"file": ("t.png", buf.getvalue()[:-40])}, data={"layer": "bn2", "csrf": tok})
    assert torn.status_code == 400
    bomb = io.BytesIO()
    Image.new("1", (10000, 10000)).save(bomb, format="PNG")  # 100 megapixels in a few kB
    r = client.post("/upload", files={"file": ("b.png", bomb.getvalue())}, data={"layer": "bn2", "csrf": tok})
    assert r.status_code == 400 and "decompression bomb" in err(r)
    big = client.post("/upload", files={"file": ("big.png", b"0" * (21 * 2**20))}, data={"layer": "bn2", "csrf": tok})
    assert big.status_code == 413
    nope = client.post("/upload", files={"file": ("x.png", buf.getvalue())}, data={"layer": "nope", "csrf": tok})
    assert nope.status_code == 400
    for url in (
        "/m/efficientnet_lite0/blocks.9/f/1",
        "/m/efficientnet_lite0/blocks.5/f/192",
        "/m/resnet18/blocks.5/f/1",
        "/photo/..%2F..%2Fetc%2Fpasswd.png",
        "/png/" + "0" * 64 + ".png",
        "/m/efficientnet_lite0/blocks.5/img/../../../etc/passwd",
        "/static/..%2Fcli.py",
    ):
        assert client.get(url).status_code == 404, url
    assert client.get("/api/render/efficientnet_lite0/blocks.5/1?method=bogus").status_code == 400


@pytest.mark.slow
def test_upload_is_stored_under_its_hash(client, explorer):
    from filterscope.models.inputs import sample_image_path

    data = sample_image_path().read_bytes()
    form = {"layer": "blocks.5", "csrf": _csrf(client)}
    r = client.post("/upload", files={"file": ("../../evil name.jpg", data)}, data=form)
    assert r.status_code == 200 and "/img/" in str(r.url)
    files = [p.name for p in (explorer.cache.root / "uploads").iterdir()]
    import hashlib

    assert files == [hashlib.sha256(data).hexdigest() + ".img"]


@pytest.mark.slow
def test_same_filter_asked_by_ten_clients_renders_once_and_cap(client, explorer):
    started = explorer.jobs.started
    url = "/api/render/efficientnet_lite0/blocks.5/7?seed=3"
    with ThreadPoolExecutor(10) as pool:
        states = list(pool.map(lambda _: client.post(url).json()["state"], range(10)))
    assert set(states) <= {"queued", "running", "done"}
    j = _wait(client, url)
    assert j["state"] == "done" and explorer.jobs.started - started == 1
    assert client.get(j["urls"][0]).headers["content-type"] == "image/png"
    again = client.post(url).json()  # polled again: the same picture, no new job
    assert again["state"] == "done" and again["urls"] == j["urls"] and explorer.jobs.started - started == 1
    # one client may have at most 3 unfinished jobs here (per_client=3): the 4th is refused with 429
    codes = [client.post(f"/api/render/efficientnet_lite0/blocks.6/{c}?seed=9").status_code for c in range(4)]
    assert codes == [200, 200, 200, 429]
    for c in range(3):
        explorer.jobs.cancel(explorer.render_key("blocks.6", c, "fast", 9))
    t = time.monotonic()
    while any(j.state in ("queued", "running") for j in explorer.jobs.jobs.values()) and time.monotonic() - t < 20:
        time.sleep(0.1)
    states = {explorer.jobs.jobs[explorer.render_key("blocks.6", c, "fast", 9)].state for c in range(3)}
    assert states == {"cancelled"}


# ---------------------------------------------------------------- a real server


def _post(url: str) -> urllib.request.Request:
    """A POST of ``url`` with no body: how the pages start a job (and poll it)."""
    return urllib.request.Request(url, data=b"", method="POST")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(explorer, tmp_path_factory):
    """The explorer on uvicorn at 127.0.0.1:<random port>, with a small atlas built through the cache."""
    import uvicorn

    from filterscope.jobs.atlas import atlas as atlas_job
    from filterscope.serve.app import create_app

    atlas = tmp_path_factory.mktemp("atlas")
    atlas_job(explorer.model, {"blocks.5": [0, 1]}, out=atlas, method="fast", seed=0, threads=1)
    from filterscope.serve.store import import_atlas

    assert import_atlas(explorer.model, explorer.cache, atlas) == 2  # as `filterscope serve ATLAS_DIR` does
    explorer.atlas = atlas
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(explorer), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)
    explorer.atlas = None


@pytest.mark.slow
def test_browser_upload_explain_click_filter_and_atlas_links(server, explorer, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium installed (apt install chromium)")
    pw = pytest.importorskip("playwright.sync_api")
    from filterscope.models.inputs import sample_photos_dir

    errors = []  # the waits below bound a hang; a second test worker may share the cores
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.select_option("form[action='/upload'] select", "blocks.5")
        page.set_input_files("input[type=file]", str(sample_photos_dir() / "astronaut_0.jpg"))
        page.click("text=Upload and explain")
        page.wait_for_selector("a.tile.filter", timeout=60_000)
        assert "/m/efficientnet_lite0/blocks.5/img/" in page.url
        loaded = "Array.from(document.querySelectorAll('a.tile img')).every(i => i.complete && i.naturalWidth > 0)"
        page.wait_for_function(loaded, timeout=60_000)  # every "where it fires" thumbnail
        page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
        page.locator("a.tile.filter").first.click()
        page.wait_for_selector("#where")
        page.evaluate("window.fsMark = 1")  # gone if the page reloads
        page.wait_for_selector("#render img:not([hidden])", timeout=60_000)
        assert page.evaluate("document.querySelector('#render img').naturalWidth") == 224
        assert page.evaluate("document.querySelector('#where').naturalWidth") == 320
        page.wait_for_selector("#accent img:not([hidden])", timeout=120_000)  # the accentuation and its change map
        sizes = page.evaluate("[...document.querySelectorAll('#accent img')].map(i => i.naturalWidth)")
        assert sizes == [224, 224], sizes
        # tuning, circuit and natural examples are drawn by the server: each finished part is swapped in place
        for part in ("#tuning p.desc", "#circuit .tiles", "#examples figure"):
            page.wait_for_selector(part, timeout=240_000)
        page.wait_for_selector("#circuit .tiles img[src]", timeout=120_000)  # the swapped-in part's own renders
        assert page.evaluate("window.fsMark") == 1, "the filter page reloaded while its jobs ran"
        swaps = page.evaluate("[...document.querySelectorAll('.part')].map(p => p.id + ':' + p.dataset.swaps)")
        assert swaps == ["tuning:1", "circuit:1", "examples:1"]  # each part was a job, swapped in once
        page.screenshot(path=str(tmp_path / "filter.png"), full_page=True)
        # the atlas, linked both ways
        page.goto(server + "/atlas/blocks.5/channel_0001.html")
        page.click("text=open in the live explorer")
        assert page.url.endswith("/m/efficientnet_lite0/blocks.5/f/1")
        page.wait_for_selector("#render img:not([hidden])", timeout=10_000)
        assert "from the cache" in page.inner_text("#render")  # the atlas's render, not a new one
        page.click("text=this filter in the atlas")
        assert page.url.endswith("/atlas/blocks.5/channel_0001.html")
        browser.close()
    assert not errors
    out = os.environ.get("FILTERSCOPE_SCREENSHOTS")
    if out:
        for f in ("explain.png", "filter.png"):
            shutil.copy(tmp_path / f, Path(out) / f"serve_{f}")


@pytest.mark.slow
def test_load_cached_pages_one_render_for_ten_clients_and_bad_uploads(server, explorer):
    h = explorer.photo_hash["coffee.jpg"]
    base = f"{server}/m/efficientnet_lite0/blocks.5/img/{h}"
    key = explorer.render_key("blocks.5", 1, "fast", 0)  # rendered by the atlas
    cached = [base, f"{base}/f/112", f"{server}/png/{key}.png", f"{server}/photo/{h}.png", f"{server}/"]
    for u in cached:
        assert urllib.request.urlopen(u, timeout=30).status == 200

    def fetch(u: str, post: bool = False) -> tuple[int, float]:
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(_post(u) if post else u, timeout=10) as r:
                r.read()
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        return code, time.perf_counter() - t

    with urllib.request.urlopen(f"{server}/", timeout=30) as r:  # a session: the signed cookie and its token
        cookie = r.headers["set-cookie"].split(";")[0]
        tok = r.read().decode().split('name="csrf" value="')[1].split('"')[0]

    def bad_upload(_) -> int:
        body = (
            b'--xx\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n' + tok.encode() + b"\r\n"
            b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nGIF89a broken\r\n--xx--\r\n'
        )
        headers = {"Content-Type": "multipart/form-data; boundary=xx", "Cookie": cookie}
        req = urllib.request.Request(f"{server}/upload", body, headers)
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as e:
            return e.code
        return 200

    started = explorer.jobs.started
    uncached = f"{server}/api/render/efficientnet_lite0/blocks.5/33?seed=5"
    with ThreadPoolExecutor(10) as pool:  # ten clients ask for the same uncached filter at once
        same = list(pool.map(lambda _: fetch(uncached, post=True)[0], range(10)))
    assert same == [200] * 10
    t = time.monotonic()
    while json.load(urllib.request.urlopen(_post(uncached)))["state"] != "done" and time.monotonic() - t < 30:
        time.sleep(0.2)
    t0 = time.monotonic()
    with ThreadPoolExecutor(20) as pool:  # 20 clients on cached pages and images, bad uploads mixed in
        bad = pool.map(bad_upload, range(10))
        results = list(pool.map(fetch, [cached[i % len(cached)] for i in range(400)]))
        bad = list(bad)
    assert time.monotonic() - t0 < 40  # a hang guard: a second test worker may share the cores
    assert bad == [400] * 10
    codes = [c for c, _ in results]
    lat = sorted(s for _, s in results)
    assert codes == [200] * 400
    p95 = lat[int(0.95 * len(lat))]
    # a sanity bound only (a loaded 2-core CI machine measured up to 0.56 s); latency is measured in
    # benchmarks/bench_serve.py, not asserted here
    assert p95 < 2.0, f"cached p95 {p95 * 1000:.0f} ms"
    assert explorer.jobs.started - started == 1  # ten clients, one render


@pytest.mark.slow
def test_kill_server_mid_job_leaves_no_broken_entry(tmp_path):
    cache = tmp_path / "cache"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "filterscope.cli",
        "serve",
        "--port",
        str(port),
        "--cache",
        str(cache),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}/api/render/efficientnet_lite0/bn2/5?seed=11"

    def start():
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        t = time.monotonic()
        while time.monotonic() - t < 60:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                return proc
            except OSError:
                time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("server did not start: " + proc.stdout.read().decode()[-500:])

    proc = start()
    try:
        t = time.monotonic()
        while json.load(urllib.request.urlopen(_post(url)))["progress"] is None and time.monotonic() - t < 20:
            time.sleep(0.05)  # wait until the worker is between optimisation steps
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers, mid-render
        proc.wait()
    c = RenderCache(cache)
    for rec in (cache / "renders").rglob("*.json") if (cache / "renders").is_dir() else []:
        assert c.get(rec.stem) is not None, rec  # every recorded entry is whole
    assert c.info()["entries"] == 0  # the render was not finished
    proc = start()
    try:
        t = time.monotonic()
        while (j := json.load(urllib.request.urlopen(_post(url))))["state"] != "done" and time.monotonic() - t < 80:
            time.sleep(0.2)
        assert j["state"] == "done" and c.info()["entries"] == 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
