"""Batch norm folding for the render loop (optvis/fold.py) and the allocator setting (optvis/memory.py)."""

import copy
import ctypes.util
import platform

import pytest
import torch
import torchvision
from torch import nn

from filterscope.models.hooks import capture, run
from filterscope.models.layers import list_layers
from filterscope.models.relu import final_relus
from filterscope.optvis import fold as fold_module
from filterscope.optvis.fold import conv_norm_pairs, fold_batchnorm
from filterscope.optvis.memory import reuse_freed_memory
from filterscope.optvis.objectives import channel
from filterscope.optvis.render import Renderer, RenderSettings


def _acts(net, layers, x, inputs_of=()):
    with capture(net, layers, inputs_of=inputs_of) as cap:
        run(net, x, cap)
        return {**{k: v.clone() for k, v in cap.acts.items()}, **{k: v.clone() for k, v in cap.inputs.items()}}


def _private_net(model):
    """A copy of the model's net, so a test can change it without touching the session fixture's caches."""
    net = copy.deepcopy(model.net)
    net.eval()
    return net


def test_folded_lite0_keeps_outputs_and_pre_activations(model):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    layers = ["bn1", "blocks.1", "blocks.3", "blocks.5", "bn2"]
    folded = fold_batchnorm(model.net, x[:1], keep=layers)
    assert folded is not model.net
    assert len(conv_norm_pairs(model.net, x[:1])) == 49  # every conv → BatchNormAct2d of efficientnet_lite0
    relu = final_relus(model.net, {i.name: i.order for i in list_layers(model)}, ["bn2"])["bn2"]
    a = _acts(model.net, layers, x, [relu])
    b = _acts(folded, layers, x, [relu])
    for k in [*layers, relu]:  # the pre-activation the presets optimise is captured inside the folded norm
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4), k
    assert fold_batchnorm(model.net, x[:1], keep=layers) is folded  # cached


def test_folded_norms_no_longer_normalise(tiny_model):
    net = _private_net(tiny_model)  # the fold's bookkeeping, on the tiny CNN of tests/tiny_net.py
    x = torch.rand(1, 3, 32, 32)
    folded = fold_batchnorm(net, x)
    assert folded is not net
    before = _acts(folded, ["relu2"], x)["relu2"]
    dict(folded.named_modules())["bn1"].running_var.mul_(100)  # the copy's, not the net's
    assert torch.equal(_acts(folded, ["relu2"], x)["relu2"], before)


def test_an_observed_conv_keeps_its_own_output(model):
    x = torch.rand(1, 3, 224, 224)
    conv = "blocks.2.0.conv_pw"
    folded = fold_batchnorm(model.net, x, keep=[conv])
    a, b = _acts(model.net, [conv], x)[conv], _acts(folded, [conv], x)[conv]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)  # upstream folds differ by float rounding only
    assert dict(folded.named_modules())[conv].bias is None  # not folded (a folded conv gains a bias)
    assert dict(folded.named_modules())["blocks.2.0.conv_dw"].bias is not None


def test_changed_weights_refold_and_copies_are_bounded(tiny_model):
    net = _private_net(tiny_model)  # the fold's bookkeeping, on the tiny CNN of tests/tiny_net.py
    x = torch.rand(1, 3, 32, 32)
    first = fold_batchnorm(net, x)
    with torch.no_grad():
        dict(net.named_modules())["bn1"].running_mean.add_(0.5)  # the net changes in place
    second = fold_batchnorm(net, x)
    assert second is not first
    with torch.no_grad():
        assert torch.allclose(net(x), second(x), rtol=1e-4, atol=1e-4)
    for conv in ["conv1", "conv2"]:  # a copy per set of kept convs (3 sets so far), at most 2 kept
        fold_batchnorm(net, x, keep=[conv])
    assert len(fold_module._STATE[net]["copies"]) == fold_module.MAX_COPIES


def test_a_users_hook_is_not_copied(tiny_model):
    net = _private_net(tiny_model)  # on the tiny CNN of tests/tiny_net.py
    calls = []
    net.conv2.register_forward_hook(lambda m, i, o: calls.append(1))
    folded = fold_batchnorm(net, torch.rand(1, 3, 32, 32))
    assert folded is not net
    calls.clear()
    with torch.no_grad():
        folded(torch.rand(1, 3, 32, 32))
    assert calls == []


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
    assert conv_norm_pairs(shared, x) == [("conv", "bn")]  # detection alone cannot see the second use ...
    assert fold_batchnorm(shared, x) is shared  # ... the logits check refuses the copy


@pytest.mark.slow
def test_render_with_and_without_folding_agree(model):
    """The preset path: pre-activation objective and redirected ReLU gradients on the folded copy."""
    obj = channel("bn2", 7)
    base = RenderSettings(steps=6, transforms="none", pre_relu=True)
    folded = Renderer(model, base)
    assert folded.net_for(["bn2"]) is not model.net
    a = folded.render(obj, [3])
    b = Renderer(model, base, fold=False).render(obj, [3])
    assert a.steps_done == b.steps_done == 6
    # the same objective on the same starting image: the layer's output, and the pre-activation the loop uses
    assert abs(a.before[0] - b.before[0]) <= 1e-4 * abs(b.before[0]) + 1e-5
    assert abs(a.curves[0][0] - b.curves[0][0]) <= 1e-4 * abs(b.curves[0][0]) + 1e-5
    # later, float rounding grows (Adam's first steps are ±lr, so near-zero gradients can flip), but stays small
    assert abs(a.after[0] - b.after[0]) <= 0.05 * abs(b.after[0]) + 1e-3


def test_allocator_setting():
    first = reuse_freed_memory()
    assert reuse_freed_memory() == first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c"):
        assert first is True
