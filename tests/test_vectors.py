"""The layer pass shared by dictionary and map (:mod:`filterscope.jobs.vectors`): every kept vector carries
its provenance (image, view, position), the whole images' vectors equal the maps of the encode pass, the
reservoir bounds memory, and Ray Data gives the same vectors as the local pass for the same seed."""

import numpy as np
import pytest
from PIL import Image

from filterscope.jobs.vectors import layer_vectors, stream_maps
from filterscope.models.layers import network_layer


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / cls / f"{cls}{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png")
    return root


def _files(root):
    return sorted(p for p in root.rglob("*.png"))


def test_provenance_matches_the_encode_pass(tiny_model, folder):
    info = network_layer(tiny_model, "relu3", "dictionary")
    files = _files(folder)
    lv = layer_vectors(tiny_model, info, files, crops=2, max_vectors=10_000, seed=1)
    h, w = lv.map_size
    assert (h, w) == (8, 8) and lv.skipped == 1 and lv.used == 10
    assert len(lv) == lv.seen == 10 * 3 * h * w  # every vector kept: the cap is above the stream
    assert set(np.unique(lv.view)) == {0, 1, 2} and lv.y.max() == h - 1 and lv.x.max() == w - 1
    broken = files.index(folder / "a" / "broken.png")
    assert broken not in set(lv.image.tolist()) and broken not in lv.predictions
    seen = 0
    for index, maps, logits in stream_maps(tiny_model, info, files, batch=4):
        assert maps.shape[1:] == (16, h, w) and logits.shape == (len(index), 10)
        for b, i in enumerate(index):
            whole = (lv.image == i) & (lv.view == 0)
            got = lv.vectors[whole][np.lexsort((lv.x[whole], lv.y[whole]))]
            assert np.allclose(got, maps[b].permute(1, 2, 0).reshape(-1, 16).numpy(), atol=1e-6)
            assert lv.predictions[int(i)] == int(logits[b].argmax())
            seen += 1
    assert seen == 10
    capped = layer_vectors(tiny_model, info, files, crops=2, max_vectors=100, seed=1)
    assert capped.vectors.shape == (100, 16) and capped.seen == lv.seen
    for r in range(0, 100, 17):  # each sampled vector is the one at its recorded provenance
        m = (lv.image == capped.image[r]) & (lv.view == capped.view[r]) & (lv.y == capped.y[r]) & (lv.x == capped.x[r])
        assert np.array_equal(lv.vectors[m][0], capped.vectors[r])


@pytest.mark.slow
def test_ray_pass_gives_the_local_vectors(tiny_model, folder, ray_lock):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    info = network_layer(tiny_model, "relu3", "dictionary")
    files = _files(folder)
    kw = dict(crops=2, max_vectors=500, seed=4)
    local = layer_vectors(tiny_model, info, files, **kw)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = layer_vectors(tiny_model, info, files, backend="ray", workers=2, **kw)
    finally:
        ray.shutdown()
    for f in ("vectors", "image", "view", "y", "x"):
        assert np.array_equal(getattr(local, f), getattr(remote, f)), f
    assert local.predictions == remote.predictions and local.seen == remote.seen
