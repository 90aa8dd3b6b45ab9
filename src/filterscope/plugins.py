"""Plugins: packages add objectives, parameterisations and model loaders through Python entry points.

A package declares, e.g. in its ``pyproject.toml``::

    [project.entry-points."filterscope.objectives"]
    halfchan = "mypkg.objs:halfchan"

and the factory ``mypkg.objs:halfchan`` is registered under the entry point's name the first time the
registry is consulted, so ``--objective "halfchan(blocks.5, 3, 0.5)"`` works from the CLI. The groups are
``filterscope.objectives``, ``filterscope.params`` and ``filterscope.models``. A plugin that fails to
import is reported in one line and skipped; names registered in code win over entry points.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Any

_loaded: set[str] = set()


def load_group(group: str, registry: dict[str, Any], register=None) -> None:
    """Register every entry point of ``group`` into ``registry`` (once per process).

    ``register(name, obj)`` does the registering when a registry needs more than ``registry[name] = obj``.
    """
    if group in _loaded:
        return
    _loaded.add(group)
    for ep in entry_points(group=group):
        if ep.name in registry:
            continue
        try:
            obj = ep.load()
        except Exception as e:
            warnings.warn(
                f"plugin {ep.name!r} ({ep.value}) in {group} failed to load: {type(e).__name__}: {e}", stacklevel=2
            )
            continue
        if register is not None:
            register(ep.name, obj)
        else:
            registry[ep.name] = obj


def reset() -> None:
    """Forget which groups were loaded (tests install plugins at run time)."""
    _loaded.clear()
