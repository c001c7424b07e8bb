"""The CUDA kernels (csrc/<op>/<op>_kernels.cu) beyond the conformance suites of tests/ops/
(which sweep them, emulated and on a GPU, with every other implementation): launch plans, data
races, device limits, NaN-poisoned memory, CUDA graphs and the cuda backend's registration.

Executors (tests/cuda_emulator.py): ``emulated``, the very CUDA sources on the CPU SIMT emulator
(its arithmetic is the CPU's: no FMA contraction, precise exp/tanh, so it does not stand in for
the GPU's rounding), and ``cuda``, the registered ops on a CUDA device (skipped without one).
References: the ops' conformance cases in tests/helpers/op_cases.py (the raw ops' float64 step
loops of ``aghmn_fast.ops.<op>.reference``, gradients by autograd).
"""
from __future__ import annotations

import math

import pytest
import torch

from aghmn_fast import ops, reference
from aghmn_fast.ops import registry
from cuda_emulator import DeviceOps, require_cuda
from helpers.cuda_checks import (agru_inputs, assert_matches, check_agru, check_window, make_windows,
                                 window_inputs)

D64 = torch.float64
DTYPES = (torch.float32, torch.float64)


# ---- emulator only: launch plans, races, limits ----------------------------------------------

def test_latency_plan_for_small_batches(emulated):
    check_agru(emulated, 2, 6, 100, torch.float64, False)
    (grid, block, smem), = emulated.launches()[:1]
    assert grid == (2, 1, 1) and block == (416, 1, 1)  # one sequence per CTA, 4 lanes per unit
    assert smem > 100 * 200 * 8  # weight_hh is resident in shared memory


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_throughput_plan_with_partial_tiles(emulated, dtype):
    """With few SMs the tiled configuration runs (several sequences per CTA, the last tile
    partly empty): same results."""
    emulated.configure(sm_count=1)  # 11 CTAs of 416 threads would not all be resident
    check_agru(emulated, 11, 5, 100, dtype, True)
    check_window(emulated, 2, 9, 13, 4, 33, dtype)
    tile = 8 if dtype == torch.float32 else 4
    grids = {launch[0] for launch in emulated.launches()}
    assert ((11 + tile - 1) // tile, 1, 1) in grids and ((13 + tile - 1) // tile, 2, 1) in grids


@pytest.mark.parametrize("sm_count", [132, 1])
def test_weights_from_global_memory_when_shared_memory_is_small(emulated, sm_count):
    emulated.configure(smem_optin=8 * 1024, smem_per_sm=16 * 1024, sm_count=sm_count)
    check_agru(emulated, 3, 5, 33, torch.float64, False)
    check_window(emulated, 2, 7, 4, 3, 33, torch.float64)
    recurrences = [l for l in emulated.launches() if l[1][0] >= 32 and l[0][0] >= 1]
    assert all(smem <= 8 * 1024 for _, _, smem in recurrences)


def test_raises_the_smem_limit_only_with_the_attribute(emulated):
    """Above 48 KiB a launch needs cudaFuncSetAttribute (the emulator rejects it otherwise);
    H = 128 float64 AGRU needs ~260 KiB of weights: too much for an A100-like device."""
    emulated.configure(smem_optin=166912, smem_per_sm=167936)
    check_agru(emulated, 1, 3, 100, torch.float64, False)  # 160 KB of weights: fits after opt-in
    assert max(s for _, _, s in emulated.launches()) > 48 * 1024
    check_agru(emulated, 1, 3, 128, torch.float64, False)  # global-memory weights instead
    assert max(s for _, _, s in emulated.launches()[-2:]) < 48 * 1024


def test_unsupported_hidden_size_is_reported(emulated):
    emulated.configure(smem_optin=2048, smem_per_sm=4096)
    xproj, attn, w, b, h0, _ = agru_inputs(1, 3, 100, torch.float64)
    with pytest.raises(NotImplementedError, match="unsupported size"):
        emulated.agru_forward(xproj, attn, w, b, h0, False)
    (proj, pad, w, b, _), windows = window_inputs(1, 4, 2, 3, 100, torch.float64)
    with pytest.raises(NotImplementedError, match="unsupported size"):
        emulated.window_gru_forward(proj, pad, w, b, windows)
    assert emulated.launches() == []  # refused before launching anything


@pytest.mark.parametrize("order", [1, 2])
def test_results_do_not_depend_on_thread_order(emulated, order):
    """Threads run between barriers in identity, reversed or shuffled order: a data race would
    change the results; a race-free, deterministic kernel gives identical bits."""
    def run(order, seed):
        emulated.configure(order=order, seed=seed)
        torch.manual_seed(7)
        a = check_agru(emulated, 3, 6, 33, torch.float32, False)
        torch.manual_seed(8)
        w = check_window(emulated, 2, 9, 7, 5, 33, torch.float32)
        emulated.configure(sm_count=1, order=order, seed=seed)
        torch.manual_seed(9)
        t = check_window(emulated, 2, 9, 11, 5, 33, torch.float32)
        return [x for part in (a, w, t) for x in (part[0], part[1], *part[2])]
    base = run(0, 0)
    for seed in (1, 2):
        for x, y in zip(base, run(order, seed)):
            assert torch.equal(x, y)


# ---- CUDA device only ------------------------------------------------------------------------

@pytest.fixture
def cuda():
    require_cuda()
    return DeviceOps()


def _poison_cuda_cache():
    """Fill the caching allocator's free blocks with NaN so that unwritten outputs read as NaN:
    one large block (the large-allocation pool) and many small ones (the small-block pool)."""
    big = torch.full((1 << 26,), math.nan, device="cuda")
    small = [torch.full((1 << 16,), math.nan, device="cuda") for _ in range(256)]
    torch.cuda.synchronize()
    del big, small  # back to the allocator's pools, NaN-filled


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_outputs_fully_written_into_nan_poisoned_memory(cuda, dtype):
    _poison_cuda_cache()
    check_agru(cuda, 5, 8, 100, dtype, True)
    _poison_cuda_cache()
    check_window(cuda, 2, 9, 7, 5, 100, dtype)


def test_cuda_runs_are_bit_identical(cuda):
    xproj, attn, w, b, h0, go = [t.cuda() for t in agru_inputs(64, 10, 100, torch.float32)]
    first = torch.ops.aghmn_fast.agru_forward(xproj, attn, w, b, h0, False)
    second = torch.ops.aghmn_fast.agru_forward(xproj, attn, w, b, h0, False)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    g1 = torch.ops.aghmn_fast.agru_backward(go, attn, w, h0, *first, False)
    g2 = torch.ops.aghmn_fast.agru_backward(go, attn, w, h0, *first, False)
    assert all(torch.equal(x, y) for x, y in zip(g1, g2))
    (proj, pad, w, b, go), windows = window_inputs(2, 300, 1024, 10, 100, torch.float32)
    proj, pad, w, b, go, windows = (t.cuda() for t in (proj, pad, w, b, go, windows))
    out, gates = torch.ops.aghmn_fast.window_gru_forward(proj, pad, w, b, windows)
    g1 = torch.ops.aghmn_fast.window_gru_backward(go, w, windows, out, gates, 300)
    g2 = torch.ops.aghmn_fast.window_gru_backward(go, w, windows, out, gates, 300)
    assert all(torch.equal(x, y) for x, y in zip(g1, g2))


def test_cuda_graph_capture_and_replay(cuda):
    A = torch.ops.aghmn_fast
    xproj, attn, w, b, h0, go = [t.cuda() for t in agru_inputs(4, 10, 100, torch.float32)]
    (proj, pad, ww, wb, wgo), windows = window_inputs(2, 20, 16, 10, 100, torch.float32)
    proj, pad, ww, wb, wgo, windows = (t.cuda() for t in (proj, pad, ww, wb, wgo, windows))

    def step():
        out, gates = A.agru_forward(xproj, attn, w, b, h0, True)
        grads = A.agru_backward(go, attn, w, h0, out, gates, True)
        wout, wgates = A.window_gru_forward(proj, pad, ww, wb, windows)
        wgrads = A.window_gru_backward(wgo, ww, windows, wout, wgates, 20)
        return [out, gates, *grads, wout, wgates, *wgrads]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up (raises shared-memory limits) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for t in (xproj, attn, go, proj, wgo):  # new inputs in the captured buffers
        t.copy_(torch.randn_like(t) if t is not attn else torch.rand_like(t))
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for x, y in zip(captured, eager):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_backend_public_api_matches_reference(cuda, dtype, reverse):
    """aghmn_fast.ops.agru / memory_bank with backend="cuda": outputs and every gradient
    (inputs, attention, weights, biases, h0) against the float64 CPU reference."""
    B, T, D, H = 3, 11, 7, 33
    cpu = [torch.randn(B, T, D, dtype=D64), torch.rand(B, T, dtype=D64),
           torch.randn(2 * H, D, dtype=D64) * 0.3, torch.randn(2 * H, H, dtype=D64) * 0.3,
           torch.randn(2 * H, dtype=D64) * 0.1, torch.randn(2 * H, dtype=D64) * 0.1,
           torch.randn(B, H, dtype=D64)]
    cpu[1][:, 3] = 0
    ref_in = [t.clone().requires_grad_(True) for t in cpu]
    dev_in = [t.to("cuda", dtype).requires_grad_(True) for t in cpu]
    go, gh = torch.randn(B, T, H, dtype=D64), torch.randn(B, H, dtype=D64)
    out, hn = reference.agru(*ref_in, reverse=reverse)
    ((out * go).sum() + (hn * gh).sum()).backward()
    dout, dhn = ops.agru(*dev_in, reverse=reverse, backend="cuda")
    ((dout * go.to(dout)).sum() + (dhn * gh.to(dhn)).sum()).backward()
    assert_matches(dout.cpu(), out.detach(), dtype, "output")
    for name, r, d in zip(("x", "attn", "w_ih", "w_hh", "b_ih", "b_hh", "h0"), ref_in, dev_in):
        assert_matches(d.grad.cpu(), r.grad, dtype, f"grad {name}")

    N, Q, K = 12, 9, 5
    u = torch.randn(N, H, dtype=D64)
    windows = make_windows(Q, K, N)
    flat = [torch.randn(s, dtype=D64) * 0.2 for s in ((3 * H, H), (3 * H, H), (3 * H,), (3 * H,))] * 2
    ref_in = [t.clone().requires_grad_(True) for t in [u] + flat]
    dev_in = [t.to("cuda", dtype).requires_grad_(True) for t in [u] + flat]
    gm = torch.randn(Q, K, H, dtype=D64)
    (reference.memory_bank(ref_in[0], windows, ref_in[1:]) * gm).sum().backward()
    mem = ops.memory_bank(dev_in[0], windows.cuda(), dev_in[1:], backend="cuda")
    (mem * gm.to(mem)).sum().backward()
    for i, (r, d) in enumerate(zip(ref_in, dev_in)):
        assert_matches(d.grad.cpu(), r.grad, dtype, f"memory_bank grad {i}")


def test_cuda_unsupported_size_raises_and_public_api_falls_back(cuda, monkeypatch):
    H = 4200  # float64 window backward buffers (7 H doubles) exceed any GPU's shared memory
    windows = torch.tensor([[-1, 0], [0, 1]])
    proj, pad = torch.randn(1, 2, 3 * H, dtype=D64), torch.randn(1, 3 * H, dtype=D64)
    w, b = torch.randn(1, 3 * H, H, dtype=D64) * 0.01, torch.randn(1, 3 * H, dtype=D64)
    with pytest.raises(NotImplementedError, match="unsupported size"):
        cuda.window_gru_forward(proj, pad, w, b, windows)
    # The next backend would be Triton where it runs; pin it to the reference, and count.
    monkeypatch.delitem(registry._REGISTRY, "triton", raising=False)
    ref = registry._REGISTRY["reference"]
    fallbacks = []
    monkeypatch.setattr(ref, "memory_bank", lambda *args: fallbacks.append(args[0].device)
                        or reference.memory_bank(*args))
    u = torch.randn(2, H, dtype=D64)
    flat = [w[0], w[0], b[0], b[0]]
    want = reference.memory_bank(u, windows, flat)
    got = ops.memory_bank(u.cuda(), windows.cuda(), [t.cuda() for t in flat], backend="cuda")
    assert len(fallbacks) == 1
    torch.testing.assert_close(got.cpu(), want)


# ---- without CUDA kernels --------------------------------------------------------------------

def test_backend_reports_why_it_is_missing():
    available = ops.backends()  # loads the extension (when built) and every backend
    if "cuda" in available:
        pytest.skip("the cuda backend is available here")
    assert "cuda" not in available
    reason = ops.backend_errors().get("cuda", "")
    assert reason.startswith("ImportError") and "CUDA" in reason


@pytest.fixture
def fresh_cuda_backend(monkeypatch):
    """The extension's backends registered again as if it had CUDA kernels (to run on CPU
    tensors); the registry restored afterwards. Yields :mod:`aghmn_fast.ops.extension`."""
    from aghmn_fast.ops import extension, registry
    ops.backends()
    if "cpu" not in ops.backends("cpu"):
        pytest.skip(f"the compiled extension is not built: {ops.backend_errors().get('cpu')}")
    saved, errors = dict(registry._REGISTRY), dict(registry._LOAD_ERRORS)
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", lambda op, key: True)
    try:
        registry.reload()
        yield extension
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
        registry._LOAD_ERRORS.clear()
        registry._LOAD_ERRORS.update(errors)


def test_cuda_backend_registers_and_falls_back(fresh_cuda_backend, monkeypatch):
    """The registry's wiring of the CUDA kernels: registration, fallback when the capability
    check says no (dtypes the kernels do not run) and when the extension refuses
    (NotImplementedError, by type: a size that does not fit or no kernel image for the GPU),
    other errors passed through."""
    mod = fresh_cuda_backend
    cuda = registry._REGISTRY["cuda"]
    assert cuda.devices == ("cuda",) and cuda.priority == 20 and cuda.implementation == "extension"
    assert cuda.supports is mod.kernels_support and cuda.refuses == (NotImplementedError,)
    assert ops.resolve_backend("extension", torch.device("cuda")) is cuda
    # CPU tensors stand in for CUDA ones: the "cuda" backend runs on them, the capability
    # check by dtype only; the next backend for CPU tensors is counted.
    monkeypatch.setattr(cuda, "devices", ("cuda", "cpu"))
    monkeypatch.setattr(cuda, "supports",
                        lambda spec, first, hidden, steps: first.dtype in mod._DTYPES)
    fallbacks = []
    for name in ("cpu", "reference"):
        backend = registry._REGISTRY[name]
        monkeypatch.setitem(backend.functions, "agru", lambda *args, fn=backend.agru:
                            fallbacks.append(args[0].dtype) or fn(*args))
    x, attn = torch.randn(2, 4, 3, dtype=D64), torch.rand(2, 4, dtype=D64)
    w_ih, w_hh = torch.randn(10, 3, dtype=D64), torch.randn(10, 5, dtype=D64)
    want, _ = reference.agru(x, attn, w_ih, w_hh)

    for message in ("agru_forward (CUDA): unsupported size: hidden size 5 ...",
                    "agru_forward (CUDA): no kernel image for this GPU (...)"):
        def refused(*args, message=message):
            raise NotImplementedError(message)
        monkeypatch.setitem(cuda.functions, "agru", refused)
        torch.testing.assert_close(ops.agru(x, attn, w_ih, w_hh, backend="cuda")[0], want)
    assert len(fallbacks) == 2

    def bad_input(*args):
        raise RuntimeError("agru_forward: attn must have shape [2, 4]")
    monkeypatch.setitem(cuda.functions, "agru", bad_input)
    with pytest.raises(RuntimeError, match="attn must have shape"):
        ops.agru(x, attn, w_ih, w_hh, backend="cuda")

    half = [t.to(torch.bfloat16) for t in (x, attn, w_ih, w_hh)]
    ops.agru(*half, backend="cuda")  # never reaches the kernels (bad_input would raise)
    assert fallbacks == [D64, D64, torch.bfloat16]


def test_cuda_backend_capability_and_shape_check(fresh_cuda_backend):
    """runs_on: SASS sm_80 / sm_90 by binary compatibility, PTX compute_90 for newer GPUs;
    fits: dtype, hidden size and the shared memory of the smallest launch layout."""
    mod = fresh_cuda_backend
    for cap, ok in (((7, 5), False), ((8, 0), True), ((8, 6), True), ((8, 9), True),
                    ((9, 0), True), ((10, 0), True), ((12, 0), True)):
        assert mod.runs_on(cap) is ok, cap
    smem = 227 * 1024
    agru, window_gru = (ops.registry.OPS[name][0] for name in ("agru", "window_gru"))
    assert mod.fits((9, 0), smem, torch.float32, 100, 40, agru)
    assert mod.fits((9, 0), smem, torch.float64, 300, 40, window_gru)
    assert not mod.fits((7, 5), smem, torch.float32, 100, 40, agru)
    assert not mod.fits((9, 0), smem, torch.bfloat16, 100, 40, agru)
    assert not mod.fits((9, 0), smem, torch.float32, mod.MAX_HIDDEN + 1, 40, agru)
    # state buffers alone beyond the device's shared memory: refused before any launch
    assert not mod.fits((9, 0), 48 * 1024, torch.float64, 2000, 10, window_gru)
    assert mod.fits((9, 0), 48 * 1024, torch.float32, 1000, 10, window_gru)
    assert not mod.kernels_support(agru, torch.zeros(1), 100, 10)  # not a CUDA tensor
