"""One result type for every job of the Python API (issue 42): each job function returns the job's
:class:`~filterscope.jobs.contract.JobResult`, run in memory without ``out`` (nothing written) or in a run
folder with it; ``data`` is the job's own object and the result answers for its attributes."""

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from photos import bundled_photos

import filterscope as fs
from filterscope.errors import Interrupted, LayerError, UsageError
from filterscope.jobs.accentuate import Accentuation
from filterscope.jobs.circuit import Circuit
from filterscope.jobs.concepts import Concepts
from filterscope.jobs.contract import JobResult, run_job
from filterscope.jobs.explain import Explanation
from filterscope.jobs.inspect import Inspection
from filterscope.jobs.tuning import Tuning


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return bundled_photos(tmp_path_factory.mktemp("photos"), 4, "*_0.jpg")


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working folder: a run in memory must leave it empty (no default ``filterscope-out``)."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def _photo(photos):
    return sorted(photos.iterdir())[0]


# name → (the API call on the tiny net, the type of its data)
JOBS = {
    "inspect": (lambda m, p, **kw: fs.inspect(m, _photo(p), "conv3", 3, **kw), Inspection),
    "accentuate": (lambda m, p, **kw: fs.accentuate(m, _photo(p), "conv3", [0, 1], steps=2, **kw), list),
    "tuning": (lambda m, p, **kw: fs.tuning(m, "conv3", [0, 1], images=p, **kw), Tuning),
    "circuit": (lambda m, p, **kw: fs.circuit(m, "conv3", 0, images=p, renders=False, k=1, **kw), Circuit),
    "concepts": (
        lambda m, p, **kw: fs.concepts(m, p, layer="conv3", n_concepts=2, crops=1, render=False, progress=False, **kw),
        Concepts,
    ),
    "explain": (
        lambda m, p, **kw: fs.explain(
            m,
            _photo(p),
            layer="conv3",
            top=1,
            accent_steps=2,
            method="seed",
            render_steps=2,
            images=str(p),
            progress=False,
            **kw,
        ),  # fmt: skip
        Explanation,
    ),
}


SLOW = {"circuit", "concepts", "explain"}  # 2-3 s each on the tiny net: the slow lane


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in JOBS])
def test_every_job_returns_a_job_result_in_memory_and_in_a_folder(name, tiny_model, photos, cwd, tmp_path):
    call, kind = JOBS[name]
    mem = call(tiny_model, photos)
    assert isinstance(mem, JobResult) and isinstance(mem.data, kind)
    assert mem.run_dir is None and mem.status == "complete" and mem.interruption is None
    assert mem.record["command"] == name and mem.record["status"] == "complete"
    assert mem.record["timings"]["total_s"] >= 0
    assert not any(cwd.iterdir())  # nothing written, not even the default run folder

    out = tmp_path / "out"
    disk = call(tiny_model, photos, out=out)
    assert isinstance(disk, JobResult) and isinstance(disk.data, kind)
    assert disk.run_dir == out and disk.status == "complete"
    written = json.loads((out / "run.json").read_text())
    assert written["command"] == name and written["status"] == "complete"
    assert written["settings"] == mem.record["settings"]  # the same plan, with or without a folder
    assert not any(cwd.iterdir())
    if kind is list:
        assert all(isinstance(a, Accentuation) for a in mem.data) and [a.channel for a in mem.data] == [0, 1]


@pytest.mark.slow
def test_the_same_answer_in_memory_and_in_a_folder(tiny_model, photos, tmp_path):
    a = fs.inspect(tiny_model, _photo(photos), "conv3", 3)
    b = fs.inspect(tiny_model, _photo(photos), "conv3", 3, out=tmp_path / "i")
    assert a.top == b.top and np.array_equal(a.means, b.means)
    t = fs.tuning(tiny_model, "conv3", [0, 1], images=photos)
    u = fs.tuning(tiny_model, "conv3", [0, 1], images=photos, out=tmp_path / "t")
    assert t.data.record() == u.data.record() == json.loads((tmp_path / "t" / "tuning.json").read_text())


def test_attributes_are_the_datas_and_the_results_own_fields_win(tiny_model, photos):
    res = fs.tuning(tiny_model, "conv3", [0], images=photos)
    assert res.channels is res.data.channels and res.n_stimuli == res.data.n_stimuli  # forwarded
    assert isinstance(res.record, dict) and res.record["command"] == "tuning"  # JobResult's, not Tuning.record()
    assert res.data.record()["layer"] == "conv3"
    assert "<html" in res._repr_html_()  # Jupyter finds the data's repr
    with pytest.raises(AttributeError, match=r"no attribute 'nosuch', nor has its data \(Tuning\)"):
        res.nosuch  # noqa: B018
    for again in (copy.deepcopy(res), pickle.loads(pickle.dumps(res))):
        assert again.record == res.record and again.data.record() == res.data.record()
    # a tensor or a PIL image given in Python is inspected as it is, and named so in the record
    x = fs.load_image(_photo(photos))
    ins = fs.inspect(tiny_model, x, "conv3", 2)
    assert ins.record["settings"]["image"] == "<PIL image>" and len(ins.top) == 2
    assert fs.inspect(tiny_model, ins.image, "conv3", 2).top == ins.top  # the [3,S,S] input the model saw


def test_a_run_in_memory_keeps_nothing_for_resume_and_takes_no_out(tiny_model, photos, cwd):
    from filterscope.jobs import tuning as T

    res = fs.tuning(tiny_model, "conv3", [0], images=photos)
    assert res.status == "complete" and res.record["results"] == {}  # no "resume:" pieces kept in memory
    with pytest.raises(UsageError, match="resume needs out"):
        fs.tuning(tiny_model, "conv3", [0], images=photos, resume=True)
    with pytest.raises(UsageError, match="takes no out"):
        run_job(T.JOB, tiny_model, out=cwd / "x", in_memory=True, layer="conv3")
    with pytest.raises(UsageError, match="cannot run in memory"):
        run_job(fs.jobs.evaluate.JOB, tiny_model, in_memory=True, run_dir=str(cwd))
    assert not hasattr(T, "run_tuning")  # one name per job
    assert not any(cwd.iterdir())


def test_a_stopped_run_in_memory_is_partial(tiny_model, photos, cwd):
    answers = iter([False] + [True] * 10)  # asked before each filter: stop after the first
    res = fs.accentuate(tiny_model, _photo(photos), "conv3", [0, 1, 2], steps=2, should_stop=lambda: next(answers))
    assert res.status == "partial" and [a.channel for a in res.data] == [0]
    assert res.interruption == "interrupted: 1 of 3 channels finished (in memory; nothing was written)"
    assert res.record["status"] == "partial"
    with pytest.raises(Interrupted, match="1 of 3 channels"):
        res.raise_if_partial()
    assert not any(cwd.iterdir())


def test_bad_input_in_memory_is_one_error_and_writes_nothing(tiny_model, photos, cwd):
    with pytest.raises(LayerError, match="nosuch"):
        fs.inspect(tiny_model, layer="nosuch")
    with pytest.raises(LayerError, match="spatial maps"):
        fs.tuning(tiny_model, "fc", [0], images=photos)
    with pytest.raises(UsageError, match="out of range"):
        fs.accentuate(tiny_model, None, "conv3", [99])
    with pytest.raises(UsageError, match="has no option 'nosuch'"):
        fs.explain(tiny_model, nosuch=1)
    with pytest.raises(UsageError, match=r"\[C,H,W\]"):
        fs.inspect(tiny_model, torch.zeros(2, 3, 32, 32))
    assert not any(cwd.iterdir())
