"""``--resume`` of the jobs that write finished pieces as they go: an interrupted run, resumed, ends with the
same bytes as an uninterrupted one (the finished pieces are kept, not redone)."""

from __future__ import annotations

import hashlib
import json

import pytest

import filterscope as fs
from filterscope.errors import UsageError


def _hashes(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))
    }


def _after_first_result(out):
    """A ``should_stop`` that fires once the run's record holds one finished piece."""

    def stop() -> bool:
        f = out / "run.json"
        return f.is_file() and len(json.loads(f.read_text())["results"]) >= 1

    return stop


@pytest.mark.slow
def test_accentuate_resumes_where_it_stopped(model, tmp_path):
    from filterscope.jobs import accentuate

    opts = dict(layer="blocks.1", channels=[0, 3, 5], steps=2, seed=1)
    whole = fs.run_job(accentuate.JOB, model, out=tmp_path / "whole", **opts)
    assert whole.status == "complete" and [a.channel for a in whole.data] == [0, 3, 5]

    out = tmp_path / "cut"
    cut = fs.run_job(accentuate.JOB, model, out=out, should_stop=_after_first_result(out), **opts)
    assert cut.status == "partial" and [a.channel for a in cut.data] == [0]
    assert "1 of 3 channels finished" in cut.interruption and "--resume" in cut.interruption
    first = (out / "blocks.1" / "accent_0000.png").stat().st_mtime_ns

    done = fs.run_job(accentuate.JOB, model, out=out, resume=True, **opts)
    assert done.status == "complete" and [a.channel for a in done.data] == [0, 3, 5]
    assert (out / "blocks.1" / "accent_0000.png").stat().st_mtime_ns == first  # kept, not redone
    assert _hashes(out) == _hashes(tmp_path / "whole") and len(_hashes(out)) == 6
    rec, ref = (json.loads((d / "run.json").read_text()) for d in (out, tmp_path / "whole"))
    strip = {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in rec["results"].items()}
    assert strip == {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in ref["results"].items()}
    assert [a.record()["activation_accent"] for a in done.data] == [a.record()["activation_accent"] for a in whole.data]
    with pytest.raises(UsageError, match="other settings"):  # a resume with other settings is refused
        fs.run_job(accentuate.JOB, model, out=out, resume=True, **{**opts, "steps": 3})


@pytest.mark.slow
def test_explain_resumes_with_its_finished_accentuations(model, tmp_path):
    """explain stopped after its first accentuation keeps it (exactly: staged as floats) and, resumed, ends
    with the same pictures and record as an uninterrupted run; the staged pieces go when it completes."""
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee_0", "chelsea_0", "rocket_0"):
        shutil.copy(fs.sample_photos_dir() / f"{name}.jpg", photos)
    opts = dict(top=2, accent_steps=3, method="seed", render_steps=3, images=str(photos), progress=False)
    whole = fs.explain(model, out=tmp_path / "whole", **opts)
    assert whole.status == "complete" and len(whole.filters) == 2

    out = tmp_path / "cut"
    cut = fs.explain(model, out=out, should_stop=_after_first_result(out), **opts)
    assert cut.status == "partial" and "--resume" in cut.interruption
    staged = sorted((out / "resume").rglob("*.npz"))
    assert len(staged) == 1
    mtime = staged[0].stat().st_mtime_ns

    done = fs.explain(
        model,
        out=out,
        resume=True,
        should_stop=lambda: staged[0].is_file() and staged[0].stat().st_mtime_ns != mtime,
        **opts,
    )
    assert done.status == "complete" and len(done.filters) == 2  # the kept accentuation was not redone
    assert not (out / "resume").exists()
    assert _hashes(out) == _hashes(tmp_path / "whole") and len(_hashes(out)) >= 5
    rec, ref = (json.loads((d / "run.json").read_text()) for d in (out, tmp_path / "whole"))
    assert rec["explain"] == ref["explain"] and rec["files"] == ref["files"] and rec["results"] == ref["results"]
