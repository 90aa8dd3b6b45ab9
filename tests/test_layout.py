"""The package's shape: no import cycles, and the public names importable from ``filterscope``."""

import subprocess
import sys

from conftest import ROOT

import filterscope


def test_no_import_cycles():
    r = subprocess.run([sys.executable, str(ROOT / "scripts/check_imports.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert "0 import cycles" in r.stdout


def test_public_api_names():
    for name in filterscope.__all__:
        assert getattr(filterscope, name) is not None, name
    assert callable(filterscope.compare) and callable(filterscope.render_objective)
