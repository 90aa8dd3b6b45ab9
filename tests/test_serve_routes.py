"""The explorer's job routes answer on one path (``serve.explorer.cached_or_job``): a result in the cache is done
(``cached`` unless this server's job just made it), else the job's status, started only by a POST, a refused job
reported rather than restarted where the route says so. Checked on a one-route app over a stub job table (no
workers, no model), and every ``/api/…`` job route of the app and the feature browser on that path."""

from __future__ import annotations

import ast
import inspect

import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from filterscope.serve import app as app_module
from filterscope.serve import features as features_module
from filterscope.serve.explorer import cached_or_job

KEY = "a" * 64


class StubJobs:
    """The job table's ``status`` as the routes see it; ``states`` says what each job is."""

    def __init__(self) -> None:
        self.states: dict[str, dict] = {}
        self.started = 0

    def status(self, job_id: str, client: str | None = None) -> dict | None:
        return self.states.get(job_id)


class StubExplorer:
    def __init__(self) -> None:
        self.jobs = StubJobs()
        self.cached = False
        self.retry_errors = True

    def client(self, request) -> str:
        return "client"


def _status(state: str, error: str | None = None) -> dict:
    return {"id": KEY, "kind": "stub", "state": state, "progress": [1, 3, "activation pass"], "seconds": 1.5,
            "error": error}  # fmt: skip


@pytest.fixture
def stub():
    ex = StubExplorer()

    def route(request):
        def start():
            ex.jobs.started += 1
            ex.jobs.states[KEY] = _status("running")

        fields = {"gain": 0.5} if ex.cached else None
        return cached_or_job(
            ex, request, KEY, ex.cached, start, urls=["/png/x.png"], fields=fields, retry_errors=ex.retry_errors
        )

    app = Starlette(routes=[Route("/api/job", route, methods=["GET", "POST"])])
    app.state.explorer = ex
    with TestClient(app) as c:
        yield ex, c


def test_nothing_cached_a_get_only_reports_and_a_post_starts_once(stub):
    ex, c = stub
    r = c.get("/api/job")
    assert r.status_code == 200
    assert r.json() == {"id": KEY, "state": "none", "progress": None, "error": "not started (POST to start it)"}
    assert ex.jobs.started == 0
    j = c.post("/api/job").json()
    assert j["state"] == "running" and j["progress"] == [1, 3, "activation pass"] and ex.jobs.started == 1
    assert "urls" not in j and "cached" not in j  # a running job's status as the job table gives it
    assert c.post("/api/job").json()["state"] == "running" and ex.jobs.started == 1  # running: not started again


def test_a_cached_result_is_done_and_cached_unless_this_server_just_made_it(stub):
    ex, c = stub
    ex.cached = True
    j = c.post("/api/job").json()
    assert j == {"id": KEY, "state": "done", "cached": True, "gain": 0.5, "urls": ["/png/x.png"]}
    assert ex.jobs.started == 0  # a POST of a cached result starts nothing
    ex.jobs.states[KEY] = _status("done")
    j = c.get("/api/job").json()
    assert j["cached"] is False and j["seconds"] == 1.5 and j["gain"] == 0.5 and j["urls"] == ["/png/x.png"]
    assert j["state"] == "done" and j["kind"] == "stub"


def test_a_finished_job_whose_result_is_not_cached_answers_done_with_its_urls_and_a_post_starts_it_again(stub):
    ex, c = stub
    ex.jobs.states[KEY] = _status("done")
    j = c.get("/api/job").json()
    assert j["state"] == "done" and j["cached"] is False and j["urls"] == ["/png/x.png"] and "gain" not in j
    assert c.post("/api/job").json()["state"] == "running" and ex.jobs.started == 1  # gone from the cache: again


@pytest.mark.parametrize("retry", [True, False])
def test_a_failed_job_is_restarted_or_reported_as_the_route_says(stub, retry):
    ex, c = stub
    ex.retry_errors = retry
    ex.jobs.states[KEY] = _status("error", "a refusal")
    j = c.post("/api/job").json()
    if retry:
        assert j["state"] == "running" and ex.jobs.started == 1
    else:
        assert j["state"] == "error" and j["error"] == "a refusal" and ex.jobs.started == 0
    assert c.get("/api/job").json()["state"] == ("running" if retry else "error")  # a GET never starts one


def _calls(fn) -> set[str]:
    """The names a function calls (``f(...)`` and ``m.f(...)``)."""
    tree = ast.parse(inspect.getsource(fn).lstrip())
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            out.add(n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", ""))
    return out


def test_every_job_route_answers_through_the_one_path():
    """The job routes (``/api/…`` but the refusals' JSON) call ``cached_or_job`` (or ``render_job``, which does)
    and write no status answer of their own: no ``JSONResponse``, ``job_status`` or ``not_started``."""
    routes = [
        app_module.api_explain, app_module.api_examples, app_module.api_render, app_module.api_accent,
        app_module.api_concepts, app_module.api_concept_renders, app_module._api_filter_job, app_module.api_diff,
        app_module.api_map, features_module.api_features, features_module.api_feature_render,
    ]  # fmt: skip
    for fn in routes:
        calls = _calls(fn)
        assert calls & {"cached_or_job", "render_job"}, fn.__name__
        assert not calls & {"JSONResponse", "job_status", "not_started"}, fn.__name__
    assert "cached_or_job" in _calls(app_module.render_job)
    for mod in (app_module, features_module):  # and no other route of theirs answers a job's status by hand
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if fn.__module__ == mod.__name__ and name != "_error_page":
                assert not _calls(fn) & {"job_status", "not_started"}, name
