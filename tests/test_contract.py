"""The job contract: one run folder, record, interruption and error path for every job; the Python API refuses
what the CLI refuses, with the same one-line message, and writes nothing then."""

from __future__ import annotations

import json

import pytest

import filterscope as fs
from filterscope.errors import FilterscopeError, Interrupted, UsageError
from filterscope.jobs.contract import open_run
from filterscope.optvis.presets import get_preset, resolve_settings


def test_open_run_records_status_and_timings(tmp_path):
    with open_run("demo", tmp_path / "run", {"a": 1}, progress=False, should_stop=lambda: False) as ctx:
        ctx.run.write_text("x.txt", "hello")
        ctx.run.result("item:0", {"value": 3})
        with ctx.timed("work"):
            pass
        ctx.data = "payload"
    res = ctx.result
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert res.status == rec["status"] == "complete" and res.data == "payload"
    assert rec["settings"] == {"a": 1} and rec["results"] == {"item:0": {"value": 3}} and rec["files"] == ["x.txt"]
    assert {"work_s", "total_s"} <= set(rec["timings"])
    res.raise_if_partial()  # a complete run raises nothing


def test_open_run_partial_and_its_message(tmp_path):
    with open_run("demo", tmp_path / "run", {}, progress=False, should_stop=lambda: True) as ctx:
        assert ctx.stop()
        ctx.run.result("item:0", {})
        ctx.mark_partial(1, 4, "channels")
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["status"] == ctx.result.status == "partial"
    with pytest.raises(Interrupted) as e:
        ctx.result.raise_if_partial()
    assert e.value.exit_code == 130 and "1 of 4 channels finished" in str(e.value) and "--resume" in str(e.value)


def test_open_run_failure_is_recorded_and_unlocks(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FilterscopeError, match="boom"):
        with open_run("demo", out, {}, progress=False, should_stop=lambda: False) as ctx:
            ctx.run.write_text("part.txt", "x")
            raise FilterscopeError("boom")
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "failed" and rec["error"] == "boom"
    with open_run("demo", out, {}, progress=False, should_stop=lambda: False):  # the lock was released
        pass


def test_open_run_failure_before_any_file_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UsageError):
        with open_run("demo", out, {}, progress=False, should_stop=lambda: False):
            raise UsageError("bad")
    assert not (out / "run.json").exists()


def test_settings_know_their_preset():
    lucid = get_preset("lucid")
    assert lucid.preset == "lucid"
    assert lucid.with_(steps=8).label == "lucid+steps" and lucid.with_(steps=8).changed == ("steps",)
    assert lucid.with_(steps=8).with_(lr=0.1).label == "lucid+lr+steps"
    assert lucid.with_(steps=8).with_(lr=0.1).preset == "lucid"  # the preset is a field, the label made from it
    assert lucid.with_(steps=lucid.steps).label == "lucid"  # no real change, no label
    assert lucid.with_(steps=8) == get_preset("lucid").with_(steps=8)  # the label is not part of the meaning
    assert "preset" not in lucid.as_dict() and "changed" not in lucid.as_dict()
    assert resolve_settings(None, None).preset == "fast"
    assert resolve_settings(None, lucid) is lucid
    with pytest.raises(UsageError, match="disagree"):
        resolve_settings("maco", lucid)


def test_run_json_records_the_preset_that_ran(model, tmp_path):
    res = fs.render_channels(
        model, "blocks.1", [0], settings=get_preset("lucid").with_(steps=2), out=tmp_path / "r", progress=False
    )
    rec = json.loads((res.run_dir / "run.json").read_text())
    assert rec["settings"]["method"] == "lucid+steps" and rec["settings"]["render"]["steps"] == 2
    assert res.status == "complete" and res.data.summary.rendered == [0]


# (API call, CLI arguments): each must be refused with one line, the same in both, before anything is written
REFUSALS = [
    (lambda m, out: fs.boost(m, layer="blocks.0", top=50, out=out), ["boost", "--layer", "blocks.0", "--top", "50"]),
    (lambda m, out: fs.boost(m, layer="logit", out=out), ["boost", "--layer", "logit"]),
    (lambda m, out: fs.render_channels(m, "blocks.0", [99], out=out), ["render", "--layer", "blocks.0", "--channels", "99"]),  # noqa: E501
    (lambda m, out: fs.explain(m, layer="blocks.0", top=40, out=out), ["explain", "--layer", "blocks.0", "--top", "40"]),  # noqa: E501
    (
        lambda m, out: fs.run_job(fs.jobs.accentuate.JOB, m, out=out, layer="blocks.0", channels=[77]),
        ["accentuate", "--layer", "blocks.0", "--channels", "77"],
    ),
    (
        lambda m, out: fs.run_job(fs.jobs.inspect.JOB, m, out=out, layer="logit"),
        ["inspect", "--layer", "logit"],
    ),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("api, argv", REFUSALS, ids=[" ".join(a[:3]) for _, a in REFUSALS])
def test_api_refuses_what_the_cli_refuses(model, tmp_path, capsys, api, argv):
    """The CLI runs in this process (its exit code is ``main``'s return value): a fresh interpreter per case
    cost ~5 s of imports and model loading each; the CLI as a process is tested in test_cli and test_plugins."""
    import filterscope.jobs.accentuate
    import filterscope.jobs.inspect  # noqa: F401
    from filterscope.cli import main

    with pytest.raises(UsageError) as e:
        api(model, tmp_path / "api")
    assert not (tmp_path / "api").exists()
    capsys.readouterr()
    rc = main(argv + ["--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.strip() == f"error: {e.value}"
    assert not (tmp_path / "cli").exists()


def test_run_job_reports_every_bar_step_to_on_progress_even_without_bars(tmp_path, capsys):
    """``run_job(on_progress=...)``: how the explorer's workers follow a job (tqdm's disabled bars do not count)."""
    from dataclasses import dataclass, field

    from filterscope.jobs.contract import Job, opt, run_job

    @dataclass
    class Req:
        n: int = opt(3, "Steps.", min=1)

    @dataclass
    class Plan:
        n: int
        settings: dict = field(default_factory=dict)

    def compute(ctx, plan):
        with ctx.progress(plan.n, "toy: steps") as bar:
            for _ in range(plan.n):
                bar.update(1)
        return plan.n

    def write(ctx, n):
        ctx.run.write_text("toy.txt", str(n))

    job = Job("toy", Req, lambda model, req: Plan(req.n), compute, write, lambda r: [])
    seen = []
    res = run_job(job, None, out=tmp_path / "t", n=4, on_progress=lambda *a: seen.append(a))
    assert res.status == "complete" and seen == [("toy: steps", i, 4) for i in range(5)]
    assert capsys.readouterr().err == ""  # no bar shown
