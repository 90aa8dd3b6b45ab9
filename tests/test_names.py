"""Names and scores for units (jobs/names.py): planted units whose right name and score are known."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from sklearn.metrics import roc_auc_score

from filterscope.errors import UsageError
from filterscope.jobs.names import (
    SCORE_METHOD,
    Similarity,
    image_labels,
    mannwhitney_p,
    mis_min_images,
    mis_scores,
    name_units,
    purity,
)

KINDS = ["car", "cat", "dog", "tree"]


def planted(seed: int = 0, per: int = 40):
    """Four labels of ``per`` images and units with known answers: 0 fires on dog, 1 on cat or car (cat a
    little less), 2 is silenced by tree, 3 is noise, 4 is dead (constant)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(KINDS, per)
    acts = rng.normal(size=(len(labels), 5))
    acts[labels == "dog", 0] += 2.0
    acts[labels == "car", 1] += 2.0
    acts[labels == "cat", 1] += 1.5
    acts[labels == "tree", 2] -= 2.0
    acts[:, 4] = 0.0
    return acts, list(labels)


def test_names_planted_units():
    acts, labels = planted()
    names = name_units(acts, labels)
    assert names[0]["name"] == "dog" and names[0]["auc"] > 0.85 and names[0]["p"] < 1e-6
    assert names[1]["name"] == "car OR cat"
    assert names[2]["name"] == "NOT tree"
    assert names[3] is None and names[4] is None
    # the AUC is scikit-learn's for the named concept
    assert names[0]["auc"] == pytest.approx(roc_auc_score(np.array(labels) == "dog", acts[:, 0]), abs=1e-4)
    union = np.isin(labels, ["car", "cat"])
    assert names[1]["auc"] == pytest.approx(roc_auc_score(union, acts[:, 1]), abs=1e-4)


def test_random_units_rarely_named():
    rng = np.random.default_rng(3)
    labels = list(rng.choice(["a", "b", "c", "d", "e", "f"], 300))
    acts = rng.normal(size=(300, 200))
    names = name_units(acts, labels)
    assert sum(n is not None for n in names) <= 4  # 1 % of 200 would be 2; the search is corrected for
    assert all(n["p"] < 0.01 for n in names if n is not None)


def test_names_need_two_labels_and_matching_shapes():
    acts, labels = planted()
    assert name_units(acts, ["same"] * len(labels)) == [None] * 5
    with pytest.raises(UsageError):
        name_units(acts, labels[:-1])
    with pytest.raises(UsageError):
        name_units(acts[:, 0], labels)


def test_one_image_labels_do_not_join_a_name():
    """A label of a single image that happens to sit at the top cannot enter a formula."""
    rng = np.random.default_rng(5)
    labels = list(np.repeat(["a", "b", "c"], 50)) + ["lucky"]
    acts = rng.normal(size=(151, 1))
    acts[:50, 0] += 2.0
    acts[150, 0] = 10.0
    assert name_units(acts, labels)[0]["name"] == "a"


def test_mannwhitney_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    x, y = np.round(rng.normal(0.3, 1, (17, 6)), 1), np.round(rng.normal(size=(40, 6)), 1)
    for alt in ("greater", "less"):
        ref = stats.mannwhitneyu(x, y, alternative=alt, axis=0, method="asymptotic").pvalue
        np.testing.assert_allclose(mannwhitney_p(x, y, alt), ref, rtol=1e-10)


def test_many_units_at_once():
    rng = np.random.default_rng(2)
    labels = [f"l{i}" for i in rng.integers(0, 40, 600)]
    acts = rng.normal(size=(600, 400))
    acts[np.array(labels) == "l7", 11] += 3.0
    names = name_units(acts, labels)
    assert len(names) == 400 and names[11]["name"] == "l7"


def test_purity():
    labels = ["a", "b", "a", "c", "a"]
    assert purity([0, 2, 4, 1], labels) == {"label": "a", "share": 0.75}
    assert purity([], labels) is None


def shapes(n: int, kind: str, seed: int) -> list[Image.Image]:
    """``n`` 64-px images of one visual kind: a red square on grey at a random place and size, or black and
    white stripes at a random angle and period."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:64, :64]
    for _ in range(n):
        a = np.full((64, 64, 3), 128, np.uint8)
        if kind == "squares":
            s, y, x = rng.integers(16, 32), rng.integers(0, 32), rng.integers(0, 32)
            a[y : y + s, x : x + s] = (220, 30, 30)
        else:
            t, period = rng.uniform(0, np.pi), rng.uniform(6, 14)
            a[...] = (255 * (np.sin((np.cos(t) * xx + np.sin(t) * yy) * 2 * np.pi / period) > 0))[..., None]
        out.append(Image.fromarray(a))
    return out


def test_mis_separates_a_one_kind_unit_from_a_random_one():
    images = shapes(20, "squares", 0) + shapes(20, "stripes", 1)
    sim = Similarity(None)  # model-free: colour + gradient orientations
    assert sim.name.startswith("model-free")
    emb = sim.embed(images)
    assert emb.shape[0] == 40 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    rng = np.random.default_rng(0)
    acts = np.stack([np.r_[rng.uniform(1, 2, 20), rng.uniform(0, 1, 20)], rng.normal(size=40)], 1)
    scores = mis_scores(emb, acts)
    assert scores[0] > 0.9 and scores[1] < 0.75 and scores[0] - scores[1] > 0.25
    np.testing.assert_array_equal(scores, mis_scores(emb, acts))  # deterministic for a seed
    assert np.isnan(mis_scores(emb, np.zeros((40, 1))))[0]  # a dead unit has no score
    with pytest.raises(UsageError):
        mis_scores(emb[: mis_min_images() - 1], acts[: mis_min_images() - 1])
    assert "MIS" in SCORE_METHOD


def test_similarity_with_a_model_and_tensor_input(tiny_model):
    import torch

    sim = Similarity(tiny_model)  # the network's penultimate features and the colour/orientation histogram
    assert "tiny_cnn" in sim.name and "model-free" in sim.name
    emb = sim.embed(torch.rand(5, 3, 40, 40))
    assert emb.shape == (5, 16 + 64 + 144) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    only = Similarity(tiny_model, low_level=False)
    assert only.embed(torch.rand(5, 3, 40, 40)).shape == (5, 16) and "model-free" not in only.name


def test_mis_scores_a_detector_above_a_unit_with_a_second_weaker_kind():
    """A ReLU detector of 12 of 48 images (the rest tie at zero) scores near the top, whatever the order of
    the images, and above a unit whose top images are the same kind but which also answers, more weakly, to a
    second kind: queries and explanations come from the unit's top range by value, not from a fixed number
    of ranks that runs past the detector's 12 images into its zeros."""
    rng = np.random.default_rng(0)
    blanks = [Image.fromarray(np.full((64, 64, 3), int(v), np.uint8)) for v in rng.integers(60, 200, 24)]
    images = shapes(12, "squares", 0) + shapes(12, "stripes", 1) + blanks
    emb = Similarity(None).embed(images)
    det = np.r_[rng.uniform(4, 5, 12), np.zeros(36)]
    mixed = np.r_[rng.uniform(4, 5, 12), rng.uniform(2.5, 3.5, 12), np.zeros(24)]
    s = mis_scores(emb, np.stack([det, mixed], 1))
    assert s[0] > 0.9 and s[0] > s[1] + 0.1, s
    perm = rng.permutation(48)  # ties are drawn at random, not in file order
    s2 = mis_scores(emb[perm], np.stack([det, mixed], 1)[perm])
    assert abs(s2[0] - s[0]) < 0.03 and abs(s2[1] - s[1]) < 0.03, (s, s2)


def test_image_labels_folders_then_predictions(tmp_path: Path, tiny_model):
    for kind in ("squares", "stripes"):
        (tmp_path / "tree" / kind).mkdir(parents=True)
        for i, im in enumerate(shapes(3, kind, 0)):
            im.save(tmp_path / "tree" / kind / f"{i}.png")
    files = sorted((tmp_path / "tree").rglob("*.png"))
    labels, source = image_labels(files, tmp_path / "tree")
    assert source == "folders" and labels == ["squares"] * 3 + ["stripes"] * 3
    # the same images in one folder: the model's own top-1 class names
    labels, source = image_labels(files, tmp_path, predictions=[1, 1, 2, 2, 2, 1], model=None)
    assert source == "predictions" and labels == ["class 1", "class 1", "class 2", "class 2", "class 2", "class 1"]
    labels, source = image_labels(files[:3], tmp_path / "tree" / "squares", model=tiny_model)
    assert source == "predictions" and len(labels) == 3 and all(lab.startswith("class ") for lab in labels)
    with pytest.raises(UsageError):
        image_labels(files[:3], tmp_path / "tree" / "squares")  # flat, and nothing to predict with


def test_no_formula_of_a_label_with_itself():
    """Where no label can be significant alone (two images each of nine) and no extension is a concept, the
    beam search names nothing — it once returned "c0 OR c0" with AUC −1."""
    labels = ["c2", "c3", "c0", "c3", "c1", "c0", "c2", "c1", "c3"]
    acts = np.zeros((9, 2))
    acts[:, 1] = [lab == "c0" for lab in labels]
    assert name_units(acts, labels) == [None, None]


def test_a_faint_echo_does_not_join_a_union():
    """A unit firing on ``red`` and, consistently but at a tenth of that, on ``stripes`` is named ``red``; at
    three quarters it is ``red OR stripes`` (ranks alone cannot tell the two apart)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["red", "stripes", "blue", "green", "grey"], 12)
    base = np.abs(rng.normal(0, 0.01, size=(len(labels), 2)))
    acts = base.copy()
    acts[labels == "red"] += 2.7 + rng.normal(0, 0.1, size=(12, 2))
    acts[labels == "stripes", 0] += 0.25
    acts[labels == "stripes", 1] += 2.0
    names = name_units(acts, list(labels))
    assert names[0]["name"] == "red"
    assert names[1]["name"] == "red OR stripes"


def test_a_complement_of_a_few_images_does_not_beat_a_strong_label():
    """A unit that fires most on ``seven`` (25 of 80 images, overlapping the rest) and least on ``one`` (6):
    ``NOT one`` has the higher AUC but separates far more weakly (z); the name is ``seven``."""
    rng = np.random.default_rng(1)
    labels = np.array(["seven"] * 25 + ["one"] * 6 + [f"c{i}" for i in range(7) for _ in range(7)])
    acts = np.where(labels == "seven", rng.normal(3.8, 1.0, 80), rng.normal(2.0, 0.8, 80))
    acts[labels == "one"] = rng.normal(0.3, 0.1, 6)
    a_seven = roc_auc_score(labels == "seven", acts)
    a_not_one = roc_auc_score(labels != "one", acts)
    assert a_not_one > a_seven  # INVERT's AUC alone would name it "NOT one"
    assert name_units(acts[:, None], list(labels))[0]["name"] == "seven"
