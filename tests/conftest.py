import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("FILTERSCOPE_DEBUG", "0")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model():
    """The real offline model (efficientnet_lite0 from its PyPI package)."""
    from filterscope.models import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def coffee():
    from filterscope.images import load_image, sample_image_path

    return load_image(sample_image_path())


def run_cli(*args, cwd=None, timeout=600, env=None):
    """Run the real console entry point in a subprocess; returns CompletedProcess."""
    e = dict(os.environ)
    e.pop("FILTERSCOPE_DEBUG", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "filterscope.cli", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
