"""filterscope diff: tests that know the answer (a digits CNN and the same net fine-tuned with a planted
backdoor, tests/backdoor_net.py), the matching on planted permutations, and bad input (one line, exit 2,
nothing written)."""

import json

import numpy as np
import pytest
import torch

from filterscope.cli import main
from filterscope.errors import LayerError, UsageError
from filterscope.jobs.diff import DEFAULT_METRIC, diff
from filterscope.jobs.unit_match import CorrelationTally, common_maps, dead_units, match_units
from filterscope.models import load_model


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def models(code, wa, wb):
    return (
        "--model",
        f"{code}:Net",
        "--weights",
        wa,
        "--input-size",
        24,
        "--model-b",
        f"{code}:Net",
        "--weights-b",
        wb,
        "--input-size-b",
        24,
    )


# ---------------------------------------------------------------- matching, on planted answers


def test_matching_recovers_a_planted_permutation_and_marks_new_and_dead_units():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 12, 6, 6, generator=g)
    perm = torch.randperm(12, generator=g)
    b = a[:, perm] + 0.05 * torch.rand(40, 12, 6, 6, generator=g)
    b[:, 3] = torch.rand(40, 6, 6, generator=g)  # a new unit: unrelated to anything in A
    b[:, 7] = 0.0  # a dead unit
    t = CorrelationTally(12, 12)
    for i in range(0, 40, 16):
        t.update(a[i : i + 16], b[i : i + 16])
    r = t.correlation()
    _, sdb = t.std()
    dead_b = dead_units(b.flatten(2).amax((0, 2)).numpy(), sdb)
    assert dead_b.tolist() == [c == 7 for c in range(12)]
    m = match_units(r, np.zeros(12, bool), dead_b, 0.3)
    for c in range(12):
        if c not in (3, 7):
            assert m.partner[c] == perm[c] and m.r[c] > 0.9
    assert m.r[3] < 0.3 and m.partner[7] == -1 and np.isnan(m.r[7])
    assert set(m.lost.tolist()) == {int(perm[3]), int(perm[7])}


def test_tally_is_pearson_and_maps_are_pooled_to_the_smaller_size():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(5, 3, 8, 8, generator=g), torch.rand(5, 4, 7, 7, generator=g)
    pa, pb = common_maps(a, b)
    assert pa.shape == (5, 3, 7, 7) and pb.shape == (5, 4, 7, 7)
    t = CorrelationTally(3, 4)
    t.update(pa, pb)
    ra, rb = pa.permute(0, 2, 3, 1).reshape(-1, 3).numpy(), pb.permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    assert np.allclose(t.correlation(), np.corrcoef(ra.T, rb.T)[:3, 3:], atol=1e-6)


# ---------------------------------------------------------------- the backdoor pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from backdoor_net import make_pair

    return make_pair(tmp_path_factory.mktemp("backdoor"), seed=0, target=7, pos=(3, 3))


def marked_share(unit, marked, k=10):
    return sum(e["image"] in marked for e in unit["top"][:k]) / k


@pytest.mark.slow
def test_backdoor_class_first_and_first_units_fire_on_the_mark_from_the_cli(pair, tmp_path, capsys):
    assert pair.attack > 0.8 and pair.acc_a > 0.9  # the planted answer holds
    out = tmp_path / "d"
    rc, stdout, err = cli(
        capsys, "diff", pair.images, *models(pair.code, pair.weights_a, pair.weights_b), "--layer", "relu3",
        "--no-renders", "--out", out, "-q",
    )  # fmt: skip
    assert rc == 0, err
    rec = json.loads((out / "diff.json").read_text())
    assert rec["layer"] == rec["layer_b"] == "relu3" and rec["metric"] == DEFAULT_METRIC and rec["threshold"] == 0.3
    assert rec["classes"][0]["class"] == pair.target and rec["classes"][0]["into"] >= 10
    units = rec["units"]
    assert sorted(u["channel"] for u in units) == list(range(32))
    for u in units[:2]:  # the first changed units have the marked images as their top exemplars
        assert marked_share(u, pair.marked) >= 0.8, u
    # named (INVERT, against B's predictions) after the class the mark sends images to
    assert f"class {pair.target}" in units[0]["name"]["name"] and "B's top-1 predictions" in rec["names"]
    carriers = [u["channel"] for u in rec["classes"][0]["units"][:3]]
    assert any(marked_share(next(v for v in units if v["channel"] == c), pair.marked) >= 0.8 for c in carriers)
    u = units[0]
    assert set(u) >= {"channel", "match", "r", "top", "top_a"}
    assert set(u["top"][0]) == {"image", "x", "y", "activation"} and 0 <= u["top"][0]["x"] < 6
    assert (out / "figure_diff.png").is_file() and (out / "report.html").is_file()
    assert "What changed from A to B" in (out / "report.html").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["settings"]["model_b"]["weights_file"]


@pytest.mark.slow
def test_api_renders_both_sides_and_another_layer_and_width_of_b(pair, tmp_path):
    a = load_model(f"{pair.code}:Net", weights=str(pair.weights_a), input_size=24)
    b = load_model(f"{pair.code}:Net", weights=str(pair.weights_b), input_size=24)
    res = diff(a, pair.images, model_b=b, layer="relu3", out=tmp_path / "r")
    d = res.data
    first = [u for u in d.units if not u["dead"]][0]
    assert (tmp_path / "r" / "b" / "relu3" / f"channel_{first['channel']:04d}.png").is_file()
    partner = first["partner"] if first["partner"] is not None else first["best"]
    assert (tmp_path / "r" / "a" / "relu3" / f"channel_{partner:04d}.png").is_file()
    assert first["render"] == f"b/relu3/channel_{first['channel']:04d}.png"
    # B at another layer of another width and map size (24×12×12 against 32×6×6): pooled and matched
    res2 = diff(a, pair.images, model_b=b, layer="relu3", layer_b="relu2", out=tmp_path / "w", no_renders=True)
    rec = json.loads((tmp_path / "w" / "diff.json").read_text())
    assert rec["layer_b"] == "relu2" and rec["common_map"] == [6, 6] and len(rec["units"]) == 24
    c = res2.data.counts()
    assert c["matched"] + c["new"] + c["dead"] == 24 and c["lost"] >= 32 - 24


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """Two random-weight checkpoints of the backdoor net and three images: enough for the refusals."""
    import backdoor_net

    return backdoor_net.untrained_pair(tmp_path_factory.mktemp("untrained"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "relu3", "--layer-b", "nope"], "model B (Net): Net has no layer 'nope'"),
        (["--layer", "nope"], "model A (Net): Net has no layer 'nope'"),
        (["--layer", "fc"], "cannot be compared"),
        (["--layer", "relu3", "--threshold", "2"], "between -1 and 1"),
        (["--layer", "relu3", "--features", "-1"], "--features"),
    ],
)
def test_bad_layers_are_one_line_exit_2_nothing_written(untrained, tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    d = untrained
    rc, _, err = cli(
        capsys, "diff", d / "images", *models(d / "net.py", d / "w0.pt", d / "w1.pt"), *extra, "--out", out
    )
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_missing_folder_and_missing_second_model(untrained, tmp_path, capsys):
    d, out = untrained, tmp_path / "o"
    rc, _, err = cli(capsys, "diff", tmp_path / "none", *models(d / "net.py", d / "w0.pt", d / "w1.pt"), "--out", out)
    assert rc == 2 and "image folder not found" in err and err.count("\n") == 1
    rc, _, err = cli(capsys, "diff", d / "images", "--model", f"{d / 'net.py'}:Net", "--out", out)
    assert rc == 2 and "--model-b" in err
    assert not out.exists()
    a = load_model(f"{d / 'net.py'}:Net", weights=str(d / "w0.pt"), input_size=24)
    with pytest.raises(UsageError, match="second model"):
        diff(a, d / "images", out=out)
    with pytest.raises(LayerError, match="model B"):
        diff(a, d / "images", model_b=a, layer="relu3", layer_b="nope", out=out)
    with pytest.raises(UsageError, match="no option 'colour'"):
        diff(a, d / "images", model_b=a, colour=1, out=out)
    assert not out.exists()


def test_same_model_twice_matches_every_live_unit_to_itself(untrained, tmp_path):
    d = untrained
    a = load_model(f"{d / 'net.py'}:Net", weights=str(d / "w0.pt"), input_size=24)
    res = diff(a, d / "images", model_b=a, layer="relu2", out=tmp_path / "o", no_renders=True).data
    live = [u for u in res.units if not u["dead"]]
    assert live and all(u["match"] == u["channel"] and u["r"] > 0.999 for u in live)
    assert res.flipped == 0 and res.classes == []
    assert all(u["score"] is None for u in res.units if u["dead"])


# ---------------------------------------------------------------- features gained and lost (--features)


def test_paired_sample_keeps_a_and_b_at_the_same_positions():
    from filterscope.jobs.feature_diff import PairedSample

    g = torch.Generator().manual_seed(0)
    a = torch.rand(30, 3, 4, 5, generator=g)
    s = PairedSample(3, 3, cap=50, seed=0)  # 600 positions through a reservoir of 50
    for i in range(0, 30, 7):
        s.add(i, a[i : i + 7], 2 * a[i : i + 7])
    xa, xb, meta = s.split()
    assert xa.shape == (50, 3) and np.allclose(xb, 2 * xa)
    for row, (i, y, x) in zip(xa, meta):  # each kept row is the vector at its recorded image and position
        assert np.allclose(row, a[i, :, y, x].numpy())


def test_a_planted_detector_in_b_is_a_gained_feature_with_its_images_and_positions():
    from filterscope.jobs.feature_diff import PairedSample, feature_diff

    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(16, 8, 6, 6, generator=g))
    b = torch.cat([a, torch.zeros(16, 1, 6, 6)], 1)  # B = A plus one detector that fires on 6 images only
    planted = {f"im{i}.png" for i in range(0, 16, 3)}
    for i in range(0, 16, 3):
        b[i, 8, 1:3, 2:4] = 4.0
    s = PairedSample(8, 9, cap=400, seed=0)
    for i in range(0, 16, 5):
        s.add(i, a[i : i + 5], b[i : i + 5])
    names = [f"im{i}.png" for i in range(16)]
    f = feature_diff(s, 12, 0.3, names, None, None, names, top=4)
    assert f["matched"] + len(f["gained"]) == 12 and f["positions"] == 400
    first = f["gained"][0]  # least like anything in A
    assert first["r"] < 0.3 and {e["image"] for e in first["top"]} <= planted and len(first["top"]) == 4
    assert all(2 <= e["x"] <= 3 and 1 <= e["y"] <= 2 for e in first["top"])
    assert set(first) >= {"feature", "r_best", "name", "purity", "score", "top"} and first["name"] is None


@pytest.mark.slow
def test_backdoor_gained_features_include_one_on_the_marked_images(pair, tmp_path):
    a = load_model(f"{pair.code}:Net", weights=str(pair.weights_a), input_size=24)
    b = load_model(f"{pair.code}:Net", weights=str(pair.weights_b), input_size=24)
    res = diff(a, pair.images, model_b=b, layer="relu3", out=tmp_path / "f", no_renders=True, features=64)
    rec = json.loads((tmp_path / "f" / "diff.json").read_text())
    f = rec["features"]
    assert set(f) >= {"gained", "lost", "matched", "method"} and f["features"] == 64
    assert f["matched"] + len(f["gained"]) + f["dead"]["b"] == 64 and f["gained"] and f["lost"]
    assert all(g["r"] < rec["threshold"] for g in f["gained"])
    assert set(f["gained"][0]["top"][0]) == {"image", "x", "y", "activation"}
    assert max(marked_share(g, pair.marked) for g in f["gained"]) >= 0.8
    marked = next(g for g in f["gained"] if marked_share(g, pair.marked) >= 0.8)
    assert f"class {pair.target}" in marked["name"]["name"]  # named after the class the mark sends images to
    assert "Features gained and lost" in (tmp_path / "f" / "report.html").read_text()
    from filterscope.jobs.diff import JOB

    assert any(line.startswith("features (64 per model)") for line in JOB.summary(res))
