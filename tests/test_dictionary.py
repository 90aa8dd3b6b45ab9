"""``filterscope dictionary``: tests that know the answer.

- A net whose ``mix`` layer stores eight planted pattern detectors in four channels (tests/planted_dictionary.py):
  the SAE dictionary recovers every planted feature (its top exemplars all of one class, named after its
  folder) where the raw channels cannot; the detectors (``--basis channels`` at ``detect``) score above the
  mixed channels.
- A small net trained in seconds with a planted shortcut (a mark on one class): a feature's top exemplars are
  the marked images.
- Bad input: one line, exit 2, nothing written, from the CLI and the API alike.
"""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from photos import bundled_photos
from PIL import Image
from planted_dictionary import CLASSES, make_folder, planted_model
from torch import nn

from filterscope.cli import main
from filterscope.errors import FilterscopeError
from filterscope.jobs import names
from filterscope.jobs.layer_dictionary import dictionary
from filterscope.models import load_model


@pytest.fixture
def model_free_score(monkeypatch):
    """The MIS score with the model-free similarity (no second network to load in a fast test)."""
    monkeypatch.setattr(names, "default_similarity", lambda: names.Similarity(None))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("planted") / "images", per_class=12)


def _classes(feature) -> Counter:
    return Counter(t["image"].split("/")[0] for t in feature["top"])


def _recovered(d) -> dict:
    """Planted class → a live feature whose top exemplars are ≥ 90 % that class (its name), or absent."""
    out = {}
    for f in d["features"]:
        c = _classes(f)
        if f["top"] and c.most_common(1)[0][1] >= 0.9 * len(f["top"]):
            cls = c.most_common(1)[0][0]
            if cls not in out or (f["name"] or {}).get("name") == cls:
                out[cls] = f
    return out


def test_planted_features_recovered_and_named(planted, tmp_path, model_free_score):
    res = dictionary(
        planted_model(0), planted, out=tmp_path / "sae", layer="mix", features=16, k=1, max_vectors=4096,
        no_renders=True,
    )  # fmt: skip
    d = json.loads((tmp_path / "sae" / "dictionary.json").read_text())
    assert d["layer"] == "mix" and d["basis"] == "sae" and d["map_size"] == [32, 32]
    m = d["metrics"]
    assert m["explained_variance_held_out"] > 0.95 and m["l0"] <= 1.0 and m["stability"] > 0.6
    found = _recovered(d)
    assert sorted(found) == sorted(CLASSES), sorted(found)
    for cls, f in found.items():  # named after its folder
        assert f["name"]["name"] == cls and f["name"]["p"] < 0.01 and f["purity"]["label"] == cls
    t = d["features"][0]["top"][0] if d["features"][0]["top"] else found["red"]["top"][0]
    assert set(t) == {"image", "x", "y", "activation"} and (planted / t["image"]).is_file()
    assert 0 <= t["x"] < 32 and 0 <= t["y"] < 32
    npz = np.load(tmp_path / "sae" / "dictionary.npz")
    assert npz["decoder"].shape == (16, 4) and npz["encoder"].shape == (16, 4)
    html = (tmp_path / "sae" / "report.html").read_text()
    assert 'id="filter"' in html and "stripes_045" in html and "<script" in html
    assert (tmp_path / "sae" / found["red"]["exemplars"]).is_file()
    assert res.record["dictionary"]["metrics"] == m

    # the raw channels of the same layer: four channels cannot hold eight patterns apart
    dictionary(planted_model(0), planted, out=tmp_path / "ch", layer="mix", basis="channels", no_renders=True)
    ch = json.loads((tmp_path / "ch" / "dictionary.json").read_text())
    assert [f["feature"] for f in ch["features"]] == [0, 1, 2, 3]
    assert ch["metrics"]["explained_variance"] == 1.0 and ch["metrics"]["stability"] == 1.0
    assert len(_recovered(ch)) < len(CLASSES)


@pytest.mark.slow
def test_nmf_basis_through_the_same_files(planted, tmp_path, model_free_score):
    """``--basis nmf``: the concepts' (semi-)NMF at the given size, written as the SAE is: the same record,
    arrays and report, with its own metrics (8 non-negative components of a 4-channel layer explain it)."""
    dictionary(
        planted_model(0), planted, out=tmp_path / "nmf", layer="mix", basis="nmf", features=8, max_vectors=2048,
        no_renders=True,
    )  # fmt: skip
    d = json.loads((tmp_path / "nmf" / "dictionary.json").read_text())
    assert d["basis"] == "nmf" and len(d["features"]) == 8
    m = d["metrics"]
    assert m["explained_variance"] > 0.9 and m["explained_variance_held_out"] > 0.9, m
    assert m["stability"] is not None and 0 < m["stability"] <= 1
    assert np.load(tmp_path / "nmf" / "dictionary.npz")["decoder"].shape == (8, 4)
    assert any(f["top"] for f in d["features"]) and (tmp_path / "nmf" / "report.html").is_file()


def test_detectors_score_above_mixed_channels(planted, tmp_path, model_free_score):
    kw = dict(basis="channels", no_renders=True, crops=0, max_vectors=1024)
    det = dictionary(planted_model(0), planted, out=tmp_path / "det", layer="detect", **kw).data
    mix = dictionary(planted_model(0), planted, out=tmp_path / "mix", layer="mix", **kw).data
    s_det = [f.score for f in det.features]
    s_mix = [f.score for f in mix.features]
    assert None not in s_det + s_mix
    assert np.mean(s_det) > np.mean(s_mix) + 0.05, (s_det, s_mix)
    for cls, f in zip(CLASSES, det.features):  # each detector is named after its pattern (alone or first)
        assert cls in f.name["name"].split(" OR "), (cls, f.name)


class _Shortcut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).amax((2, 3)))


def _shortcut_images(root, n=20, seed=0):
    """Two classes of grey noise textures; every image of ``cat`` carries a small magenta mark somewhere."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = np.clip(0.5 + rng.normal(0, 0.15, (32, 32, 1)).repeat(3, 2), 0, 1)
            if cls == "cat":
                y, x = rng.integers(2, 26, 2)
                img[y : y + 4, x : x + 4] = (1.0, 0.0, 1.0)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / cls / f"{cls}_{i:02d}.png")
            xs.append(torch.from_numpy(img.transpose(2, 0, 1)).float())
            ys.append(int(cls == "cat"))
    return torch.stack(xs), torch.tensor(ys)


def _trained_shortcut(root):
    """The shortcut net, trained in seconds on the images it writes to ``root`` (a magenta mark on ``cat``)."""
    x, y = _shortcut_images(root)
    torch.manual_seed(0)
    net = _Shortcut()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):  # seconds: the mark is the easiest cue
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean() == 1.0
    return load_model(net.eval(), name="shortcut", input_size=32, mean=(0.0,) * 3, std=(1.0,) * 3)


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory):
    """The trained shortcut net, its images and one dictionary run of its ``relu2`` (model-free MIS score),
    shared by the tests that only read them: ``(model, images, run folder, DictionaryResult)``."""
    root = tmp_path_factory.mktemp("shortcut")
    m = _trained_shortcut(root / "imgs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(names, "default_similarity", lambda: names.Similarity(None))
        kw = dict(layer="relu2", features=16, k=2, no_renders=True, max_vectors=4096)
        d = dictionary(m, root / "imgs", out=root / "dict", **kw).data
    return m, root / "imgs", root / "dict", d


def test_shortcut_feature_sits_on_the_mark(shortcut_run):
    _, _, _, d = shortcut_run
    marked = [f for f in d.features if len(f.top) >= 8 and all(t["image"].startswith("cat/") for t in f.top[:8])]
    assert marked, [[t["image"] for t in f.top[:4]] for f in d.features]


@pytest.mark.slow
def test_concepts_from_the_dictionary_sit_on_the_mark(shortcut_run, tmp_path, model_free_score, capsys):
    """``concepts --basis dictionary``: the marked class's concepts are its most important features of a
    dictionary run; the top one's map peaks on the mark in every marked image, through the concepts' files."""
    import filterscope as fs

    m, imgs, run, _ = shortcut_run
    assert "twin_decoder" in np.load(run / "dictionary.npz")  # the second fit: per-feature stability
    out = tmp_path / "conc"
    res = fs.concepts(
        m, imgs, layer="relu2", basis="dictionary", dictionary=str(run), n_concepts=3, target_class=1,
        render=False, progress=False, out=out,
    )  # fmt: skip
    assert res.method == "dictionary" and res.maps.shape[:2] == (40, 3)
    hits = []
    for i, name in enumerate(res.images):
        if not name.startswith("cat"):
            continue
        a = np.asarray(Image.open(imgs / name).convert("RGB")).astype(int)
        ys, xs = np.nonzero((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] > 200))  # the magenta mark
        py, px = np.unravel_index(res.maps[i, 0].argmax(), res.maps.shape[-2:])
        hits.append(ys.min() - 2 <= py <= ys.max() + 2 and xs.min() - 2 <= px <= xs.max() + 2)
    assert len(hits) == 20 and np.mean(hits) >= 0.9, hits
    rec = json.loads((out / "concepts.json").read_text())
    feats = [c["feature"] for c in rec]
    assert len(set(feats)) == 3 and all(0 <= f < 16 for f in feats)
    assert rec[0]["importance"] >= rec[1]["importance"] >= rec[2]["importance"]
    assert all(0 <= c["stability"] <= 1 for c in rec)
    np.testing.assert_allclose(np.load(out / "concept_bank.npy"), np.load(run / "dictionary.npz")["decoder"][feats])
    d = json.loads((out / "run.json").read_text())["concepts"]["data"]["dictionary"]
    assert d["run"] == str(run) and d["basis"] == "sae" and d["selected"] == feats
    assert (out / "report.html").is_file() and (out / "concept_maps.npz").is_file()

    # bad input: one line, nothing written
    bad = tmp_path / "bad"
    other = tmp_path / "other"  # a dictionary of another layer
    dictionary(m, imgs, out=other, layer="relu1", features=8, k=2, no_renders=True, max_vectors=1024)
    for kw in (
        dict(basis="dictionary"),  # no --dictionary
        dict(basis="dictionary", dictionary=str(tmp_path / "nowhere")),
        dict(basis="dictionary", dictionary=str(other)),  # another layer
        dict(basis="dictionary", dictionary=str(run), n_concepts=17),  # more than its features
        dict(dictionary=str(run)),  # --dictionary without --basis dictionary
        dict(basis="pca"),
    ):
        with pytest.raises(FilterscopeError) as e:
            fs.concepts(m, imgs, layer="relu2", render=False, progress=False, out=bad, **kw)
        assert e.value.exit_code == 2 and "\n" not in str(e.value), kw
        assert not bad.exists()
    args = ["concepts", str(imgs), "--basis", "dictionary", "--out", str(bad), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--dictionary" in err and "\n" not in err, err
    assert not bad.exists()


def test_the_activation_pass_reports_its_batches_to_on_progress_before_training(tmp_path, model_free_score):
    """The explorer's features page follows ``run_job(on_progress=...)``: the layer's activation pass is one of the
    job's bars (a batch of 8 images a step), reported before the first training epoch."""
    from filterscope.jobs.contract import run_job
    from filterscope.jobs.layer_dictionary import JOB

    folder = make_folder(tmp_path / "images", per_class=3)
    seen: list[tuple[str, int, int]] = []
    res = run_job(
        JOB, planted_model(0), out=tmp_path / "d", images=str(folder), layer="mix", features=8, k=1, epochs=2,
        crops=0, no_renders=True, on_progress=lambda *a: seen.append(a),
    )  # fmt: skip
    assert res.status == "complete"
    batches = 3  # 24 images, 8 a batch
    pass_steps = [(d, n) for desc, d, n in seen if desc == "activation pass"]
    assert pass_steps == [(i, batches) for i in range(batches + 1)], seen[:20]  # 0/3 as soon as it starts
    first_epoch = next(i for i, (desc, _, _) in enumerate(seen) if desc.startswith("training the dictionary ("))
    assert seen.index(("activation pass", batches, batches)) < first_epoch
    assert seen[0] == ("activation pass", 0, batches)  # nothing else reports before the pass


def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, planted):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    cases = [
        [str(empty)],  # no readable image
        [str(planted), "--features", "0"],
        [str(planted), "--basis", "pca"],
    ]
    for args in cases:
        assert main(["dictionary", *args, "--out", str(out), "--quiet"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err, err
        assert not out.exists()
    m = planted_model(0)
    for kw in (
        dict(features=8, k=8),
        dict(features=0),
        dict(layer="nope"),
        dict(basis="pca"),
        dict(k=0),
        dict(colour=1),
    ):
        with pytest.raises(FilterscopeError) as e:
            dictionary(m, planted, out=out, **kw)
        assert e.value.exit_code == 2 and "\n" not in str(e.value), kw
        assert not out.exists()
    with pytest.raises(FilterscopeError):
        dictionary(m, empty, out=out)
    assert not out.exists()


@pytest.mark.slow
def test_cli_real_model_renders_and_resume(tmp_path, capsys):

    photos = bundled_photos(tmp_path / "photos", 12)
    out = tmp_path / "run"
    args = ["dictionary", str(photos), "--layer", "bn2", "--features", "64", "--k", "8", "--epochs", "5"]
    args += ["--renders", "2", "--method", "seed", "--no-cache", "--crops", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    d = json.loads((out / "dictionary.json").read_text())
    assert len(d["features"]) == 64 and d["map_size"] == [7, 7]
    rendered = [f["render"] for f in d["features"] if f["render"]]
    assert len(rendered) == 2 and all((out / r).is_file() for r in rendered)
    assert rendered[0].startswith("bn2/feature_")
    votes = d["features"][0]["votes"]
    assert len(votes) == 5 and {"class", "name", "logit_rise"} <= set(votes[0])
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "complete" and rec["settings"]["basis"] == "sae"
    before = (out / "dictionary.npz").read_bytes()
    assert main([*args, "--resume"]) == 0
    assert (out / "dictionary.npz").read_bytes() == before  # the learnt dictionary is reused
