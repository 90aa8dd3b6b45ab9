"""The layer atlas: end to end, resume, true top-N examples, flat memory, a real browser, and Ray."""

import json
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from photos import bundled_photos
from PIL import Image

from filterscope.cli import main

ATLAS = ["atlas", "--layers", "blocks.0", "--channels", "0-5", "--steps", "6", "--top", "4", "--quiet"]


def run_main(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas") / "site"
    rc = main([*ATLAS, "--out", str(out)])
    assert rc == 0
    return out


@pytest.mark.slow
def test_atlas_end_to_end(atlas_dir):
    rec = json.loads((atlas_dir / "run.json").read_text())
    assert rec["status"] == "complete"
    assert [k for k in rec["results"]] == [f"blocks.0:{c}" for c in range(6)]
    for c in range(6):
        assert Image.open(atlas_dir / f"blocks.0/channel_{c:04d}.png").size == (224, 224)
        assert (atlas_dir / f"blocks.0/channel_{c:04d}.html").is_file()
    assert (atlas_dir / "grid_blocks.0.png").is_file()
    assert (atlas_dir / "index.html").is_file() and (atlas_dir / "blocks.0/index.html").is_file()
    ex = json.loads((atlas_dir / "examples.json").read_text())
    assert ex["n_images"] == 36
    ch0 = ex["layers"]["blocks.0"]["channels"]["0"]
    assert len(ch0["top"]) == 4 and sum(ch0["hist"]["counts"]) == 36
    for e in ch0["top"]:
        assert (atlas_dir / e["crop"]).is_file() and (atlas_dir / e["thumb"]).is_file()
    page = (atlas_dir / "blocks.0/channel_0003.html").read_text()
    ch3 = ex["layers"]["blocks.0"]["channels"]["3"]
    assert "channel_0003.png" in page and len(ch3["top"]) == 4
    for e in ch3["top"]:  # the channel's own dataset examples, by name and crop, are on its page
        assert e["name"] in page and e["crop"].rsplit("/", 1)[1] in page
    # issue 44: every channel's name, purity and MIS score over the photos; the layer page ranks by score
    assert ex["names"]["labels"] == "predictions" and "efficientnet_lite1" in ex["names"]["similarity"]
    assert rec["names"] == ex["names"]
    units = ex["layers"]["blocks.0"]["channels"]
    assert all({"name", "purity", "score"} <= set(units[str(c)]) for c in range(6))
    assert all(0.0 <= units[str(c)]["score"] <= 1.0 for c in range(6))
    layer_page = (atlas_dir / "blocks.0/index.html").read_text()
    assert "Ranked by interpretability score" in layer_page
    order = [int(m) for m in re.findall(r'href="channel_(\d{4})\.html"', layer_page)]
    scores = [units[str(c)]["score"] for c in order]
    assert sorted(order) == list(range(6)) and scores == sorted(scores, reverse=True)
    assert "interpretability score" in page


@pytest.mark.slow
def test_atlas_resume_renders_only_missing(tmp_path, capsys):
    photos = bundled_photos(
        tmp_path / "photos", 4, "*_0.jpg"
    )  # the examples are not what resume keeps: 4 photos, not the 36 bundled
    args = [*ATLAS, "--images", photos]
    out = tmp_path / "a"
    assert run_main(capsys, *args, "--out", out)[0] == 0
    rec = json.loads((out / "run.json").read_text())
    removed = ["blocks.0:1", "blocks.0:4"]
    originals = {k: (out / rec["results"][k]["file"]).read_bytes() for k in removed}
    kept_mtime = (out / "blocks.0/channel_0000.png").stat().st_mtime_ns
    for k in removed:  # as if the run had been interrupted before these
        (out / rec["results"][k]["file"]).unlink()
        del rec["results"][k]
    rec["status"] = "partial"
    (out / "run.json").write_text(json.dumps(rec))
    rc, _, err = run_main(capsys, *args, "--out", out, "--resume")
    assert rc == 0, err
    rec2 = json.loads((out / "run.json").read_text())
    assert rec2["status"] == "complete" and len(rec2["results"]) == 6
    assert (out / "blocks.0/channel_0000.png").stat().st_mtime_ns == kept_mtime  # not re-rendered
    for k in removed:
        assert (out / rec2["results"][k]["file"]).read_bytes() == originals[k]


def test_dataset_examples_are_the_true_top_n(tiny_model):
    """The streamed top-N statistics equal a brute-force pass (the bookkeeping, not the model, is tested: the
    tiny CNN of tests/tiny_net.py)."""
    from filterscope.jobs.dataset import collect_examples
    from filterscope.jobs.evaluate import layer_means
    from filterscope.models.inputs import list_images, load_image, model_input, sample_photos_dir
    from filterscope.models.layers import get_layer

    model = tiny_model
    layers = [get_layer(model, "conv2"), get_layer(model, "relu3")]
    files, stats = collect_examples(model, layers, sample_photos_dir(), n_top=5, batch=7, progress=False)
    x = torch.cat([model_input(model, load_image(f)) for f in list_images(sample_photos_dir())])
    for info in layers:
        means = layer_means(model, info.name, x)  # brute force: every image, every channel
        order = torch.argsort(-means, dim=0, stable=True)[:5].T
        assert torch.equal(stats[info.name].top_index, order)
        assert torch.allclose(stats[info.name].top_values, means.gather(0, order.T).T, atol=1e-5)
        assert torch.allclose(stats[info.name].maximum, means.amax(0), atol=1e-5)
        assert stats[info.name].count == len(files)


MEMORY_PROBE = textwrap.dedent("""
    import resource, sys, gc
    from filterscope.models import load_model
    from filterscope.models.layers import get_layer
    from filterscope.jobs.dataset import collect_examples
    m = load_model()
    layers = [get_layer(m, "blocks.5"), get_layer(m, "bn2")]
    small, big = sys.argv[1:3]
    collect_examples(m, layers, small, n_top=6, batch=16, progress=False)  # warm-up: allocator pools
    gc.collect()
    peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]
    for folder in (small, big):
        collect_examples(m, layers, folder, n_top=6, batch=16, progress=False)
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(peaks[1] - peaks[0], peaks[2] - peaks[0])
""")


@pytest.mark.slow
def test_examples_memory_flat_as_folder_grows(tmp_path):
    """One process: after a warm-up pass, a pass over 20 images and one over 200 (the peak RSS is the process's
    high-water mark, so what the big pass adds to it is what 10× the images cost)."""
    rng = np.random.default_rng(0)
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    for i in range(200):
        im = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
        im.save(big / f"{i:04d}.png")
        if i < 20:
            im.save(small / f"{i:04d}.png")
    r = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(small), str(big)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    # KiB added to the peak by each pass after the warm-up
    growth = dict(zip(("small", "big"), map(int, r.stdout.strip().splitlines()[-1].split())))
    # 10× the images must not raise the peak by more than a few MiB (holding 200 images' maps would be ~50 MiB)
    assert growth["big"] - growth["small"] < 16 * 1024, growth


@pytest.mark.slow
def test_serve_and_browser(atlas_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium installed (apt install chromium)")
    pw = pytest.importorskip("playwright.sync_api")
    import socket

    import uvicorn

    from filterscope.serve.app import create_static_app
    from filterscope.serve.guard import Access

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_static_app(atlas_dir, Access(port=port))  # what `serve ATLAS_DIR --static` runs
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    base_http = f"http://127.0.0.1:{port}/"
    errors, failed = [], []
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--disable-sync",
                ],
            )
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            # a request the browser cancels because the test navigated on is not a broken link
            page.on("requestfailed", lambda r: None if "ERR_ABORTED" in (r.failure or "") else failed.append(r.url))
            for base in (base_http, atlas_dir.resolve().as_uri() + "/"):
                page.goto(base + "index.html")
                assert page.title().startswith("filterscope atlas")
                page.click("text=blocks.0")
                page.wait_for_load_state("load")
                assert page.url.endswith("blocks.0/index.html")
                tiles = page.locator("a.tile")
                assert tiles.count() == 6
                tiles.nth(2).click()
                assert page.url.endswith("channel_0002.html")
                page.wait_for_load_state("load")
                imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.src, e.complete && e.naturalWidth])")
                assert len(imgs) >= 1 + 2 * 4, imgs
                assert all(w for _, w in imgs), [s for s, w in imgs if not w]
                assert page.locator(".hist .bar").count() == 30
                page.click("text=next")
                assert page.url.endswith("channel_0003.html")
                page.click("text=filterscope atlas")
                assert page.url.endswith("/index.html")
            page.goto(base_http + "blocks.0/index.html")
            lazy = page.eval_on_selector_all("a.tile", "els => els.map(e => e.getAttribute('href'))")
            for href in lazy:  # every channel page exists
                assert page.request.get(base_http + "blocks.0/" + href).ok, href
            browser.close()
    finally:
        server.should_exit = True
        t.join(10)
    assert not errors, errors
    assert not failed, failed


@pytest.mark.slow
def test_ray_backend_matches_local(tmp_path, capsys, ray_lock):
    """Both runs in this process (the Ray one starts a local Ray of 2 workers, shut down after it); both take
    their examples from 4 photos."""
    ray = pytest.importorskip("ray")
    photos = bundled_photos(tmp_path / "photos", 4, "*_0.jpg")
    args = [
        "atlas",
        "--layers",
        "blocks.0",
        "--channels",
        "0-3",
        "--steps",
        "5",
        "--top",
        "3",
        "--threads",
        "1",
        "--images",
        str(photos),
        "--quiet",
    ]
    rc, _, err = run_main(capsys, *args, "--out", tmp_path / "local")
    assert rc == 0, err
    try:
        rc, _, err = run_main(capsys, *args, "--backend", "ray", "--workers", "2", "--out", tmp_path / "ray")
    finally:
        ray.shutdown()
    assert rc == 0, err
    pngs = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.png"))
    assert len(pngs) == 5
    for f in pngs:
        assert (tmp_path / "local" / f).read_bytes() == (tmp_path / "ray" / f).read_bytes(), f
    a, b = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("local", "ray"))
    assert a["results"] == b["results"]


@pytest.mark.slow
def test_worker_processes_match_in_process_and_auto_layout(tmp_path, capsys):
    """Two single-threaded worker processes write the same files as one single-threaded process; with no
    --workers/--threads, a CPU with ≥ 2 cores and ≥ 8 channels per core gets one worker per core (printed)."""
    from filterscope.jobs.pool import cpu_cores

    photos = bundled_photos(
        tmp_path / "photos", 4, "*_0.jpg"
    )  # 4 photos for the examples (not what is compared): not the 36 bundled ones
    args = ["atlas", "--layers", "blocks.0", "--channels", "0-3", "--steps", "5", "--top", "3", "--images", photos]
    assert run_main(capsys, *args, "--threads", "1", "--quiet", "--out", tmp_path / "one")[0] == 0
    assert run_main(capsys, *args, "--workers", "2", "--threads", "1", "--quiet", "--out", tmp_path / "two")[0] == 0
    one, two = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two"))
    assert one["layout"]["workers"] == 0 and two["layout"] == {"workers": 2, "threads": 1, "why": "chosen"}
    assert sorted(one["results"]) == sorted(two["results"]) == [f"blocks.0:{c}" for c in range(4)]
    for k, r in one["results"].items():
        assert (tmp_path / "one" / r["file"]).read_bytes() == (
            tmp_path / "two" / two["results"][k]["file"]
        ).read_bytes()
    # the layout is chosen from the channel count before anything renders: one step per channel says it
    auto_args = [*args[:4], "0-15", "--steps", "1", *args[7:]]
    rc, _, err = run_main(capsys, *auto_args, "--out", tmp_path / "auto")
    assert rc == 0
    auto = json.loads((tmp_path / "auto/run.json").read_text())["layout"]
    if cpu_cores() >= 2:
        assert auto["workers"] == cpu_cores() and auto["threads"] == 1 and "layout:" in err
