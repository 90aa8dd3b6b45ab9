"""``diff --resume``: a diff stopped in each of its stages (the pass through both models, the margin
attribution, the feature dictionaries, the renders) keeps what it finished and, resumed, ends with the same
bytes as an uninterrupted run, without running a finished piece again."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from resume_check import hashes, kept_count, spy_keeps

from filterscope.cli import main
from filterscope.errors import UsageError
from filterscope.jobs import diff as D
from filterscope.models import load_model


@pytest.fixture(scope="module")
def noise_pair(tmp_path_factory):
    """Two random-weight checkpoints of the backdoor test's net and 40 noise images (3 batches of the pass):
    their predictions differ on most images, so every stage has work."""
    import backdoor_net
    from PIL import Image

    d = backdoor_net.untrained_pair(tmp_path_factory.mktemp("noise_pair"))
    rng = np.random.default_rng(1)
    for i in range(3, 40):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), "L").save(d / "images" / f"{i}.png")
    return d


def models(d):
    return tuple(load_model(f"{d / 'net.py'}:Net", weights=str(d / f"w{s}.pt"), input_size=24) for s in (0, 1))


@pytest.mark.slow
def test_diff_stopped_in_every_stage_resumes_to_the_same_bytes(noise_pair, tmp_path, monkeypatch):
    keeps = spy_keeps(monkeypatch)
    a, b = models(noise_pair)
    opts = dict(images=str(noise_pair / "images"), model_b=b, layer="relu3", features=16, seed=2)
    passes = [0]
    acts = D._acts

    def counted(*args):
        passes[0] += 1
        return acts(*args)

    monkeypatch.setattr(D, "_acts", counted)
    whole = D.run_job(D.JOB, a, out=tmp_path / "whole", **opts)
    assert whole.status == "complete" and whole.data.flipped > 16 and whole.data.renders
    assert passes[0] == 2 * 3 and not (tmp_path / "whole" / "resume").exists()
    made = [n for n in keeps if n != "pass"]
    assert {n.split("/")[0] for n in made} == {"attribution", "features", "render"}
    keeps.clear()
    passes[0] = 0

    out = tmp_path / "cut"
    # stopped after the first batch of the pass, then after every second piece kept, until it completes
    res = D.run_job(D.JOB, a, out=out, should_stop=lambda: passes[0] >= 2, **opts)
    messages = [res.interruption]
    assert res.status == "partial" and "16 of 40 images of the pass through both models" in res.interruption
    assert not (out / "diff.json").exists() and (out / "resume" / "pass.npz").is_file()
    while res.status == "partial":
        n = kept_count(out) + 2
        res = D.run_job(D.JOB, a, out=out, resume=True, should_stop=lambda n=n: kept_count(out) >= n, **opts)
        messages.append(res.interruption)
        assert "--resume" in (res.interruption or "--resume") and len(messages) < 20
    stages = ["flipped images of the attribution", "feature dictionaries", "renders (B's changed units"]
    assert all(any(s in (m or "") for m in messages) for s in stages), messages
    assert passes[0] == 2 * 3  # each batch of the pass ran once over all the runs
    again = [n for n in keeps if n != "pass"]
    assert sorted(again) == sorted(made) and len(set(again)) == len(again)  # no finished piece redone
    assert not (out / "resume").exists()
    assert hashes(out) == hashes(tmp_path / "whole") and "diff.json" in hashes(out)
    rec, ref = (json.loads((d / "run.json").read_text()) for d in (out, tmp_path / "whole"))
    assert rec["results"] == ref["results"] and rec["files"] == ref["files"] and rec["status"] == "complete"
    with pytest.raises(UsageError, match="other settings"):
        D.run_job(D.JOB, a, out=out, resume=True, **{**opts, "features": 8})
    with pytest.raises(UsageError, match="other settings"):
        D.diff(a, noise_pair / "images", model_b=b, layer="relu2", out=out, resume=True)


@pytest.mark.slow
def test_diff_cli_sigint_keeps_the_pass_and_resume_finishes(noise_pair, tmp_path, capsys, monkeypatch):
    d = noise_pair
    args = ["diff", str(d / "images"), "--model", f"{d / 'net.py'}:Net", "--weights", str(d / "w0.pt")]
    args += ["--input-size", "24", "--model-b", f"{d / 'net.py'}:Net", "--weights-b", str(d / "w1.pt")]
    args += ["--input-size-b", "24", "--layer", "relu3", "--no-renders", "-q"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    acts = D._acts
    calls = [0]

    def interrupted(*a):
        calls[0] += 1
        if calls[0] == 3:  # the second batch: SIGINT as Ctrl-C sends it
            os.kill(os.getpid(), signal.SIGINT)
        return acts(*a)

    monkeypatch.setattr(D, "_acts", interrupted)
    out = tmp_path / "cut"
    assert main([*args, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "32 of 40 images of the pass" in err and "--resume" in err
    assert (out / "resume" / "pass.npz").is_file() and not (out / "diff.json").exists()
    calls[0] = 0
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert calls[0] == 2  # only the last batch ran again
    assert hashes(out) == hashes(tmp_path / "whole") and "diff.json" in hashes(out)
