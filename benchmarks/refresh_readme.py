#!/usr/bin/env python
"""Developer script: rewrite the README's "Performance" section from a ``bench.json``.

``aghmn-fast bench`` never edits the README; after a full run whose results are to be
published (copied under ``benchmarks/results/<machine>/`` and committed), run::

    python benchmarks/refresh_readme.py benchmarks/results/<machine>/bench.json [--readme README.md]

Only the text between the markers ``<!-- bench:start -->`` and ``<!-- bench:end -->`` changes
(the section is inserted before "## License" when the markers are missing). The report and the
first plot are linked relative to the README, from the folder that holds the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from aghmn_fast.bench import report  # noqa: E402


def refresh(bench_json: str, readme: str) -> str:
    """Rewrite ``readme``'s bench section from ``bench_json``; return the section written."""
    with open(bench_json) as f:
        record = json.load(f)
    if record.get("format") != "aghmn_fast.bench.v1":
        raise ValueError(f"{bench_json} is not an aghmn-fast bench record")
    folder = os.path.dirname(os.path.abspath(bench_json))
    base = os.path.dirname(os.path.abspath(readme))

    def rel(path: str) -> str:
        return os.path.relpath(path, base).replace(os.sep, "/")

    md = os.path.splitext(os.path.abspath(bench_json))[0] + ".md"
    plots = [p for p in record.get("plots", []) if os.path.exists(os.path.join(folder, p))]
    plot = rel(os.path.join(folder, plots[0])) if plots else None
    section = report.readme_section(record, rel(md), plot)
    report.update_readme(readme, section)
    return section


def main(argv: Optional[List[str]] = None) -> int:
    """Command line (see the module doc); exit 2 with one line on a bad argument."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench_json", help="a bench.json written by aghmn-fast bench")
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    args = p.parse_args(argv)
    try:
        refresh(args.bench_json, args.readme)
    except (OSError, ValueError, KeyError) as exc:
        print(f"refresh_readme: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print("updated", args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
