"""One error contract for the library and the CLI.

The library raises these; the CLI prints ``error: <message>`` on one line and exits with
``exit_code`` (2 for a usage error the user can fix in the command line, 1 for a failure at run time).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FilterscopeError(Exception):
    """Base class: a problem filterscope can explain in one line."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        self.message = " ".join(str(message).split())
        self.hint = hint
        super().__init__(self.message if not hint else f"{self.message} ({hint})")


class UsageError(FilterscopeError):
    """A bad argument: wrong name, out-of-range number, unusable path."""

    exit_code = 2


class ModelError(UsageError):
    """A model that cannot be named, found, downloaded or loaded."""


class CheckpointError(FilterscopeError):
    """A weights file that is corrupt, unsafe or made for another architecture."""

    exit_code = 1


class LayerError(UsageError):
    """A layer name that the model does not have, or that cannot be targeted."""


class ImageError(UsageError):
    """An input image that cannot be read or is unreasonable."""


class OutputError(FilterscopeError):
    """An output location that cannot be written."""


class RenderError(FilterscopeError):
    """A render that could not produce a usable image."""


class Interrupted(FilterscopeError):
    """The user stopped a run (SIGINT/SIGTERM); finished work was kept."""

    exit_code = 130

    @classmethod
    def kept(cls, run_dir, done: int, total: int, resumable: bool = True) -> Interrupted:
        then = "run the same command with --resume to finish" if resumable else "rerun it to finish (it starts over)"
        return cls(f"interrupted: {done} of {total} channels finished and kept in {run_dir}; {then}")


def closest(name: str, choices: Iterable[str], n: int = 3) -> str | None:
    """A 'did you mean' hint listing the closest of ``choices`` to ``name``."""
    choices = list(choices)
    near = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not near:
        near = [c for c in choices if name.lower() in c.lower()][:n]
    return ("did you mean " + ", ".join(near) + "?") if near else None
