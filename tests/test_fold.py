"""Batch norm folding for the render loop (optvis/fold.py) and the allocator setting (optvis/memory.py)."""

import torch
import torchvision
from torch import nn

from filterscope.models import load_model
from filterscope.optvis.fold import conv_norm_pairs, fold_batchnorm
from filterscope.optvis.hooks import capture, run
from filterscope.optvis.memory import reuse_freed_memory
from filterscope.optvis.objectives import channel
from filterscope.optvis.render import Renderer, RenderSettings


def _acts(net, layers, x):
    with capture(net, layers) as cap:
        run(net, x, cap)
        return {k: v.clone() for k, v in cap.acts.items()}


def test_folded_lite0_has_the_same_activations_and_no_norm_arithmetic(model):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    layers = ["bn1", "blocks.1", "blocks.3", "blocks.5", "bn2"]
    folded = fold_batchnorm(model.net, x[:1], keep=layers)
    assert folded is not model.net
    pairs = conv_norm_pairs(model.net, x[:1])
    assert len(pairs) == 49  # every conv → BatchNormAct2d of efficientnet_lite0
    a, b = _acts(model.net, layers, x), _acts(folded, layers, x)
    for k in layers:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4), k
    # the copy's norms no longer normalise: scaling a norm's statistics changes nothing any more
    bn = dict(folded.named_modules())["blocks.1.0.bn1"]
    bn.running_var.mul_(100)
    assert torch.allclose(_acts(folded, ["blocks.1"], x)["blocks.1"], b["blocks.1"])
    assert fold_batchnorm(model.net, x[:1], keep=layers) is folded  # cached


def test_an_observed_conv_keeps_its_own_output(model):
    x = torch.rand(1, 3, 224, 224)
    conv = "blocks.2.0.conv_pw"
    folded = fold_batchnorm(model.net, x, keep=[conv])
    a, b = _acts(model.net, [conv], x)[conv], _acts(folded, [conv], x)[conv]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)  # upstream folds differ by float rounding only
    assert dict(folded.named_modules())[conv].bias is None  # not folded (a folded conv gains a bias)
    assert dict(folded.named_modules())["blocks.2.0.conv_dw"].bias is not None


def test_resnet_folds_but_a_conv_output_used_twice_does_not():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, as in a trained net
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    folded = fold_batchnorm(net, x)
    assert folded is not net
    with torch.no_grad():
        assert torch.allclose(net(x), folded(x), rtol=1e-4, atol=1e-4)

    class Shared(nn.Module):  # the conv's raw output is also added after the norm: folding would change it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(3.0)

        def forward(self, x):
            y = self.conv(x)
            return (self.bn(y) + y).mean((2, 3))

    shared = Shared().eval()
    assert fold_batchnorm(shared, x) is shared


def test_render_with_and_without_folding_agree(model):
    obj = channel("blocks.3", 5)
    base = RenderSettings(steps=6, transforms="none")
    a = Renderer(model, base).render(obj, [3])
    b = Renderer(model, base.with_(fold_batchnorm=False)).render(obj, [3])
    # float rounding of the folded weights grows over the steps of gradient ascent, but stays small
    assert abs(a.after[0] - b.after[0]) <= 0.02 * abs(b.after[0])
    assert (a.images - b.images).abs().mean() < 0.02  # Adam's first steps are ±lr: near-zero gradients flip


def test_allocator_setting_is_idempotent():
    first = reuse_freed_memory()
    assert reuse_freed_memory() == first


def test_render_of_a_model_loaded_twice_folds_each_own_net():
    m = load_model("efficientnet_lite0")
    r = Renderer(m, RenderSettings(steps=2, transforms="none"))
    assert r._net(["blocks.1"]) is not m.net
