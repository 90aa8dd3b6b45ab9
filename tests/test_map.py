"""The map of a layer (``filterscope map``): on a hand-built net whose layer holds planted colour detectors
(tests/planted_map.py) every planted feature gets cells of its own, those cells support their class and are
named by their folder, the cell renders activate their direction, the same seed gives the same map, a class
map keeps its class only, ``--resume`` keeps finished renders; bad input is one line, exit 2, nothing written."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from planted_map import class_names, feature_cells, planted_folder, planted_net

from filterscope.cli import main
from filterscope.errors import LayerError, UsageError
from filterscope.jobs.activation_map import activation_map, cell_file

N = 5


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    model, u = planted_net(N)
    root = planted_folder(tmp_path_factory.mktemp("planted") / "imgs", u, per_class=6)
    return model, root


def _every_feature_has_cells(amap, n=N):
    found = feature_cells(amap, n)
    assert all(found.values()), {k: len(v) for k, v in found.items()}
    return found


def test_every_planted_feature_gets_cells_of_its_own_named_and_voted_by_its_class(planted, tmp_path):
    model, root = planted
    out = tmp_path / "out"
    res = activation_map(model, root, layer="pool", grid=8, layout="pca", no_renders=True, out=out)
    amap = res.data
    found = _every_feature_has_cells(amap)
    for name, cells in found.items():
        k = class_names(N).index(name)
        # the cell's direction supports its own class through the rest of the network
        assert any(c.class_index == k for c in cells), (name, [c.class_name for c in cells])
        assert any(c.name and c.name["name"] == name for c in cells), (name, [c.name for c in cells])
    rec = json.loads((out / "map.json").read_text())
    assert rec["layer"] == "pool" and rec["grid"] == 8 and rec["layout"]["method"] == "pca"
    assert len(rec["cells"]) == len(amap.cells)
    for c in rec["cells"]:
        assert {"i", "j", "n", "name", "class", "render", "top"} <= set(c)
        assert 0 <= c["i"] < 8 and 0 <= c["j"] < 8 and c["n"] >= 8
        assert c["render"] is None  # --no-renders
        for e in c["top"]:
            assert {"image", "x", "y", "activation"} <= set(e)
            assert (root / e["image"]).is_file() and e["image"].startswith("class_")
            assert 0 <= e["x"] < 16 and 0 <= e["y"] < 16
    assert (out / "map.png").is_file() and (out / "report.html").is_file()
    html = (out / "report.html").read_text()
    assert html.count('class="cell filled"') == len(amap.cells)


def _bars(seen: list[tuple[str, int, int]]) -> dict[str, list[tuple[int, int]]]:
    """``on_progress`` calls grouped by bar, in the order the bars first reported."""
    bars: dict[str, list[tuple[int, int]]] = {}
    for desc, done, total in seen:
        bars.setdefault(desc, []).append((done, total))
    return bars


def test_every_stage_reports_its_bar_to_on_progress_in_order(planted, tmp_path):
    """Issues 42/44: the explorer's map page follows ``run_job(on_progress=...)``: the activation pass, the
    layout, the cells' classes and names, the exemplar crops each report their own bar, in that order, each
    to its end (the renders' bar: the UMAP test below)."""
    from filterscope.jobs.activation_map import CLASSES_BAR, CROPS_BAR, JOB, LAYOUT_BAR, NAMES_BAR
    from filterscope.jobs.contract import run_job
    from filterscope.jobs.vectors import PASS

    model, root = planted
    seen: list = []
    res = run_job(
        JOB, model, out=tmp_path / "o", on_progress=lambda *a: seen.append(a), images=str(root), layer="pool",
        grid=4, layout="pca", no_renders=True,
    )  # fmt: skip
    cells = len(res.data.cells)
    assert cells > 0
    bars = _bars(seen)
    assert list(bars) == [PASS, LAYOUT_BAR, CLASSES_BAR, NAMES_BAR, CROPS_BAR], list(bars)
    batches = bars[PASS][0][1]
    assert bars[PASS][0] == (0, batches) and bars[PASS][-1] == (batches, batches) and batches >= 2
    assert bars[LAYOUT_BAR] == [(0, 1), (1, 1)]  # PCA: one step
    for b in (CLASSES_BAR, CROPS_BAR):
        assert bars[b][0] == (0, cells) and bars[b][-1] == (cells, cells), (b, bars[b])
    assert bars[NAMES_BAR] == [(0, 1), (1, 1)]
    # the pass finished before the layout began: the page reads "activation pass 3/5" while it runs
    first_layout = seen.index((LAYOUT_BAR, 0, 1))
    assert seen.index((PASS, batches, batches)) < first_layout


@pytest.mark.slow
def test_umap_map_separates_planted_features_renders_activate_their_cell_and_seed_repeats(planted, tmp_path):
    from filterscope.jobs.activation_map import JOB, LAYOUT_BAR, RENDERS_BAR
    from filterscope.jobs.contract import run_job

    model, root = planted
    seen: list = []
    a = run_job(
        JOB, model, out=tmp_path / "a", on_progress=lambda *x: seen.append(x), images=str(root), layer="pool",
        grid=6, seed=3,
    ).data  # fmt: skip
    bars = _bars(seen)
    # UMAP's epochs reach the layout's bar (umap-learn's own epoch bar, read through its tqdm_kwds)
    epochs = bars[LAYOUT_BAR][-1][1]
    assert epochs > 1 and bars[LAYOUT_BAR][-1] == (epochs, epochs), bars[LAYOUT_BAR]
    assert bars[LAYOUT_BAR][0] == (0, 1)  # before the epochs: the neighbour graph (one step)
    done = [d for d, _ in bars[LAYOUT_BAR]]
    assert done == sorted(done)
    assert bars[RENDERS_BAR][-1] == (len(a.cells), len(a.cells))
    _every_feature_has_cells(a)
    rendered = [c for c in a.cells if c.render is not None]
    assert len(rendered) == len(a.cells)
    for c in rendered:  # every render activates its cell's direction more than its start did
        r = c.render_record
        assert r["activation_after"] > r["activation_before"], (c.i, c.j, r)
        assert (tmp_path / "a" / cell_file("pool", c.index(6))).is_file()
    rec = json.loads((tmp_path / "a" / "map.json").read_text())
    assert all(c["render"] and (tmp_path / "a" / c["render"]).is_file() for c in rec["cells"])
    b = activation_map(model, root, layer="pool", grid=6, seed=3, no_renders=True, out=tmp_path / "b").data
    # UMAP's random_state: the same seed, the same map (and following its epochs changes nothing)
    np.testing.assert_array_equal(a.layout, b.layout)
    assert [(c.i, c.j, len(c.points)) for c in a.cells] == [(c.i, c.j, len(c.points)) for c in b.cells]


@pytest.mark.slow
def test_cell_renders_activate_their_direction(planted, tmp_path):
    model, root = planted
    amap = activation_map(model, root, layer="pool", grid=4, layout="pca", out=tmp_path / "o").data
    assert amap.cells and all(c.render is not None for c in amap.cells), [c.render_record for c in amap.cells]
    for c in amap.cells:
        r = c.render_record
        assert r["activation_after"] > r["activation_before"], (c.i, c.j, r)


def test_class_map_keeps_its_class_and_shades_cells_by_attribution(planted, tmp_path):
    model, root = planted
    out = tmp_path / "cls"
    amap = activation_map(
        model, root, layer="pool", grid=6, layout="pca", class_="class_2", no_renders=True, out=out
    ).data
    assert amap.target["folder"] == "class_2" and amap.target["class"] == 2
    assert all(amap.files[int(i)].startswith("class_2/") for i in amap.point_image)
    assert all(c.attribution is not None for c in amap.cells)
    best = max(amap.cells, key=lambda c: c.attribution)
    assert best.class_index == 2 and best.attribution > 0  # the blob cells carry the class
    rec = json.loads((out / "map.json").read_text())
    assert rec["class"]["folder"] == "class_2" and all("attribution" in c for c in rec["cells"])
    # by index (ImageFolder order) the same folder
    amap2 = activation_map(
        model, root, layer="pool", grid=6, layout="pca", class_=2, no_renders=True, out=tmp_path / "cls2"
    ).data
    assert amap2.target["folder"] == "class_2"
    # without class folders: the images the model predicts as the class
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted(root.rglob("*.png")):
        (flat / f.name).write_bytes(f.read_bytes())
    amap3 = activation_map(model, flat, layer="pool", grid=6, layout="pca", class_=2, no_renders=True,
                           out=tmp_path / "cls3").data  # fmt: skip
    assert amap3.target == {**amap3.target, "class": 2} and "folder" not in amap3.target
    assert all(amap3.files[int(i)].startswith("class_2_") for i in amap3.point_image)
    assert (
        "class 2" in (tmp_path / "cls3" / "report.html").read_text()
        or "class_2" in (tmp_path / "cls3" / "report.html").read_text()
    )


@pytest.mark.slow
def test_resume_keeps_finished_cell_renders(planted, tmp_path):
    model, root = planted
    out = tmp_path / "r"
    calls = {"n": 0}

    def stop_after_two() -> bool:
        rec = out / "run.json"
        if rec.is_file():
            calls["n"] = sum(k.startswith("cell_") for k in json.loads(rec.read_text())["results"])
        return calls["n"] >= 2

    first = activation_map(model, root, layer="pool", grid=4, layout="pca", out=out, should_stop=stop_after_two)
    assert first.status == "partial"
    done = {k: v for k, v in first.record["results"].items() if k.startswith("cell_")}
    assert len(done) == 2 and not (out / "map.json").exists()
    stamps = {k: (out / v["file"]).stat().st_mtime_ns for k, v in done.items()}
    second = activation_map(model, root, layer="pool", grid=4, layout="pca", out=out, resume=True)
    assert second.status == "complete"
    for k, v in done.items():  # kept, not rendered again
        assert (out / v["file"]).stat().st_mtime_ns == stamps[k]
        assert second.record["results"][k] == v
    rec = json.loads((out / "map.json").read_text())
    assert all(c["render"] for c in rec["cells"])


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


@pytest.mark.parametrize(
    "kw, err",
    [
        ({"grid": 1}, UsageError),
        ({"layer": "no_such_layer"}, LayerError),
        ({"layer": "fc"}, LayerError),  # no spatial maps
        ({"class_": 9}, UsageError),  # 5 class folders
        ({"class_": "class_9"}, UsageError),
        ({"min_points": 0}, UsageError),
        ({"layuot": "pca"}, UsageError),  # unknown option
    ],
)
def test_api_refuses_bad_input_and_writes_nothing(planted, tmp_path, kw, err):
    model, root = planted
    out = tmp_path / "bad"
    with pytest.raises(err):
        activation_map(model, root, **{"layer": "pool", **kw}, out=out)
    assert not out.exists()


def test_api_refuses_a_folder_without_images(planted, tmp_path):
    model, _ = planted
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        activation_map(model, tmp_path / "empty", layer="pool", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--grid", "1"], "--grid must be at least 2"),
        (["--layer", "no_such_layer"], "no_such_layer"),
        (["--class", "5000"], "out of range"),
    ],
)
def test_cli_refuses_bad_input_in_one_line_exit_2(tmp_path, capsys, args, needle):
    from filterscope.models.inputs import sample_photos_dir

    out = tmp_path / "bad"
    rc = main(["map", str(sample_photos_dir()), "--no-renders", "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not out.exists()


def test_cli_refuses_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "bad"
    rc = main(["map", str(tmp_path / "empty"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no images" in err[0]
    assert not out.exists()


def test_cosine_distances_are_umaps_cosine():
    """The matrix the layout hands UMAP below 4,096 points is UMAP's own cosine metric, zero vectors included
    (two zero vectors at 0, a zero vector and another at 1)."""
    from umap.distances import cosine

    from filterscope.jobs.map_layout import cosine_distances

    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(40, 12)), 0).astype(np.float32)
    x[:3] = 0
    d = cosine_distances(x)
    ref = np.array([[cosine(a, b) for b in x] for a in x])
    assert d.dtype == np.float32 and d.shape == (40, 40)
    np.testing.assert_allclose(d, ref, atol=1e-6)
    assert d[0, 1] == 0.0 and d[0, 5] == 1.0 and np.all(np.diag(d) == 0)
