"""Polling an explorer job from a test: POST its API until it is done, failed or refused."""

import time


def wait_job(client, url: str, timeout: float = 300.0, poll: float = 0.3) -> tuple[dict, list]:
    """The job's last status and the progress values seen while it ran (POST starts it when not running)."""
    t = time.monotonic()
    seen: list = []
    j: dict = {}
    while time.monotonic() - t < timeout:
        r = client.post(url)
        j = r.json()
        seen.append(j.get("progress"))
        if r.status_code >= 400 or j["state"] in ("done", "error", "cancelled"):
            return j, seen
        time.sleep(poll)
    raise AssertionError(f"{url} not done in {timeout} s: {j}")


def follow_job(client, url: str, timeout: float = 300.0, poll: float = 0.05) -> tuple[dict, list]:
    """Start the job with one POST, then follow it with GETs only (a GET never starts a job): its last status
    and each distinct progress value it reported, in order."""
    assert client.post(url).json()["state"] in ("queued", "running")
    t = time.monotonic()
    seen: list = []
    j: dict = {}
    while time.monotonic() - t < timeout:
        j = client.get(url).json()
        if j["state"] not in ("queued", "running"):
            break
        if j["progress"] and (not seen or j["progress"] != seen[-1]):
            seen.append(j["progress"])
        time.sleep(poll)
    return j, seen
