"""Measure the explorer's targets on this machine: ``python benchmarks/bench_serve.py``.

Starts ``filterscope serve`` (2 workers, a fresh cache) as a subprocess on 127.0.0.1 and measures: the
explanation of an uploaded photo, a filter's first render at blocks.5 (request → picture fetched), the same
render cached, 20 concurrent clients on cached pages and images (p50/p95), and the peak RSS of the server
with its worker processes. Writes benchmarks/results/serve.json and serve.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import tables  # noqa: E402


def rss_tree(pid: int, field: str = "Rss:") -> int:
    """Resident bytes of ``pid`` and all its descendants: ``Rss:`` counts shared pages (the torch
    libraries) once per process, ``Pss:`` shares them out, so the sum is the memory really used."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass
    return total


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def post(url: str) -> bytes:
    """A POST with no body: how the pages start a job (and poll it)."""
    with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=60) as r:
        return r.read()


def wait_done(url: str) -> dict:
    while True:
        j = json.loads(post(url))
        if j["state"] in ("done", "error", "cancelled"):
            return j
        time.sleep(0.05)


def main() -> None:
    cache = tempfile.mkdtemp(prefix="bench-serve-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "filterscope.cli", "serve", "--port", str(port), "--cache", cache, "--workers", "2"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, stop = [0, 0], threading.Event()

    def watch():
        while not stop.wait(0.1):
            peak[0] = max(peak[0], rss_tree(proc.pid))
            peak[1] = max(peak[1], rss_tree(proc.pid, "Pss:"))

    threading.Thread(target=watch, daemon=True).start()
    res: dict = {"machine": f"{os.cpu_count()} CPUs", "workers": 2}
    try:
        while True:
            try:
                get(base + "/")
                break
            except OSError:
                time.sleep(0.2)
        res["startup_s"] = round(time.perf_counter() - t0, 2)
        # upload a photo and explain it (default layer bn2, and blocks.5)
        photo = (ROOT / "src/filterscope/data/photos/astronaut_0.jpg").read_bytes()
        with urllib.request.urlopen(base + "/", timeout=60) as r:  # a session: signed cookie + form token
            cookie = r.headers["set-cookie"].split(";")[0]
            tok = r.read().decode().split('name="csrf" value="')[1].split('"')[0].encode()
        body = (
            b'--b\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n' + tok + b"\r\n"
            b'--b\r\nContent-Disposition: form-data; name="layer"\r\n\r\nblocks.5\r\n--b\r\n'
            b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + photo + b"\r\n--b--\r\n"
        )
        t = time.perf_counter()
        headers = {"Content-Type": "multipart/form-data; boundary=b", "Cookie": cookie}
        req = urllib.request.Request(base + "/upload", body, headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            page_url = r.url
        h = page_url.rsplit("/", 1)[1]
        wait_done(f"{base}/api/explain/efficientnet_lite0/blocks.5/{h}")
        get(page_url)
        res["explanation_s"] = round(time.perf_counter() - t, 3)
        firsts, cached = [], []
        for c in (3, 42, 150):
            api = f"{base}/api/render/efficientnet_lite0/blocks.5/{c}"
            t = time.perf_counter()
            j = wait_done(api)
            get(base + j["urls"][0])
            firsts.append(time.perf_counter() - t)
            t = time.perf_counter()
            j = json.loads(get(api))
            get(base + j["urls"][0])
            cached.append(time.perf_counter() - t)
        res["first_render_blocks5_s"] = [round(x, 3) for x in firsts]
        res["cached_render_s"] = [round(x, 4) for x in cached]
        urls = [page_url, f"{page_url}/f/3", base + j["urls"][0], f"{base}/photo/{h}.png", base + "/"]
        for u in urls:
            get(u)

        def timed(u):
            t = time.perf_counter()
            get(u)
            return time.perf_counter() - t

        t = time.perf_counter()
        with ThreadPoolExecutor(20) as pool:
            lat = sorted(pool.map(timed, [urls[i % len(urls)] for i in range(1000)]))
        wall = time.perf_counter() - t
        res["cached_20_clients"] = {
            "requests": len(lat),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "p95_ms": round(1000 * lat[int(0.95 * len(lat))], 1),
            "max_ms": round(1000 * lat[-1], 1),
            "requests_per_s": round(len(lat) / wall, 1),
        }
    finally:
        stop.set()
        res["peak_rss_gb"] = round(peak[0] / 1e9, 3)  # sum over processes, shared pages counted in each
        res["peak_pss_gb"] = round(peak[1] / 1e9, 3)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps(res, indent=2) + "\n")
    md = tables.serve_table(res)
    (OUT / "serve.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
