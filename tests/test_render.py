"""Rendering really boosts filters on the real model, reproducibly, batch-independently, and survives NaN.

The loop's mechanics (seeds, batching, NaN, stop, canvas size, settings, cache) run on the tiny CNN of
tests/tiny_net.py; what a render achieves (boosting, reviving a dead channel, channels winning on their
own images) runs on the real model."""

import numpy as np
import pytest
import torch

import filterscope
from filterscope.optvis.objectives import Objective, channel
from filterscope.optvis.render import Renderer, RenderSettings, channel_seed

FEW = RenderSettings(param="fourier", transforms="standard", steps=24, lr=0.05)


@pytest.mark.slow
def test_api_render_boosts_channels_far_above_noise(model):
    gains = []
    for c in (5, 40, 100):
        r = filterscope.render(model, "blocks.5", c, method="fast", steps=24, seed=0)
        assert r.image.size == (224, 224)
        gains.append(r.activation_after - r.activation_before)
        assert r.activation_after > 5 * max(r.activation_before, 0.2), (c, r.activation_before, r.activation_after)
    assert min(gains) > 1.0


@pytest.mark.slow
def test_seed_method_boosts_the_default_layer(model):
    r = filterscope.render(model, "default", 933, method="seed", steps=16, seed=0)
    assert r.activation_after >= 3.0 > r.activation_before + 2.0


@pytest.mark.slow
def test_dead_channel_is_revived_by_redirected_relu(model):
    # bn2 ends in ReLU6: on grey noise most channels are exactly 0, which plain ascent cannot leave
    r = filterscope.render(model, "bn2", 1213, method="fast", steps=16, seed=0)
    assert r.activation_before == 0.0
    assert r.activation_after > 1.0


def test_same_seed_same_image_other_seed_other_image(tiny_model):
    ren = Renderer(tiny_model, FEW.with_(steps=6))
    a = ren.render(channel("conv2", 7), [11]).images
    b = ren.render(channel("conv2", 7), [11]).images
    c = ren.render(channel("conv2", 7), [12]).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batched_render_equals_single_renders(tiny_model):
    # Lucid's colour mapping (gain 1): the tolerances below bound how far Adam carries last-bit differences of
    # the batched sums; the fast preset's colour gain (1.85) only scales those pixel differences up
    ren = Renderer(tiny_model, FEW.with_(steps=8, param_options=(("rgb_gain", 1.0),)))
    chans = [3, 9, 14]
    seeds = [channel_seed(0, c) for c in chans]
    batch = ren.render([channel("conv2", c) for c in chans], seeds)
    for i, c in enumerate(chans):
        one = ren.render(channel("conv2", c), [seeds[i]])
        # float sums differ between batch sizes and Adam amplifies the last bits: close, not bit-equal
        diff = (batch.images[i] - one.images[0]).abs()
        assert diff.mean() < 5e-3 and diff.max() < 0.06, (c, diff.mean(), diff.max())
        assert abs(batch.after[i] - one.after[0]) < 0.02 * max(1.0, abs(one.after[0]))


@pytest.mark.slow
def test_batched_channels_each_win_on_their_own_image(model):
    chans = [2, 9, 21, 50]
    res = Renderer(model, FEW).render([channel("blocks.4", c) for c in chans], [channel_seed(1, c) for c in chans])
    from filterscope.jobs.evaluate import layer_means

    acts = layer_means(model, "blocks.4", res.images)[:, chans]  # [image, channel]
    for j in range(len(chans)):
        own = acts[j, j]
        others = torch.cat([acts[:j, j], acts[j + 1 :, j]])
        assert own > others.max(), (chans[j], acts[:, j])


def test_nan_objective_stops_only_that_image(tiny_model):
    base = channel("conv2", [1, 2])

    def fn(ctx):
        v = base(ctx)
        return torch.stack([v[0], v[1] * float("nan")])

    obj = Objective(fn, "half-nan", base.layers)
    res = Renderer(tiny_model, FEW.with_(steps=5)).render(obj, [1, 2])
    assert res.status[0] == "ok"
    assert "non-finite" in res.status[1]
    assert res.after[0] > res.before[0]
    assert np.isfinite(res.images.numpy()).all()


def test_stop_request_ends_render_after_current_step(tiny_model):
    calls = []
    res = Renderer(tiny_model, FEW.with_(steps=50)).render(
        channel("conv2", 0), [0], on_step=calls.append, should_stop=lambda: len(calls) >= 3
    )
    assert res.interrupted and res.steps_done == 3


def test_larger_render_than_model_input(tiny_model):
    res = Renderer(tiny_model, FEW.with_(steps=4, size=80)).render(channel("conv2", 4), [0])  # 32 px input
    assert res.images.shape == (1, 3, 80, 80)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=-1.0), dict(lr=float("nan")), dict(size=8)])
def test_bad_settings_rejected_before_work(tiny_model, bad):
    from filterscope.errors import UsageError

    with pytest.raises(UsageError):
        Renderer(tiny_model, FEW.with_(**bad))


def test_render_cache_keys_penalties_by_every_argument(tiny_model, tmp_path):
    """A channel plus a penalty is cached under the objective's full key: ``l1(0.0)`` and ``l1(1.0)`` (both
    *named* "l1") are two entries, never one render served for the other; the plain channel is a third."""
    from filterscope.jobs.stream import render_stream
    from filterscope.models.layers import get_layer
    from filterscope.optvis.objectives import l1
    from filterscope.outputs.cache import RenderCache

    cache = RenderCache(tmp_path / "cache")
    info = get_layer(tiny_model, "conv2")
    few = FEW.with_(steps=2)
    (pen0,) = render_stream(tiny_model, info, [1], few, 0, extra=lambda c: -0.5 * l1(0.0), cache=cache)
    assert cache.info()["entries"] == 1 and not pen0.cached
    (pen1,) = render_stream(tiny_model, info, [1], few, 0, extra=lambda c: -0.5 * l1(1.0), cache=cache)
    assert cache.info()["entries"] == 2 and not pen1.cached
    (pen0_again,) = render_stream(tiny_model, info, [1], few, 0, extra=lambda c: -0.5 * l1(0.0), cache=cache)
    assert pen0_again.cached and pen0_again.png == pen0.png
    (first,) = render_stream(tiny_model, info, [1], few, 0, cache=cache)
    (again,) = render_stream(tiny_model, info, [1], few, 0, cache=cache)
    assert cache.info()["entries"] == 3 and not first.cached
    assert again.cached and again.png == first.png
