"""Rendering one objective given in Python or as text (``filterscope render --objective``) into a run directory:
the ``render`` job (:mod:`~filterscope.jobs.channels`) on its objective path (:mod:`~filterscope.jobs.objective`,
where :func:`objective_for` reads the text form against a model)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..models.model import Model
from ..optvis.objectives import Objective
from .channels import JOB
from .contract import JobResult, run_job
from .objective import RenderedObjective, objective_for, target_layer

__all__ = ["RenderedObjective", "objective_for", "render_objective", "target_layer"]


def render_objective(
    model: Model,
    objective: Objective | str,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> JobResult:
    """Render one objective (an :class:`Objective` or its text) into ``out`` with the ``render`` job (options:
    ``method`` or ``settings``, ``seed``, …): its PNG (named for its target, e.g. ``logit_0967.png``, else
    ``objective.png``) and ``run.json``; ``data`` is the :class:`RenderedObjective`. A stopped render ends
    ``partial``; a failed one raises :class:`~filterscope.errors.RenderError` after recording it."""
    return run_job(
        JOB, model, out=out, resume=resume, progress=progress, should_stop=should_stop, objective=objective, **options
    )
