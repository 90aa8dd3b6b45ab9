"""Parameterisations, transforms and objectives: valid images, gradients, MACO's fixed magnitude, algebra."""

import pytest
import torch

from filterscope.errors import UsageError
from filterscope.optvis.objective_text import parse
from filterscope.optvis.objectives import Context, channel, logit, tv
from filterscope.optvis.param import PARAM_REGISTRY, MacoParam, make_param, natural_magnitude
from filterscope.optvis.render import Renderer, RenderSettings
from filterscope.optvis.transform import TRANSFORM_PRESETS, make_transform


@pytest.mark.parametrize("name", sorted(PARAM_REGISTRY))
@pytest.mark.parametrize("decorrelate", [False, True])
def test_params_give_valid_images_and_gradients(name, decorrelate):
    p = make_param(name, [1, 2], 64, decorrelate=decorrelate)
    x = p()
    assert x.shape == (2, 3, 64, 64)
    assert x.min() >= 0 and x.max() <= 1 and torch.isfinite(x).all()
    (x[:, 0].mean() - x[:, 2].mean()).backward()
    assert p.tensors  # the loop below checks something
    for t in p.tensors:
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_param_images_depend_only_on_own_seed():
    a = make_param("fourier", [5, 6], 32)()
    b = make_param("fourier", [7, 6], 32)()
    assert torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0])


def test_maco_magnitude_fixed_while_image_changes(tiny_model):
    res_param = {}

    class Spy(MacoParam):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            res_param["p"] = self

    from filterscope.optvis import param as P

    P.PARAM_REGISTRY["maco_spy"] = Spy
    try:
        # a 224 px canvas for the tiny CNN's 32 px input: the magnitude property is the param's, not the model's
        s = RenderSettings(param="maco_spy", transforms="standard", steps=6, lr=0.5, optimizer="nadam", size=224)
        p0 = make_param("maco", [3], 224)
        start = p0().detach()
        Renderer(tiny_model, s).render(channel("conv2", 5), [3])
    finally:
        del P.PARAM_REGISTRY["maco_spy"]
    p = res_param["p"]
    end = p().detach()
    assert (end - start).abs().mean() > 0.01  # the image changed
    # after optimisation, the spectrum of the optimised image still has the natural magnitude, computed anew
    spatial = p.spatial(p.tensors[0].detach())
    mag = torch.fft.rfft2(spatial, norm="ortho").abs()[0]
    inner = (slice(None), slice(1, 111), slice(1, 112))  # away from the DC/Nyquist rows that irfft makes real
    assert torch.allclose(mag[inner], natural_magnitude(224, 224)[inner], rtol=1e-3, atol=1e-5)
    # while its phase moved away from the start
    assert not torch.allclose(p.tensors[0].detach(), p0.tensors[0].detach(), atol=1e-3)


@pytest.mark.parametrize("name", sorted(TRANSFORM_PRESETS))
def test_transforms_keep_gradients_and_one_draw_per_image(name):
    t = make_transform(name)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    y = t(x, gens, 48)
    assert y.shape[0] == 2 * t.crops
    y.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # each image draws from its own generator only: image 1 alone, with a fresh copy of its generator,
    # comes out exactly as it did in the batch of two
    alone = t(x[1:2].detach(), [torch.Generator().manual_seed(2)], 48)
    assert torch.equal(alone, y.detach()[t.crops :])
    if name != "none":  # and a random transform really draws from it
        other = t(x[1:2].detach(), [torch.Generator().manual_seed(3)], 48)
        assert not torch.equal(other, alone)


def _ctx(acts, logits=None, images=None):
    b = next(iter(acts.values())).shape[0] if acts else logits.shape[0]
    images = images if images is not None else torch.rand(b, 3, 8, 8)
    return Context(acts, logits, images, torch.arange(b))


def test_objective_algebra_composes():
    a = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).view(2, 4, 3, 3)
    ctx = _ctx({"L": a}, logits=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    c1, c2, lg = channel("L", 1), channel("L", 3), logit(1)
    assert torch.allclose((c1 + c2)(ctx), c1(ctx) + c2(ctx))
    assert torch.allclose((c1 - 0.5 * c2)(ctx), c1(ctx) - 0.5 * c2(ctx))
    assert torch.allclose((2 * c1 / 4)(ctx), c1(ctx) / 2)
    assert torch.allclose((-lg + 1)(ctx), 1 - torch.tensor([2.0, 4.0]))
    combo = c1 + lg
    assert combo.layers == frozenset({"L"}) and combo.needs_logits


def test_parse_text_objectives(model):
    from filterscope.models.layers import get_layer

    resolve = lambda s: get_layer(model, s).name
    o = parse("blocks.5:12 - 0.1*tv", resolve)
    assert o.layers == frozenset({"blocks.5"}) and "tv" in o.name
    assert parse("logit:967").needs_logits
    assert parse("default:3", resolve).layers == frozenset({"bn2"})
    assert parse("neuron(blocks.4, 2) + deepdream(blocks.3) - 0.01*l2", resolve).layers == {"blocks.4", "blocks.3"}
    a = torch.rand(1, 4, 5, 5)
    ctx = _ctx({"L": a})
    assert torch.allclose(parse("2*(L:1 + L:2)/4")(ctx), (channel("L", 1)(ctx) + channel("L", 2)(ctx)) / 2)
    for bad in ["blocks.5:", "logit:", "nope(3)", "blocks.5:1 *", "3", "tv * tv", "blocks.5:1 $ 2"]:
        with pytest.raises(UsageError):
            parse(bad, resolve)


def test_tv_penalty_value_matches_definition():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :, 2:] = 1.0
    v = tv()(_ctx({}, logits=torch.zeros(1, 2), images=x))
    # one vertical edge: 4 rows × 3 channels of |1-0| among 4·3·3 horizontal differences
    assert torch.allclose(v, torch.tensor([12 / 36]))


OBJECTIVE_TEXTS = [  # on the tiny CNN of tests/tiny_net.py: the objectives' gradients, not the model, are tested
    "conv3:7",
    "neuron(conv3, 7)",
    "deepdream(conv2)",
    "logit:3",
    "direction(conv3, 'coffee')",
    "conv3:7 - 0.5*tv",
]


@pytest.mark.parametrize("text", OBJECTIVE_TEXTS)
def test_every_objective_rises_under_rendering(tiny_model, coffee, text):
    from filterscope.jobs.inspect import inspect
    from filterscope.models.layers import get_layer

    def vector(layer, arg):
        return torch.tensor(inspect(tiny_model, coffee, layer).means)

    obj = parse(text, lambda s: get_layer(tiny_model, s).name, vector)
    res = Renderer(tiny_model, RenderSettings(steps=20, lr=0.05)).render(obj, [4])
    assert res.after[0] > res.before[0] + 0.1 * abs(res.before[0]) + 1e-3, (text, res.before, res.after)


def test_diversity_pushes_images_apart(tiny_model):
    from filterscope.optvis.objectives import diversity

    model = tiny_model  # the penalty's effect, not the model's: the tiny CNN of tests/tiny_net.py
    s = RenderSettings(steps=16, lr=0.05)
    plain = Renderer(model, s).render(channel("conv2", 11), [1, 2, 3])
    div = Renderer(model, s).render(channel("conv2", 11) + 4.0 * diversity("conv2"), [1, 2, 3])

    def mean_sim(images):
        from filterscope.models.hooks import capture, run

        with capture(model.net, ["conv2"], stop=True) as cap, torch.no_grad():
            run(model.forward, images, cap)
            a = cap.acts["conv2"].flatten(2)
        g = torch.nn.functional.normalize(torch.bmm(a, a.transpose(1, 2)).flatten(1), dim=1)
        sim = g @ g.T
        return (sim.sum() - sim.diag().sum()) / 6

    assert mean_sim(div.images) < mean_sim(plain.images)
