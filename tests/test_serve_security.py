"""The explorer against a web page on the same laptop, and for every model kind: each attack of issue 26 tried.

All on loopback (Starlette's TestClient, or uvicorn on 127.0.0.1), every loop bounded in count and time. The
explorer here explores ``digits_cnn`` (1 input channel, 28 px), with one worker and small job bounds.
"""

from __future__ import annotations

import functools
import io
import random
import re
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from filterscope.errors import FilterscopeError, UsageError
from filterscope.outputs.cache import RenderCache
from filterscope.serve.guard import Access

MAX_JOBS, PER_CLIENT = 6, 4
BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def digits():
    from filterscope.models import load_model

    return load_model("digits_cnn")


@pytest.fixture(scope="module")
def ex(digits, tmp_path_factory):
    from filterscope.serve.app import Explorer

    e = Explorer(
        digits,
        RenderCache(tmp_path_factory.mktemp("sec") / "cache"),
        workers=1,
        per_client=PER_CLIENT,
        max_jobs=MAX_JOBS,
    )
    e.jobs.warm()
    yield e
    e.jobs.close()


def _client(ex, access: Access | None = None, base: str = BASE, **kw) -> TestClient:
    from filterscope.serve.app import create_app

    return TestClient(create_app(ex, access or Access(port=8000)), base_url=base, **kw)


@pytest.fixture(scope="module")
def client(ex):
    with _client(ex) as c:
        yield c


def _csrf(c) -> str:
    return c.get("/").text.split('name="csrf" value="')[1].split('"')[0]


def _png(mode="RGB", size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def _active(ex) -> int:
    return sum(1 for j in ex.jobs.jobs.values() if j.state in ("queued", "running"))


def _drain(ex, timeout: float = 120.0) -> None:
    """Cancel every unfinished job and wait until none is left (so the next test starts with a free server)."""
    for k in [j.id for j in ex.jobs.jobs.values() if j.state in ("queued", "running")]:
        ex.jobs.cancel(k)
    t = time.monotonic()
    while _active(ex) and time.monotonic() - t < timeout:
        time.sleep(0.1)
    assert _active(ex) == 0


# ---------------------------------------------------------------- DNS rebinding: the Host header


def test_foreign_host_is_refused_on_every_route(ex):
    h = next(iter(ex.photos))
    with _client(ex, Access(port=8000, allow_hosts=("mybox.lan",))) as c:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST", "mybox.lan:8000", "127.0.0.1"):
            assert c.get("/", headers={"host": host}).status_code == 200, host
        foreign = [
            "evil.example",
            "evil.example:8000",
            "127.0.0.1.evil.example:8000",
            "localhost:9999",  # another port than the bound one
            "[::1",
            "user@127.0.0.1:8000",
            "",
            "127.0.0.1:80a",
        ]
        urls = ["/", f"/photo/{h}.png", "/static/style.css", f"/m/digits_cnn/conv3/img/{h}"]
        for host in foreign:
            for url in urls:
                r = c.get(url, headers={"host": host})
                assert r.status_code == 400, (host, url)
                assert r.text.startswith("400 bad request: ") and r.text.count("\n") == 1, r.text
            started = ex.jobs.started
            r = c.post("/api/render/digits_cnn/conv3/1", headers={"host": host})
            assert r.status_code == 400 and ex.jobs.started == started
        assert "--allow-host evil.example" in c.get("/", headers={"host": "evil.example:8000"}).text


# ---------------------------------------------------------------- cross-site writes


def test_cross_origin_upload_and_job_start_are_refused(ex, client):
    tok = _csrf(client)
    files = {"file": ("a.png", _png())}
    uploads = ex.cache.root / "uploads"
    before = sorted(uploads.iterdir()) if uploads.is_dir() else []
    for headers in (
        {"origin": "http://evil.example"},
        {"origin": "http://127.0.0.1:8000.evil.example"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site", "origin": BASE},
    ):
        r = client.post("/upload", files=files, data={"layer": "conv3", "csrf": tok}, headers=headers)
        assert r.status_code == 403 and "refused" in r.text, (headers, r.text)
        started = ex.jobs.started
        r = client.post("/api/render/digits_cnn/conv3/2?seed=77", headers=headers)
        assert r.status_code == 403 and ex.jobs.started == started, headers
    assert (sorted(uploads.iterdir()) if uploads.is_dir() else []) == before
    # a GET reports, it never starts a job (an <img src> on another site cannot make work)
    started = ex.jobs.started
    j = client.get("/api/render/digits_cnn/conv3/2?seed=77").json()
    assert j["state"] == "none" and ex.jobs.started == started
    h = next(iter(ex.photos))
    assert client.get(f"/api/accent/digits_cnn/conv3/{h}/2").json()["state"] == "none"
    assert client.get(f"/api/explain/digits_cnn/conv2/{h}").json()["state"] == "none"
    assert ex.jobs.started == started
    # the form's token: missing, another session's, or forged → 403; this session's, same origin → stored
    with _client(ex) as other:
        theirs = _csrf(other)
    for bad in ({}, {"csrf": theirs}, {"csrf": "x" * 27}):
        r = client.post("/upload", files=files, data={"layer": "conv3", **bad}, headers={"origin": BASE})
        assert r.status_code == 403 and "token" in r.text, bad
    r = client.post(
        "/upload",
        files=files,
        data={"layer": "conv3", "csrf": tok},
        headers={"origin": BASE, "sec-fetch-site": "same-origin"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "/img/" in r.headers["location"]


# ---------------------------------------------------------------- unbounded work: forged and rotated cookies


def _burst(ex, c, cookies) -> list:
    """One job request per cookie: (status, Retry-After, error, jobs queued or running just before)."""
    codes = []
    for i, cookie in enumerate(cookies):
        c.cookies.clear()  # only the id the attacker sends, not one the server handed out
        before = _active(ex)
        r = c.post(f"/api/render/digits_cnn/conv3/{i % 32}?seed={1000 + i}", headers={"cookie": f"fs_client={cookie}"})
        codes.append((r.status_code, r.headers.get("retry-after"), r.json().get("error"), before))
        assert _active(ex) <= MAX_JOBS  # never more than the server-wide bound queued or running
    return codes


def test_forged_cookies_count_as_one_anonymous_client(ex):
    _drain(ex)
    rng = random.Random(26)
    forged = [f"{rng.getrandbits(64):016x}" for _ in range(30)]
    forged += [f"{rng.getrandbits(64):016x}.{rng.getrandbits(64):016x}" for _ in range(30)]  # signature-shaped
    with _client(ex) as c:
        t = time.monotonic()
        codes = _burst(ex, c, forged)
        assert time.monotonic() - t < 60
    accepted = [x for x in codes if x[0] == 200]
    refused = [x for x in codes if x[0] != 200]
    assert len(codes) == 60 and 1 <= len(accepted) <= PER_CLIENT, codes  # 60 made-up ids: one client's share
    assert all(code == 429 and retry and retry.isdigit() for code, retry, _, _ in refused), refused
    _drain(ex)


def test_rotated_signed_cookies_meet_the_server_wide_bound(ex):
    _drain(ex)
    with _client(ex) as c:  # 60 real sessions: each GET / hands out a freshly signed id
        cookies = []
        for _ in range(60):
            c.cookies.clear()
            c.get("/")
            cookies.append(c.cookies.get("fs_client"))
        assert len(set(cookies)) == 60
        started = ex.jobs.started
        codes = _burst(ex, c, cookies)
    accepted = [x for x in codes if x[0] == 200]
    refused = [x for x in codes if x[0] != 200]
    assert len(accepted) >= MAX_JOBS and ex.jobs.started - started == len(accepted)
    assert len(refused) >= 60 - 3 * MAX_JOBS, codes  # a few more go in as the first jobs finish (1 worker)
    # jobs start only from these requests: refused only when the bound was full, accepted whenever it was not
    assert all(code == 200 for code, _, _, before in codes if before < MAX_JOBS), codes
    assert all(before == MAX_JOBS for _, _, _, before in refused), refused
    assert all(code == 429 and retry and "bound" in err for code, retry, err, _ in refused), refused[:3]
    _drain(ex)


def test_default_bound_is_16():
    import inspect

    from filterscope.serve.app import Explorer
    from filterscope.serve.workers import JobManager

    assert inspect.signature(JobManager).parameters["max_jobs"].default == 16
    assert inspect.signature(Explorer).parameters["max_jobs"].default == 16


# ---------------------------------------------------------------- the token, on and off loopback


def test_token_off_loopback_live_and_static(ex, tmp_path):
    from filterscope.serve.app import create_static_app
    from filterscope.serve.server import access_for

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert access_for(host, 8000).token is None, host
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        assert len(access_for(host, 8000).token or "") >= 24, host
    atlas = tmp_path / "atlas"
    (atlas / "conv3").mkdir(parents=True)
    (atlas / "index.html").write_text("<html><main>atlas</main></html>")
    (atlas / "conv3" / "channel_0001.html").write_text("<html><main>one</main></html>")
    (atlas / "run.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    lan = "http://192.168.1.5:8000"
    live = lambda a, base=lan: _client(ex, a, base)
    static = lambda a, base=lan: TestClient(create_static_app(atlas, a), base_url=base)
    for make in (live, static):
        access = Access(host="192.168.1.5", port=8000, token="s3cret-token")
        with make(access) as c:
            assert c.get("/").status_code == 403 and "token" in c.get("/").text
            assert c.get("/?token=wrong").status_code == 403
            assert c.get("/", headers={"host": "evil.example:8000"}).status_code == 400  # Host checked first
            r = c.get("/?token=s3cret-token")
            assert r.status_code == 200 and "fs_token" in c.cookies
            assert c.get("/").status_code == 200  # the cookie from now on
            c.cookies.clear()
            assert c.get("/", headers={"cookie": "fs_token=forged"}).status_code == 403
        with make(Access(port=8000), BASE) as c:  # loopback: no token needed, the Host still checked
            assert c.get("/").status_code == 200
            assert c.get("/", headers={"host": "evil.example"}).status_code == 400
    with TestClient(create_static_app(atlas, Access(port=8000)), base_url=BASE) as c:
        assert c.get("/conv3/channel_0001.html").text.startswith("<html><main>one")
        for url in ("/conv3/", "/conv3", "/../secret.txt", "/%2e%2e/secret.txt", "/..%2Fsecret.txt", "/nothing"):
            r = c.get(url)
            assert r.status_code == 404 and "channel_0001" not in r.text and "secret" not in r.text, url
        assert c.post("/index.html").status_code in (403, 405)


def test_serve_static_command_checks_its_folder(tmp_path, capsys):
    from filterscope.cli import main

    assert main(["serve", "--static"]) == 2
    assert "needs an ATLAS_DIR" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--static"]) == 2
    assert "has no index.html" in capsys.readouterr().err


# ---------------------------------------------------------------- traversal and uploads


TRAVERSAL = [
    "..",
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%5c..%5cwindows",
    "....//....//etc",
    "%00",
    "%2Fetc%2Fpasswd",
    "~root",
]


def test_traversal_in_every_path_parameter(ex, client):
    h = next(iter(ex.photos))
    templates = [
        "/m/{v}/conv3/img/" + h,
        "/m/digits_cnn/{v}/img/" + h,
        "/m/digits_cnn/conv3/img/{v}",
        "/m/digits_cnn/conv3/img/" + h + "/f/{v}",
        "/m/digits_cnn/conv3/f/{v}",
        "/api/explain/digits_cnn/conv3/{v}",
        "/api/examples/digits_cnn/{v}",
        "/api/render/digits_cnn/{v}/1",
        "/api/accent/digits_cnn/conv3/{v}/1",
        "/png/{v}.png",
        "/photo/{v}.png",
        "/where/digits_cnn/conv3/{v}/1.png",
        "/where/digits_cnn/{v}/" + h + "/1.png",
        "/static/{v}",
        "/atlas/{v}/channel_0001.html",
        "/atlas/conv3/{v}",
        "/go?photo={v}&layer=conv3",
        "/go?photo=" + h + "&layer={v}",
    ]
    n = 0
    for t in templates:
        for v in TRAVERSAL:
            for method in ("GET", "POST") if t.startswith("/api/") else ("GET",):
                r = client.request(method, t.format(v=v), follow_redirects=False)
                n += 1
                if r.status_code == 200 and "?" not in t and v.split("/")[0] in ("..", "...."):
                    # the client resolved the dots before sending: another page of the app, not a file
                    assert "/.." not in r.request.url.path and r.headers["content-type"].startswith("text/html")
                    continue
                assert r.status_code in (400, 404, 405), (method, t, v, r.status_code)
                assert "root:" not in r.text and "import" not in r.text
    assert n == 198  # 18 templates × 9 values, the 4 job routes also as POST


def test_oversized_and_malformed_uploads(ex, client):
    from filterscope.serve.app import MAX_UPLOAD

    tok = _csrf(client)
    form = {"layer": "conv3", "csrf": tok}

    def post(**kw):
        return client.post("/upload", **kw)

    assert post(files={"file": ("b.png", b"0" * (MAX_UPLOAD + 2**20))}, data=form).status_code == 413
    assert post(files={"file": ("x.png", b"not an image")}, data=form).status_code == 400
    assert post(files={"file": ("x.png", _png()[:-30])}, data=form).status_code == 400  # torn
    assert post(data=form).status_code == 400  # no file: an urlencoded form
    assert post(files={"file": ("x.png", _png())}, data={**form, "layer": "../../etc"}).status_code == 400
    assert post(files=[("file", ("a.png", _png())), ("file", ("b.png", _png()))], data=form).status_code == 400
    body = b"--zz\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n" + _png()  # no end
    for ctype in ("multipart/form-data; boundary=zz", "multipart/form-data", "text/plain", "multipart/form-data; b"):
        r = client.post("/upload", content=body, headers={"content-type": ctype})
        assert r.status_code in (400, 403), (ctype, r.status_code)
    r = client.post("/upload", content=b"x", headers={"content-length": str(10 * MAX_UPLOAD)})
    assert r.status_code in (400, 413)
    for mode in ("L", "RGBA", "CMYK", "I;16", "P", "1"):  # every kind a photo can be stored as
        buf = io.BytesIO()
        Image.new(mode, (30, 20)).save(buf, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
        r = post(files={"file": (f"m.{mode}", buf.getvalue())}, data=form, follow_redirects=False)
        assert r.status_code == 303, (mode, r.text[:200])
        h = r.headers["location"].rsplit("/", 1)[1]
        pic = client.get(f"/photo/{h}.png?side=64")
        assert pic.status_code == 200 and Image.open(io.BytesIO(pic.content)).mode == "L", mode


def test_upload_quota_and_expiry_remove_the_oldest_first(tmp_path, capsys):
    import os

    from filterscope.cli import main
    from filterscope.serve import store

    cache = RenderCache(tmp_path / "c")
    hs = []
    for i in range(5):
        hs.append(store.store_upload(cache, bytes([i]) * 1000, quota=10**6))
        p = store.upload_path(cache, hs[-1])
        os.utime(p, (time.time() - 100 + i, time.time() - 100 + i))  # uploaded in order, 1 s apart
    store.store_upload(cache, b"z" * 2500, quota=5000)  # 5000 + 2500 > 5000: the three oldest go
    left = {p.stem for p in (tmp_path / "c" / "uploads").iterdir()}
    assert not left & set(hs[:3]) and {hs[3], hs[4]} <= left and len(left) == 3
    os.utime(store.upload_path(cache, hs[3]), (0, 0))  # expired long ago
    assert store.prune_uploads(cache, max_age=3600) == 1 and not store.upload_path(cache, hs[3]).exists()
    assert main(["cache", "info", "--cache", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "2 uploads" in out and "256 MB" in out and "7 days" in out, out


# ---------------------------------------------------------------- every model kind


def _tiny(c: int):
    from filterscope.models.model import Model

    torch.manual_seed(c)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(c, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    )
    return Model(net, f"tiny{c}", (0.5,), (0.5,), 32, 32, c, categories=["a", "b", "c"])


@pytest.mark.parametrize("bands", [1, 3, 4, 6])
def test_every_channel_count_goes_through_the_one_image_writer(bands, digits):
    from filterscope.jobs.accentuate import accentuate
    from filterscope.models.inputs import load_image, sample_image_path
    from filterscope.outputs.images import png_bytes
    from filterscope.serve import compute

    model = digits if bands == 1 else _tiny(bands)
    layer = "conv3" if bands == 1 else "2"
    photo = load_image(sample_image_path())
    want = "L" if bands == 1 else "RGB"
    thumb = Image.open(io.BytesIO(compute.thumbnail(sample_image_path(), model, 64)))
    assert thumb.mode == want and thumb.size == (64, 64)  # never RGBA, never a 500
    result, maps = compute.explanation(model, photo, layer, top=3)
    where = Image.open(io.BytesIO(compute.where_it_fires(photo, model, maps[0], 48)))
    assert where.mode == "RGB" and where.size == (48, 48)
    (acc,) = accentuate(model, photo, layer, [0], steps=3).data
    pic = Image.open(io.BytesIO(png_bytes(acc.image)))
    assert pic.mode == want and pic.size == (model.input_size,) * 2
    assert Image.open(io.BytesIO(png_bytes(acc.change_rgb()))).mode == "RGB"


def test_digits_photo_where_render_and_accent_over_http(ex, client):
    """``--model digits_cnn``: ``/photo/<hash>.png`` answered 500 (a 1-channel array to Image.fromarray)."""
    h = ex.photo_hash["coffee.jpg"]
    r = client.get(f"/photo/{h}.png")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).mode == "L"
    t = time.monotonic()
    while (j := client.post(f"/api/explain/digits_cnn/conv3/{h}").json())["state"] not in ("done", "error"):
        assert time.monotonic() - t < 60, j
        time.sleep(0.2)
    assert j["state"] == "done"
    page = client.get(f"/m/digits_cnn/conv3/img/{h}")
    assert page.status_code == 200 and page.text.count('class="tile filter"') >= 2
    top = int(re.search(r"/where/digits_cnn/conv3/[0-9a-f]{64}/(\d+)\.png", page.text).group(1))
    w = client.get(f"/where/digits_cnn/conv3/{h}/{top}.png")
    assert w.status_code == 200 and Image.open(io.BytesIO(w.content)).mode == "RGB"
    assert client.get(f"/m/digits_cnn/conv3/img/{h}/f/{top}").status_code == 200


def test_handlers_that_compute_do_not_block_the_event_loop(ex, client, monkeypatch):
    from filterscope.serve import compute

    slow_started = threading.Event()
    real = compute.thumbnail

    def slow(*a, **k):
        slow_started.set()
        time.sleep(1.5)
        return real(*a, **k)

    monkeypatch.setattr(compute, "thumbnail", slow)
    h = next(iter(ex.photos))
    th = threading.Thread(target=lambda: client.get(f"/photo/{h}.png?side=33"))
    th.start()
    assert slow_started.wait(10)
    t = time.perf_counter()
    assert client.get("/static/serve.css").status_code == 200
    took = time.perf_counter() - t
    th.join(10)
    assert took < 1.0, f"a cached request waited {took:.2f} s behind a thumbnail"


# ---------------------------------------------------------------- fuzz: every route's path and query


def _junk(rng: random.Random) -> str:
    pick = rng.randrange(10)
    if pick == 0:
        return str(rng.randrange(10**18, 10**40))
    if pick == 1:
        return str(-rng.randrange(1, 10**6))
    if pick == 2:
        return rng.choice(["", " ", "1e9", "0x10", "NaN", "inf", "٣", "²", "①", "0" * 5000, "9" * 400, "-0", "+5"])
    if pick == 3:
        return rng.choice(TRAVERSAL)
    alphabet = "abc019_-.:/%?&=#+ é漢字🙂\u202e\u200b\\'\"<>"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


@pytest.mark.slow
def test_fuzz_every_route_finds_no_500(ex, client):
    seed, count = 2026, 600
    rng = random.Random(seed)
    photos = list(ex.photos)
    some_key = "0" * 64
    valid = {
        "model": lambda: "digits_cnn",
        "layer": lambda: rng.choice(["conv3", "conv1", "relu2", "gap", "fc", "flatten"]),
        "h": lambda: rng.choice(photos),
        "c": lambda: str(rng.choice([0, 1, 15, 31, 32, 10**30])),
        "method": lambda: rng.choice(["fast", "maco", "bogus"]),
        "seed": lambda: str(rng.choice([0, 1, 2**31, 2**31 - 1])),
        "div": lambda: str(rng.choice([0, 1, 2, 8, 9])),
        "side": lambda: str(rng.choice([32, 64, 512, 513, 31])),
        "key": lambda: some_key,
        "name": lambda: rng.choice(["style.css", "serve.css", "x.css"]),
        "page": lambda: rng.choice(["channel_0001.html", "channel_1.html", "index.html"]),
        "x": lambda: rng.choice(["1", ""]),
    }
    routes = [
        ("GET", "/"),
        ("GET", "/go?photo={h}&layer={layer}"),
        ("GET", "/m/{model}/{layer}/img/{h}"),
        ("GET", "/m/{model}/{layer}/img/{h}/f/{c}?method={method}&seed={seed}&diversity={div}"),
        ("GET", "/m/{model}/{layer}/f/{c}?method={method}&seed={seed}&diversity={div}"),
        ("*", "/api/explain/{model}/{layer}/{h}?retry={x}"),
        ("*", "/api/examples/{model}/{layer}"),
        ("*", "/api/render/{model}/{layer}/{c}?method={method}&seed={seed}&diversity={div}"),
        ("*", "/api/accent/{model}/{layer}/{h}/{c}"),
        ("GET", "/m/{model}/{layer}/class/{c}"),
        ("GET", "/class?k={c}&layer={layer}"),
        ("*", "/api/concepts/{model}/{layer}/{c}"),
        ("*", "/api/concept-renders/{model}/{layer}/{c}"),
        ("GET", "/cmap/{key}/{c}/{c}.png?side={side}"),
        ("GET", "/png/{key}.png"),
        ("GET", "/photo/{h}.png?side={side}"),
        ("GET", "/where/{model}/{layer}/{h}/{c}.png?side={side}"),
        ("GET", "/static/{name}"),
        ("GET", "/atlas/{layer}/{page}"),
        ("POST", "/upload"),
    ]
    fails, sent, t0 = [], 0, time.monotonic()
    with _client(ex, raise_server_exceptions=False) as c:
        for _ in range(count):
            method, template = rng.choice(routes)
            method = rng.choice(["GET", "POST", "PUT", "DELETE"]) if method == "*" else method
            fields = {}
            for name in re.findall(r"{(\w+)}", template):
                v = valid[name]() if rng.random() < 0.6 else _junk(rng)
                in_query = "?" in template and template.index("{" + name + "}") > template.index("?")
                fields[name] = urllib.parse.quote(v, safe="" if in_query or rng.random() < 0.8 else "/%")
            url = template.format(**fields)
            try:
                r = c.request(method, url, follow_redirects=False)
            except Exception as e:  # a URL the HTTP client itself refuses to send: not the server's answer
                assert type(e).__module__.startswith(("httpx", "h11")), (url, e)
                continue
            sent += 1
            if r.status_code >= 500:
                fails.append((method, url, r.status_code, r.text[:200]))
            assert time.monotonic() - t0 < 240
    print(f"fuzz: {sent} requests of {count} sent, seed {seed}, {len(fails)} answered 5xx")
    _drain(ex)
    assert sent > 0.9 * count and not fails, fails[:5]


# ---------------------------------------------------------------- property tests of the parsers


_CHANNEL_TOKENS = ["0", "5", "63", "-", ",", " ", "all", "99999999999", "٣", "1e3", "+1", "x", "--", "0x1", ""]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=40), st.lists(st.sampled_from(_CHANNEL_TOKENS), max_size=10).map("".join)))
def test_channel_list_parser_gives_a_list_or_a_usage_error(text):
    from filterscope.cli import parse_channels

    try:
        got = parse_channels(text)
    except UsageError as e:
        assert "\n" not in e.message and e.message
        return
    assert got is None or (got == sorted(set(got)) and all(c >= 0 for c in got))


_OBJ_TOKENS = [
    *["channel", "neuron", "layer", "deepdream", "logit", "direction", "diversity", "tv", "l1", "l2", "blur"],
    *["closeness", "conv3", "conv1", "relu2", "fc", "default", "nope", "blocks.5"],
    *["(", ")", ":", ",", "+", "-", "*", "/", " ", "0", "3", "31", "32", "1e400", "0.5", "-1", "'x.npy'", "'a.jpg'"],
]


@functools.lru_cache(maxsize=1)
def _parser_model():
    from filterscope.models import load_model

    return load_model("digits_cnn")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=40), st.lists(st.sampled_from(_OBJ_TOKENS), max_size=12).map("".join)))
def test_objective_parser_gives_an_objective_or_a_one_line_error(text):
    from filterscope.jobs.render_objective import objective_for
    from filterscope.optvis.objective_text import parse
    from filterscope.optvis.objectives import Objective

    for read in (parse, lambda s: objective_for(_parser_model(), s)):
        try:
            got = read(text)
        except FilterscopeError as e:
            assert str(e) and "\n" not in str(e).strip(), str(e)
            continue
        assert isinstance(got, Objective)


# ---------------------------------------------------------------- the explorer in a real browser, digits_cnn


@pytest.mark.slow
def test_browser_explorer_with_digits_cnn(ex, tmp_path):
    import os
    import shutil
    import socket

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium installed (apt install chromium)")
    pw = pytest.importorskip("playwright.sync_api")
    import uvicorn

    from filterscope.serve.app import create_app

    _drain(ex)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ex, Access(port=port))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t = time.monotonic()
    while not srv.started and time.monotonic() - t < 20:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    errors, shots = [], {}
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            thumbs = "Array.from(document.querySelectorAll('.photo img')).every(i => i.complete && i.naturalWidth > 0)"
            page.wait_for_function(thumbs, timeout=30_000)  # every photo thumbnail, 1 channel: no 500
            short = page.eval_on_selector_all("form[action='/go'] select.short option", "o => o.map(x => x.value)")
            assert short == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "gap"]
            page.check("form[action='/go'] input.allmods")  # the expander: every module, grouped
            assert page.is_visible("form[action='/go'] select.all")
            page.uncheck("form[action='/go'] input.allmods")
            shots["home"] = page.screenshot(full_page=True)
            page.select_option("form[action='/go'] select.short", "conv3")
            page.click("text=Explain")
            page.wait_for_selector("a.tile.filter", timeout=60_000)
            assert "/m/digits_cnn/conv3/img/" in page.url
            tiles = "Array.from(document.querySelectorAll('a.tile img')).every(i => i.complete && i.naturalWidth > 0)"
            page.wait_for_function(tiles, timeout=30_000)  # every "where it fires" map
            shots["explain"] = page.screenshot(full_page=True)
            page.locator("a.tile.filter").first.click()
            page.wait_for_selector("#render img:not([hidden])", timeout=120_000)
            assert page.evaluate("document.querySelector('#where').naturalWidth") == 320
            page.wait_for_selector("#accent img:not([hidden])", timeout=180_000)
            sizes = page.evaluate("[...document.querySelectorAll('#accent img')].map(i => i.naturalWidth)")
            assert sizes == [28, 28], sizes
            shots["filter"] = page.screenshot(full_page=True)
            browser.close()
    finally:
        srv.should_exit = True
        th.join(10)
        _drain(ex)
    assert not errors, errors
    out = os.environ.get("FILTERSCOPE_SCREENSHOTS")
    for name, png in shots.items():
        Image.open(io.BytesIO(png)).verify()
        if out:
            (Path(out) / f"serve_digits_{name}.png").write_bytes(png)


# ---------------------------------------------------------------- a layer list a person can use


def test_layer_outline_and_layers_command(model, capsys):
    import json

    from filterscope.cli import main
    from filterscope.models.layers import layer_outline, list_layers

    outline = layer_outline(model)
    by = {e.name: e for e in outline}
    assert [e.name for e in outline] == [i.name for i in list_layers(model)]  # every module, forward order
    short = [e.name for e in outline if e.primary and not e.duplicate]
    assert {"conv_stem", "bn1", "blocks.0", "blocks.5", "blocks.6", "conv_head", "bn2"} <= set(short)
    assert len(short) < 30 and not any(by[n].info.type == "Identity" for n in short)
    assert by["blocks.5.3"].same_as == "blocks.5" and by["blocks"].same_as == "blocks.6"  # the same tensor
    assert by["blocks.5.0.se"].same_as and by["bn2.drop"].same_as == "input"  # Identity: repeats its input
    assert by["bn2"].relu == "bn2.act" and by["conv_head"].relu is None
    assert by["blocks.5.1.conv_pw"].parent == "blocks.5.1" and by["blocks.5.3.conv_pw"].parent == "blocks.5"
    assert main(["layers"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + len(short) and "<- default" in next(ln for ln in out if ln.split()[0] == "bn2")
    assert "ends in a ReLU" in next(ln for ln in out if ln.split()[0] == "bn1")
    assert main(["layers", "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + len(outline)
    assert main(["layers", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["default"] == "bn2" and len(rec["layers"]) == len(outline)
    row = next(r for r in rec["layers"] if r["name"] == "blocks.5.3")
    assert {"name", "type", "shape", "calls"} <= set(row) and row["same_as"] == "blocks.5" and row["primary"]


# ---------------------------------------------------------------- the home page: rendered once, revalidated by ETag


def test_home_page_is_rendered_once_per_photo_set_and_answers_304_to_its_etag(ex, monkeypatch):
    """The home page is the template rendered once with the client's form token put in: byte-identical to a
    fresh render; the same client gets the same ETag and, sending it back, a 304 without a body; another
    client gets its own token and ETag; a changed photo set renders the page again."""
    with _client(ex) as a, _client(ex) as b:
        first = a.get("/")
        assert first.status_code == 200 and "no-cache" in first.headers["cache-control"]
        tag, token = first.headers["etag"], _csrf(a)
        assert tag.startswith('"') and token and "csrf-slot" not in first.text
        photos = [{"hash": h, "name": p.name} for h, p in ex.photos.items()]
        fresh = ex.render_page(
            "home.html", token, photos=photos, default_layer=ex.default_layer, max_mb=20,
            n_classes=ex.n_classes or 0, n_photos=len(ex.photos), **ex.picker(),
        )  # fmt: skip
        assert first.text == fresh
        calls = []
        monkeypatch.setattr(ex, "render_page", lambda *a, **k: calls.append(a) or fresh)
        again = a.get("/")
        assert again.status_code == 200 and again.headers["etag"] == tag and again.text == first.text
        cached = a.get("/", headers={"If-None-Match": tag})
        assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == tag
        assert a.get("/", headers={"If-None-Match": f'W/{tag}, "other"'}).status_code == 304
        assert a.get("/", headers={"If-None-Match": '"stale"'}).status_code == 200
        other = b.get("/", headers={"If-None-Match": tag})  # another client's ETag: its own page, not a 304
        assert other.status_code == 200 and other.headers["etag"] != tag and _csrf(b) != token
        assert calls == []  # no render for any of these requests
        monkeypatch.setattr(ex, "photos", dict(list(ex.photos.items())[:-1]))
        assert a.get("/").status_code == 200 and len(calls) == 1  # a new photo set: rendered again
