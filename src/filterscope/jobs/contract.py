"""The job contract: every job (boost, render, inspect, explain, concepts, circuit, tuning, …) runs inside one
:class:`RunContext`, which owns the output folder, the record, progress, interruption and resume.

A job validates its arguments first (raising :class:`~filterscope.errors.UsageError`, so the API refuses
what the CLI refuses and nothing is written), then::

    with open_run("concepts", out, settings, resume=resume, progress=progress, should_stop=should_stop) as ctx:
        ...                                   # ctx.run writes files atomically, ctx.run.result() records items
        if ctx.stop():                        # SIGINT/SIGTERM (or the caller's should_stop) asked to stop
            ctx.mark_partial(done, total)     # finished work is kept; status "partial"
        ctx.data = the_job_result_object
    return ctx.result                         # JobResult(run_dir, status, record, data)

On leaving the block the record gets ``timings.total_s`` and its status (``complete`` or ``partial``); an
exception after files were written marks it ``failed`` with the one-line error (before any, nothing is
written), and the folder's lock is always released. The CLI turns a
``partial`` result into exit 130 (:meth:`JobResult.raise_if_partial`).

Every job is declared once as a :class:`Job` and run by :func:`run_job`; the job's function in the API
(``fs.inspect``, ``fs.tuning``, …: one name per job) calls it and returns its :class:`JobResult`, whose
``data`` is the job's own object (an ``Inspection``, a ``Tuning``, …).

**In memory** (``run_job(job, model, ..., in_memory=True)``, what ``fs.inspect(model, image)`` and the other
notebook jobs do when given no ``out``): the same validate → compute steps on a :class:`RunContext` whose run
is a :class:`~filterscope.outputs.rundir.MemoryRun`: no folder, nothing written to disk, and the ``write``
step (the job's JSON, figures and report) is skipped. The result has ``run_dir=None`` and a record of the
same shape (``command``, ``settings``, ``status``, ``results``, ``timings``). Nothing is kept for
``--resume`` (there is no folder to resume), and without ``should_stop`` the run never asks to stop: Ctrl-C
raises ``KeyboardInterrupt`` as in any Python call.

**Attributes of the data**: a :class:`JobResult` forwards an attribute it does not have itself to its
``data``, so ``fs.inspect(model, image).means`` is ``.data.means``. Its own fields win: ``run_dir``,
``status``, ``record`` (the ``run.json`` dict; a job object's ``record()`` method is ``.data.record()``),
``data`` and ``interruption``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from ..errors import FilterscopeError, Interrupted, UsageError, closest
from ..outputs.rundir import AddedRun, MemoryRun, RunDir, read_run
from .interrupt import graceful_stop


@dataclass
class JobResult:
    """What every job returns: where it wrote (``None`` for a run in memory), how it ended, its ``run.json``
    record and its own result ``data``. Other attributes are the data's (see the module docstring)."""

    run_dir: Path | None
    status: str  # complete | partial
    record: dict
    data: Any = None
    interruption: str | None = None  # the one-line message for a partial run

    def raise_if_partial(self) -> None:
        """Raise :class:`Interrupted` (exit 130 from the CLI) when the run was stopped before the end."""
        if self.status == "partial":
            where = f"partial results kept in {self.run_dir}" if self.run_dir is not None else "nothing was written"
            raise Interrupted(self.interruption or f"interrupted: {where}")

    def __getattr__(self, name: str) -> Any:
        """The data's attribute ``name`` (``result.means`` is ``result.data.means``): called only for names
        the result itself does not have."""
        if name.startswith("__") or "data" not in self.__dict__:  # copy/pickle probes, a half-built object
            raise AttributeError(name)
        data = self.__dict__["data"]
        try:
            return getattr(data, name)
        except AttributeError:
            kind = type(data).__name__
            why = f"nor has its data ({kind})" if data is not None else f"and the {self.status} run has no data"
            raise AttributeError(f"JobResult has no attribute {name!r}, {why}") from None


class RunContext:
    """One job run: its :class:`~filterscope.outputs.rundir.RunDir`, stop flag, progress bars and timings."""

    def __init__(self, run: RunDir, stop: Callable[[], bool], progress: bool, resume: bool = False) -> None:
        self.run = run
        self.resume = resume  # finishing an earlier run of the folder: keep what it recorded
        self.started = time.perf_counter()
        self.stop = stop
        self.show_progress = progress
        self.data: Any = None
        self.status = "complete"
        self.interruption: str | None = None
        self.result: JobResult | None = None
        # an error that :func:`run_job` raises once the run is recorded and closed (its files are kept), e.g.
        # a RenderError when every render failed
        self.error: FilterscopeError | None = None
        # called as on_progress(desc, done, total) by every bar's update: how a caller without a terminal
        # (the explorer's workers) follows the job
        self.on_progress: Callable[[str, int, int], None] | None = None

    @property
    def path(self) -> Path | None:
        """The run folder; ``None`` for a run in memory (:class:`~filterscope.outputs.rundir.MemoryRun`)."""
        return self.run.path

    @property
    def record(self) -> dict:
        return self.run.record

    def progress(self, total: int, desc: str, unit: str = "item", initial: int = 0):
        """A tqdm bar over ``total`` items (silent when the job runs without progress)."""
        from tqdm import tqdm

        if self.on_progress is None:
            return tqdm(
                total=total, initial=initial, desc=desc, unit=unit, disable=not self.show_progress, dynamic_ncols=True
            )
        report = self.on_progress

        class Reported(tqdm):
            def update(self, n: float | None = 1) -> bool | None:
                out = super().update(n)
                report(desc, int(self.n), int(self.total or 0))
                return out

        # a bar that counts even when it is not shown (tqdm's disabled bars do not count)
        file = None if self.show_progress else open(os.devnull, "w")  # closed with the bar
        bar = Reported(total=total, initial=initial, desc=desc, unit=unit, file=file, dynamic_ncols=True)
        if file is not None:
            bar.close = _closing(bar.close, file)
        report(desc, initial, total)
        return bar

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record the block's wall time as ``timings[<name>_s]``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.record["timings"][f"{name}_s"] = round(time.perf_counter() - t, 3)

    def elapsed(self) -> float:
        """Seconds since the run folder was opened."""
        return time.perf_counter() - self.started

    def mark_partial(self, done: int, total: int, what: str = "items", resumable: bool = True) -> None:
        """The run was stopped with ``done`` of ``total`` finished: it ends ``partial`` with that message."""
        self.status = "partial"
        if self.path is None:
            self.interruption = f"interrupted: {done} of {total} {what} finished (in memory; nothing was written)"
            return
        then = "run the same command with --resume to finish" if resumable else "rerun it to finish (it starts over)"
        self.interruption = f"interrupted: {done} of {total} {what} finished and kept in {self.path}; {then}"

    # -- pieces kept for --resume
    def keep(self, name: str, arrays: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
        """Keep a finished piece of the work for ``--resume``: numpy ``arrays`` exactly and a JSON-able
        ``meta``, in ``resume/<name>.npz``, recorded as the result ``resume:<name>`` (so the record says what
        is finished). Kept pieces are removed when the run completes (:func:`run_job`). A run in memory keeps
        nothing (there is no folder to resume)."""
        if self.path is None:
            return
        import io
        import json

        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()}, _meta=np.array(json.dumps(meta or {})))
        rel = f"{KEPT}/{name}.npz"
        self.run.write(rel, buf.getvalue())
        self.run.result(f"{KEPT}:{name}", {"file": rel})

    def kept(self, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(arrays, meta)`` of the piece ``name`` an interrupted earlier run of the folder kept (only when
        resuming), else ``None``."""
        import io
        import json

        import numpy as np

        rel = f"{KEPT}/{name}.npz"
        if not self.resume or not self.run.done(f"{KEPT}:{name}") or not self.run.file(rel).is_file():
            return None
        with np.load(io.BytesIO(self.run.file(rel).read_bytes()), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "_meta"}
            meta = json.loads(str(z["_meta"]))
        return arrays, meta

    def drop_kept(self) -> None:
        """Remove every piece kept for ``--resume`` (the run no longer needs them)."""
        for key in [k for k in self.record["results"] if k.startswith(f"{KEPT}:")]:
            self.run.discard(self.record["results"][key]["file"], key)


KEPT = "resume"  # the folder (and result-key prefix) of the pieces a run keeps for --resume


def _closing(close: Callable[[], None], file) -> Callable[[], None]:
    def both() -> None:
        try:
            close()
        finally:
            file.close()

    return both


@contextlib.contextmanager
def open_run(
    command: str,
    out: str | Path,
    settings: dict[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    into: bool = False,
) -> Iterator[RunContext]:
    """Open ``out`` as the run folder of ``command`` (locked, earlier outputs of the folder removed unless
    ``resume``), record ``settings``, and close it with its status and total time; see the module docstring.
    ``into``: ``out`` is a complete run that ``command`` adds files to (:class:`~..outputs.rundir.AddedRun`).

    Without ``should_stop``, SIGINT/SIGTERM ask the job to stop after the current step (in the main thread)."""
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if should_stop is None:
            should_stop = stack.enter_context(graceful_stop(quiet=not progress))
        run = AddedRun(out, command, settings) if into else RunDir(out, command, settings, resume=resume)
        ctx = RunContext(run, should_stop, progress, resume)
        try:
            yield ctx
        except BaseException as e:
            try:
                if run.record["files"] or run.record["results"]:  # something to describe: say how it ended
                    run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
                    reason = e.message if isinstance(e, FilterscopeError) else type(e).__name__
                    run.finish("failed", error=reason)
            finally:
                run.release()
            raise
        run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        run.finish(ctx.status)
        ctx.result = JobResult(run.path, ctx.status, run.record, ctx.data, ctx.interruption)


@contextlib.contextmanager
def memory_run(
    command: str,
    settings: dict[str, Any],
    *,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[RunContext]:
    """:func:`open_run` without a folder: a :class:`RunContext` on a :class:`~..outputs.rundir.MemoryRun`
    (see the module docstring); on leaving, the record gets ``timings.total_s`` and its status, and
    ``ctx.result`` is the :class:`JobResult` with ``run_dir=None``."""
    t0 = time.perf_counter()
    run = MemoryRun(command, settings)
    ctx = RunContext(run, should_stop if should_stop is not None else _never, progress)
    yield ctx
    run.record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    run.finish(ctx.status)
    ctx.result = JobResult(None, ctx.status, run.record, ctx.data, ctx.interruption)


def _never() -> bool:
    return False


# ---------------------------------------------------------------- one shape for every job


def opt(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A field of a job's request: its default, its help text and how the command line shows it.

    ``cli`` keys: ``argument`` (positional), ``flag`` (the option's name when not ``--field-name``),
    ``cli_default`` (the command line's default when it differs from the API's), ``min`` (lowest int),
    ``choices`` (allowed strings), ``channels`` (a channel list such as ``0-7,12``), ``metavar``,
    ``optional`` (an argument that may be left out), ``names`` (comma-separated names of a registry:
    ``"method"``), ``registry`` (one name of a registry: ``"method"``, ``"param"``, ``"transforms"``,
    ``"optimizer"``, ``"precision"``), ``positive`` (a finite number > 0), ``max`` (highest int, with ``min``),
    ``required`` (an option the command line asks for although the API has a default),
    ``cli=False`` (an option of the API alone), ``load`` (a model named by the option: the command line
    loads it like ``--model``, with its ``--device`` and ``--trust-checkpoint``)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class Job:
    """One job, declared once: the command line, the Python API and the explorer all run it with
    :func:`run_job`, on the same three steps.

    - ``request``: a dataclass of the job's own arguments (fields made with :func:`opt`); the CLI's options
      are made from it. A field typed ``Model`` is a second model (the CLI gives it ``-b`` twins of the
      model options).
    - ``validate(model, request) -> plan``: resolve the layer, the images, the settings once, and refuse bad
      input with a :class:`~filterscope.errors.UsageError` before anything is written. The plan has a
      ``settings`` dict: what ``run.json`` records.
    - ``compute(ctx, plan) -> data``: the work; it checks ``ctx.stop()``, shows ``ctx.progress(...)``, may
      write finished pieces as it goes (``ctx.run.write``) and marks the run partial when stopped.
    - ``write(ctx, data)``: the job's files (JSON, figures, report) from ``data``.
    - ``summary(result) -> lines``: what the command line prints after the run.
    """

    name: str
    request: type
    validate: Callable[..., Any]
    compute: Callable[[RunContext, Any], Any]
    write: Callable[[RunContext, Any], None]
    summary: Callable[[JobResult], list[str]] | None = None
    help: str = ""
    renders: bool = False  # it renders: the command line adds the render cache's options
    resumable: bool = False  # --resume finishes an interrupted run
    precheck: Callable[[Any], None] | None = None  # cheap checks of the request before a model is loaded
    # the request field naming a complete run folder the job adds its files to (no run folder of its own;
    # the model defaults to the one the run records): evaluate
    into_run: str | None = None
    json: Callable[[JobResult], Any] | None = None  # what --json prints (default: the job's record)

    def make_request(self, request: Any = None, **fields: Any) -> Any:
        """The job's request from a request object or keyword fields (an unknown field is a usage error)."""
        if request is not None:
            if fields:
                request = replace(request, **fields)
            return request
        names = {f.name for f in dataclass_fields(self.request)}
        unknown = sorted(set(fields) - names)
        if unknown:
            hint = closest(unknown[0], names)
            raise UsageError(f"{self.name} has no option {unknown[0]!r}" + (f" ({hint})" if hint else ""))
        return self.request(**fields)


def run_job(
    job: Job,
    model: Any,
    request: Any = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    in_memory: bool = False,
    **fields: Any,
) -> JobResult:
    """Run ``job`` on ``model``: validate → compute → write in the run folder ``out`` (default
    ``filterscope-out/<job>``); returns the :class:`JobResult` whose ``data`` is the job's own object.

    The request is ``request`` or built from ``fields``. Bad input raises before anything is written.
    ``on_progress(desc, done, total)``: called on every step of the job's progress bars (shown or not).
    ``in_memory``: validate → compute only, no folder and no files (:func:`memory_run`; ``out``, ``resume``
    and a job ``into_run`` are refused); ``run_dir`` is ``None``.

    A job ``into_run`` writes into the run folder its request names (not ``out``); ``model=None`` there
    means the model that run recorded (:func:`recorded_model`). Pieces kept for ``--resume``
    (:meth:`RunContext.keep`) are removed once the run is complete."""
    from ..outputs.naming import default_out

    req = job.make_request(request, **fields)
    if in_memory:
        if job.into_run is not None:
            raise UsageError(f"{job.name} adds files to a run folder: it cannot run in memory")
        if out is not None:
            raise UsageError(f"{job.name} in memory writes no files: it takes no out")
        if resume:
            raise UsageError("resume needs out: the run folder to finish")
        if job.precheck is not None:
            job.precheck(req)
        plan = job.validate(model, req)
        with memory_run(job.name, plan.settings, progress=progress, should_stop=should_stop) as ctx:
            ctx.on_progress = on_progress
            ctx.data = job.compute(ctx, plan)
        if ctx.error is not None:
            raise ctx.error
        return ctx.result
    if resume and not job.resumable:
        raise UsageError(f"{job.name} cannot resume; rerun it")
    if job.into_run is not None:
        folder = getattr(req, job.into_run)
        if folder is None:
            raise UsageError(f"{job.name} needs the run folder to add its files to")
        if out is not None:
            raise UsageError(f"{job.name} writes into the run folder {folder}; it takes no out")
        read_run(folder, job.name)
        out = folder
    if job.precheck is not None:
        job.precheck(req)
    if model is None and job.into_run is not None:
        model = recorded_model(out)
    plan = job.validate(model, req)
    with open_run(
        job.name,
        out or default_out(job.name),
        plan.settings,
        resume=resume,
        progress=progress,
        should_stop=should_stop,
        into=job.into_run is not None,
    ) as ctx:
        ctx.on_progress = on_progress
        data = job.compute(ctx, plan)
        job.write(ctx, data)
        ctx.data = data
        if ctx.status == "complete":
            ctx.drop_kept()
    if ctx.error is not None:
        raise ctx.error
    return ctx.result


def recorded_model(run_dir: str | Path, *, device: str = "auto", trust_checkpoint: bool = False, **given: Any) -> Any:
    """The model the run in ``run_dir`` was made with, loaded again from its ``run.json`` (registry name or
    spec, weights file, input size, channels, normalisation); ``given`` overrides those (``weights``,
    ``in_channels``, ``input_size``, ``mean``, ``std``)."""
    from ..models import load_model

    rec_file = Path(run_dir) / "run.json"
    try:
        m = read_run(run_dir, "this job")["settings"]["model"]
        spec = m.get("spec") or m["name"]
    except (KeyError, TypeError, AttributeError):
        raise UsageError(f"{rec_file} does not record the model it was made with") from None
    opts: dict[str, Any] = {k: m.get(k) for k in ("in_channels", "input_size")}
    opts.update({k: tuple(m[k]) if m.get(k) else None for k in ("mean", "std")})
    opts["weights"] = m.get("weights_file")
    opts.update({k: v for k, v in given.items() if v is not None})
    opts = {k: v for k, v in opts.items() if v is not None}
    return load_model(spec, trust_checkpoint=trust_checkpoint, device=device, **opts)
