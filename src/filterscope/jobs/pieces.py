"""Finished pieces of a job's work, kept for ``--resume`` when the job runs in a run folder.

A job's compute functions are also called without a run (the explorer's workers, the API without ``out``);
:class:`Pieces` lets them keep and take back pieces the same way in both cases: with a
:class:`~filterscope.jobs.contract.RunContext` each piece goes to ``resume/<name>.npz``
(:meth:`RunContext.keep`, removed once the run completes) and, resuming, comes back exactly; without one
nothing is kept and nothing is found. :func:`bar` is the matching progress bar (the run's, else a plain tqdm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .contract import RunContext


class Pieces:
    """``get(name)`` → ``(arrays, meta)`` an interrupted earlier run kept, or None; ``put(name, arrays, meta)``
    keeps a finished piece. Both do nothing without a run (``ctx=None``)."""

    def __init__(self, ctx: RunContext | None) -> None:
        self.ctx = ctx

    def get(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        return self.ctx.kept(name) if self.ctx is not None else None

    def put(self, name: str, arrays: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
        if self.ctx is not None:
            self.ctx.keep(name, arrays, meta)


def png_array(png: bytes | None) -> np.ndarray:
    """PNG bytes as a uint8 array (how a piece keeps them); empty for None."""
    return np.frombuffer(png or b"", dtype=np.uint8)


def bar(ctx: RunContext | None, progress: bool, total: int, desc: str, unit: str = "item", initial: int = 0):
    """The run's progress bar (followed by the explorer's workers), else a tqdm bar shown when ``progress``
    (:func:`~.activations.pass_bar` with the run's bars)."""
    from .activations import pass_bar

    return pass_bar(total, desc, progress, ctx.progress if ctx is not None else None, initial=initial, unit=unit)
