#!/usr/bin/env python
"""The native runtime against the torch StreamingRecognizer, both engines in one run: cold start
(a new process to its first prediction), resident memory with 1,000 live conversations, the
runtime wheel's size, one push at K = 10 and K = 40, and push_many rounds of 1,024
conversations.

    python benchmarks/runtime_bench.py [--checkpoint best.pt] [--c-example PATH]
        [--load-bench PATH] [--data DIR] [--starts 10] [--threads 1,2]
        [--precisions fp32,bf16] [--projection-caches on,off] [--push-only] [--out result.json]

Without --checkpoint the models are random-initialised at the paper's sizes (H = 100, 50-d
word vectors, the MELD vocabulary when MELD is found, else a small synthetic one): weights do
not change the speed. The K = 40 model is always such a model (a checkpoint has one K).
--c-example is the runtime's example C program (csrc/runtime/examples, built by CMake); its
cold start and memory are measured when given. --load-bench is csrc/runtime/tests/bench_load.cpp
(CMake target bench_load): the load-time costs of each model file (reading, the whole parse,
the checksum, and the packing of the kernel's weights at load, format 2) are measured when
given. Prints a JSON record (machine, load, commit);
--out writes it too. Cold starts of the engines take turns, so load bursts hit all of them.

The push timings run at every precision of --precisions (both engines, the model file exported
at each; in turns, so a load burst hits all of them) and for every thread count of --threads,
each thread count in a process of its own (the runtime reads its thread count once);
--push-only skips cold start, memory, wheel and load costs. --projection-caches on,off times
each engine with and without the ring store's projection cache too (names of the "off" timings
end in "no-cache"; the ring state bytes per conversation of each).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from runtime_common import (REPO, RUNTIME_DIR, export, import_runtime,  # noqa: E402
                            synthetic_dialogues, tiny_checkpoint)

import torch  # noqa: E402

from aghmn_fast.bench.machine import machine_info  # noqa: E402
from aghmn_fast.data import tokenize  # noqa: E402
from aghmn_fast.bench.timing import Budget, summarize  # noqa: E402

PUSH_BUDGET = Budget(warmup=20, min_reps=400, max_reps=4000, min_seconds=2.0, rounds=4)
ROUND_BUDGET = Budget(warmup=2, min_reps=10, max_reps=60, min_seconds=2.0, rounds=2)
# --quick: a check that every part runs (the test suite), not a measurement
QUICK = {"push": Budget(warmup=1, min_reps=2, max_reps=4, min_seconds=0.0, rounds=2),
         "round": Budget(warmup=0, min_reps=1, max_reps=1, min_seconds=0.0, rounds=1)}

_RSS = ("def _rss():\n"
        "    f = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "    return int(f['VmRSS'].split()[0]) * 1024, int(f['VmHWM'].split()[0]) * 1024\n")

# A new process to its first prediction, per engine: {model}, {checkpoint} filled in.
COLD = {
    "python -c 'import numpy' (floor)": "import numpy",
    "aghmn_runtime (python module)": (
        "import aghmn_runtime\n"
        "r = aghmn_runtime.StreamingRecognizer({model!r})\n"
        "r.push('c', 'Hi there, how are you?')\n"),
    "torch StreamingRecognizer": (
        "from aghmn_fast.streaming import StreamingRecognizer\n"
        "r = StreamingRecognizer.from_checkpoint({checkpoint!r})\n"
        "r.push('c', 'Hi there, how are you?')\n"),
}

# Resident memory with the model loaded and 1,000 conversations holding K utterances each.
MEMORY = {
    "python -c 'import numpy' (floor)": "import numpy\n",
    "aghmn_runtime (python module)": (
        "import aghmn_runtime\n"
        "r = aghmn_runtime.StreamingRecognizer({model!r})\n"
        "for k in range(r.window):\n"
        "    r.push_many_arrays([f'c{{i}}' for i in range(1000)], ['Hi there, how are you?'] * 1000)\n"
        "assert len(r.conversations()) == 1000\n"),
    "torch StreamingRecognizer": (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from aghmn_fast.streaming import StreamingRecognizer\n"
        "r = StreamingRecognizer.from_checkpoint({checkpoint!r})\n"
        "for k in range(r.window):\n"
        "    r.push_many([(f'c{{i}}', 'Hi there, how are you?') for i in range(1000)])\n"
        "assert len(r.conversations) == 1000\n"),
}


def _env() -> Dict[str, str]:
    path = [RUNTIME_DIR, REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def _timed_run(cmd: List[str], stdin: str = "") -> Tuple[float, float]:
    """(wall, CPU = user + system) seconds of one run of ``cmd`` to its exit. On a loaded
    machine the CPU time is the steadier of the two: it leaves out the waits for a core."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env())
    proc.stdin.write(stdin)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:2]} failed: {proc.stderr.read()[-2000:]}")
    proc.stderr.close()
    return seconds, usage.ru_utime + usage.ru_stime


def cold_start(model: str, checkpoint: str, c_example: str, starts: int) -> Dict[str, dict]:
    """Median and spread of a new process's time to its first prediction (wall and CPU), the
    engines in turns; ``true`` is the floor of starting any process from this one."""
    cmds = {name: [sys.executable, "-c", code.format(model=model, checkpoint=checkpoint)]
            for name, code in COLD.items()}
    if shutil.which("true"):
        cmds["true (a new process, the spawn floor)"] = [shutil.which("true")]
    if c_example:
        cmds["C example (csrc/runtime/examples)"] = [c_example, model]
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in cmds}
    for i in range(starts):
        for name, cmd in cmds.items():
            if name.startswith("torch") and i >= max(3, starts // 3):
                continue   # seconds each: a third of the starts is enough
            stdin = "c\tHi there, how are you?\n" if name.startswith("C example") else ""
            times[name].append(_timed_run(cmd, stdin))
    out = {}
    for name, runs in times.items():
        wall, cpu = [w * 1e3 for w, _ in runs], [c * 1e3 for _, c in runs]
        out[name] = {"median_ms": statistics.median(wall), "min_ms": min(wall),
                     "max_ms": max(wall), "median_cpu_ms": statistics.median(cpu),
                     "starts": len(runs)}
    return out


def memory(model: str, checkpoint: str, c_example: str, window: int) -> Dict[str, dict]:
    """Resident memory (VmRSS at the end, VmHWM the peak) of each engine's process holding the
    model and 1,000 live conversations of K utterances each."""
    out = {}
    for name, code in MEMORY.items():
        script = _RSS + code.format(model=model, checkpoint=checkpoint) + "print(*_rss())\n"
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=_env(), timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"memory of {name} failed: {done.stderr[-2000:]}")
        rss, hwm = map(int, done.stdout.split())
        out[name] = {"rss_mb": rss / 2**20, "peak_mb": hwm / 2**20}
    if c_example:
        out["C example (csrc/runtime/examples)"] = _c_example_memory(c_example, model, window)
    return out


def _c_example_memory(c_example: str, model: str, window: int) -> Dict[str, float]:
    """VmRSS / VmHWM of the C example once it has answered every line of 1,000 conversations x
    K utterances, read from /proc while it still runs (stdin open). Not ru_maxrss: Linux keeps
    the parent's high-water mark across fork and exec, and this parent holds torch."""
    proc = subprocess.Popen([c_example, model], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    total = window * 1000

    def feed():
        for k in range(window):
            proc.stdin.write("".join(f"c{i}\tHi there, how are you?\n" for i in range(1000)))
        proc.stdin.flush()
    writer = threading.Thread(target=feed)
    writer.start()
    for _ in range(total):
        if not proc.stdout.readline():
            raise RuntimeError(f"the C example stopped early: {proc.stderr.read()[-2000:]}")
    writer.join()
    with open(f"/proc/{proc.pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    proc.stdin.close()
    proc.wait(60)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "peak_mb": int(fields["VmHWM"].split()[0]) / 1024}


def load_costs(program: str, model: str, reps: int) -> Dict[str, float]:
    """bench_load's record of one model file: medians of reading it, the whole parse (checksum,
    validation, packing), the checksum alone and the packing of the kernel's weights alone."""
    done = subprocess.run([program, model, str(reps)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{program} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def wheel_size(tmp: str) -> Dict[str, int]:
    """The runtime wheel built from this checkout: its size and its unpacked size."""
    import zipfile
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                    "--no-deps", "-w", tmp, RUNTIME_DIR], check=True, capture_output=True,
                   timeout=900)
    wheel = glob.glob(os.path.join(tmp, "aghmn_fast_runtime-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        unpacked = sum(i.file_size for i in z.infolist())
    return {"wheel": os.path.basename(wheel), "bytes": os.path.getsize(wheel),
            "unpacked_bytes": unpacked}


def _texts(data) -> List[str]:
    try:
        from aghmn_fast.data import load_meld
        return [t for d in load_meld(data, "test") for t in d.texts]
    except (FileNotFoundError, OSError, ValueError):
        return [t for texts in synthetic_dialogues(300).values() for t in texts]


def _samples(step, budget: Budget) -> Tuple[List[float], List[float]]:
    """Per-call wall and CPU (this thread's) microseconds of ``step()`` after the warm-up."""
    for _ in range(budget.warmup):
        step()
    wall: List[float] = []
    cpu: List[float] = []
    start = time.perf_counter()
    while len(wall) < budget.max_reps and (len(wall) < budget.min_reps
                                            or time.perf_counter() - start < budget.min_seconds):
        t0, c0 = time.perf_counter(), time.thread_time()
        step()
        cpu.append((time.thread_time() - c0) * 1e6)
        wall.append((time.perf_counter() - t0) * 1e6)
    return wall, cpu


def measure_in_turns(steps: Dict[str, object], budget: Budget) -> Dict[str, dict]:
    """:func:`_samples` of each step, the steps taking turns over ``budget.rounds`` (a burst of
    load from other processes lands on all of them); wall and CPU summaries per step. The CPU
    time leaves out the time the thread waited for a core on a shared machine."""
    share = budget.round()
    raw = {name: ([], []) for name in steps}
    for r in range(max(1, budget.rounds)):
        for name, step in steps.items():
            wall, cpu = _samples(step, dataclasses.replace(share, warmup=budget.warmup) if r == 0
                                 else share)
            raw[name][0].extend(wall)
            raw[name][1].extend(cpu)
    return {name: {"wall": summarize(w), "cpu": summarize(c)} for name, (w, c) in raw.items()}


def push_speed(rt, models: Dict[str, str], checkpoint: str, texts: Sequence[str],
               budgets: Tuple[Budget, Budget] = (PUSH_BUDGET, ROUND_BUDGET),
               caches: Sequence[str] = ("on",)) -> Dict[str, dict]:
    """Per-call time of one push (64 conversations with full windows, taken in turn) and of a
    push_many round over 1,024 conversations (full windows), torch push path vs the runtime, both
    on the threads of $AGHMN_RUNTIME_THREADS, at each precision of ``models`` (precision -> the
    model file exported at it; fp32's names carry no suffix) and projection cache of ``caches``
    ("on", "off": names ending in "no-cache")."""
    from aghmn_fast.streaming import StreamingRecognizer
    torch.set_num_threads(int(os.environ["AGHMN_RUNTIME_THREADS"]))
    pushes, rounds = {}, {}
    state_bytes = {}
    for (precision, model), cache in itertools.product(models.items(), caches):
        tag = ("" if precision == "fp32" else f" {precision}") + ("" if cache == "on" else " no-cache")
        on = cache == "on"
        torch_rec, native = _filled(StreamingRecognizer.from_checkpoint(
            checkpoint, precision=precision, projection_cache=on),
            rt.StreamingRecognizer(model, projection_cache=on), texts)
        store = torch_rec.store
        assert torch_rec.bytes_per_conversation == native.bytes_per_conversation
        state_bytes[precision + ("" if on else " no-cache")] = (
            store.u.numel() * store.u.element_size() + store.proj.numel()
            * store.proj.element_size()) // store.capacity
        pushes[f"push, torch StreamingRecognizer{tag}"] = _one_push(torch_rec, texts)
        pushes[f"push, aghmn_runtime{tag}"] = _one_push(native, texts)
        rounds[f"push_many 1,024, torch StreamingRecognizer{tag}"] = _one_round(torch_rec, texts)
        rounds[f"push_many 1,024, aghmn_runtime{tag}"] = _one_round(native, texts)
        rounds[f"push_many_arrays 1,024, aghmn_runtime{tag}"] = _one_round(native, texts, True)
    with torch.no_grad():
        out = measure_in_turns(pushes, budgets[0])
        out.update(measure_in_turns(rounds, budgets[1]))
    out["ring_state_bytes_per_conversation"] = state_bytes
    return out


_IDS = [f"r{i}" for i in range(1024)]


def _filled(torch_rec, native, texts: Sequence[str]):
    """Both recognizers with 64 + 1,024 conversations of full windows."""
    K = native.window
    for rec in (torch_rec, native):
        for i in range(64):
            rec.push_many([(f"c{i}", texts[(i + k) % len(texts)]) for k in range(K)])
        for k in range(K):
            rec.push_many([(c, texts[(i + k) % len(texts)]) for i, c in enumerate(_IDS)])
    return torch_rec, native


def _one_push(rec, texts: Sequence[str]):
    n = [0]

    def step():
        n[0] += 1
        rec.push(f"c{n[0] % 64}", texts[n[0] % len(texts)])
    return step


def _one_round(rec, texts: Sequence[str], arrays: bool = False):
    n = [0]

    def step():
        n[0] += 1
        batch = [texts[(n[0] + i) % len(texts)] for i in range(1024)]
        if arrays:
            rec.push_many_arrays(_IDS, batch)
        else:
            rec.push_many(list(zip(_IDS, batch)))
    return step


def _int_list(text: str) -> List[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, got {text!r}")
    return values


def _precision_list(text: str) -> List[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("fp32", "bf16") for v in values):
        raise argparse.ArgumentTypeError(f"a comma-separated list of fp32, bf16, got {text!r}")
    return list(dict.fromkeys(values))


def _cache_list(text: str) -> List[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("on", "off") for v in values):
        raise argparse.ArgumentTypeError(f"a comma-separated list of on, off, got {text!r}")
    return list(dict.fromkeys(values))


def push_speeds_per_threads(models, texts_args: List[str], threads: List[int], quick: bool,
                            rt, texts, caches: Sequence[str] = ("on",)) -> Dict[str, dict]:
    """push_speed for each thread count: in this process for a single count, else one child
    process per count (the runtime reads $AGHMN_RUNTIME_THREADS once per process)."""
    budgets = (QUICK["push"], QUICK["round"]) if quick else (PUSH_BUDGET, ROUND_BUDGET)
    if len(threads) == 1:
        os.environ["AGHMN_RUNTIME_THREADS"] = str(threads[0])
        return {f"threads={threads[0]}": {
            f"K={K}": push_speed(rt, files, ckpt, texts, budgets, caches)
            for K, (files, ckpt) in models.items()}}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "models.json")
        with open(spec, "w") as f:
            json.dump({str(K): v for K, v in models.items()}, f)
        for n in threads:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-models", spec,
                                   "--threads", str(n), "--projection-caches", ",".join(caches)]
                                  + texts_args + (["--quick"] if quick else []),
                                  capture_output=True, text=True, env=_env(), timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"push timings at {n} threads failed: {done.stderr[-3000:]}")
            out[f"threads={n}"] = json.loads(done.stdout)
    return out


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a checkpoint of aghmn-fast train")
    parser.add_argument("--c-example", default=None, help="the runtime's example C program")
    parser.add_argument("--load-bench", default=None,
                        help="the runtime's bench_load program (load time and packing at load)")
    parser.add_argument("--data", default=None, help="MELD directory (default: $AGHMN_DATA)")
    parser.add_argument("--starts", type=int, default=10, help="cold starts per engine")
    parser.add_argument("--threads", type=_int_list, default=[1],
                        help="thread counts of both engines' push_many, comma-separated (torch "
                             "threads and $AGHMN_RUNTIME_THREADS; default 1)")
    parser.add_argument("--precisions", type=_precision_list, default=["fp32", "bf16"],
                        help="precisions of the push timings, comma-separated (default fp32,bf16)")
    parser.add_argument("--projection-caches", type=_cache_list, default=["on"],
                        help="ring stores of the push timings, comma-separated: on (the projection "
                             "cache), off (reader vectors only); default on")
    parser.add_argument("--push-only", action="store_true",
                        help="only the push timings (no cold start, memory, wheel, load costs)")
    parser.add_argument("--child-models", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="one start and a few calls of each part: checks the script, measures nothing")
    parser.add_argument("--out", default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    texts_args = ["--data", args.data] if args.data else []
    texts = _texts(args.data)
    if args.child_models:  # one thread count's push timings, for the parent (JSON on stdout)
        os.environ["AGHMN_RUNTIME_THREADS"] = str(args.threads[0])
        budgets = (QUICK["push"], QUICK["round"]) if args.quick else (PUSH_BUDGET, ROUND_BUDGET)
        with open(args.child_models) as f:
            models = json.load(f)
        print(json.dumps({f"K={K}": push_speed(import_runtime(build=False), files, ckpt, texts,
                                               budgets, args.projection_caches)
                          for K, (files, ckpt) in models.items()}))
        return 0
    os.environ["AGHMN_RUNTIME_THREADS"] = str(args.threads[0])   # read by the runtime's first round
    rt = import_runtime()
    record = {"machine": machine_info("cpu"), "checkpoint": args.checkpoint or "random-initialised",
              "threads": args.threads, "precisions": args.precisions,
              "projection_caches": args.projection_caches,
              "load_average_at_start": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        words = sorted({w for t in texts for w in tokenize(t)})
        models = {}
        for K in (10, 40):
            ckpt = args.checkpoint if (K == 10 and args.checkpoint) else tiny_checkpoint(
                os.path.join(tmp, f"k{K}.pt"), window=K, embedding_dim=50, hidden_size=100,
                words=words)
            files = {}
            for p in args.precisions:
                files[p] = os.path.join(tmp, f"k{K}-{p}.aghmn")
                export(ckpt, files[p], precision=p)
            models[K] = (files, ckpt)
        files, ckpt = models[10]
        record["model_file_bytes"] = {p: os.path.getsize(f) for p, f in files.items()}
        model = files[args.precisions[0]]
        if not args.push_only:
            if args.load_bench:
                record["load"] = {f"K={K}": load_costs(args.load_bench, models[K][0][args.precisions[0]],
                                                       3 if args.quick else 50) for K in (10, 40)}
            record["wheel"] = wheel_size(os.path.join(tmp, "wheel"))
            record["cold_start"] = cold_start(model, ckpt, args.c_example,
                                              1 if args.quick else args.starts)
            window = rt.StreamingRecognizer(model).window
            record["memory_1000_conversations"] = memory(model, ckpt, args.c_example, window)
        record["push"] = push_speeds_per_threads(models, texts_args, args.threads, args.quick,
                                                 rt, texts, args.projection_caches)
    record["load_average_at_end"] = list(os.getloadavg())
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
