"""``concepts --backend ray``: the activation pass on Ray Data writes the same files as the local pass (the
bundled model on real photos; an in-memory module on one photo's crops), and bad backend settings are refused
in one line before anything is written or Ray starts."""

import json
import sys
import threading
import time

import numpy as np
import pytest
from photos import bundled_photos
from tiny_net import tiny_net

import filterscope as fs
from filterscope.cli import main
from filterscope.errors import UsageError
from filterscope.models import load_model

FILES = ("concepts.json", "concept_bank.npy", "concept_maps.npz")


@pytest.fixture
def photos(tmp_path):
    folder = bundled_photos(tmp_path / "photos", 12)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")  # skipped and counted by both backends
    return folder


@pytest.fixture
def ray_session(ray_lock):
    """One local Ray of 2 CPUs for the test (the job reuses a running Ray), always shut down after it."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _same_files(a, b) -> None:
    assert (a / "concepts.json").read_text() == (b / "concepts.json").read_text()
    assert np.array_equal(np.load(a / "concept_bank.npy"), np.load(b / "concept_bank.npy"))
    ma, mb = np.load(a / "concept_maps.npz"), np.load(b / "concept_maps.npz")
    assert sorted(ma.files) == sorted(mb.files) == ["concept_ids", "images", "maps"]
    for k in ma.files:
        assert np.array_equal(ma[k], mb[k]), k


@pytest.mark.slow
def test_ray_backend_writes_the_local_files(model, photos, tmp_path, ray_session):
    kw = dict(layer="bn2", n_concepts=4, crops=2, render=False, seed=3, progress=False)
    local = fs.concepts(model, photos, out=tmp_path / "local", **kw)
    remote = fs.concepts(model, photos, out=tmp_path / "ray", backend="ray", workers=2, **kw)
    print("local", local.timings, "ray", remote.timings)
    _same_files(tmp_path / "local", tmp_path / "ray")
    assert remote.data.data["skipped_unreadable"] == local.data.data["skipped_unreadable"] == 1
    assert remote.data.data["vectors_seen"] == local.data.data["vectors_seen"] == 12 * 3 * 7 * 7
    rec = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert rec["status"] == "complete" and rec["settings"]["backend"] == "ray"
    assert rec["settings"]["ray"]["workers"] == 2 and rec["settings"]["ray"]["address"] is None
    assert json.loads((tmp_path / "local" / "run.json").read_text())["settings"]["backend"] == "local"
    # a user's in-memory module (tests/tiny_net.py, not an installed package) goes through the object store;
    # one photo: its random crops are the data, in batches of the photo's views; one Ray worker (the order
    # across two is checked above, and each worker is a process that imports torch and filterscope)
    tiny = load_model(tiny_net(), name="tiny_cnn", input_size=32)
    one = sorted(photos.glob("*_0.jpg"))[0]
    kw = dict(layer="relu3", n_concepts=3, crops=12, render=False, progress=False)
    t = time.perf_counter()
    a = fs.concepts(tiny, one, **kw)
    t1 = time.perf_counter()
    b = fs.concepts(tiny, one, backend="ray", workers=1, **kw)
    print("tiny", t1 - t, time.perf_counter() - t1, b.timings)
    assert [c.record() for c in a.concepts] == [c.record() for c in b.concepts]
    assert np.array_equal(a.bank, b.bank) and np.array_equal(a.maps, b.maps) and a.images == b.images
    assert ray_session.is_initialized()  # a Ray the job did not start is left running for its owner


def test_bad_backend_settings_are_refused_before_anything(tiny_model, photos, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray.data")
    out = tmp_path / "out"
    kw = dict(layer="conv3", n_concepts=2, render=False, progress=False, out=out)
    with pytest.raises(UsageError, match="unknown backend 'spark'"):
        fs.concepts(tiny_model, photos, backend="spark", **kw)
    with pytest.raises(UsageError, match="workers must be"):
        fs.concepts(tiny_model, photos, backend="ray", workers=0, **kw)
    locked = tiny_net()
    locked.lock = threading.Lock()  # cannot be pickled into Ray's object store
    with pytest.raises(UsageError, match="cannot be sent to Ray workers"):
        fs.concepts(load_model(locked, name="locked", input_size=32), photos, backend="ray", **kw)
    with pytest.raises(UsageError, match="cannot reach Ray at 127.0.0.1:1"):  # nothing listens on port 1
        fs.concepts(tiny_model, photos, backend="ray", address="127.0.0.1:1", **kw)
    assert not out.exists()
    import ray

    assert not ray.is_initialized()  # refused before Ray started
    rc = main(["concepts", str(photos), "--backend", "spark", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "spark" in err
    monkeypatch.setitem(sys.modules, "ray.data", None)  # Ray Data not installed
    with pytest.raises(UsageError, match=r'pip install "filterscope\[ray\]"'):
        fs.concepts(tiny_model, photos, backend="ray", **kw)
    rc = main(["concepts", str(photos), "--backend", "ray", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and 'pip install "filterscope[ray]"' in err
    assert not out.exists()
