"""``circuit --resume``: a circuit stopped in each of its stages (the attribution pass, the removal effects,
the renders) keeps its finished pieces and, resumed, ends with the same bytes as an uninterrupted run, without
measuring or rendering a kept piece again."""

from __future__ import annotations

import json
import os
import signal

import pytest
from photos import bundled_photos
from resume_check import hashes, kept_count, spy_keeps, stop_at

import filterscope as fs
from filterscope.cli import main
from filterscope.errors import UsageError
from filterscope.jobs import circuit as C

OUTPUTS = ("circuit.json", "circuit_weights.npz", "figure_circuit.png", "report.html")


@pytest.fixture(scope="module")
def photos20(tmp_path_factory):
    """20 bundled photos: two batches of the attribution pass, two of the removal effects (18 of them)."""
    return bundled_photos(tmp_path_factory.mktemp("photos20"), 20)


@pytest.mark.slow
def test_circuit_stopped_in_every_stage_resumes_to_the_same_bytes(tiny_model, photos20, tmp_path, monkeypatch):
    keeps = spy_keeps(monkeypatch)
    opts = dict(layer="conv3", channel=5, images=str(photos20), top=4, seed=3)
    whole = fs.circuit(tiny_model, out=tmp_path / "whole", **opts)
    assert whole.status == "complete" and whole.ablation and whole.target_png is not None
    assert all(i.render_png is not None for i in whole.shown)
    assert not (tmp_path / "whole" / "resume").exists()  # the kept pieces go once the run is complete
    pieces = list(keeps)  # 2 attribution batches, 2 pieces of removal effects, the ablation, 1 + 4 renders
    assert [n.split("/")[0] for n in pieces] == ["attribution"] * 2 + ["effects"] * 2 + ["ablation"] + ["render"] * 5
    keeps.clear()

    out = tmp_path / "cut"
    expected = [
        (1, "12 of 20 images of the attribution pass"),
        (3, "1 of 2 pieces of the removal effects"),
        (6, "1 of 5 renders"),
    ]
    for i, (n, message) in enumerate(expected):
        res = C.run_job(C.JOB, tiny_model, out=out, resume=i > 0, should_stop=stop_at(out, n), **opts)
        assert res.status == "partial" and message in res.interruption and "--resume" in res.interruption
        assert kept_count(out) == n
        assert (out / "circuit.json").is_file() == (n == 6)  # written once the inputs are measured
    first = (out / "resume" / "attribution" / "0000.npz").stat().st_mtime_ns
    res = C.run_job(C.JOB, tiny_model, out=out, resume=True, **opts)
    assert res.status == "complete" and not (out / "resume").exists()
    assert len(keeps) == len(set(keeps)) == len(pieces)  # every piece made once, none again on a resume
    assert hashes(out) == hashes(tmp_path / "whole") and len(hashes(out)) == len(OUTPUTS) + 5
    rec, ref = (json.loads((d / "run.json").read_text()) for d in (out, tmp_path / "whole"))
    assert rec["results"] == ref["results"] and rec["files"] == ref["files"] and rec["status"] == "complete"
    assert first  # the first batch was kept until the run completed


def test_circuit_resume_with_other_settings_or_without_out_is_refused(tiny_model, photos20, tmp_path):
    out = tmp_path / "c"
    opts = dict(layer="conv3", channel=1, images=str(photos20), top=2, no_renders=True)
    cut = C.run_job(C.JOB, tiny_model, out=out, should_stop=lambda: True, **opts)
    assert cut.status == "partial" and kept_count(out) == 1
    with pytest.raises(UsageError, match="other settings"):
        C.run_job(C.JOB, tiny_model, out=out, resume=True, **{**opts, "seed": 1})
    with pytest.raises(UsageError, match="needs out"):
        fs.circuit(tiny_model, "conv3", 0, resume=True)


def test_circuit_cli_sigint_keeps_its_pieces_and_resume_finishes(photos20, tmp_path, capsys, monkeypatch):
    """SIGINT during the removal effects: exit 130 with the pieces kept; ``--resume`` exits 0 with the files
    of an uninterrupted run."""
    args = ["circuit", "--model", "digits_cnn", "--layer", "conv3", "--channel", "4", "--images", str(photos20)]
    args += ["--no-renders", "-q"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    measure = C.Masked.run
    calls = [0]

    def interrupted(self, masks, i):
        calls[0] += 1
        if calls[0] == 2:  # the first piece of the removal effects is being measured (the first call: a check)
            os.kill(os.getpid(), signal.SIGINT)
        return measure(self, masks, i)

    monkeypatch.setattr(C.Masked, "run", interrupted)
    out = tmp_path / "cut"
    assert main([*args, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "pieces of the removal effects" in err and "--resume" in err
    assert (out / "resume" / "effects").is_dir() and not (out / "circuit.json").exists()
    monkeypatch.setattr(C.Masked, "run", measure)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert hashes(out) == hashes(tmp_path / "whole") and "circuit.json" in hashes(out)
