"""Execute the notebooks under examples/ top to bottom (nbclient) and fail on any error cell.

``python scripts/run_notebooks.py`` runs every ``examples/*.ipynb`` in a fresh kernel and prints each one's
time; ``--write`` stores the outputs back into the files (how the committed outputs were made);
``--budget S`` fails when all of them together take longer than S seconds (CI: 300).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: examples/*.ipynb")
    ap.add_argument("--write", action="store_true", help="write the executed outputs back into the files")
    ap.add_argument("--budget", type=float, default=None, help="fail above this many seconds in total")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args()
    paths = args.notebooks or sorted((ROOT / "examples").glob("*.ipynb"))
    total, failed = 0.0, False
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        t0 = time.perf_counter()
        try:
            client.execute()
        except Exception as e:  # an error cell, a cell timeout, a dead kernel
            failed = True
            print(f"{path.name}: {type(e).__name__}\n{str(e)[-2000:]}", file=sys.stderr)
        dt = time.perf_counter() - t0
        total += dt
        errors = [
            c for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
        ]
        failed |= bool(errors)
        print(f"{path.name}: {dt:.1f} s, {len(errors)} error cells")
        if args.write and not errors:
            nbformat.write(nb, path)
    print(f"total: {total:.1f} s")
    if args.budget is not None and total > args.budget:
        print(f"notebooks took {total:.0f} s, over the budget of {args.budget:.0f} s", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
