"""The CLI end to end: the main job, reproducibility, and one-line errors that write nothing."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from filterscope.cli import main

FAST = ["--steps", "6"]


def cli_inproc(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_boost_end_to_end_writes_figure_pngs_and_run_json(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = cli_inproc(capsys, "boost", "--top", 2, "--steps", 8, "--out", out, "--quiet", "--json")
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["status"] == "complete"
    for f in ["figure_boost.png", "figure_activations.png", "figure_heatmaps.png", "activations.csv", "run.json"]:
        assert (out / f).is_file(), f
    rec = json.loads((out / "run.json").read_text())
    top = [t["channel"] for t in rec["inspection"]["top"]]
    assert len(top) == 2
    for c in top:
        png = out / "bn2" / f"channel_{c:04d}.png"
        assert Image.open(png).size == (224, 224)
        r = rec["results"][f"bn2:{c}"]
        assert r["activation_after"] > r["activation_before"]
        assert r["file"] == f"bn2/channel_{c:04d}.png"
    s = rec["settings"]
    assert s["model"]["name"] == "efficientnet_lite0" and s["layer"] == "bn2" and s["seed"] == 0
    assert s["render"]["steps"] == 8 and s["method"] == "fast+steps"  # the preset and what was changed
    assert {"torch", "timm", "filterscope", "python"} <= set(rec["versions"])
    assert rec["timings"]["total_s"] > 0
    assert rec["inspection"]["predictions"][0]["class"] == 967
    csv = (out / "activations.csv").read_text().splitlines()
    assert csv[0] == "filter,mean,max,contribution" and len(csv) == 1281
    umask = os.umask(0)
    os.umask(umask)
    for f in ["run.json", "figure_boost.png", f"bn2/channel_{top[0]:04d}.png"]:  # not mkstemp's 0600
        assert (out / f).stat().st_mode & 0o777 == 0o666 & ~umask, f


@pytest.mark.slow
def test_inspect_top_filter_is_argmax_and_deterministic(model, coffee, tmp_path, capsys):
    from filterscope.jobs.inspect import inspect

    a = inspect(model, coffee, "default", top=5)
    b = inspect(model, coffee, "default", top=5)
    assert a.top[0] == int(np.argmax(a.means))
    assert a.top == b.top and np.array_equal(a.means, b.means)
    assert list(a.means[a.top]) == sorted(a.means[a.top], reverse=True)
    rc, stdout, err = cli_inproc(capsys, "inspect", "--top", 3, "--out", tmp_path / "i", "--json")
    assert rc == 0, err
    rec = json.loads(stdout)
    assert rec["inspection"]["top"][0]["channel"] == a.top[0]


def test_inspect_avgpool_takes_maps_from_its_input():
    import torchvision

    from filterscope.jobs.inspect import inspect
    from filterscope.models import load_model

    torch.manual_seed(0)
    m = load_model(torchvision.models.resnet18(weights=None))
    ins = inspect(m, torch.rand(3, 224, 224), "default", top=3)
    assert ins.layer.name == "avgpool" and ins.maps.shape == (512, 7, 7)
    assert "input of avgpool" in ins.maps_from
    assert torch.allclose(ins.maps.flatten(1).mean(1), torch.tensor(ins.means), atol=1e-5)


def test_layers_command_marks_default(capsys):
    rc, out, err = cli_inproc(capsys, "layers")
    assert rc == 0
    line = [ln for ln in out.splitlines() if "<- default" in ln]
    assert len(line) == 1 and line[0].split()[0] == "bn2"
    assert any(ln.split()[0] == "blocks.5" and "192×7×7" in ln for ln in out.splitlines()[1:])


@pytest.mark.slow
def test_same_seed_gives_identical_bytes(tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        rc, _, err = cli_inproc(
            capsys, "render", "--layer", "blocks.2", "--channels", "0-2", *FAST, "--out", tmp_path / name, "--quiet"
        )
        assert rc == 0, err
        runs.append(tmp_path / name)
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*.png"))
    assert len(files) == 4  # 3 channels + grid
    for f in files:
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes(), f
    ra, rb = (json.loads((r / "run.json").read_text()) for r in runs)
    for r in (ra, rb):
        r.pop("timings")
        r["argv"] = None
    assert ra == rb
    rc, _, _ = cli_inproc(
        capsys,
        "render",
        "--layer",
        "blocks.2",
        "--channels",
        "0",
        *FAST,
        "--seed",
        1,
        "--out",
        tmp_path / "c",
        "--quiet",
    )
    assert (tmp_path / "c/blocks.2/channel_0000.png").read_bytes() != (
        runs[0] / "blocks.2/channel_0000.png"
    ).read_bytes()


# ---------------------------------------------------------------- bad inputs


def _png_with_size(path: Path, w: int, h: int) -> None:
    """A PNG whose header declares w×h (a decompression bomb when large) with a tiny body."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    )


class Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['EVIL_MARK'], 'w').write('x')",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = Image.open(Path(__import__("filterscope").sample_image_path()))
    (d / "text.png").write_text("this is not an image\n")
    (d / "empty.jpg").write_bytes(b"")
    jpg = d / "good.jpg"
    good.save(jpg)
    (d / "truncated.jpg").write_bytes(jpg.read_bytes()[:4000])
    png = d / "good.png"
    good.save(png)
    data = bytearray(png.read_bytes())
    data[200:400] = os.urandom(200)
    (d / "corrupt.png").write_bytes(bytes(data))
    Image.new("RGB", (1, 1)).save(d / "one.png")
    _png_with_size(d / "bomb.png", 100_000, 100_000)
    (d / "folder.jpg").mkdir()
    import torchvision

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), d / "r34.pth")
    torch.save({"w": torch.zeros(1), "x": Evil()}, d / "evil.pth")
    (d / "corrupt.pth").write_bytes(b"PK\x03\x04garbage" * 50)
    (d / "not_a_dir").write_text("x")
    (d / "run_other").mkdir()
    return d


BAD = [
    # (id, args, exit code, message regex)
    ("missing image", ["boost", "{d}/nope.jpg"], 2, "image not found"),
    ("directory image", ["boost", "{d}/folder.jpg"], 2, "is a directory"),
    ("empty image", ["boost", "{d}/empty.jpg"], 2, "empty"),
    ("text renamed png", ["inspect", "{d}/text.png"], 2, "not an image"),
    ("truncated jpeg", ["boost", "{d}/truncated.jpg"], 2, "truncated or corrupt"),
    ("corrupt png", ["inspect", "{d}/corrupt.png"], 2, "truncated or corrupt|not an image"),
    ("1x1 image", ["boost", "{d}/one.png"], 2, "1×1 pixels"),
    ("bomb header", ["inspect", "{d}/bomb.png"], 2, "megapixels|decompression bomb"),
    ("unknown model", ["boost", "--model", "resnet81"], 2, "unknown model 'resnet81'.*resnet18"),
    ("unknown layer", ["boost", "--layer", "blocks.9"], 2, "no layer 'blocks.9'.*blocks"),
    ("channel too big", ["render", "--channels", "5000"], 2, "out of range"),
    ("negative channel", ["render", "--channels", "-3"], 2, "negative"),
    ("reversed range", ["render", "--channels", "9-2"], 2, "empty"),
    ("channel text", ["render", "--channels", "a-b"], 2, "cannot read channels"),
    ("zero steps", ["boost", "--steps", "0"], 2, "steps"),
    ("negative steps", ["render", "--steps", "-5"], 2, "steps"),
    ("nan lr", ["boost", "--lr", "nan"], 2, "finite"),
    ("inf lr", ["render", "--lr", "inf"], 2, "finite"),
    ("negative lr", ["boost", "--lr", "-0.1"], 2, "positive"),
    ("zero size", ["boost", "--size", "0"], 2, "at least 16"),
    ("huge size", ["render", "--size", "200000"], 2, "GiB"),
    ("negative seed", ["boost", "--seed", "-1"], 2, "seed"),
    ("zero batch", ["render", "--batch", "0"], 2, "batch"),
    ("zero top", ["boost", "--top", "0"], 2, "top"),
    ("top above channels", ["boost", "--layer", "blocks.0", "--top", "99"], 2, "more than the 16 filters"),
    ("unknown method", ["boost", "--method", "dreamy"], 2, "unknown method"),
    ("bad objective", ["render", "--objective", "blocks.5:12 -"], 2, "cannot read objective"),
    ("unknown objective", ["render", "--objective", "sharpness(3)"], 2, "unknown objective"),
    ("objective channel too big", ["render", "--objective", "blocks.5:9999"], 2, "out of range for blocks.5"),
    ("objective fractional channel", ["render", "--objective", "blocks.5:1.5"], 2, "not a whole number"),
    ("objective class too big", ["render", "--objective", "logit:5000"], 2, "class 5000 is out of range"),
    ("objective negative neuron", ["render", "--objective", "neuron(blocks.5, -3)"], 2, "out of range"),
    ("objective on logit layer", ["render", "--objective", "deepdream(logit)"], 2, "use logit:N"),
    ("inspect logit", ["inspect", "--layer", "logit"], 2, "not 'logit'"),
    ("diversity of one", ["render", "--diversity", "1"], 2, "at least 2"),
    ("objective with penalty", ["render", "--objective", "blocks.5:3", "--penalty", "0.1*tv"], 2, "whole target"),
    ("output is a file", ["boost", "--out", "{d}/not_a_dir"], 1, "not a directory"),
    ("missing weights", ["boost", "--model", "resnet18", "--weights", "{d}/none.pth"], 2, "not found"),
    ("weights of another arch", ["layers", "--model", "resnet18", "--weights", "{d}/r34.pth"], 1, "do not fit"),
    ("pickle with code", ["layers", "--model", "resnet18", "--weights", "{d}/evil.pth"], 1, "--trust-checkpoint"),
    ("corrupt weights", ["layers", "--model", "resnet18", "--weights", "{d}/corrupt.pth"], 1, "not a readable"),
    ("weights as model", ["layers", "--model", "{d}/r34.pth"], 2, "weights file, not a model"),
    ("evaluate non-run", ["evaluate", "{d}/run_other"], 2, "not a filterscope run"),
    (
        "evaluate bad images",
        ["evaluate", "{d}/run_other", "--images", "{d}/nope"],
        2,
        "not a filterscope run|not found",
    ),
    ("unknown command", ["dream"], 2, "No such command"),
    ("unknown option", ["boost", "--colour", "red"], 2, "No such option"),
]


@pytest.mark.parametrize("name,args,code,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_error_and_nothing_written(
    bad_files, tmp_path, monkeypatch, capsys, name, args, code, pattern
):
    import re

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVIL_MARK", str(tmp_path / "executed"))
    args = [a.format(d=bad_files) for a in args]
    if not any(a == "--out" for a in args) and args[0] in ("boost", "render", "inspect"):
        args += ["--out", str(tmp_path / "out")]
    before = sorted(p.name for p in bad_files.iterdir())
    rc, out, err = cli_inproc(capsys, *args)
    assert rc == code, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())  # nothing written, no empty dirs
    assert sorted(p.name for p in bad_files.iterdir()) == before
    assert not (tmp_path / "executed").exists()


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli_inproc(capsys, "render", "--layer", "blocks.1", "--channels", "0", *FAST, "--out", out, "-q")[0] == 0
    rc, _, err = cli_inproc(
        capsys, "render", "--layer", "blocks.1", "--channels", "0", "--steps", "7", "--out", out, "--resume", "-q"
    )
    assert rc == 2 and "other settings (render differ)" in err


ODD_IMAGES = {
    "gray16.png": lambda p: Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)).save(p),
    "cmyk.jpg": lambda p: Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(p),
    "rgba.png": lambda p: Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(p),
    "palette.gif": lambda p: Image.new("P", (64, 64), 3).save(p),
    "gray.jpg": lambda p: Image.new("L", (50, 70), 128).save(p),
    "animated.gif": lambda p: Image.new("RGB", (64, 64), (0, 0, 255)).save(
        p, save_all=True, append_images=[Image.new("RGB", (64, 64), (255, 0, 0))], duration=100, loop=0
    ),
}


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
def test_unusual_but_valid_images_are_read(tmp_path, name):
    from filterscope.models.inputs import load_image

    p = tmp_path / name
    ODD_IMAGES[name](p)
    if name == "animated.gif":
        with pytest.warns(UserWarning, match="first frame"):
            im = load_image(p)
        assert im.getpixel((5, 5)) == (0, 0, 255)
    else:
        im = load_image(p)
    assert im.mode == "RGB" and min(im.size) >= 16
    if name == "rgba.png":
        assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    if name == "gray16.png":
        assert im.getpixel((63, 63))[0] == 255 and im.getpixel((0, 0))[0] == 0


def test_exif_orientation_is_applied(tmp_path):
    from filterscope.models.inputs import load_image

    p = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.new("RGB", (80, 40), (10, 200, 10)).save(p, exif=exif)
    assert load_image(p).size == (40, 80)


# ---------------------------------------------------------------- interruption and resume


def _wait_for_results(run_json: Path, n: int, proc, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError("process ended before it could be interrupted")
        try:
            if len(json.loads(run_json.read_text())["results"]) >= n:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("no results appeared")


@pytest.mark.slow
def test_sigint_keeps_finished_channels_and_resume_matches_uninterrupted(tmp_path, capsys):
    """Ctrl-C on the command (a process of its own) keeps the finished channels; the resume and an uninterrupted
    run (in this process, with the same number of torch threads as that process) give the same bytes."""
    args = ["render", "--layer", "blocks.1", "--channels", "0-5", "--steps", "40", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    env.pop("FILTERSCOPE_DEBUG", None)
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "filterscope.cli", *args, "--out", str(out)], stderr=subprocess.PIPE, text=True, env=env
    )
    _wait_for_results(out / "run.json", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "partial"
    done = sorted(int(k.split(":")[1]) for k in rec["results"])
    assert 2 <= len(done) < 6
    assert sorted(int(p.stem[-4:]) for p in (out / "blocks.1").glob("channel_*.png")) == done
    assert not list(out.rglob("*.tmp"))

    rc, _, err = cli_inproc(capsys, *args, "--out", out, "--resume")
    assert rc == 0, err
    rec2 = json.loads((out / "run.json").read_text())
    assert rec2["status"] == "complete" and len(rec2["results"]) == 6
    assert set(rec2["timings"]["channel_seconds"]) >= {f"blocks.1:{c}" for c in range(6)}

    full = tmp_path / "full"
    rc, _, err = cli_inproc(capsys, *args, "--out", full)
    assert rc == 0, err
    for f in sorted(full.rglob("*.png")):
        assert f.read_bytes() == (out / f.relative_to(full)).read_bytes(), f
    a, b = (json.loads((d / "run.json").read_text()) for d in (out, full))
    for r in (a, b):
        r.pop("timings"), r.pop("argv")
    assert a == b


def test_cli_spec_is_current():
    """The shipped command-line spec (``cli_spec.json``) matches every job's request: rerun
    ``python scripts/cli_spec.py`` after changing a request (in a fresh process: no test's registrations)."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(root / "scripts" / "cli_spec.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["render", "--help"],
        ["concepts", "--bogus"],
        ["render", "--method", "nope"],
        ["dictionary", "--features", "0"],
        ["nope"],
    ],
)
def test_help_and_usage_errors_do_not_load_torch(argv):
    """``filterscope --help``, a job's ``--help`` and a usage error answer from the shipped spec: neither
    the job's module nor torch is imported (what made them take seconds)."""
    code = (
        "import sys; from filterscope.cli import main; rc = main(sys.argv[1:]); "
        "print('LOADED', sorted(m for m in ('torch', 'filterscope.jobs.channels', 'filterscope.jobs.concepts') "
        "if m in sys.modules), rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("LOADED [] "), last
    rc = int(last.split()[-1])
    assert rc == (0 if argv[-1] == "--help" else 2)
    if rc == 2:
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
