"""Write ``src/filterscope/cli_spec.json``: every job's command-line spec (``cli_options.job_spec``).

Run it after changing a job's request (its fields, defaults, help) or adding a job; ``tests/test_cli.py``
fails while the file is out of date. ``--check`` only compares (exit 1 when it differs).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from filterscope.cli import JOBS
from filterscope.cli_options import SPEC_FILE, job_spec

PATH = Path(__file__).resolve().parents[1] / "src" / "filterscope" / SPEC_FILE


def specs() -> dict[str, dict]:
    """Every job's spec, from its module's ``JOB``."""
    return {name: job_spec(importlib.import_module(module).JOB) for name, (module, _) in sorted(JOBS.items())}


def text() -> str:
    return json.dumps(specs(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    new = text()
    if "--check" in sys.argv[1:]:
        ok = PATH.exists() and PATH.read_text(encoding="utf-8") == new
        print(f"{PATH.name}: {'current' if ok else 'out of date: run python scripts/cli_spec.py'}")
        sys.exit(0 if ok else 1)
    PATH.write_text(new, encoding="utf-8")
    print(f"wrote {PATH}")
