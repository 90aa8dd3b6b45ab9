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
