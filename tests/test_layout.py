"""The package's shape: no import cycles (type-checking imports included), and the public names importable
from ``filterscope``."""

import importlib.util
import inspect
import subprocess
import sys
import types

from conftest import ROOT

import filterscope


def test_no_import_cycles():
    r = subprocess.run([sys.executable, str(ROOT / "scripts/check_imports.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert "0 import cycles" in r.stdout
    assert "0 imports up the floors" in r.stdout


def test_import_check_refuses_an_import_up_the_floors(tmp_path, monkeypatch):
    """models < optvis < … < cli: a models module importing optvis fails the check, even only for type
    checking; the other way round passes, and a new top-level module must be given a floor."""
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts/check_imports.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    pkg = tmp_path / "filterscope"
    for sub in ("models", "optvis"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("X = 1\n")
    (pkg / "optvis" / "loop.py").write_text("from ..models.net import Y\nfrom ..errors import X\n")
    (pkg / "models" / "net.py").write_text(
        "from typing import TYPE_CHECKING\n\nY = 1\nif TYPE_CHECKING:\n    from ..optvis.loop import Z\n"
    )
    monkeypatch.setattr(check, "ROOT", tmp_path)
    assert check.floor("filterscope.models.net") < check.floor("filterscope.optvis.loop")
    assert check.main() == 1  # the upward type-checking import is also a cycle here
    (pkg / "models" / "net.py").write_text("def f():\n    from ..optvis import loop\n")
    (pkg / "optvis" / "loop.py").write_text("from ..errors import X\n")
    assert check.main() == 1  # upward only, no cycle
    (pkg / "models" / "net.py").write_text("from ..errors import X\n")
    assert check.main() == 0
    (pkg / "extra.py").write_text("")
    assert check.main() == 1  # on no floor


def test_import_check_counts_type_checking_imports(tmp_path, monkeypatch):
    """A cycle that runs only through an ``if TYPE_CHECKING:`` import is still reported (it is a layering
    dependency), and a package without cycles is reported clean."""
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts/check_imports.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("X = 1\n")
    (pkg / "a.py").write_text("from .low import X\n\n\ndef f():\n    from . import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import f\n    import pkg.low\n"
    )
    monkeypatch.setattr(check, "ROOT", tmp_path)
    modules = {"pkg", "pkg.low", "pkg.a", "pkg.b"}
    assert check.imports(pkg / "b.py", modules) == {"pkg.a", "pkg.low"}
    assert check.imports(pkg / "a.py", modules) == {"pkg.low", "pkg.b"}
    assert check.main() == 1
    (pkg / "b.py").write_text("from .low import X\n")
    assert check.main() == 0


def test_public_api_names():
    """``__all__`` is exactly the package's public names, each the object its defining module holds (not a
    stale copy), and ``from filterscope import *`` gives those names."""
    names = filterscope.__all__
    assert len(names) == len(set(names)), "duplicates in __all__"
    every = {n: getattr(filterscope, n) for n in dir(filterscope)}  # the lazy names too, each imported once asked
    public = {n for n, v in every.items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public == set(names), public ^ set(names)
    for name in names:
        obj = getattr(filterscope, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("filterscope."), name
            assert getattr(sys.modules[obj.__module__], obj.__name__) is obj, name
    star: dict = {}
    exec("from filterscope import *", star)
    assert {n for n in star if n != "__builtins__"} == set(names)
    assert callable(filterscope.compare) and callable(filterscope.render_objective)
    assert all(filterscope.get_preset(n) is filterscope.PRESETS[n] for n in filterscope.PRESETS)
    assert all(isinstance(s, filterscope.RenderSettings) for s in filterscope.PRESETS.values())
