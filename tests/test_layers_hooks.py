"""Layers are listed with shapes; hooks always come off; the early exit gives the full model's activations."""

import pytest
import torch
import torchvision

from filterscope.errors import LayerError
from filterscope.models import load_model
from filterscope.models.hooks import capture, run
from filterscope.models.layers import default_layer, get_layer, list_layers


def n_hooks(net):
    return sum(len(m._forward_hooks) for m in net.modules())


def test_layers_listed_in_forward_order_with_shapes(model):
    infos = {i.name: i for i in list_layers(model)}
    assert infos["blocks.5"].shape == (192, 7, 7)
    assert infos["bn2"].shape == (1280, 7, 7)
    assert infos["classifier"].shape == (1000,)
    orders = [i.order for i in list_layers(model)]
    assert orders == sorted(orders)


def test_default_layer_is_last_spatial_child_before_head(model):
    assert default_layer(model) == "bn2"
    assert get_layer(model, "default").name == "bn2"


def test_default_layer_on_resnet18_is_the_tutorials_avgpool():
    m = load_model(torchvision.models.resnet18(weights=None))
    assert default_layer(m) == "avgpool"


def test_unknown_layer_suggests_close_names(model):
    with pytest.raises(LayerError, match="blocks.5"):
        get_layer(model, "block.5")


def test_hooks_removed_after_success_and_error(model):
    before = n_hooks(model.net)
    x = torch.rand(1, 3, 224, 224)
    with capture(model.net, ["blocks.5", "bn2"]) as cap, torch.no_grad():
        assert n_hooks(model.net) == before + 2
        run(model.forward, x, cap)
    assert n_hooks(model.net) == before
    with pytest.raises(ValueError):
        with capture(model.net, ["blocks.5"]):
            raise ValueError("boom")
    assert n_hooks(model.net) == before
    with pytest.raises(RuntimeError):
        with capture(model.net, ["blocks.5"]) as cap:
            model.forward(torch.rand(1, 5, 224, 224))  # wrong channel count fails inside forward
    assert n_hooks(model.net) == before


@pytest.fixture(scope="module")
def plain_logits(model):
    """An input and the model's logits on it without hooks (computed once for the module)."""
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return x, model.forward(x)


@pytest.mark.parametrize("layer", ["blocks.1", "blocks.3.0.conv_pwl", "blocks.5", "bn2"])
def test_early_exit_equals_full_forward(model, plain_logits, layer):
    x, plain = plain_logits
    info = get_layer(model, layer)
    with torch.no_grad():
        with capture(model.net, [layer], calls={layer: info.calls}) as full:
            logits = run(model.forward, x, full)
        with capture(model.net, [layer], calls={layer: info.calls}, stop=True) as early:
            assert run(model.forward, x, early) is None
    assert logits.shape == (2, 1000) and torch.equal(logits, plain)  # the hooked full pass returns the logits
    assert torch.equal(full.acts[layer], early.acts[layer])


def test_early_exit_really_stops(model):
    seen = []
    h = model.net.conv_head.register_forward_hook(lambda *a: seen.append(1))
    try:
        with capture(model.net, ["blocks.3"], stop=True) as cap, torch.no_grad():
            run(model.forward, torch.rand(1, 3, 224, 224), cap)
    finally:
        h.remove()
    assert not seen


def test_module_used_twice_and_layer_inside_residual_block():
    """torchvision's BasicBlock calls its ReLU twice; the last call (after the residual add) is used, and
    stopping there or inside the block gives the same tensors as the full pass."""
    torch.manual_seed(0)
    m = load_model(torchvision.models.resnet18(weights=None))
    infos = {i.name: i for i in list_layers(m)}
    assert infos["layer2.0.relu"].calls == 2
    x = torch.rand(1, 3, 64, 64)  # the block structure, not the input size, is tested: a small input is enough
    for layer in ["layer2.0.relu", "layer3.1.bn1", "layer4.1.conv2"]:
        info = infos[layer]
        with torch.no_grad():
            with capture(m.net, [layer], calls={layer: info.calls}) as full:
                run(m.forward, x, full)
            with capture(m.net, [layer], calls={layer: info.calls}, stop=True) as early:
                run(m.forward, x, early)
        assert torch.equal(full.acts[layer], early.acts[layer])
    # the kept output of the twice-used ReLU is the block's output, not the first call's
    with torch.no_grad():
        with capture(m.net, ["layer2.0.relu", "layer2.0"], calls={"layer2.0.relu": 2}) as cap:
            run(m.forward, x, cap)
    assert torch.equal(cap.acts["layer2.0.relu"], cap.acts["layer2.0"])
