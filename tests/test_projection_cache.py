"""The ring store without the projection cache (``projection_cache=False``, ``serve
--projection-cache off``): the push kernel recomputes each window's fusion input projections from
the stored reader vectors, and must give the probabilities, indices and state files of the cached
store bit for bit, on both recognizers, every instruction set and both precisions."""
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from aghmn_runtime.serving.memory import BOOKKEEPING_BYTES

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

from runtime_common import RUNTIME_DIR, import_runtime, tiny_checkpoint  # noqa: E402
from runtime_common import synthetic_dialogues as dialogue_texts  # noqa: E402
from serving_fixtures import (checkpoint, make_serving, recognizer_kind,  # noqa: E402,F401
                              running_app, synthetic_dialogues)

REPO = os.path.dirname(BENCHMARKS)

# The run compared across modes: a round wider than a tile (16 conversations) with windows not
# yet full, full and wrapping (K = 1, 3, 5 against up to 14 turns), single pushes, a close and a
# reopen of the same id, then a state saved in one mode and loaded in the other. Every model
# variant with fusion (BiF, UniF; AGRU, BiAGRU, soft attention) and one without; odd sizes.
_SCRIPT = r"""
import json, os, sys, tempfile
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
from runtime_common import tiny_checkpoint, synthetic_dialogues
from aghmn_fast.export import export_checkpoint
from aghmn_fast.streaming import StreamingRecognizer
import aghmn_runtime as rt

VARIANTS = [dict(window=5, fusion="bif", summary="agru", hidden_size=37, embedding_dim=19),
            dict(window=3, fusion="unif", summary="biagru", hidden_size=20, embedding_dim=16),
            dict(window=1, fusion="bif", summary="att", hops=2, hidden_size=24, embedding_dim=16),
            dict(window=4, fusion="none", summary="none", hidden_size=24, embedding_dim=16)]

def run(rec, other):
    items = [(c, t) for c, ts in synthetic_dialogues(21, seed=5).items() for t in ts]
    out = [p.probabilities for p in rec.push_many(items)]
    out += [rec.push("dlg-3", "what a day").probabilities, rec.push("solo", "hi").probabilities]
    rec.close("dlg-3")
    out += [rec.push("dlg-3", "again from the start").probabilities]
    idx = [rec.utterances_seen(c) for c in ("dlg-3", "dlg-0", "solo")]
    path = os.path.join(tempfile.mkdtemp(), "state")
    rec.save_state(path)
    other.load_state(path)   # the state of one mode in a recognizer of the other
    tail = [("dlg-%d" % i, "okay then why not") for i in range(0, 21, 2)] + [("solo", "yes")]
    out += [p.probabilities for p in other.push_many(tail)]
    if hasattr(rec, "store"):   # torch: a torch.save file, compared by its content
        import hashlib, torch
        saved = torch.load(path, weights_only=True)
        digest = hashlib.sha256(repr((saved["ids"], saved["counts"])).encode())
        for name in ("u", "proj"):
            digest.update(saved[name].float().numpy().tobytes())
        return [[v.hex() for v in p.values()] for p in out], idx, digest.hexdigest()
    with open(path, "rb") as f:
        return [[v.hex() for v in p.values()] for p in out], idx, f.read().hex()

result = {}
for n, v in enumerate(VARIANTS):
    ck = tiny_checkpoint(os.path.join(sys.argv[3], "m%d.pt" % n), **v)
    for precision in ("fp32", "bf16"):
        model = os.path.join(sys.argv[3], "m%d-%s.aghmn" % (n, precision))
        if not os.path.exists(model):
            export_checkpoint(ck, model, precision=precision)
        for cache in (True, False):
            torch_rec = lambda c: StreamingRecognizer.from_checkpoint(ck, precision=precision, projection_cache=c)
            probs, idx, state = run(torch_rec(cache), torch_rec(not cache))
            result["%d %s torch %s" % (n, precision, cache)] = [probs, idx, state]
            native = lambda c: rt.StreamingRecognizer(model, projection_cache=c)
            probs, idx, state = run(native(cache), native(not cache))
            result["%d %s runtime %s" % (n, precision, cache)] = [probs, idx, state]
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def runtime():
    return import_runtime()


def test_modes_agree_bit_for_bit_on_every_instruction_set(tmp_path, runtime):
    """Cached and recomputed projections: the same probabilities (as float hex), indices and
    runtime state files, for both recognizers, fp32 and bf16, on AVX-512 (with the bf16 dot
    product where the machine has it), AVX-512F, AVX2 and the baseline."""
    results = {}
    for isa in ("", "avx512", "avx2", "baseline"):
        env = dict(os.environ, AGHMN_CPU_ISA=isa, PYTHONPATH=REPO)
        done = subprocess.run([sys.executable, "-c", _SCRIPT, BENCHMARKS, RUNTIME_DIR, str(tmp_path)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[isa or "best"] = out = json.loads(done.stdout)
        for key, (probs, idx, state) in out.items():
            if key.endswith("True"):
                other = out[key[:-4] + "False"]
                assert probs == other[0], f"{isa or 'best'} {key}: probabilities differ between modes"
                assert idx == other[1] and state == other[2], f"{isa or 'best'} {key}: state differs"
            engine_key = key.replace("torch", "runtime")
            if "torch" in key:   # the torch push path and the runtime: one kernel
                assert probs == out[engine_key][0], f"{isa or 'best'} {key}: torch != runtime"
    assert results["best"]["0 bf16 runtime True"][0] != results["best"]["0 fp32 runtime True"][0]


def test_runtime_bytes_and_flag(tmp_path, runtime):
    """A session without the cache holds K * H elements per conversation (its store too), and the
    option is a bool."""
    ck = tiny_checkpoint(str(tmp_path / "m.pt"), window=7, hidden_size=30)
    from aghmn_fast.export import export_checkpoint
    for precision, elem in (("fp32", 4), ("bf16", 2)):
        model = str(tmp_path / f"m-{precision}.aghmn")
        export_checkpoint(ck, model, precision=precision)
        cached = runtime.StreamingRecognizer(model)
        compact = runtime.StreamingRecognizer(model, projection_cache=False)
        assert cached.projection_cache and not compact.projection_cache
        assert cached.bytes_per_conversation == 7 * 30 * elem * (1 + 3 * 2)
        assert compact.bytes_per_conversation == 7 * 30 * elem
        compact.push_many([(f"c{i}", "hi there") for i in range(9)])
        assert compact.store_bytes == 16 * compact.bytes_per_conversation   # capacity 16
    with pytest.raises(TypeError, match="projection_cache must be a bool"):
        runtime.StreamingRecognizer(model, projection_cache="off")


def test_torch_store_bytes_and_refusals(tmp_path):
    import torch

    from aghmn_fast import serving_plugin
    from aghmn_fast.streaming import StreamingRecognizer
    ck = tiny_checkpoint(str(tmp_path / "m.pt"), window=6, hidden_size=20, fusion="unif", summary="agru")
    rec = StreamingRecognizer.from_checkpoint(ck, projection_cache=False)
    assert rec.mode == "push" and rec.store.proj.numel() == 0
    assert rec.bytes_per_conversation == 6 * 20 * 4
    assert StreamingRecognizer.from_checkpoint(ck).bytes_per_conversation == 6 * 20 * 4 * 4
    rec.push_many([(f"c{i}", "hi") for i in range(5)])
    assert rec.store_bytes == rec.store.u.nbytes == 8 * 6 * 20 * 4
    with pytest.raises(ValueError, match="projection_cache=False runs in mode 'push' only"):
        StreamingRecognizer(rec.model, vocab=rec.vocab, label_names=rec.label_names, mode="ops",
                            projection_cache=False)
    with pytest.raises(TypeError, match="projection_cache must be a bool"):
        StreamingRecognizer.from_checkpoint(ck, projection_cache=0)
    with pytest.raises(ValueError, match="ensemble keeps the projection cache"):
        serving_plugin.load_recognizer([ck, ck], projection_cache=False)
    assert serving_plugin.load_recognizer([ck], projection_cache=False).projection_cache is False
    with pytest.raises(RuntimeError, match="u must be a contiguous CPU"):
        torch.ops.aghmn_fast.stream_project(rec.compute.packed, torch.zeros(2, 3), **rec.compute.sizes)


def test_server_without_the_cache_answers_as_with_it(checkpoint, tmp_path):
    """serve --projection-cache off, on each recognizer over real HTTP: the answers of the cached
    server bit for bit, under a --max-memory that evicts and rebuilds; the budget counts the
    smaller state (more conversations in the same bytes)."""
    # window 4, hidden 24, BiF: u [H] and two projections [3H] per slot, or u only
    per = {True: 4 * 24 * 4 * 7 + BOOKKEEPING_BYTES, False: 4 * 24 * 4 + BOOKKEEPING_BYTES}
    budget = 10 * per[False] + 100
    dialogues = synthetic_dialogues(16, seed=9, min_len=3, max_len=6)
    answers = {}
    for cache in (True, False):
        serving = make_serving(checkpoint, tmp_path, state=str(tmp_path / f"s-{cache}.db"),
                               max_memory=budget, projection_cache=cache)
        assert serving.engine.recognizer.projection_cache is cache
        assert serving.bytes_per_conversation == per[cache]
        assert serving.engine.memory_cap == budget // per[cache]
        answers[cache] = got = []
        with running_app(serving) as base, httpx.Client(base_url=base) as client:
            for n in range(6):   # one utterance of each in turn: each is evicted by the others
                for d in dialogues:
                    if n < len(d.texts):
                        r = client.post(f"/v1/conversations/{d.id}/utterances", json={"text": d.texts[n]})
                        assert r.status_code == 200, r.text
                        got.append(r.json())
        assert sum(r["rebuilt"] for r in got) > 0   # evictions happened
    assert [r["probabilities"] for r in answers[True]] == [r["probabilities"] for r in answers[False]]


def test_serve_option_values(tmp_path, runtime):
    from aghmn_runtime.serving.app import ServeConfig
    with pytest.raises(ValueError, match="--projection-cache must be on or off"):
        ServeConfig(checkpoint="m.aghmn", projection_cache="off").validate()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, RUNTIME_DIR]))
    ck = tiny_checkpoint(str(tmp_path / "m.pt"))
    done = subprocess.run([sys.executable, "-m", "aghmn_fast.cli", "serve", "--checkpoint", ck,
                           "--projection-cache", "maybe"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 2 and "--projection-cache" in done.stderr
    assert "Traceback" not in done.stderr


def test_compact_state_loads_old_files(tmp_path, runtime):
    """A state file of the cached store (the only kind before this option) loads into a store
    without the cache, and the predictions continue as the cached store's."""
    from aghmn_fast.export import export_checkpoint
    ck = tiny_checkpoint(str(tmp_path / "m.pt"), window=4)
    model = str(tmp_path / "m.aghmn")
    export_checkpoint(ck, model)
    cached = runtime.StreamingRecognizer(model)
    items = [(c, t) for c, ts in dialogue_texts(6, seed=2).items() for t in ts]
    cached.push_many(items)
    state = cached.save_state_bytes()
    compact = runtime.StreamingRecognizer(model, projection_cache=False)
    compact.load_state_bytes(state)
    assert compact.save_state_bytes() == state
    more = [(c, "and then what") for c in cached.conversations()]
    a = np.array([list(p.probabilities.values()) for p in cached.push_many(more)])
    b = np.array([list(p.probabilities.values()) for p in compact.push_many(more)])
    assert (a.view(np.uint32) == b.view(np.uint32)).all()
