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
import re
import sys
from typing import Dict, List, Optional

from aghmn_fast.bench import report
from aghmn_fast.bench.shapes import SHAPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def readme_section(record: Dict, report_path: str, plot_path: Optional[str]) -> str:
    """The README "Performance" section (markers included): one table of the standard shapes at
    one thread, model and streaming highlights, one plot; ``report_path`` and ``plot_path``
    relative to the README."""
    m, rows = record["machine"], record.get("ops", [])
    quick = " (quick run)" if record["config"].get("quick") else ""
    hw = f"{m['gpu']} with " if m.get("gpu") else ""
    load = m.get("load_average_at_start")
    lines = [README_START, "## Performance", "",
             f"Measured{quick} by `{record['command']}` on {hw}{m['cpu_model']} "
             f"({m['cores']} cores, {m['torch_cpu_capability']}), {m['date'][:10]}, torch "
             f"{m['torch']}" + (f", load average {load[0]:.1f} at the start" if load else "")
             + f". Full report (spreads, sweeps, two threads, notes): [{report_path}]({report_path}).",
             ""]
    if rows:
        first = min(r["threads"] for r in rows)
        std = ([s.id for s in SHAPES if any(r["shape"] == s.id for r in rows)]
               or list(dict.fromkeys(r["shape"] for r in rows)))
        lines += [f"Median microseconds per call, float32, {first} thread; `X / fused`: how many "
                  "times slower X is than the fused kernels (reference = eager step loop, "
                  "reference-compiled = the same under torch.compile, nn.GRU = oneDNN/cuDNN GRU "
                  "yardstick).", ""]
        lines += report.summary_table(rows, first, std) + [""]
    model = record.get("model") or {}
    for r in model.get("rows", []):
        if "speedup" in r:
            est = ", extrapolated" if model["extrapolated"] else ""
            ref = next(x for x in model["rows"] if x["threads"] == r["threads"]
                       and report.mode_of(x) == "reference")
            lines.append(f"- MELD training, {r['threads']} thread{'s' if r['threads'] > 1 else ''}: "
                         f"{r['step_ms']:.1f} ms/step ({r['epoch_s']:.0f} s/epoch{est}) fused vs "
                         f"{ref['step_ms']:.1f} ms/step ({ref['epoch_s']:.0f} s/epoch) reference: "
                         f"{r['speedup']:.1f}x")
    for run in (record.get("stream") or [])[:1]:
        for c in run["cases"]:
            lines.append(f"- streaming, K = {c['window']}, {run['threads']} thread: "
                         f"{c['stream']['median_ms']:.2f} ms per utterance (median) vs "
                         f"{c['reference']['median_ms']:.1f} ms re-running the model: "
                         f"{c['speedup_median']:.0f}x")
    if plot_path:
        lines += ["", f"![latency against batch and window length]({plot_path})"]
    lines += ["", README_END]
    return "\n".join(lines)


def update_readme(path: str, section: str) -> None:
    """Replace the text between the bench markers of the README at ``path`` with ``section``
    (which carries the markers); without markers, insert it before the "## License" heading
    (at the end when there is none). Nothing else of the file changes."""
    with open(path) as f:
        text = f.read()
    start, end = text.find(README_START), text.find(README_END)
    if start >= 0 and end > start:
        text = text[:start] + section + text[end + len(README_END):]
    elif start >= 0 or end >= 0:
        raise ValueError(f"{path}: only one of the markers {README_START} / {README_END} is present")
    else:
        match = re.search(r"^## License\b", text, flags=re.M)
        if match:
            text = text[:match.start()] + section + "\n\n" + text[match.start():]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


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
    section = readme_section(record, rel(md), plot)
    update_readme(readme, section)
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
