"""Ray for real: a head node and a second node started as separate processes (``ray start``), an atlas on
that cluster, one render worker killed mid-run: Ray restarts it and retries its task, every channel is
rendered, and the files equal the local backend's at equal seeds and threads (that run in this process; both
take their dataset examples from 4 photos, which the comparison does not need more of)."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from photos import bundled_photos

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"
# Ray clusters started with `ray start` authenticate with a token that every node and the driver share
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
ARGS = [
    "atlas",
    "--layers",
    "blocks.0",
    "--channels",
    "0-7",
    "--steps",
    "24",
    "--top",
    "2",
    "--threads",
    "1",
    "--quiet",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RAY), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **AUTH}
    )


def _worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::RenderWorker"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def cluster(tmp_path, ray_lock):
    pytest.importorskip("ray")
    if not RAY.is_file():
        pytest.skip("the ray command is not installed")
    port = _free_port()
    head = _ray(
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--include-dashboard=false",
        "--disable-usage-stats",
    )
    if head.returncode != 0:
        pytest.fail(f"ray start --head failed: {head.stderr[-500:]}")
    try:
        node = _ray(
            "start",
            f"--address=127.0.0.1:{port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--disable-usage-stats",
        )
        assert node.returncode == 0, node.stderr[-500:]
        yield f"127.0.0.1:{port}"
    finally:
        _ray("stop", "--force")


def _cli(*args, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FILTERSCOPE_DEBUG"} | AUTH
    return subprocess.Popen(
        [sys.executable, "-m", "filterscope.cli", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_atlas_on_two_node_cluster_survives_a_killed_worker(cluster, tmp_path, capsys):

    from filterscope.cli import main

    photos = bundled_photos(tmp_path / "photos", 4, "*_0.jpg")
    args = [*ARGS, "--images", photos]
    out = tmp_path / "ray"
    proc = _cli(*args, "--backend", "ray", "--address", cluster, "--workers", "2", "--out", out)
    killed = None
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and killed is None:
        pids = _worker_pids()
        rec = out / "run.json"
        done = len(json.loads(rec.read_text())["results"]) if rec.is_file() else 0
        if len(pids) == 2 and done >= 1:  # both workers busy, some channels finished: kill one
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=300)
    assert killed is not None, "no worker to kill was seen"
    assert proc.returncode == 0, err
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "complete" and sorted(rec["results"]) == sorted(f"blocks.0:{c}" for c in range(8))
    local = tmp_path / "local"
    rc = main([str(a) for a in (*args, "--out", local)])
    assert rc == 0, capsys.readouterr().err
    lrec = json.loads((local / "run.json").read_text())
    assert sorted(lrec["results"]) == sorted(rec["results"])  # the comparison below covers every channel
    for k, r in lrec["results"].items():
        assert (local / r["file"]).read_bytes() == (out / rec["results"][k]["file"]).read_bytes(), k
