"""MkDocs hooks for the documentation site (``mkdocs.yml`` → ``hooks``).

- The benchmark tables are generated at build time from ``benchmarks/results/*.json``: a line
  ``<!-- bench:NAME -->`` in a page becomes the table of ``NAME.json`` (made by the benchmark's own
  ``markdown``/``report`` function where it has one), headed by the command that measured it, the machine
  it names and the date the result file was last committed. No number is pasted into the docs.
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- bench:([a-z_]+) -->$", re.M)

# result file → the command that writes it
COMMANDS = {
    "bench": "python benchmarks/bench_render.py",
    "bench_quick": "python benchmarks/bench_render.py --quick",
    "layout": "python benchmarks/bench_render.py --layout",
    "targets": "python benchmarks/bench_targets.py",
    "explain": "python benchmarks/bench_explain.py",
    "serve": "python benchmarks/bench_serve.py",
    "serve_guard": "python benchmarks/bench_serve_guard.py",
    "concepts": "python benchmarks/bench_concepts.py",
    "circuits": "python benchmarks/bench_circuits.py",
    "accent": "python benchmarks/bench_accent.py",
    "progress": "python benchmarks/bench_progress.py",
    "precision": "python benchmarks/bench_progress.py --precision-check",
    "anneal": (
        "python benchmarks/bench_progress.py --no-lucid --n-channels 8 --steps 32,64 --variants"
        ' "fast without annealing (before),fast (default),anneal to 0,anneal to 0.33"'
        ' --held-out "fast without annealing (before),fast (default)" --out benchmarks/results/anneal'
    ),
    "screens": "python benchmarks/bench_screens.py",
    "noise": "python benchmarks/bench_noise.py",
    "compile": "python benchmarks/bench_compile.py",
    "classes_tuning": "python benchmarks/bench_classes.py",
    "classes_benchmark": "python benchmarks/bench_classes.py --set benchmark",
}


def _bench_module(name: str):
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return __import__(name)


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


def _serve_table(res: dict) -> str:
    c20 = res["cached_20_clients"]
    rows = [
        (
            "cached page/image, 20 clients, p95",
            "≤ 100 ms",
            f"{c20['p95_ms']} ms (p50 {c20['p50_ms']} ms, {c20['requests']} requests, {c20['requests_per_s']} req/s)",
        ),
        (
            "first render at blocks.5 (fast), request → picture",
            "≤ 3 s",
            ", ".join(f"{x:.2f}" for x in res["first_render_blocks5_s"]) + " s",
        ),
        ("cached render", "≤ 0.2 s", ", ".join(f"{1000 * x:.0f}" for x in res["cached_render_s"]) + " ms"),
        ("explanation of an uploaded photo (blocks.5)", "≤ 30 s", f"{res['explanation_s']:.2f} s"),
        (
            "peak memory, server + manager + workers",
            "≤ 3 GB",
            f"PSS {res['peak_pss_gb']:.2f} GB (sum of RSS {res['peak_rss_gb']:.2f} GB)",
        ),
        ("server start (model + workers warm)", "", f"{res['startup_s']:.1f} s"),
    ]
    lines = [f"Workers: {res.get('workers', '?')}.", "", "| measure | target | measured |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def _layout_table(res: dict) -> str:
    lines = [
        f"Layer `{res['layer']}`.",
        "",
        "| layout | channels | render s | wall s | channels/min |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['layout']} | error: {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['layout']} | {r['channels']} | {r['render_s']:.1f} | {r['wall_s']:.1f} "
                f"| {r['channels_per_min']:.1f} |"
            )
    lines += ["", f"Processes against threads: {res['speedup_processes']:.2f}× the channels per second."]
    return "\n".join(lines)


def _drop_title(md: str) -> str:
    return "\n".join(line for line in md.splitlines() if not line.startswith("# "))


def _table(name: str) -> str:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark result {path} is missing (run: {COMMANDS.get(name, '?')})")
    res = json.loads(path.read_text())
    if name in ("bench", "bench_quick"):
        body = _bench_module("bench_render").markdown(res)
        body = "\n".join(line for line in body.splitlines() if not line.startswith("Machine:"))
    elif name == "targets":
        body = _bench_module("bench_targets").report(res)
        body = "\n".join(line for line in body.splitlines() if not line.startswith("Machine:"))
    elif name == "explain":
        body = _drop_title(_bench_module("bench_explain").markdown(res))
    elif name == "serve":
        body = _serve_table(res)
    elif name == "layout":
        body = _layout_table(res)
    elif name in COMMANDS:  # the benchmark's own markdown of this JSON, else the .md it wrote beside it
        module = _bench_module(Path(COMMANDS[name].split()[1]).stem)  # "python benchmarks/x.py --flag" → x
        if hasattr(module, "markdown"):
            body = _drop_title(module.markdown(res))
        elif (RESULTS / f"{name}.md").is_file():
            body = _drop_title((RESULTS / f"{name}.md").read_text())
        else:
            raise FileNotFoundError(f"benchmark result {name}: no markdown() in its script and no {name}.md")
    else:
        raise KeyError(f"no table for benchmark result {name!r}")
    head = (
        f'!!! info "`{COMMANDS[name]}`"\n'
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
