"""The explorer's guard under attack: ``python benchmarks/bench_serve_guard.py``.

Starts ``filterscope serve --model digits_cnn --workers 1 --max-jobs 4`` on 127.0.0.1 (a fresh cache), fills
the server-wide job bound with 4 slow renders (kept alive by polling), then measures 20 concurrent clients on
cached pages and images while 60 job requests under 60 made-up client cookies arrive (all must be refused:
429 with Retry-After). Target: cached p95 ≤ 100 ms. Writes benchmarks/results/serve_guard.json and .md.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import tables  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
MAX_JOBS, CLIENTS, REQUESTS, ATTACKS = 4, 20, 600, 60


def request(url: str, post: bool = False, cookie: str | None = None) -> tuple[int, bytes, object]:
    req = urllib.request.Request(url, data=b"" if post else None, method="POST" if post else "GET")
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def session(base: str) -> str:
    """A fresh signed client id (what a browser gets on its first page)."""
    _, _, headers = request(base + "/")
    return headers["Set-Cookie"].split(";")[0]


def main() -> None:
    cache = tempfile.mkdtemp(prefix="bench-guard-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "filterscope.cli", "serve", "--model", "digits_cnn", "--port", str(port)]
    cmd += ["--cache", cache, "--workers", "1", "--max-jobs", str(MAX_JOBS)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res: dict = {"machine": f"{os.cpu_count()} CPUs", "model": "digits_cnn", "max_jobs": MAX_JOBS}
    stop = threading.Event()
    try:
        t0 = time.monotonic()
        while True:
            try:
                request(base + "/")
                break
            except OSError:
                if time.monotonic() - t0 > 120:
                    raise
                time.sleep(0.2)
        home = request(base + "/")[1].decode()
        h = re.search(r"/photo/([0-9a-f]{64})\.png", home).group(1)
        explain = f"{base}/api/explain/digits_cnn/conv3/{h}"
        while json.loads(request(explain, post=True)[1])["state"] != "done":
            time.sleep(0.1)
        page = f"{base}/m/digits_cnn/conv3/img/{h}"
        c = re.search(r"/where/digits_cnn/conv3/[0-9a-f]{64}/(\d+)\.png", request(page)[1].decode()).group(1)
        cached = [base + "/", page, f"{base}/photo/{h}.png", f"{base}/where/digits_cnn/conv3/{h}/{c}.png"]
        cached += [f"{base}/static/style.css"]
        for u in cached:
            assert request(u)[0] == 200, u
        # fill the bound: MAX_JOBS long renders from MAX_JOBS real sessions, polled so none is abandoned
        fills = [(f"{base}/api/render/digits_cnn/conv3/{i}?method=lucid&seed=7", session(base)) for i in range(4)]
        codes = [request(u, post=True, cookie=ck)[0] for u, ck in fills]
        assert codes == [200] * MAX_JOBS, codes

        def keep_alive():
            while not stop.wait(2.0):
                for u, ck in fills:
                    request(u, post=True, cookie=ck)

        threading.Thread(target=keep_alive, daemon=True).start()
        rng = random.Random(26)
        refused: list = []

        def attack():
            for i in range(ATTACKS):
                ck = f"fs_client={rng.getrandbits(64):016x}.{rng.getrandbits(64):016x}"
                code, _, headers = request(f"{base}/api/render/digits_cnn/conv2/{i % 32}?seed={i}", True, ck)
                refused.append((code, headers.get("Retry-After")))
                time.sleep(0.02)

        def timed(u):
            t = time.perf_counter()
            code = request(u)[0]
            return code, time.perf_counter() - t, u

        t = time.perf_counter()
        attacker = threading.Thread(target=attack)
        attacker.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            got = list(pool.map(timed, [cached[i % len(cached)] for i in range(REQUESTS)]))
        attacker.join(60)
        wall = time.perf_counter() - t
        lat = sorted(s for _, s, _ in got)
        per_url = {}
        for u in cached:
            ls = sorted(s for _, s, v in got if v == u)
            per_url[u.replace(base, "").replace(h, "<h>")] = round(1000 * ls[int(0.95 * len(ls))], 1)
        res["cached_pages"] = {
            "clients": CLIENTS,
            "requests": len(got),
            "ok": sum(1 for code, _, _ in got if code == 200),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "p95_ms": round(1000 * lat[int(0.95 * len(lat))], 1),
            "max_ms": round(1000 * lat[-1], 1),
            "requests_per_s": round(len(lat) / wall, 1),
            "p95_ms_by_url": per_url,
        }
        res["load_average_1min"] = round(os.getloadavg()[0], 2)  # other programs on the machine
        res["job_requests_during"] = {
            "sent": len(refused),
            "refused_429": sum(1 for code, _ in refused if code == 429),
            "with_retry_after": sum(1 for code, ra in refused if code == 429 and ra),
            "accepted": sum(1 for code, _ in refused if code == 200),
        }
        res["target_p95_ms"] = 100
        res["p95_met"] = res["cached_pages"]["p95_ms"] <= 100
    finally:
        stop.set()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_guard.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "serve_guard.md").write_text(tables.serve_guard_table(res))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
