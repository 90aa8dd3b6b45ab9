"""MkDocs hooks for the documentation site (``mkdocs.yml`` → ``hooks``).

- The benchmark tables are generated at build time from ``benchmarks/results/*.json``: a line
  ``<!-- bench:NAME -->`` in a page becomes the table of ``NAME.json`` (made by ``scripts/bench_tables.py``
  from the JSON alone: the build imports no benchmark script), headed by the command that measured it, the
  machine it names and the date the result file was last committed. No number is pasted into the docs.
- ``CHANGELOG.md`` at the repository root is served as ``changelog.md``.
- The docstrings are written for Sphinx-style readers (``:func:`render```, ``>>>`` examples); in the
  generated API pages a role shows as its code name (``~pkg.mod.Name`` as ``Name``) and a ``>>>`` block as code.
- In the CLI reference, an option without a default shows "–" (mkdocs-click prints click's ``Sentinel.UNSET``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tables import TABLES  # scripts/, not benchmarks/: the docs build imports no benchmark

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- bench:([a-z_]+) -->$", re.M)


def _date(path: Path) -> str:
    """The date the result file was last committed (its measurement), else its modification date."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    if out:
        return out
    import datetime

    return datetime.date.fromtimestamp(path.stat().st_mtime).isoformat() + " (file date, not committed)"


def _machine(res: dict) -> str:
    m = res.get("machine", "not recorded")
    if isinstance(m, dict):
        return ", ".join(f"{k} {v}" for k, v in m.items())
    return str(m)


def _table(name: str) -> str:
    if name not in TABLES:
        raise KeyError(f"no table for benchmark result {name!r}")
    table, command = TABLES[name]
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark result {path} is missing (run: {command})")
    res = json.loads(path.read_text())
    # the machine is in the box's head: drop the table's own title and machine lines
    body = "\n".join(line for line in table(res).splitlines() if not line.startswith(("# ", "Machine:")))
    head = (
        f'!!! info "`{command}`"\n'
        f"    Machine: {_machine(res)}. Date: {_date(path)}. Source: `benchmarks/results/{name}.json`."
    )
    return head + "\n\n" + body.strip() + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda m: _table(m.group(1)), markdown)


ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):(<code[^>]*>)(~?)([^<]*)</code>")
DOCTEST = re.compile(r"(?:<blockquote>\s*){3}<p>(.*?)</p>\s*(?:</blockquote>\s*){3}", re.S)


def _role(m: re.Match) -> str:
    name = m.group(3).rsplit(".", 1)[-1] if m.group(2) else m.group(3)
    return f"{m.group(1)}{name}</code>"


def _doctest(m: re.Match) -> str:
    lines = "\n".join(">>> " + line for line in m.group(1).splitlines())
    return f'<div class="language-pycon highlight"><pre><code>{lines}</code></pre></div>'


def on_page_content(html: str, page, config, files) -> str:
    # mkdocs-click shows click 8.3's "no default" sentinel of flags and unset options literally
    html = html.replace("<code>Sentinel.UNSET</code>", "–")
    if "doc-object" not in html:  # only pages with generated API documentation
        return html
    return DOCTEST.sub(_doctest, ROLE.sub(_role, html))


def on_files(files, config):
    changelog = ROOT / "CHANGELOG.md"
    if changelog.is_file():
        files.append(File.generated(config, "changelog.md", content=changelog.read_text()))
    return files
