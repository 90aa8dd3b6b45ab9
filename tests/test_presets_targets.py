"""A default preset per kind of target (class logits render with ``maco-fused``) and the render options
(natural-contrast start, views per step, averaging, annealing, precision): checked, recorded, keyed."""

import json

import pytest
import torch
from PIL import Image

from filterscope.errors import UsageError
from filterscope.models.layers import LOGIT
from filterscope.optvis.objectives import channel
from filterscope.optvis.param import make_param
from filterscope.optvis.presets import METHOD_BY_TARGET, default_method, get_preset, resolve_settings
from filterscope.optvis.render import Renderer, RenderSettings
from filterscope.outputs.cache import render_key

FEW = get_preset("fast").with_(steps=6, converge=0.0)


def test_logits_default_to_their_own_preset_and_a_named_method_wins():
    assert METHOD_BY_TARGET["logit"] != METHOD_BY_TARGET["channel"]
    assert resolve_settings(layer=LOGIT).preset == METHOD_BY_TARGET["logit"] == default_method(LOGIT)
    assert resolve_settings(layer="blocks.5").preset == "fast" == default_method(None)
    assert resolve_settings("fast", layer=LOGIT).preset == "fast"
    # the user's changes without a method go onto the target kind's preset
    moved = resolve_settings(layer=LOGIT, steps=5, lr=0.3)
    assert moved.label == f"{METHOD_BY_TARGET['logit']}+lr+steps" and (moved.steps, moved.lr) == (5, 0.3)
    assert moved.preset == METHOD_BY_TARGET["logit"] and moved.changed == ("lr", "steps")
    assert moved.param == get_preset(METHOD_BY_TARGET["logit"]).param
    assert resolve_settings("lucid", layer=LOGIT).label == "lucid"  # a named preset is never moved
    assert resolve_settings(layer="blocks.5").label == "fast"


def test_render_channels_records_the_target_kinds_preset(tiny_model, tmp_path):
    from filterscope.jobs.channels import render_channels

    res = render_channels(tiny_model, LOGIT, [3], settings=None, out=tmp_path / "a", progress=False)
    rec = json.loads((res.run_dir / "run.json").read_text())["settings"]
    assert rec["method"] == METHOD_BY_TARGET["logit"] and rec["render"]["param"] == "maco"
    res = render_channels(tiny_model, "conv2", [3], out=tmp_path / "b", progress=False, method="seed")
    assert json.loads((res.run_dir / "run.json").read_text())["settings"]["method"] == "seed"


@pytest.mark.parametrize("how", [["--layer", "logit", "--channels", "3"], ["--objective", "logit:3"]])
def test_cli_class_render_uses_the_logit_preset_unless_told(how, tmp_path):
    from filterscope.cli import main

    def run(extra, out):
        assert main(["render", *how, "--steps", "2", "--quiet", "--out", str(out), *extra]) == 0
        return json.loads((out / "run.json").read_text())["settings"]["method"]

    assert run([], tmp_path / "a") == METHOD_BY_TARGET["logit"] + "+steps"
    assert run(["--method", "fast"], tmp_path / "b") == "fast+steps"


@pytest.mark.parametrize(
    "bad",
    [
        dict(views=0),
        dict(views=65),
        dict(views=True),
        dict(precision="float16"),
        dict(param_options=(("spectrum", "pink"),)),
        dict(ema=1.0),
        dict(ema=-0.1),
        dict(ema=True),
        dict(anneal=1.5),
        dict(anneal=-0.1),
        dict(anneal=True),
    ],
)
def test_bad_research_options_are_refused(bad):
    with pytest.raises(UsageError):
        RenderSettings(**bad)


@pytest.mark.parametrize("gone", ["schedule", "coarse", "lowres", "lowres_carry"])
def test_the_unused_research_knobs_are_gone(gone):
    """The four knobs no preset and no option used left with the research screens (tag research-screens-2026-12)."""
    with pytest.raises(TypeError):
        RenderSettings(**{gone: 0.5})
    assert gone not in RenderSettings().as_dict()


def test_new_options_stay_out_of_old_keys_and_records(tiny_model):
    """Settings at the new fields' defaults keep their cache keys (existing caches stay valid); set, they key."""
    base = FEW.for_model(tiny_model).as_dict()
    assert not {"views", "precision"} & set(base)
    assert base["ema"] == 0.8  # fast's averaging is recorded
    assert "ema" not in FEW.with_(ema=0.0).for_model(tiny_model).as_dict()  # off: out of the record
    obj = channel("conv2", 1)
    assert render_key(tiny_model, obj, FEW.with_(ema=0.0), 0)[0] != render_key(tiny_model, obj, FEW, 0)[0]
    k0 = render_key(tiny_model, obj, FEW, 0)[0]
    assert render_key(tiny_model, obj, FEW.with_(views=2), 0)[0] != k0
    assert render_key(tiny_model, obj, FEW.with_(precision="bfloat16"), 0)[0] != k0
    assert base["anneal"] == 0.5  # fast's transform annealing is recorded
    assert "anneal" not in FEW.with_(anneal=0.0).for_model(tiny_model).as_dict()
    assert render_key(tiny_model, obj, FEW.with_(anneal=0.0), 0)[0] != k0


def test_annealed_transforms_shrink_and_keep_their_draws():
    """At strength f the affine's translation is f × the draw at full strength, from the same random draws."""
    import torch

    from filterscope.optvis.transform import fused

    x = torch.full((1, 3, 64, 64), 0.5)  # grey, as the affine fills: only the square weighs
    x[..., 28:36, 28:36] = 1.0  # a bright square: its centre of mass shows the translation

    def centre(img):
        w = (img[0, 0] - 0.5).abs()
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        return torch.stack([(w * ys).sum(), (w * xs).sum()]) / w.sum()

    t = fused()
    shifts = {}
    for f in (1.0, 0.5, 0.0):
        t.anneal(f)
        shifts[f] = centre(t(x, [torch.Generator().manual_seed(3)])) - centre(x)
    assert shifts[1.0].abs().max() > 1  # the draw moved the square
    assert torch.allclose(shifts[0.5], shifts[1.0] / 2, atol=1.0)
    assert shifts[0.0].abs().max() < 0.5  # strength 0: no transform at all


@pytest.mark.parametrize(
    "change",
    [
        dict(param_options=(("init_contrast", 0.5),)),
        dict(views=3),
        dict(precision="bfloat16"),
        dict(param_options=(("spectrum", "natural"),)),
        dict(ema=0.0),
        dict(param="laplacian", lr=0.1),
    ],
)
def test_research_options_render_and_are_seeded(tiny_model, change):
    ren = Renderer(tiny_model, FEW.with_(**change))
    a = ren.render(channel("conv2", 7), [11])
    b = ren.render(channel("conv2", 7), [11])
    assert a.status == ["ok"] and torch.equal(a.images, b.images)
    assert a.after[0] > a.before[0]


def test_natural_start_has_the_asked_contrast_and_lucids_start_is_grey():
    """``init_contrast`` starts from a random-phase image with the natural spectrum: its pre-sigmoid signal has
    that standard deviation (so the picture has contrast at step 0); Lucid's start is near-uniform grey."""
    for c in (0.25, 1.0):
        p = make_param("fourier", [5], 64, init_contrast=c)
        spec = torch.view_as_complex((p.tensors[0] * p.scale_synth).contiguous())
        x = torch.fft.irfft2(spec, s=(64, 64), norm="ortho")
        assert x.std().item() == pytest.approx(c, rel=1e-3)
    assert make_param("fourier", [5], 64)().std().item() < 0.02
    assert make_param("fourier", [5], 64, init_contrast=1.0)().std().item() > 0.15


def test_natural_spectrum_preconditions_like_photos_at_lucids_overall_scale():
    """``spectrum="natural"`` scales the coefficients by the photos' mean spectrum instead of 1/f: the same L2
    norm (one learning rate means the same), relatively less on the lowest frequencies; it is recorded."""
    from filterscope.optvis.param import spectrum_scale

    lucid, natural = spectrum_scale(64), spectrum_scale(64, "natural")
    assert lucid.shape == natural.shape == (1, 1, 64, 33, 1)
    assert natural.norm().item() == pytest.approx(lucid.norm().item(), rel=1e-5)
    # the lowest horizontal frequency against a mid one (12 cycles per image)
    assert natural[0, 0, 0, 1, 0] / natural[0, 0, 0, 12, 0] < lucid[0, 0, 0, 1, 0] / lucid[0, 0, 0, 12, 0]
    p = make_param("fourier", [3], 64, spectrum="natural")
    assert p.describe()["spectrum"] == "natural" and "spectrum" not in make_param("fourier", [3], 64).describe()
    with pytest.raises(UsageError, match="decay_power"):
        spectrum_scale(64, "natural", decay_power=1.25)
    with pytest.raises(UsageError, match="unknown spectrum"):
        make_param("fourier", [3], 64, spectrum="pink")


def test_photo_priors_stay_off_for_models_of_other_images():
    """MACO's spectrum and the natural start are photo statistics: a 1-channel digits model keeps ``fast`` for
    logits and Lucid's start (measured: maco-fused 6/10 digit classes recognised by the second net, fast 9/10)."""
    import filterscope as fs

    digits = fs.load_model("digits_cnn")
    assert default_method(LOGIT, digits) == "fast" and resolve_settings(layer=LOGIT, model=digits).preset == "fast"
    assert resolve_settings(layer=LOGIT, model=digits, steps=5).label == "fast+steps"
    assert dict(get_preset("fast").for_model(digits).param_options)["init_contrast"] == 0.0
    photo = fs.load_model("efficientnet_lite0")
    assert dict(get_preset("fast").for_model(photo).param_options)["init_contrast"] == 0.5
    assert default_method(LOGIT, photo) == METHOD_BY_TARGET["logit"]


def test_views_are_independent_draws_per_image_and_the_objective_averages_them(tiny_model):
    """``views`` N: each image enters the net N times, each under its own random transform, rows grouped by
    image (so the objective's per-image mean is over that image's views), and a seeded render repeats."""
    from filterscope.optvis.transform import Views, fused

    x = torch.stack([torch.full((3, 128, 128), 0.2), torch.full((3, 128, 128), 0.8)])
    x[:, :, 40:60, 40:60] = 0.5  # a mark, so that two draws of one image differ
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = Views(3, fused())(x, gens)
    assert out.shape == (6, 3, 128, 128) and Views(3, fused()).crops == 3
    assert not torch.equal(out[0], out[1])  # two draws for one image differ
    # rows 0-2 come from the dark image, 3-5 from the light one (grey fill only at the borders)
    assert (out[:3].mean((1, 2, 3)) < 0.4).all() and (out[3:].mean((1, 2, 3)) > 0.6).all()
    seen = []
    ren = Renderer(tiny_model, FEW.with_(views=4, steps=2))
    orig = ren._transform

    def spy():
        t = orig()
        seen.append(t)
        return t

    ren._transform = spy
    res = ren.render([channel("conv2", 1), channel("conv2", 2)], [3, 4])
    assert isinstance(seen[0], Views) and seen[0].crops == 4 and res.status == ["ok", "ok"]


def test_fast_views_preset_is_fast_with_eight_views_in_an_eighth_of_lucids_steps(tmp_path):
    """``fast-views``: ``fast`` with 8 views per step and 64 steps (Lucid's 512 gradient samples in 1/8 of its
    steps); the CLI takes it by name, an override keeps the name with what changed, and run.json records it."""
    from click.testing import CliRunner

    from filterscope.cli import cli

    fv = get_preset("fast-views")
    assert fv == get_preset("fast").with_(views=8, steps=64) and fv.preset == "fast-views"
    assert fv.steps * 8 == get_preset("lucid").steps and fv.views == 8
    out = tmp_path / "fv"
    args = ["render", "--layer", "blocks.0", "--channels", "1", "--method", "fast-views", "--steps", "2", "-q"]
    r = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "run.json").read_text())["settings"]
    assert rec["method"] == "fast-views+steps" and rec["render"]["views"] == 8 and rec["render"]["steps"] == 2
    assert (out / "blocks.0" / "channel_0001.png").is_file()


def test_compare_puts_presets_side_by_side_and_records_each_ones_steps_and_views(tmp_path):
    """``compare`` renders the same channels with each named preset into one figure; run.json keeps, per preset,
    its folder, steps and views (so a ``fast-views`` column says it took 8 views a step); an unknown preset is
    refused before anything is written."""
    import filterscope as fs

    model = fs.load_model()
    out = tmp_path / "cmp"
    run = fs.compare(model, "blocks.0", [1, 2], ["fast", "fast-views"], steps=2, out=out, progress=False)
    rec = json.loads((out / "run.json").read_text())
    assert rec["results"]["fast"] == {"dir": "fast", "steps": 2, "views": 1}
    assert rec["results"]["fast-views"] == {"dir": "fast-views", "steps": 2, "views": 8}
    assert rec["settings"]["methods"]["fast-views"]["views"] == 8
    for m in ("fast", "fast-views"):
        assert sorted(p.name for p in (out / m / "blocks.0").glob("channel_*.png")) == [
            "channel_0001.png",
            "channel_0002.png",
        ]
    with Image.open(out / "figure_compare.png") as im:
        assert im.width > im.height  # 2 channels across, 2 presets down, with labels
    assert run.record["status"] == "complete"
    with pytest.raises(UsageError):
        fs.compare(model, "blocks.0", [1], ["fast", "fast-vews"], steps=2, out=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_cli_refuses_bad_views_and_records_good_ones(tmp_path):
    from click.testing import CliRunner

    from filterscope.cli import cli

    r = CliRunner().invoke(cli, ["render", "--channels", "1", "--views", "0", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and not (tmp_path / "a").exists()
    out = tmp_path / "b"
    args = ["render", "--layer", "blocks.0", "--channels", "1", "--steps", "2", "--views", "2", "-q"]
    r = CliRunner().invoke(cli, [*args, "--precision", "bfloat16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "run.json").read_text())["settings"]
    assert rec["render"]["views"] == 2 and rec["render"]["precision"] == "bfloat16"
    assert "views" in rec["method"] and "precision" in rec["method"]
    r = CliRunner().invoke(cli, ["render", "--channels", "1", "--precision", "fp8", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and not (tmp_path / "c").exists()


def test_bfloat16_network_runs_in_bfloat16_and_its_objective_in_float32(tiny_model):
    """``precision="bfloat16"``: the hooked activations come out of the net in bfloat16 (autocast is on), the
    objective and its curve are float32, and the first objective is within bfloat16's rounding of float32's."""
    from filterscope.optvis import render as R

    seen = []
    real = R._float
    R._float = lambda acts, logits: seen.append({v.dtype for v in acts.values()}) or real(acts, logits)
    try:
        low = Renderer(tiny_model, FEW.with_(precision="bfloat16", steps=2)).render(channel("conv2", 4), [9])
    finally:
        R._float = real
    full = Renderer(tiny_model, FEW.with_(steps=2)).render(channel("conv2", 4), [9])
    assert seen and all(d == {torch.bfloat16} for d in seen)
    assert low.images.dtype == torch.float32 and low.status == ["ok"]
    assert low.before[0] == pytest.approx(full.before[0], rel=0.03, abs=1e-2)


def test_a_non_finite_objective_stops_its_image_at_once(tiny_model):
    from filterscope.optvis.objectives import Objective

    ren = Renderer(tiny_model, FEW.with_(steps=6))
    base = channel("conv2", 3)
    dead = Objective(lambda ctx: base(ctx) * float("nan"), "nan", base.layers, target=base.target)
    res = ren.render(dead, [1])
    assert "non-finite" in res.status[0] and res.steps_done == 1


def test_ema_returns_the_running_average_of_the_steps(tiny_model):
    """``ema`` makes the result the running average of the parameters: with decay 0.75 over two steps, the
    Fourier image before the sigmoid (linear in the coefficients) is 0.75 of the first step's and 0.25 of the
    last's."""
    two = FEW.with_(steps=2, ema=0.0)
    obj = channel("conv2", 4)
    one = Renderer(tiny_model, two.with_(steps=1)).render(obj, [3]).images
    last = Renderer(tiny_model, two).render(obj, [3]).images
    avg = Renderer(tiny_model, two.with_(ema=0.75)).render(obj, [3])
    assert avg.settings.ema == 0.75 and avg.steps_done == 2
    ok = (last > 0.02) & (last < 0.98) & (one > 0.02) & (one < 0.98)
    want = 0.75 * torch.logit(one) + 0.25 * torch.logit(last)
    assert torch.allclose(torch.logit(avg.images)[ok], want[ok], atol=1e-3)
    assert (avg.images - last).abs().max() > 1e-3  # not the last step's image


def test_laplacian_levels_sum_and_start_like_fourier():
    """The pyramid's image before the colour mapping is the sum of its upsampled levels (``level_gain**k``);
    its natural start is ``fourier``'s (same contrast) in the finest level."""
    p = make_param("laplacian", [5], 64, init_contrast=0.5, level_gain=2.0)
    assert p.sides == [64, 32, 16, 8, 4]
    t = p.tensors[0].detach().clone()
    assert p.spatial(t).std().item() == pytest.approx(0.5, rel=1e-3)
    shifted = t.clone()
    shifted[0, -3 * 4 * 4 :] += 1.0  # the coarsest level, 4 px, up by 1 everywhere
    assert torch.allclose(p.spatial(shifted) - p.spatial(t), torch.full((1, 3, 64, 64), 2.0**4), atol=1e-5)
    assert make_param("laplacian", [5], 64)().std().item() < 0.02  # without a natural start: near grey


def test_an_averaged_render_does_not_depend_on_its_batch(tiny_model):
    """With early exit and averaging on (as in ``fast``), an image that stops early keeps its average while
    its batchmates run on: alone or in a batch, the same picture (up to a batched conv's float rounding)."""
    ren = Renderer(tiny_model, FEW.with_(steps=20, converge=0.05, window=2, ema=0.8))
    objs, seeds = [channel("conv2", 2), channel("conv2", 1)], [2, 1]
    together = ren.render(objs, seeds)
    alone = [ren.render(o, [sd]) for o, sd in zip(objs, seeds)]
    assert alone[0].steps_done < together.steps_done  # the first stopped while the other ran on
    for i, single in enumerate(alone):
        assert torch.allclose(single.images[0], together.images[i], atol=1e-3), i
