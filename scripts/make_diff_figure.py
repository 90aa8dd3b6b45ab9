"""docs/figure_diff.png: the diff of the digits CNN and its fine-tune with a planted backdoor (tests/backdoor_net.py,
seed 0: a white square at (3, 3) relabelled 7), renders included.

    python scripts/make_diff_figure.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from backdoor_net import make_pair  # noqa: E402

from filterscope.cli import main  # noqa: E402


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = make_pair(Path(tmp) / "pair", seed=0, target=7, pos=(3, 3))
        out = Path(tmp) / "diff"
        model = ["--model", f"{p.code}:Net", "--weights", str(p.weights_a), "--input-size", "24"]
        model += ["--model-b", f"{p.code}:Net", "--weights-b", str(p.weights_b), "--input-size-b", "24"]
        rc = main(["diff", str(p.images), *model, "--layer", "relu3", "--out", str(out), "--no-cache", "-q"])
        if rc:
            raise SystemExit(rc)
        shutil.copyfile(out / "figure_diff.png", ROOT / "docs" / "figure_diff.png")
        print((out / "diff.json").read_text()[:600])


if __name__ == "__main__":
    run()
