"""The outputs of ``aghmn-fast bench``: a JSON record, a Markdown report and PNG plots.

The package never edits the repository's README: its "Performance" section is written by the
developer script ``benchmarks/refresh_readme.py`` from a committed ``bench.json``."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from .kernels import COMPILED, VENDOR
from .shapes import SHAPES

__all__ = ["write_json", "markdown", "op_tables", "summary_table", "plot_ops", "fused_columns",
           "mode_of"]

_BASELINES = ("reference", COMPILED, VENDOR)


def write_json(path: str, record: Dict) -> str:
    """Write the record as indented JSON; returns the path."""
    with open(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=False)
        f.write("\n")
    return path


def mode_of(row: Dict) -> str:
    """A result row's compute mode (a streaming mode such as "push", or the model's "reference" /
    "fused (<backend>)"): its ``"mode"``, or ``"path"`` in records written before that key was
    renamed (issue 20: "path" also named checkpoint files)."""
    return row["mode"] if "mode" in row else row["path"]


def fused_columns(rows: Sequence[Dict]) -> List[str]:
    """The fused backends among the rows' columns (everything but the reference and baselines)."""
    return [b for b in dict.fromkeys(r["backend"] for r in rows) if b not in _BASELINES]


def _cell(row: Optional[Dict], spread: bool) -> str:
    if row is None:
        return ""
    status = row["status"]
    if status == "ok":
        text = _us(row["median_us"]) + ("†" if _noisy(row) else "")
        return f"{text} ({_us(row['p10_us'])}–{_us(row['p90_us'])})" if spread else text
    if status == "WRONG":
        return "**WRONG**"
    return "error" if status == "error" else "–"


NOISY_SPREAD = 3.0


def _noisy(row: Dict) -> bool:
    """A spread this wide means other processes took the cores during the timing."""
    return row["p90_us"] > NOISY_SPREAD * row["p10_us"]


def _us(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(rows_by_backend: Dict[str, Dict], num: str, fused: Sequence[str]) -> str:
    best = _best(rows_by_backend, fused)
    r = rows_by_backend.get(num)
    if best is None or r is None or r["status"] != "ok":
        return ""
    return f"{r['median_us'] / best['median_us']:.1f}x"


def _best(rows_by_backend: Dict[str, Dict], names: Sequence[str]) -> Optional[Dict]:
    timed = [rows_by_backend[b] for b in names
             if b in rows_by_backend and rows_by_backend[b]["status"] == "ok"]
    return min(timed, key=lambda r: r["median_us"]) if timed else None


def op_tables(rows: Sequence[Dict], spread: bool = True, threads: Optional[Sequence[int]] = None,
              shapes: Optional[Sequence[str]] = None) -> List[str]:
    """Markdown lines: one table per (op, mode); rows (shape, threads), one column per backend,
    then the eager reference, compiled reference and nn.GRU times over the fastest fused one."""
    rows = [r for r in rows if (threads is None or r["threads"] in threads)
            and (shapes is None or r["shape"] in shapes)]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fused = fused_columns(rows)
    ratios = [b for b in _BASELINES if b in backends]
    lines: List[str] = []
    for op in dict.fromkeys(r["op"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["op"] == op):
            sub = [r for r in rows if r["op"] == op and r["mode"] == mode]
            lines += [f"#### {op}, {mode}", "",
                      "| shape | threads | " + " | ".join(backends) + " | "
                      + " | ".join(f"{b} / fused" for b in ratios) + " |",
                      "|---|---:|" + "---:|" * (len(backends) + len(ratios))]
            for shape in dict.fromkeys(r["shape"] for r in sub):
                for n in dict.fromkeys(r["threads"] for r in sub if r["shape"] == shape):
                    cells = {r["backend"]: r for r in sub if r["shape"] == shape and r["threads"] == n}
                    lines.append(f"| {shape} | {n} | "
                                 + " | ".join(_cell(cells.get(b), spread) for b in backends) + " | "
                                 + " | ".join(_ratio(cells, b, fused) for b in ratios) + " |")
            lines.append("")
    return lines


def _problems(rows: Sequence[Dict]) -> List[str]:
    return [f"- {r['op']} {r['mode']} {r['shape']} threads={r['threads']} {r['backend']}: "
            f"{r['status']}: {r.get('note', '')}"
            for r in rows if r["status"] in ("WRONG", "error")]


def _skips(rows: Sequence[Dict]) -> List[str]:
    seen = dict.fromkeys(f"- {r['backend']}: {r.get('note', '')}" for r in rows
                         if r["status"] == "skipped")
    return list(seen)


def _machine_lines(m: Dict) -> List[str]:
    lines = [f"- CPU: {m['cpu_model']}, {m['cores']} cores ({m['arch']}); ISA: "
             f"{', '.join(m['isa_flags']) or 'none listed'}; torch CPU capability "
             f"{m['torch_cpu_capability']}"]
    if m.get("gpu"):
        lines.append(f"- GPU: {m['gpu']} (compute capability {m['compute_capability']}), driver "
                     f"{m['driver']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}")
    lines.append(f"- software: python {m['python']}, torch {m['torch']}, triton {m['triton']}; "
                 f"{m['os']}; aghmn_fast commit {m['git_commit']}")
    load = m.get("load_average_at_start")
    end = m.get("load_average_at_end")
    if load:
        lines.append("- load average (1/5/15 min) at start " + "/".join(f"{x:.2f}" for x in load)
                     + (", at end " + "/".join(f"{x:.2f}" for x in end) if end else ""))
    lines.append(f"- date: {m['date']}")
    return lines


def _model_lines(model: Dict) -> List[str]:
    if not model:
        return []
    if "skipped" in model:
        return ["## Model: MELD training", "", f"Skipped: {model['skipped']}.", ""]
    extra = (f" Timed on {model['dialogues_timed']} of {model['dialogues_total']} training "
             f"dialogues ({model['utterances_timed']} of {model['utterances_total']} utterances); "
             "**epoch times extrapolated** by utterance count." if model["extrapolated"] else
             f" Whole epochs of {model['dialogues_total']} dialogues.")
    lines = ["## Model: MELD training", "",
             f"{model['model']}; `aghmn_fast.training.trainer.train` (the authors' recipe), median of "
             f"{model['epochs']} epoch(s) per row.{extra}", "",
             "| threads | mode | ms / step | s / epoch | speedup |", "|---:|---|---:|---:|---:|"]
    for r in model["rows"]:
        est = " (extrapolated)" if model["extrapolated"] else ""
        lines.append(f"| {r['threads']} | {mode_of(r)} | {r['step_ms']:.2f} | {r['epoch_s']:.1f}{est} | "
                     + (f"{r['speedup']:.2f}x" if "speedup" in r else "") + " |")
    return lines + [""]


def _stream_lines(runs: Sequence[Dict]) -> List[str]:
    if not runs:
        return []
    lines = ["## Streaming", "",
             "Per-utterance latency of the streaming recognizer (one conversation, one utterance "
             "per push) against re-running the model on the dialogue so far (the reference path); "
             "`push_many` rounds of one utterance for each of N live conversations (after K "
             "untimed rounds in a full run, so every window is full). \"full windows\": the "
             "pushes of utterances with K earlier ones (the most work per push).", "",
             "| threads | K | stream median (p99) ms | full windows median (p99) ms | "
             "reference median (p99) ms | speedup | concurrent N | ms / round | utterances / s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        for c in run["cases"]:
            s, ref, con = c["stream"], c["reference"], c["concurrent"]
            full = s.get("full_window")
            full_text = f"{full['median_ms']:.3f} ({full['p99_ms']:.2f})" if full else "-"
            lines.append(f"| {run['threads']} | {c['window']} | {s['median_ms']:.3f} "
                         f"({s['p99_ms']:.2f}) | {full_text} | {ref['median_ms']:.2f} ({ref['p99_ms']:.2f}) | "
                         f"{c['speedup_median']:.1f}x | {con['conversations']} | "
                         f"{con['round_median_ms']:.1f} | {con['utterances_per_s']:.0f} |")
    return lines + [""]


def markdown(record: Dict) -> str:
    """The full report of one run as Markdown."""
    m, rows = record["machine"], record.get("ops", [])
    quick = " (quick run: few shapes and repeats)" if record["config"].get("quick") else ""
    lines = [f"# aghmn_fast benchmark: {record['slug']}{quick}", ""] + _machine_lines(m)
    lines += [f"- command: `{record['command']}`", f"- wall time of the run: "
              f"{record.get('elapsed_s', 0):.0f} s", ""]
    for note in record.get("notes", []):
        lines.append(f"> {note}")
    if record.get("notes"):
        lines.append("")
    if rows:
        fused = ", ".join(fused_columns(rows)) or "none"
        lines += ["## Ops", "",
                  "Median microseconds per call (10th–90th percentile in brackets), float32, "
                  f"on {m['device']}. Fused backends: {fused}. `X / fused`: X's median over the "
                  "fastest fused backend's. **WRONG**: failed the correctness gate against the "
                  "float64 reference (not timed); `–`: skipped (see below). forward runs under "
                  "`no_grad`; forward+backward back-propagates a sum into every input. nn.GRU: "
                  "for agru a plain GRU of the same size (3 gates to AGRU's 2, a yardstick); "
                  "for memory_bank the same BiGRU over windows already stacked (gather not "
                  "timed).", "",
                  "Standard shapes: " + "; ".join(f"{s.id} = {s.kind}" for s in SHAPES) + ".", ""]
        lines += op_tables(rows, spread=True)
        noisy = [r for r in rows if r["status"] == "ok" and _noisy(r)]
        if noisy:
            lines += [f"† {len(noisy)} of {sum(r['status'] == 'ok' for r in rows)} timed cells "
                      f"have a 90th percentile above {NOISY_SPREAD:g}x their 10th: other "
                      "processes took the cores while they ran (most often with two threads, "
                      "where a preempted thread stalls the other); read them as upper bounds.",
                      ""]
        compiled = [r for r in rows if "compile_s" in r]
        if compiled:
            lines += ["torch.compile time of the reference (first call, not timed; a graph "
                      "that inductor compiled before comes from its on-disk cache, faster): "
                      + "; ".join(f"{r['op']} {r['mode']} {r['shape']} t={r['threads']}: "
                                  f"{r['compile_s']:.0f} s" for r in compiled) + ".", ""]
        problems, skips = _problems(rows), _skips(rows)
        if problems:
            lines += ["### Wrong or failing cases", ""] + problems + [""]
        if skips:
            lines += ["### Skipped columns", ""] + skips + [""]
        plots = record.get("plots", [])
        for p in plots:
            lines += [f"![{os.path.splitext(p)[0]}]({p})", ""]
    lines += _model_lines(record.get("model") or {})
    lines += _stream_lines(record.get("stream") or [])
    return "\n".join(lines)


def _sweep_axis(rows: Sequence[Dict], vary: str, preferred: Dict[str, int]) -> Optional[Dict]:
    """The fixed values of the other two of (B, T, H) under which ``vary`` takes the most
    distinct values (``preferred`` on a tie); None when no group has two."""
    fixed = [k for k in ("B", "T", "H") if k != vary]
    groups: Dict[tuple, set] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in fixed), set()).add(r[vary])
    if not groups:
        return None
    want = tuple(preferred.get(k) for k in fixed)
    key = max(groups, key=lambda g: (len(groups[g]), g == want))
    return dict(zip(fixed, key)) if len(groups[key]) >= 2 else None


def plot_ops(rows: Sequence[Dict], out_dir: str, op: str, prefix: str = "") -> Optional[str]:
    """``<out_dir>/<prefix><op>.png``: latency against the batch B and against the window length
    T per backend, forward and forward+backward, log-log; solid lines for the first thread
    count, dashed for the others. Each panel holds the other sizes fixed where the most sizes
    were measured (preferably T = 10, H = 100 and B = 32, H = 100: the sweeps). Returns the
    file name, or None when no curve has two points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [r for r in rows if r["op"] == op and r["status"] == "ok"]
    panels = []
    for vary, preferred, title in (("B", {"T": 10, "H": 100}, "batch B"),
                                   ("T", {"B": 32, "H": 100}, "window length T")):
        fixed = _sweep_axis(ok, vary, preferred)
        if fixed:
            panels.append((vary, fixed, f"{title} ("
                           + ", ".join(f"{k} = {v}" for k, v in fixed.items()) + ")"))
    if not panels:
        return None
    modes = list(dict.fromkeys(r["mode"] for r in ok))
    if not modes:
        return None
    backends = list(dict.fromkeys(r["backend"] for r in rows if r["op"] == op))
    colours = {b: f"C{i}" for i, b in enumerate(backends)}
    threads = sorted({r["threads"] for r in ok})
    fig, axes = plt.subplots(len(modes), len(panels), figsize=(5.5 * len(panels), 4 * len(modes)),
                             squeeze=False)
    drawn = False
    for i, mode in enumerate(modes):
        for j, (axis, fixed, label) in enumerate(panels):
            ax = axes[i][j]
            for b in backends:
                for n in threads:
                    pts = sorted((r[axis], r["median_us"]) for r in ok
                                 if r["mode"] == mode and r["backend"] == b and r["threads"] == n
                                 and all(r[k] == v for k, v in fixed.items()))
                    if len(pts) < 2:
                        continue
                    drawn = True
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                            color=colours[b], linestyle="-" if n == threads[0] else "--",
                            label=f"{b}, {n} thread{'s' if n > 1 else ''}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            xs = sorted({x for line in ax.lines for x in line.get_xdata()})
            if xs:  # plain numbers at the measured sizes read better than powers of two
                ax.set_xticks(xs, [str(int(x)) for x in xs])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel(label)
            ax.set_ylabel("median latency per call (us)")
            ax.set_title(f"{op}, {mode}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"{prefix}{op}.png"
    if drawn:
        fig.savefig(os.path.join(out_dir, name), dpi=90)
    plt.close(fig)
    return name if drawn else None


def summary_table(rows: Sequence[Dict], threads: int, shapes: Sequence[str]) -> List[str]:
    """Markdown lines of one compact table: per op and shape, for each mode the fastest fused
    backend's median and the baselines' medians over it."""
    rows = [r for r in rows if r["threads"] == threads and r["shape"] in shapes]
    fused = fused_columns(rows)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    base = [b for b in _BASELINES if any(r["backend"] == b and r["status"] == "ok" for r in rows)]
    label = "/".join(fused) if fused else "fused"
    head = "| op | shape |"
    for mode in modes:
        head += f" {mode}: {label} (us) |" + "".join(f" {b} / {label} |" for b in base)
    lines = [head, "|---|---|" + "---:|" * (len(modes) * (1 + len(base)))]
    for op in dict.fromkeys(r["op"] for r in rows):
        for shape in shapes:
            line = f"| {op} | {shape} |"
            for mode in modes:
                cells = {r["backend"]: r for r in rows
                         if r["op"] == op and r["shape"] == shape and r["mode"] == mode}
                best = _best(cells, fused)
                wrong = [b for b in fused if cells.get(b, {}).get("status") == "WRONG"]
                line += (f" {_us(best['median_us'])} |" if best else
                         (" **WRONG** |" if wrong else " – |"))
                line += "".join(f" {_ratio(cells, b, fused)} |" for b in base)
            lines.append(line)
    return lines
