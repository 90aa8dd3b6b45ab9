"""Run directories: atomic file writes and ``run.json``, the record of every setting and result.

Every file is written to a temporary name in the same directory and moved into place with ``os.replace``,
so a crash or an interrupt never leaves a half-written file. ``run.json`` is rewritten after every finished
item, so an interrupted run knows exactly what it finished (``"status": "partial"``) and ``--resume`` can
skip it. Apart from its ``timings`` section, ``run.json`` is the same for the same command and seed.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import OutputError, UsageError
from .naming import RUN_FILE

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp makes 0600 files, outputs get the usual 0666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``; never leaves partial files."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise OutputError(f"cannot write {path}: {why}") from None
        raise


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n").encode()


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def versions() -> dict[str, str]:
    import numpy
    import PIL
    import torch
    import torchvision

    from ..version import __version__

    out = {
        "filterscope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "cpu_threads": str(torch.get_num_threads()),
    }
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out


def check_writable(path: str | os.PathLike, *, keep: bool = False) -> Path:
    """Prove a file can be written in ``path`` before any work starts.

    Directories created for the test are removed again unless ``keep``, so a run that fails later in
    validation leaves nothing behind.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output path {path} exists and is not a directory")
    created = []
    probe = path
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"output directory {path} is not writable: {e.strerror or e}") from None
    finally:
        if not keep:
            for d in created:
                try:
                    d.rmdir()
                except OSError:
                    break
    return path


LOCK_FILE = ".lock"
_HELD: dict[str, list] = {}  # realpath → [open lock file, RunDirs of this process holding it]


def lock_dir(path: Path) -> str:
    """Take the exclusive lock of an output folder (``fcntl.flock`` on ``<path>/.lock``, non-blocking).

    Another process holding it → :class:`UsageError` (exit 2): two runs never mix their files in one
    folder. Re-entrant within one process. Returns the key to pass to :func:`unlock_dir`."""
    real = os.path.realpath(path)
    if real in _HELD:
        _HELD[real][1] += 1
        return real
    try:
        f = open(os.path.join(real, LOCK_FILE), "a+")
    except OSError as e:
        raise OutputError(f"cannot lock {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip() or "?"
        f.close()
        raise UsageError(
            f"output folder {path} is in use by another filterscope run (pid {other}); "
            "wait for it to finish or choose another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD[real] = [f, 1]
    return real


def unlock_dir(real: str) -> None:
    held = _HELD.get(real)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[real]
        held[0].close()  # closing the file releases the flock


def new_record(command: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The record a run starts with: its command and settings (as JSON gives them back), the versions, the
    command line, and empty results, files and timings."""
    return {
        "command": command,
        "status": "running",
        "settings": json.loads(json_bytes(settings)),
        "versions": versions(),
        "argv": sys.argv[1:],
        "results": {},
        "files": [],
        "timings": {},
    }


class RunDir:
    """One run's output directory and its ``run.json``.

    A fresh run removes the files an earlier run recorded in the same directory (and only those), so the
    directory never mixes outputs of different settings. With ``resume=True`` the earlier record is kept
    and must have been made with the same settings.
    """

    def __init__(self, path: str | os.PathLike, command: str, settings: dict[str, Any], *, resume: bool = False):
        self.path = Path(path)
        self.command = command
        settings = json.loads(json_bytes(settings))
        self._lock: str | None = lock_dir(check_writable(self.path, keep=True))
        previous = self._read_previous()
        if resume and previous is not None:
            if previous.get("command") != command or previous.get("settings") != settings:
                changed = sorted(
                    k
                    for k in set(settings) | set(previous.get("settings", {}))
                    if settings.get(k) != previous.get("settings", {}).get(k)
                )
                raise UsageError(
                    f"--resume: {self.path} holds a run with other settings ({', '.join(changed) or 'command'} differ)"
                )
            self.record = previous
            self.record["status"] = "running"
        else:
            if previous is not None:
                self._remove_recorded(previous)
            self.record = new_record(command, settings)
        check_writable(self.path, keep=True)

    def _read_previous(self) -> dict[str, Any] | None:
        f = self.path / RUN_FILE
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            return None

    def _remove_recorded(self, previous: dict[str, Any]) -> None:
        added = [f for entry in _added(previous).values() for f in entry.get("files", [])]
        for rel in previous.get("files", []) + added + [RUN_FILE]:
            p = (self.path / rel).resolve()
            if self.path.resolve() in p.parents and p.is_file():
                p.unlink()

    # -- files
    def file(self, rel: str) -> Path:
        return self.path / rel

    def write(self, rel: str, data: bytes) -> Path:
        atomic_write(self.path / rel, data)
        if rel not in self.record["files"]:
            self.record["files"] = sorted(self.record["files"] + [rel])
        return self.path / rel

    def write_png(self, rel: str, image) -> Path:
        from .images import png_bytes

        return self.write(rel, png_bytes(image))

    def write_figure(self, rel: str, fig) -> Path:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
        plt.close(fig)
        return self.write(rel, buf.getvalue())

    def write_text(self, rel: str, text: str) -> Path:
        return self.write(rel, text.encode())

    def discard(self, rel: str, key: str | None = None) -> None:
        """Remove a piece kept only for ``--resume`` (the file ``rel``, its result ``key``) once the run no
        longer needs it, and the folders it leaves empty."""
        p = self.path / rel
        p.unlink(missing_ok=True)
        self.record["files"] = [f for f in self.record["files"] if f != rel]
        if key is not None:
            self.record["results"].pop(key, None)
        root = self.path.resolve()
        for d in p.resolve().parents:
            if d == root or root not in d.parents or any(d.iterdir()):
                break
            d.rmdir()

    # -- record
    def done(self, key: str) -> bool:
        return key in self.record["results"]

    def result(self, key: str, value: dict[str, Any]) -> None:
        self.record["results"][key] = value
        self.save()

    def save(self) -> None:
        # results in a natural order (layer, then channel number) whatever order they finished in
        self.record["results"] = dict(sorted(self.record["results"].items(), key=lambda kv: _natural(kv[0])))
        atomic_write(self.path / RUN_FILE, json_bytes(self.record))

    def finish(self, status: str = "complete", **extra: Any) -> Path:
        self.record["status"] = status
        self.record.update(extra)
        self.save()
        self.release()
        return self.path / RUN_FILE

    def release(self) -> None:
        """Give up the folder's lock (done by :meth:`finish`; also when the process ends)."""
        if getattr(self, "_lock", None) is not None:
            unlock_dir(self._lock)
            self._lock = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


# ---------------------------------------------------------------- files added to a finished run

ADDED = "added"  # run.json key: job name → the record of a job that added files to the run (evaluate)


def _added(record: dict[str, Any]) -> dict[str, dict]:
    added = record.get(ADDED)
    return {k: v for k, v in added.items() if isinstance(v, dict)} if isinstance(added, dict) else {}


def read_run(path: str | os.PathLike, adding: str) -> dict[str, Any]:
    """The record of the complete run in ``path`` that the job ``adding`` adds files to; a
    :class:`UsageError` (nothing written) when ``path`` is no folder, holds no run, or an unfinished one."""
    path = Path(path)
    rec_file = path / RUN_FILE
    if not path.exists():
        raise UsageError(f"{path} is not a filterscope run directory (no such folder)")
    if not path.is_dir():
        raise UsageError(f"{path} is not a filterscope run directory (not a folder)")
    if not rec_file.is_file():
        raise UsageError(f"{path} is not a filterscope run directory (no run.json)")
    try:
        record = json.loads(rec_file.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{rec_file} is not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("command"), str):
        raise UsageError(f"{rec_file} is not the record of a filterscope run")
    status = record.get("status")
    if status != "complete":
        then = "; finish it with --resume first" if status == "partial" else ""
        raise UsageError(
            f"{path} holds a {status or 'unfinished'} {record['command']} run: {adding} needs a complete one{then}"
        )
    return record


class AddedRun(RunDir):
    """A job that adds files to a complete run (``evaluate``): its files are written atomically next to the
    run's own, and its record — the usual shape: settings, versions, files, results, timings, status — is
    ``run.json``'s ``added.<command>`` entry, so the run's record of its own job is untouched. The folder is
    locked while it writes; the files of an earlier entry of the same job are removed first."""

    def __init__(self, path: str | os.PathLike, command: str, settings: dict[str, Any]):
        self.path = Path(path)
        self.command = command
        self._lock = None
        read_run(self.path, command)  # refused before the lock file is made
        self._lock = lock_dir(self.path)
        self.host = read_run(self.path, command)  # again, under the lock
        previous = _added(self.host).get(command)
        if previous is not None:
            own = set(self.host.get("files", []))
            self._remove_recorded({"files": [f for f in previous.get("files", []) if f not in own]})
        self.record = new_record(command, settings)
        self.host[ADDED] = {**_added(self.host), command: self.record}

    def _remove_recorded(self, previous: dict[str, Any]) -> None:
        for rel in previous.get("files", []):  # never the run's own run.json
            p = (self.path / rel).resolve()
            if self.path.resolve() in p.parents and p.is_file():
                p.unlink()

    def save(self) -> None:
        self.record["results"] = dict(sorted(self.record["results"].items(), key=lambda kv: _natural(kv[0])))
        atomic_write(self.path / RUN_FILE, json_bytes(self.host))


class MemoryRun(RunDir):
    """A run without a folder (a job run in memory from Python, ``run_job(..., in_memory=True)``): the same
    record as a :class:`RunDir`'s, kept in memory, and the bytes a job writes while it computes kept in
    :attr:`files` (name → bytes); nothing touches the disk, there is no lock and nothing to resume."""

    def __init__(self, command: str, settings: dict[str, Any]):
        self.path = None  # type: ignore[assignment]
        self.command = command
        self._lock = None
        self.files: dict[str, bytes] = {}
        self.record = new_record(command, settings)

    def file(self, rel: str) -> Path:
        raise OutputError(f"{self.command} ran in memory: it has no folder to read {rel} from")

    def write(self, rel: str, data: bytes) -> Path:
        self.files[rel] = bytes(data)
        if rel not in self.record["files"]:
            self.record["files"] = sorted(self.record["files"] + [rel])
        return Path(rel)

    def discard(self, rel: str, key: str | None = None) -> None:
        self.files.pop(rel, None)
        self.record["files"] = [f for f in self.record["files"] if f != rel]
        if key is not None:
            self.record["results"].pop(key, None)

    def save(self) -> None:
        self.record["results"] = dict(sorted(self.record["results"].items(), key=lambda kv: _natural(kv[0])))

    def finish(self, status: str = "complete", **extra: Any) -> None:  # type: ignore[override]
        self.record["status"] = status
        self.record.update(extra)
        self.save()
