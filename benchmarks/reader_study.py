"""The readers study (issue 14): train each reader setting over several seeds, then aggregate.

Runs ``aghmn-fast train`` once per (setting, seed), one process at a time, each into
``OUT_ROOT/<setting>/seed<k>`` (a run whose ``metrics.json`` exists is not repeated), and
aggregates the ``metrics.json`` files into mean +- std (sample std, ddof = 1) of test accuracy,
weighted F1, macro F1, per-class F1 and seconds per epoch::

    python benchmarks/reader_study.py run --data DIR --out-root /tmp/readers \\
        --settings wordllama minilm --seeds 1 2 3 4 5
    python benchmarks/reader_study.py aggregate --out-root /tmp/readers \\
        --json benchmarks/results/readers/study.json --md benchmarks/results/readers/study.md
    python benchmarks/reader_study.py latency --data DIR --json benchmarks/results/readers/latency.json

The aggregate holds numbers and settings only (no data, no paths of the machine).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

# name -> extra arguments of `aghmn-fast train` (everything else is the authors' MELD recipe).
SETTINGS = {
    "glove50": [],
    "wordllama": ["--embeddings", "wordllama"],
    "wordllama-128": ["--embeddings", "wordllama", "--embedding-dim", "128"],
    "wordllama-64": ["--embeddings", "wordllama", "--embedding-dim", "64"],
    "wordllama-cw1": ["--embeddings", "wordllama", "--class-weight-rate", "1.0"],
    "wordllama-cw0": ["--embeddings", "wordllama", "--class-weight-rate", "0"],
    "wordllama-h200": ["--embeddings", "wordllama", "--hidden", "200"],
    "wordllama-lr1e-3": ["--embeddings", "wordllama", "--lr", "1e-3"],
    "wordllama-cnn": ["--embeddings", "wordllama", "--reader", "cnn"],
    "wordllama-scale3": ["--embeddings", "wordllama", "--embedding-scale", "3"],
    "wordllama-ft": ["--embeddings", "wordllama", "--train-embeddings"],
    "minilm": ["--reader", "minilm"],
    "minilm-cw1": ["--reader", "minilm", "--class-weight-rate", "1.0"],
    "minilm-h200": ["--reader", "minilm", "--hidden", "200"],
    "minilm-lr1e-3": ["--reader", "minilm", "--lr", "1e-3"],
}
# Levers screened on wordllama alone and on top of x3-scaled vectors (wordllama-scale3-<lever>).
LEVERS = {"cw0.3": ["--class-weight-rate", "0.3"], "cw0.75": ["--class-weight-rate", "0.75"],
          "selwf1": ["--select-on", "weighted-f1"], "drop0.5": ["--dropout", "0.5"],
          "drop0.2": ["--dropout", "0.2"],
          "128": ["--embedding-dim", "128"], "cnn": ["--reader", "cnn"]}
for _lever, _args in LEVERS.items():
    SETTINGS.setdefault(f"wordllama-{_lever}", ["--embeddings", "wordllama", *_args])
    SETTINGS[f"wordllama-scale3-{_lever}"] = ["--embeddings", "wordllama", "--embedding-scale", "3",
                                              *_args]
SETTINGS["wordllama-scale2"] = ["--embeddings", "wordllama", "--embedding-scale", "2"]
SETTINGS["wordllama-scale5"] = ["--embeddings", "wordllama", "--embedding-scale", "5"]
METRICS = ("accuracy", "weighted_f1", "macro_f1")


def run(args) -> int:
    """Train every requested (setting, seed) not yet done, sequentially."""
    for name in args.settings:
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    for name in args.settings:
        for seed in args.seeds:
            out = os.path.join(args.out_root, name, f"seed{seed}")
            if os.path.exists(os.path.join(out, "metrics.json")):
                continue
            cmd = [sys.executable, "-m", "aghmn_fast.cli", "train", "--data", args.data,
                   "--out", out, "--seed", str(seed), "--threads", "1", "--no-progress",
                   *SETTINGS[name]]
            if args.epochs:
                cmd += ["--epochs", str(args.epochs)]
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "provenance.json"), "w") as f:
                json.dump(_provenance(), f)
            start = time.time()
            with open(os.path.join(out, "train.log"), "w") as log:
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            print(f"{name} seed {seed}: rc {rc}, {time.time() - start:.0f} s", flush=True)
            if rc != 0:
                return rc
    return 0


def _provenance() -> dict:
    """The commit of the tree a run starts on, and whether the code it runs differs from it."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], text=True, capture_output=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "../aghmn_fast"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _mean_std(xs):
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def _best_epoch(metrics: dict) -> int:
    if "best_epoch" in metrics:
        return metrics["best_epoch"]
    # metrics.json written before best_epoch was recorded: the first epoch with the best dev
    return next(h["epoch"] for h in metrics["history"] if h["dev"] == metrics["best_dev"])


def _run_record(metrics: dict, provenance: dict) -> dict:
    """One run's test metrics, per-class F1, best epoch and provenance."""
    test = metrics["test"]
    return {"seed": metrics["train_config"]["seed"], **{m: test[m] for m in METRICS},
            "per_class_f1": {c: test["per_class"][c]["f1"] for c in test["labels"]},
            "best_epoch": _best_epoch(metrics), "seconds_per_epoch": metrics["seconds_per_epoch"],
            "commit": provenance.get("commit"), "dirty": provenance.get("dirty")}


def _entry(args: list, runs: list, model_config: dict, train_config: dict) -> dict:
    """A setting's aggregate over its per-seed run records."""
    runs = sorted(runs, key=lambda r: r["seed"])
    labels = list(runs[0]["per_class_f1"])
    entry = {"args": args, "seeds": [r["seed"] for r in runs],
             "per_seed": {m: [r[m] for r in runs] for m in METRICS},
             "seconds_per_epoch": _mean_std([r["seconds_per_epoch"] for r in runs]),
             "per_class_f1": {c: _mean_std([r["per_class_f1"][c] for r in runs]) for c in labels},
             "model_config": model_config, "train_config": train_config,
             "commits": sorted({r["commit"] for r in runs if r.get("commit")}), "runs": runs}
    for m in METRICS:
        entry[m] = _mean_std(entry["per_seed"][m])
    return entry


def _previous_runs(entry: dict) -> list:
    """Per-seed records of an aggregate entry: its own, or rebuilt from a one-seed entry (whose
    means are that seed's values); an older multi-seed entry without them cannot be extended."""
    if "runs" in entry:
        return entry["runs"]
    if len(entry["seeds"]) != 1:
        raise SystemExit(f"cannot add seeds to an older {len(entry['seeds'])}-seed aggregate entry "
                         f"without per-seed records ({' '.join(entry['args'])})")
    commits = entry.get("commits") or [None]
    return [{"seed": entry["seeds"][0], **{m: entry["per_seed"][m][0] for m in METRICS},
             "per_class_f1": {c: v["mean"] for c, v in entry["per_class_f1"].items()},
             "best_epoch": None, "seconds_per_epoch": entry["seconds_per_epoch"]["mean"],
             "commit": commits[0], "dirty": None}]


def aggregate_runs(out_root: str, previous: dict = None) -> dict:
    """Per setting: seeds, mean/std of the test metrics, per-class F1, s/epoch and per-seed
    records with the commit each run started on. Settings of a ``previous`` aggregate (runs no
    longer on disk) are kept, and extended by new seeds of the same setting; a seed present in
    both is an error."""
    previous = previous or {}
    result = {}
    for name in SETTINGS:
        files = sorted(glob.glob(os.path.join(out_root, name, "seed*", "metrics.json")))
        if not files:
            if name in previous:
                result[name] = previous[name]
            continue
        runs, first = [], None
        for f in files:
            with open(f) as fh:
                metrics = json.load(fh)
            prov_path = os.path.join(os.path.dirname(f), "provenance.json")
            prov = {}
            if os.path.exists(prov_path):
                with open(prov_path) as fh:
                    prov = json.load(fh)
            runs.append(_run_record(metrics, prov))
            first = first or metrics
        model_config = {k: first["model_config"][k] for k in
                        ("reader", "embedding_dim", "hidden_size", "embeddings", "dropout")
                        if k in first["model_config"]}
        train_config = {k: first["train_config"].get(k, "accuracy") for k in
                        ("epochs", "lr", "class_weight_rate", "select_on")}
        if name in previous:
            old = _previous_runs(previous[name])
            clash = {r["seed"] for r in old} & {r["seed"] for r in runs}
            if clash:
                raise SystemExit(f"{name}: seeds {sorted(clash)} both in the previous aggregate "
                                 "and in the out-root")
            runs += old
        result[name] = _entry(SETTINGS[name], runs, model_config, train_config)
    return result


def to_markdown(study: dict) -> str:
    """The aggregate as Markdown tables."""
    lines = ["| setting | seeds | accuracy | weighted F1 | macro F1 | s/epoch | commits |",
             "|---|---|---:|---:|---:|---:|---|"]
    fmt = lambda s: f"{s['mean']:.2f} ± {s['std']:.2f}"  # noqa: E731
    for name, e in study.items():
        lines.append(f"| {name} (`{' '.join(e['args']) or 'defaults'}`) | "
                     f"{','.join(map(str, e['seeds']))} | {fmt(e['accuracy'])} | "
                     f"{fmt(e['weighted_f1'])} | {fmt(e['macro_f1'])} | "
                     f"{e['seconds_per_epoch']['mean']:.1f} | {', '.join(e.get('commits', []))} |")
    if study:
        labels = list(next(iter(study.values()))["per_class_f1"])
        lines += ["", "Per-class test F1 (mean ± std over the seeds):", "",
                  "| setting | " + " | ".join(labels) + " |",
                  "|---|" + "---:|" * len(labels)]
        for name, e in study.items():
            lines.append(f"| {name} | " + " | ".join(fmt(e["per_class_f1"][c]) for c in labels)
                         + " |")
    return "\n".join(lines) + "\n"


def aggregate(args) -> int:
    """Write the JSON and Markdown aggregates (and print the Markdown)."""
    previous = {}
    if args.previous:
        with open(args.previous) as f:
            previous = json.load(f)
    study = aggregate_runs(args.out_root, previous)
    md = to_markdown(study)
    for path, text in ((args.json, json.dumps(study, indent=1) + "\n"), (args.md, md)):
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    print(md)
    return 0


def latency(args) -> int:
    """Streaming latency per reader (aghmn_fast.bench.stream.reader_latency) into JSON."""
    import platform

    import torch

    from aghmn_fast.bench.stream import reader_latency
    from aghmn_fast.data.sentences import default_cache_dir

    if default_cache_dir() is not None:
        os.environ["AGHMN_FAST_CACHE"] = "off"  # every timed push pays the sentence encoder
    load = os.getloadavg()
    result = reader_latency(args.data, threads=1, repeats=args.repeats,
                            conversations=args.conversations)
    try:
        result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], text=True,
                                          capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        result["commit"] = None
    result["machine"] = {"cpu": platform.processor() or platform.machine(),
                         "cores": os.cpu_count(), "torch": torch.__version__,
                         "load_average_start": load, "load_average_end": os.getloadavg()}
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def main(argv=None) -> int:
    """Command line of the study (``run`` or ``aggregate``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train the settings over the seeds (one process at a time)")
    p.add_argument("--data", required=True, help="MELD directory")
    p.add_argument("--out-root", required=True, help="where runs go (outside the repository)")
    p.add_argument("--settings", nargs="+", default=["wordllama", "minilm"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's (20 on MELD)")
    a = sub.add_parser("aggregate", help="aggregate the metrics.json files")
    a.add_argument("--out-root", required=True)
    a.add_argument("--json", default=None)
    a.add_argument("--md", default=None)
    a.add_argument("--previous", default=None,
                   help="an earlier aggregate JSON whose runs are no longer on disk: its settings "
                        "are kept and extended by new seeds")
    t = sub.add_parser("latency", help="streaming latency per reader (one core)")
    t.add_argument("--data", default=None, help="MELD directory")
    t.add_argument("--json", default=None)
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--conversations", type=int, default=1024)
    args = parser.parse_args(argv)
    return {"run": run, "aggregate": aggregate, "latency": latency}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
