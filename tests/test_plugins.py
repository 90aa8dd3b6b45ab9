"""Extension points: every registered objective from its text form, objectives that take a layer from the
CLI, and a plugin package (entry points) installed with pip during the test run."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from filterscope.cli import main
from filterscope.jobs.render_objective import objective_for
from filterscope.models.inputs import sample_image_path
from filterscope.optvis.objective_text import argument_kinds
from filterscope.optvis.objectives import OBJECTIVE_REGISTRY, Objective, register_objective
from filterscope.optvis.render import Renderer, RenderSettings

HERE = Path(__file__).resolve().parent
EXAMPLE_ARG = {  # for the tiny CNN of tests/tiny_net.py (16 channels in conv3, 10 classes)
    "layer": "conv3",
    "channel": "7",
    "class": "3",
    "position": "1",
    "int": "1",
    "float": "0.5",
    "number": "0.5",
    "str": "x",
    "vector": f"'{sample_image_path()}'",
    "image": f"'{sample_image_path()}'",
}


def text_form(name: str) -> str:
    """``name(arg, …)`` with an example value for each required argument, read from the signature."""
    args = [EXAMPLE_ARG[kind] for _, kind, required in argument_kinds(OBJECTIVE_REGISTRY[name]) if required]
    return f"{name}({', '.join(args)})"


@pytest.mark.parametrize("name", sorted(OBJECTIVE_REGISTRY))
def test_every_registered_objective_renders_from_its_text_form(tiny_model, name):
    obj = objective_for(tiny_model, text_form(name))
    res = Renderer(tiny_model, RenderSettings(steps=3, lr=0.05)).render(obj, [1, 2])  # 2 images: diversity needs them
    assert res.status == ["ok", "ok"], res.status
    assert torch.isfinite(res.images).all() and res.images.min() >= 0 and res.images.max() <= 1
    assert all(map(lambda v: torch.isfinite(torch.tensor(v)), res.after))


def test_targets_are_structured_not_parsed(model):
    t = objective_for(model, "blocks.5:12").target
    assert (t.kind, t.layer, t.index) == ("channel", "blocks.5", 12)
    t = objective_for(model, "logit:967").target
    assert (t.kind, t.layer, t.index) == ("logit", "logit", 967)
    assert objective_for(model, "neuron(default, 3)").target.layer == "bn2"
    assert objective_for(model, "blocks.5:12 - 0.1*tv").target is None


@pytest.mark.slow
def test_a_registered_objective_that_takes_a_layer_works_from_the_cli(model, tmp_path, capsys):
    @register_objective
    def corner(layer: str, channel: int, size: int = 2) -> Objective:
        """The top-left ``size``×``size`` corner of a channel's map."""
        return Objective(
            lambda ctx: ctx.per_image(ctx.act(layer)[:, channel, :size, :size].flatten(1).mean(1)),
            f"corner({layer}:{channel})",
            frozenset([layer]),
        )

    try:
        with pytest.raises(Exception, match="out of range for blocks.5"):
            objective_for(model, "corner(blocks.5, 5000)")  # the channel is checked against the layer
        rc = main(
            [
                "render",
                "--objective",
                "corner(blocks.5, 3, 3)",
                "--steps",
                "4",
                "--out",
                str(tmp_path / "o"),
                "--quiet",
                "--json",
            ]
        )
        rec = json.loads(capsys.readouterr().out)
    finally:
        del OBJECTIVE_REGISTRY["corner"]
    assert rc == 0
    (r,) = rec["results"].values()
    assert r["objective"] == "corner(blocks.5:3)" and r["status"] == "ok"
    assert r["activation_after"] > r["activation_before"]
    assert (tmp_path / "o" / r["file"]).is_file()


def _build_wheel(dest: Path) -> Path:
    """A wheel of tests/plugin_pkg (the plain zip layout pip installs; no build tools needed)."""
    src = HERE / "plugin_pkg"
    whl = dest / "fs_demo_plugin-0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        files = sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for p in files:
            z.write(p, p.relative_to(src).as_posix())
        record = "".join(f"{p.relative_to(src).as_posix()},,\n" for p in files)
        z.writestr("fs_demo_plugin-0.1.dist-info/RECORD", record + "fs_demo_plugin-0.1.dist-info/RECORD,,\n")
    return whl


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin")
    site = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(_build_wheel(tmp)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (site / "fs_demo_plugin-0.1.dist-info" / "entry_points.txt").is_file()
    return site


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FILTERSCOPE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "filterscope.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_plugin_package_adds_objective_param_and_model_to_the_cli(plugin_site, tmp_path, capsys):
    out = tmp_path / "p"
    res = _cli(
        plugin_site,
        "render",
        "--objective",
        "halfchan(blocks.5, 3, 0.5)",
        "--param",
        "grey_pixels",
        "--steps",
        "4",
        "--out",
        str(out),
        "--quiet",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)
    (r,) = rec["results"].values()
    assert r["objective"] == "halfchan(blocks.5:3, 0.5)" and r["status"] == "ok"
    assert rec["settings"]["render"]["param"] == "grey_pixels"
    assert r["activation_after"] > r["activation_before"]
    res = _cli(plugin_site, "layers", "--model", "tiny_plugin_net", "--json")
    assert res.returncode == 0, res.stderr
    layers = json.loads(res.stdout)
    assert layers["model"] == "tiny_plugin_net" and layers["default"] == "features"
    # without the plugin on the path (this process never sees it) the same names are unknown, with one-line errors
    rc = main(["render", "--objective", "halfchan(blocks.5, 3, 0.5)", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown objective 'halfchan'" in err and err.count("\n") == 1


def test_model_names_say_their_source(tmp_path):
    import torchvision

    from filterscope.errors import ModelError
    from filterscope.models import load_model

    f = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), f)  # same key names in timm's resnet18
    tv = load_model("torchvision:resnet18", weights=f)
    tm = load_model("timm:resnet18", weights=f)
    bare = load_model("resnet18", weights=f)
    assert type(tv.net).__module__.startswith("torchvision") and type(bare.net).__module__.startswith("torchvision")
    assert type(tm.net).__module__.startswith("timm")
    assert torch.equal(tm.net.fc.weight, tv.net.fc.weight)
    with pytest.raises(ModelError, match="timm has no model 'resnet81'.*resnet18"):
        load_model("timm:resnet81")
