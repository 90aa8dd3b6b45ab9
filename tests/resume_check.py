"""What the ``--resume`` tests of circuit and diff share: output hashes, the count of kept pieces and a spy
on every piece kept (an interrupted run keeps each finished piece at once, so one kept twice was redone)."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from filterscope.jobs.contract import RunContext


def hashes(folder) -> dict[str, str]:
    """sha256 of every output file but run.json (whose timings differ from run to run): of the arrays of an
    ``.npz`` (a zip whose entries carry the time they were written), of a report without its timings."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in ("run.json", ".lock"):
            if p.suffix == ".npz":
                with np.load(p) as z:
                    data = b"".join(k.encode() + z[k].tobytes() for k in sorted(z.files))
            elif p.name == "report.html":
                data = re.sub(rb"timings: [^<]*", b"", p.read_bytes())
            else:
                data = p.read_bytes()
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def kept_count(out) -> int:
    f = out / "run.json"
    return sum(k.startswith("resume:") for k in json.loads(f.read_text())["results"]) if f.is_file() else 0


def stop_at(out, n: int):
    """A ``should_stop`` that fires once the run in ``out`` has kept ``n`` pieces (earlier runs' included)."""
    return lambda: kept_count(out) >= n


def spy_keeps(monkeypatch) -> list[str]:
    """Every piece kept from now on, by name, in order (a piece kept twice was computed twice)."""
    names: list[str] = []
    keep = RunContext.keep

    def spy(self, name, arrays, meta=None):
        names.append(name)
        return keep(self, name, arrays, meta)

    monkeypatch.setattr(RunContext, "keep", spy)
    return names
