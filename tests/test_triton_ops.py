"""The Triton backend beyond the conformance suites of tests/ops/ (which check every op's outputs
and gradients against the reference, with every other implementation): each kernel variant the
launchers can choose, argument checks, symbolic tracing, registration, launch heuristics,
torch.compile and the sm_90 compile check.

On a CPU machine the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1); with ``AGHMN_TRITON_GPU=1`` on a machine with a GPU the same tests run the
compiled kernels on CUDA tensors. Every kernel buffer is NaN-filled before launch
(``set_poison_outputs``), so an element a kernel fails to write fails the comparison.
"""
import contextlib
import os

import pytest
import torch

pytest.importorskip("triton", reason="triton cannot be imported, so there is no Triton backend "
                                     "to test")

import aghmn_fast  # noqa: E402
from aghmn_fast import ops, reference  # noqa: E402
from aghmn_fast.ops import triton_common as _common  # noqa: E402
from aghmn_fast.ops.triton_common import KernelConfig, use_config  # noqa: E402
from conformance import TF32_TOLERANCE, assert_close  # noqa: E402

ON_GPU = os.environ.get("AGHMN_TRITON_GPU", "0") == "1"
DEVICE = "cuda" if ON_GPU else "cpu"
#: The Triton implementation of the ops (arguments unvalidated).
tb = ops.resolve_backend("triton", torch.device(DEVICE))
D64, F32 = torch.float64, torch.float32

# Every kernel variant: the default (interpreter: one large tile, tl.dot, resident weight),
# tl.dot with the weight streamed in slices, and the broadcast-reduce path (small tiles) with
# the weight resident and streamed. Tiles of 16 with 37 sequences give three programs.
CONFIGS = {
    "default": None,
    "dot-streamed": KernelConfig(block_b=16, resident=False, block_k=16, num_warps=4, dot=True),
    "small-resident": KernelConfig(block_b=2, resident=True, num_warps=4),
    "small-streamed": KernelConfig(block_b=4, resident=False, block_k=8, num_warps=4),
    "dot-tiles": KernelConfig(block_b=16, resident=True, num_warps=4, dot=True),
}


@pytest.fixture(autouse=True)
def _poisoned_buffers():
    _common.set_poison_outputs(True)
    yield
    _common.set_poison_outputs(False)


def _config(name):
    cfg = CONFIGS[name]
    return use_config(cfg) if cfg is not None else contextlib.nullcontext()


# ---- AGRU ------------------------------------------------------------------------------------

def _agru_inputs(B, T, D, H, dtype=D64, bias=True, with_h0=True, zero_attn=True):
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + H)
    x = torch.randn(B, T, D, generator=g, dtype=D64)
    attn = torch.rand(B, T, generator=g, dtype=D64)
    if zero_attn and T > 2:
        attn[: B // 2 + 1, :2] = 0  # pads of a left-padded memory: the state must pass through
    w_ih = torch.randn(2 * H, D, generator=g, dtype=D64) * 0.4
    w_hh = torch.randn(2 * H, H, generator=g, dtype=D64) * 0.4
    b_ih = torch.randn(2 * H, generator=g, dtype=D64) * 0.2 if bias else None
    b_hh = torch.randn(2 * H, generator=g, dtype=D64) * 0.2 if bias else None
    h0 = torch.randn(B, H, generator=g, dtype=D64) * 0.5 if with_h0 else None
    args = [x, attn, w_ih, w_hh, b_ih, b_hh, h0]
    return [None if a is None else a.to(DEVICE, dtype).requires_grad_() for a in args]


def _agru_both(args, reverse, upstream_seed=0):
    """(triton results, reference results in float64), each: output, h_n, grads of all inputs."""
    results = []
    for fn in (tb.agru, reference.agru):
        leaves = [a for a in args if a is not None]
        if fn is reference.agru:
            leaves = [a.detach().to(D64).requires_grad_() for a in leaves]
        it = iter(leaves)
        call = [next(it) if a is not None else None for a in args]
        out, h_n = fn(*call, reverse=reverse)
        g = torch.Generator().manual_seed(upstream_seed)
        g_out = torch.randn(out.shape, generator=g, dtype=D64).to(out.device, out.dtype)
        g_hn = torch.randn(h_n.shape, generator=g, dtype=D64).to(out.device, out.dtype)
        grads = torch.autograd.grad((out * g_out).sum() + (h_n * g_hn).sum(), leaves)
        results.append((out, h_n, grads))
    return results


_AGRU_NAMES = ["x", "attn", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0"]


def _check_agru(args, reverse, tolerance=None):
    """Outputs and gradients against the reference (conformance.assert_close: the dtype's
    tolerance, or ``tolerance``)."""
    dtype = args[0].dtype
    (out, h_n, grads), (r_out, r_hn, r_grads) = _agru_both(args, reverse)
    assert_close(out, r_out, dtype, "output", tolerance=tolerance)
    assert_close(h_n, r_hn, dtype, "h_n", tolerance=tolerance)
    names = [n for n, a in zip(_AGRU_NAMES, args) if a is not None]
    for name, got, want in zip(names, grads, r_grads):
        assert_close(got, want, dtype, f"grad of {name}", tolerance=tolerance)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "default"])
@pytest.mark.parametrize("reverse", [False, True])
def test_agru_every_kernel_variant(config, reverse):
    with _config(config):
        _check_agru(_agru_inputs(37, 6, 4, 13), reverse)


def test_agru_large_hidden_streams_weight():
    # H = 65 pads to 128 columns: the streamed path walks several weight slices.
    with use_config(KernelConfig(block_b=16, resident=False, block_k=32, dot=True)):
        _check_agru(_agru_inputs(3, 4, 5, 65), True)


# ---- memory bank -----------------------------------------------------------------------------

def _windows(N, Q, K, seed):
    """Left-padded windows of past utterances, plus an all-empty window and repeats."""
    g = torch.Generator().manual_seed(seed)
    win = torch.full((Q, K), -1, dtype=torch.int64)
    for q in range(Q):
        filled = int(torch.randint(0, K + 1, (1,), generator=g))
        if filled:
            win[q, K - filled:] = torch.randint(0, N, (filled,), generator=g)
    win[0] = -1                          # a query with no memory at all
    if Q > 1:
        win[1] = min(2, N - 1)           # one utterance in every slot of a window
    if Q > 2 and K > 1:
        win[2, -2:] = win[2, -1].clamp(min=0)  # an utterance twice in a row
    return win.to(DEVICE)


def _memory_inputs(N, H, num_dirs, dtype=D64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N, H, generator=g, dtype=D64)
    flat = []
    for _ in range(num_dirs):
        flat += [torch.randn(3 * H, H, generator=g, dtype=D64) * 0.4,
                 torch.randn(3 * H, H, generator=g, dtype=D64) * 0.4,
                 torch.randn(3 * H, generator=g, dtype=D64) * 0.2,
                 torch.randn(3 * H, generator=g, dtype=D64) * 0.2]
    return (u.to(DEVICE, dtype).requires_grad_(),
            [w.to(DEVICE, dtype).requires_grad_() for w in flat])


def _check_memory(u, windows, flat, tolerance=None):
    """Memory and gradients against the reference (as :func:`_check_agru`)."""
    got = tb.memory_bank(u, windows, flat)
    ref_u = u.detach().to(D64).requires_grad_()
    ref_flat = [w.detach().to(D64).requires_grad_() for w in flat]
    want = reference.memory_bank(ref_u, windows, ref_flat)
    assert_close(got, want, u.dtype, "memory", tolerance=tolerance)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=D64)
    g = g.to(want.device)
    grads = torch.autograd.grad((got * g.to(got.dtype)).sum(), [u] + list(flat))
    r_grads = torch.autograd.grad((want * g).sum(), [ref_u] + ref_flat)
    names = ["utterances"] + [f"flat_weights[{i}]" for i in range(len(flat))]
    for name, a, b in zip(names, grads, r_grads):
        assert_close(a, b, u.dtype, f"grad of {name}", tolerance=tolerance)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "default"])
def test_memory_bank_every_kernel_variant(config):
    u, flat = _memory_inputs(12, 13, 2, seed=3)
    with _config(config):
        _check_memory(u, _windows(12, 37, 4, seed=5), flat)


# ---- the registered ops ----------------------------------------------------------------------

def test_ops_trace_with_symbolic_shapes():
    """Shape propagation with symbolic sizes (torch.compile(dynamic=True), export)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    ns = torch.ops.aghmn_fast
    H = 5

    def agru_fwd_bwd(xproj, attn, w, b, h0):
        out, gates = ns.triton_agru_forward(xproj, attn, w, b, h0, True)
        return ns.triton_agru_backward(out, attn, w, h0, out, gates, True)

    def window_fwd_bwd(proj, pad, w, b, windows):
        out, gates = ns.triton_window_gru_forward(proj, pad, w, b, windows)
        return ns.triton_window_gru_backward(out, w, windows, out, gates, proj.shape[1])

    agru_args = (torch.randn(3, 4, 2 * H), torch.rand(3, 4), torch.randn(2 * H, H),
                 torch.randn(2 * H), torch.randn(3, H))
    window_args = (torch.randn(2, 4, 3 * H), torch.randn(2, 3 * H), torch.randn(2, 3 * H, H),
                   torch.randn(2, 3 * H), torch.tensor([[-1, 1, 1], [0, 1, 3]]))
    for fn, args in ((agru_fwd_bwd, agru_args), (window_fwd_bwd, window_args)):
        args = [a.to(DEVICE) for a in args]
        graph = make_fx(fn, tracing_mode="symbolic")(*args)
        assert "triton" in graph.code
        for got, want in zip(graph(*args), fn(*args)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_ops_reject_bad_arguments():
    B, T, H = 2, 3, 4
    xproj = torch.randn(B, T, 2 * H, device=DEVICE)
    attn = torch.rand(B, T, device=DEVICE)
    w, b, h0 = torch.randn(2 * H, H, device=DEVICE), torch.zeros(2 * H, device=DEVICE), \
        torch.zeros(B, H, device=DEVICE)
    fwd = torch.ops.aghmn_fast.triton_agru_forward
    with pytest.raises(ValueError, match="attn"):
        fwd(xproj, attn[:, :2].contiguous(), w, b, h0, False)
    with pytest.raises(ValueError, match="h0"):
        fwd(xproj, attn, w, b, h0[:1], False)
    with pytest.raises(TypeError, match="bias_hh"):
        fwd(xproj, attn, w, b.double(), h0, False)
    with pytest.raises(ValueError, match="xproj"):
        fwd(xproj[:, :, :-1].contiguous(), attn, w, b, h0, False)
    with pytest.raises(ValueError, match="weight_hh"):
        fwd(xproj, attn, w[:-1].contiguous(), b, h0, False)
    with pytest.raises(ValueError, match="attn.*contiguous"):
        fwd(xproj, torch.rand(T, B, device=DEVICE).t(), w, b, h0, False)
    proj = torch.randn(1, 3, 3 * H, device=DEVICE)
    wf = torch.ops.aghmn_fast.triton_window_gru_forward
    pad, wh, bh = torch.zeros(1, 3 * H, device=DEVICE), torch.randn(1, 3 * H, H, device=DEVICE), \
        torch.zeros(1, 3 * H, device=DEVICE)
    with pytest.raises(TypeError, match="windows"):
        wf(proj, pad, wh, bh, torch.zeros(2, 2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="windows"):
        wf(proj, pad, wh, bh, torch.zeros(2, 0, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="weight_hh"):
        wf(proj, pad, wh[:, :-1].contiguous(), bh, torch.zeros(2, 2, dtype=torch.int64,
                                                               device=DEVICE))
    with pytest.raises(TypeError, match="KernelConfig"):
        with use_config("fast"):
            pass
    with pytest.raises(ValueError, match="block_b"):
        KernelConfig(block_b=3)
    with pytest.raises(ValueError, match="dot"):
        KernelConfig(block_b=8, dot=True)


def test_backend_registration():
    names = ops.backends(DEVICE)
    assert "triton" in names
    if not ON_GPU:
        # The interpreter is for checking only: never the default on any device.
        assert ops.resolve_backend(None, torch.device("cpu")).name != "triton"
        assert names[-1] == "triton"
    x, attn, w_ih, w_hh, b_ih, b_hh, h0 = _agru_inputs(2, 3, 4, 5)
    got, _ = aghmn_fast.agru(x, attn, w_ih, w_hh, b_ih, b_hh, h0, backend="triton")
    want, _ = reference.agru(x, attn, w_ih, w_hh, b_ih, b_hh, h0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gpu_launch_heuristic(monkeypatch):
    """The configurations picked for a GPU (pretending the interpreter is off)."""
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    choose = _common.choose_config
    streaming = choose(1, 100, 2, 4)
    assert (streaming.block_b, streaming.resident, streaming.dot) == (1, True, False)
    assert choose(1024, 100, 2, 4).block_b == 8 and not choose(1024, 100, 2, 4).dot
    assert choose(1024, 100, 3, 4).block_b == 4 and choose(1024, 100, 3, 4).resident
    wide = choose(256, 256, 2, 4)
    assert not wide.resident and not wide.dot
    assert not choose(8, 100, 2, 8).resident  # float64 weights do not fit in registers
    before = _common.allow_tf32()
    try:
        _common.set_allow_tf32(True)
        assert choose(1024, 100, 2, 4).dot and choose(1024, 100, 2, 4).resident
        assert not choose(1024, 100, 2, 4, shared_bytes=99 * 1024).resident
        assert not choose(4, 100, 2, 4).dot       # a tile of 16 would be mostly padding
        assert not choose(1024, 100, 2, 8).dot    # no TF32 for float64
    finally:
        _common.set_allow_tf32(before)
    with use_config(CONFIGS["small-streamed"]):
        assert choose(1024, 100, 2, 4) == CONFIGS["small-streamed"]


def test_tf32_switch_is_off_by_default_and_restorable():
    assert _common.allow_tf32() is (os.environ.get("AGHMN_TRITON_TF32", "0") == "1")
    before = _common.allow_tf32()
    try:
        _common.set_allow_tf32(True)
        assert _common.allow_tf32()
        # TF32 rounds fp32 matmul inputs on a GPU (the interpreter computes them exactly).
        _check_agru(_agru_inputs(17, 4, 3, 16, dtype=F32), False, TF32_TOLERANCE)
        u, flat = _memory_inputs(5, 16, 2, dtype=F32)
        _check_memory(u, _windows(5, 17, 3, seed=1), flat, TF32_TOLERANCE)
    finally:
        _common.set_allow_tf32(before)
    assert _common.allow_tf32() is before


@pytest.mark.skipif(not ON_GPU, reason="compile caching is only observable for compiled kernels")
def test_sequence_length_does_not_recompile():
    from aghmn_fast.ops.agru.triton import _agru_fwd_kernel as kernel

    def compiled():
        caches = getattr(kernel, "device_caches", None)
        if not caches or not all(isinstance(c, tuple) and isinstance(c[0], dict)
                                 for c in caches.values()):
            pytest.skip("this Triton version keeps its compiled kernels elsewhere")
        return sum(len(c[0]) for c in caches.values())

    tb.agru(*_agru_inputs(4, 3, 5, 13, dtype=F32))
    before = compiled()
    for T in (5, 9, 12):
        tb.agru(*_agru_inputs(4, T, 5, 13, dtype=F32))
    assert compiled() == before


@pytest.mark.skipif(not ON_GPU, reason="inductor compiles user-defined Triton kernels for CUDA "
                                       "tensors only")
def test_torch_compile_fullgraph():
    u, flat = _memory_inputs(9, 13, 2, dtype=F32)
    windows = _windows(9, 6, 5, seed=3)
    eager = tb.memory_bank(u, windows, flat)
    compiled = torch.compile(tb.memory_bank, fullgraph=True)(u, windows, flat)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def _ptxas_available():
    import triton
    nvidia = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia")
    return os.path.exists(os.path.join(nvidia, "bin", "ptxas")) or bool(
        os.environ.get("TRITON_PTXAS_PATH"))


def _compile_check(*args):
    """Run compile_check (offline, for sm_90) in a subprocess; its JSON results."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["AGHMN_TRITON_COMPILE_ONLY"] = "1"
    proc = subprocess.run([sys.executable, "-m", "aghmn_fast.ops.compile_check",
                           "--arch", "90", "--json", *args], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed[:3]
    # Beyond the spill budget: registers spilled to local memory in a hot loop.
    over = [(r["variant"], r.get("stack_bytes")) for r in results if not r["within_budget"]]
    assert not over, over
    assert proc.returncode == 0
    return results


NEEDS_PTXAS = pytest.mark.skipif(not _ptxas_available(), reason="this triton install has no "
                                 "NVIDIA compiler backend (ptxas) to compile for")


@pytest.mark.matrix
@NEEDS_PTXAS
def test_kernels_compile_for_sm90_representative_subset():
    """The real GPU compiler accepts a representative set of the variants the launchers pick:
    every kernel, both AGRU directions, H = 100 / 128 / 300, fp32 / bf16 / fp16 / fp64,
    aligned and unaligned pointers, TF32 on and off, within the spill budget."""
    from aghmn_fast.ops import compile_check as cc
    results = _compile_check("--subset", "representative")
    names = " ".join(r["variant"] for r in results)
    for needle in ("REVERSE=True", "REVERSE=False", "H=300", "H=128", "H=100", " bf16 ",
                   " fp16 ", " fp64 ", "align=none", "align=16", "PRECISION=tf32",
                   "_segment_sum_kernel", "_wgru_bwd_kernel"):
        assert needle in names, needle
    assert len(results) == len(cc.representative_variants())


@pytest.mark.slow
@pytest.mark.matrix
@NEEDS_PTXAS
def test_kernels_compile_for_sm90_full_matrix(monkeypatch):
    """Every variant the launchers can choose (H in 100/128/256/300, four dtypes, tile sizes,
    TF32 on/off, both AGRU directions, 16-byte aligned pointers) compiles within budget."""
    from aghmn_fast.ops import compile_check as cc
    results = _compile_check("--subset", "full", "--jobs", "2")
    monkeypatch.setattr(_common, "interpreting", lambda: False)  # the GPU's launch choices
    assert len(results) == len(cc.variants()) >= 400


def test_compile_matrix_covers_every_launch_choice(monkeypatch):
    """The variant list holds the constants that choose_config gives (on a GPU) every
    (rows, H, dtype, TF32 setting, direction)."""
    from aghmn_fast.ops import compile_check as cc
    monkeypatch.setattr(_common, "interpreting", lambda: False)  # the GPU's choices
    keys = {cc.label(v) for v in cc.variants()}
    for tf32 in (False, True):
        monkeypatch.setattr(_common, "_allow_tf32", tf32)
        for H in cc.HIDDEN_SIZES:
            for dtype in cc.DTYPES:
                for rows in (1, 2, 3, 5, 8, 17, 300, 5000):
                    for kernel, gates, reverse in (("_agru_fwd_kernel", 2, True),
                                                   ("_agru_bwd_kernel", 2, False),
                                                   ("_wgru_fwd_kernel", 3, None),
                                                   ("_wgru_bwd_kernel", 3, None)):
                        _, _, consts = _common.launch_constants(rows, H, gates, dtype)
                        if reverse is not None:
                            consts["REVERSE"] = reverse
                        v = dict(kernel=cc.kernels()[kernel], dtype=dtype, consts=consts)
                        assert cc.label(v) in keys, cc.label(v)


def test_gpu_bench_script_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu_bench.py cannot run its GPU part here: check its arguments and tables."""
    import importlib.util
    import json
    import sys
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_bench.py")
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_bench", bench)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit):
        bench.parse_args(["--shapes", "B3-T3-H3"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--reps", "0"])
    assert bench.card_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert bench.card_slug("///") == "unknown-card"
    rc = bench.main(["--device", "cpu", "--ops", "agru", "memory_bank", "--modes", "forward",
                     "forward+backward", "--shapes", "B1-T10-H100", "--backends", "reference",
                     "no-such-backend", "--reps", "1", "--warmup", "0", "--out-dir",
                     str(tmp_path), "--name", "dry run"])
    assert rc == 0
    data = json.loads((tmp_path / "dry-run.json").read_text())
    assert data["environment"]["torch"] == torch.__version__
    timed = [r for r in data["results"] if r["backend"] == "reference"]
    assert len(timed) == 4 and all(r["median_us"] > 0 for r in timed)
    failed = [r for r in data["results"] if r["backend"] == "no-such-backend"]
    assert len(failed) == 4 and all("not available" in r["error"] for r in failed)
    table = (tmp_path / "dry-run.md").read_text()
    assert "## agru, forward" in table and "## memory_bank, forward+backward" in table
    assert "| B1-T10-H100 |" in table and "error [1]" in table
    # The sweep table from synthetic rows (the sweep itself needs a GPU).
    sweep = [{"op": "agru", "mode": "forward", "shape": "B1-T10-H100", "backend": "triton",
              "config": f"cfg{i}", "median_us": 10.0 - i} for i in range(5)]
    text = bench.markdown(data["environment"], data["results"], sweep)
    assert "`cfg4`" in text and "`cfg0`" not in text
    assert len(bench.sweep_configs(100)) > len(bench.sweep_configs(256))
