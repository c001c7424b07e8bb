"""The register-resident CUDA recurrences and the shared-memory access patterns of the kernels.

At small batches (the latency plan, at most one CTA per SM) the kernels of
csrc/common/recurrence.cuh keep each lane's slice of weight_hh in registers for the whole time loop
(``WeightsIn::kRegisters``) where a variant is instantiated: float AGRU up to H = 128, double AGRU
and float window GRU up to H = 64; elsewhere weight_hh stays in shared (or global) memory. These
tests run the very kernel sources on the CPU SIMT emulator (tests/cuda_emulator.py) against the
float64 references of tests/helpers/op_cases.py, read which kernel each launch ran from the
emulator's launch record, and compute the shared-memory banks that the 32 lanes of each warp
instruction hit, with the kernels' own index functions (through the emulator build's C ABI).
"""
from __future__ import annotations

import collections
import ctypes

import pytest
import torch

from cuda_emulator import DeviceOps, require_cuda
from helpers.cuda_checks import check_agru, check_window


@pytest.fixture(params=["emulated", "cuda"])
def executor(request):
    """The raw ops on the SIMT emulator, and on the CUDA device where one exists."""
    if request.param == "cuda":
        require_cuda()
        return DeviceOps()
    return request.getfixturevalue("emulated")


DTYPES = (torch.float32, torch.float64)
REGISTERS, SHARED, GLOBAL = 2, 1, 0  # WeightsIn


def kernels(emulated):
    """The kernel (name with template arguments) of each launch since configure()."""
    lib = emulated.lib
    lib.emu_launch_kernel.restype = ctypes.c_char_p
    lib.emu_launch_kernel.argtypes = [ctypes.c_int]
    return [lib.emu_launch_kernel(i).decode() for i in range(lib.emu_launch_count())]


def recurrences(emulated):
    """(kernel, grid, block, smem) of the recurrence launches since configure()."""
    return [(name, *launch) for name, launch in zip(kernels(emulated), emulated.launches())
            if "recurrence_" in name]


def in_registers(name):
    return "WeightsIn::kRegisters" in name


def has_register_variant(dtype, gates, hidden):
    """Mirror of recurrence.cuh's instantiation rule (slices of 16 or 32 per lane, 4 lanes per
    unit, at most 256 bytes of weights per lane), to state each case's expected kernel."""
    size = 4 if dtype == torch.float32 else 8
    return any(hidden <= 4 * s and gates * s * size <= 256 for s in (16, 32))


# ---- correctness and the kernel each launch ran ----------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("H", [5, 33, 64, 100, 128])
@pytest.mark.parametrize("B", [1, 2])
def test_agru_latency_plan_matches_reference(executor, B, H, reverse, dtype):
    """Outputs, gates and every gradient against the float64 reference; on the emulator, the
    forward and the backward ran the register kernel exactly where a variant exists."""
    check_agru(executor, B, 7, H, dtype, reverse)
    if isinstance(executor, DeviceOps):
        return
    launched = recurrences(executor)
    assert [n.split("<")[0].rsplit("::", 1)[-1] for n, *_ in launched] == [
        "recurrence_forward", "recurrence_backward"]
    want = has_register_variant(dtype, 2, H)
    for name, grid, block, smem in launched:
        assert in_registers(name) is want, name
        assert grid == (B, 1, 1)  # one sequence per CTA
        assert block == (4 * ((H + 7) // 8 * 8), 1, 1)  # 4 lanes per unit, whole warps
        if want:  # no weight tile in shared memory: state vectors and biases only
            assert smem < 4 * 128 * dtype.itemsize * 4


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("H", [5, 33, 64, 100])
def test_window_gru_latency_plan_matches_reference(emulated, H, dtype):
    """The window GRU's latency plan uses the same kernels: registers for float up to H = 64."""
    check_window(emulated, 2, 9, 7, 4, H, dtype)
    launched = recurrences(emulated)
    assert len(launched) == 2
    want = has_register_variant(dtype, 3, H)
    for name, grid, _, _ in launched:
        assert in_registers(name) is want, name
        assert grid == (7, 2, 1)


def test_register_kernel_needs_an_sm_per_cta(emulated):
    """More CTAs than SMs: the latency plan keeps weight_hh in shared memory (a register-resident
    CTA may need a whole SM's register file); the results are the same."""
    emulated.configure(sm_count=2)
    check_agru(emulated, 2, 5, 33, torch.float32, False)
    assert all(in_registers(n) for n, *_ in recurrences(emulated))
    emulated.configure(sm_count=2)
    check_agru(emulated, 3, 5, 33, torch.float32, False)
    launched = recurrences(emulated)
    assert launched and not any(in_registers(n) for n, *_ in launched)
    assert all("WeightsIn::kShared" in n and "TileConfig<1, 4, 512>" in n for n, *_ in launched)


def test_register_kernel_with_little_shared_memory(emulated):
    """The register kernel needs no weight tile: it runs where the weights would not fit in
    shared memory (the shared-memory kernels would read them from global memory)."""
    emulated.configure(smem_optin=8 * 1024, smem_per_sm=16 * 1024)
    check_agru(emulated, 1, 6, 128, torch.float32, True)
    launched = recurrences(emulated)
    assert all(in_registers(n) and smem <= 8 * 1024 for n, _, _, smem in launched)


@pytest.mark.parametrize("order", [1, 2])
def test_register_kernel_results_do_not_depend_on_thread_order(emulated, order):
    """Threads run between barriers in identity, reversed or shuffled order: a race on the
    double-buffered state or gate gradients would change the bits."""
    def run(order, seed):
        out = []
        for i, (dtype, reverse) in enumerate([(torch.float32, False), (torch.float64, True)]):
            emulated.configure(order=order, seed=seed)
            torch.manual_seed(11 + i)
            a = check_agru(emulated, 2, 6, 33, dtype, reverse)
            assert all(in_registers(n) for n, *_ in recurrences(emulated))
            out += [a[0], a[1], *a[2]]
        emulated.configure(order=order, seed=seed)
        torch.manual_seed(13)
        w = check_window(emulated, 2, 9, 5, 4, 33, torch.float32)
        assert all(in_registers(n) for n, *_ in recurrences(emulated))
        return out + [w[0], w[1], *w[2]]
    base = run(0, 0)
    for seed in (1, 2):
        for x, y in zip(base, run(order, seed)):
            assert torch.equal(x, y)


# ---- shared-memory bank conflicts ------------------------------------------------------------

PATTERNS = {"staging": 0, "weight_reads": 1, "vector_reads": 2}


#: gate blocks -> the recurrence cell's options (attention gradient in the backward, slot
#: indices staged by the forward) of the op with that many: the AGRU (2), the window GRU (3).
CELL_OPTIONS = {2: lambda backward: (backward, False), 3: lambda backward: (False, not backward)}


def smem_accesses(emulated, pattern, dtype, gates, hidden, rows, backward):
    """(offsets [instructions, 32] in elements, -1 = inactive lane; info) of an access pattern of
    the plan the launchers pick (see emu_smem_accesses in csrc/tests/emulated_kernels.cpp)."""
    lib = emulated.lib
    i64, i32, p64 = ctypes.c_int64, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)
    lib.emu_smem_accesses.restype = i64
    lib.emu_smem_accesses.argtypes = [i32, i32, i64, i64, i64, i32, i32, i32, p64, i64, p64]
    info = (ctypes.c_int64 * 8)()
    attn_grad, slot_index = CELL_OPTIONS[gates](backward)
    args = (PATTERNS[pattern], 0 if dtype == torch.float32 else 1, gates, hidden, rows,
            int(backward), int(attn_grad), int(slot_index))
    n = lib.emu_smem_accesses(*args, None, 0, info)
    assert n >= 0, n
    buf = (ctypes.c_int64 * max(1, n * 32))()
    assert lib.emu_smem_accesses(*args, buf, n, info) == n
    keys = ("weights", "slice", "throughput", "ldw", "ldv", "access_bytes", "padded_smem",
            "padded")
    return torch.tensor(list(buf)[: n * 32]).view(n, 32), dict(zip(keys, list(info)))


def wavefronts(offsets, elem_bytes, access_bytes):
    """Shared-memory wavefronts one warp instruction needs beyond the minimum, as a ratio: 1
    when conflict-free. Banks are 4-byte words, 32 of them; an access of `access_bytes` per lane
    is served 128 bytes at a time (32, 16 or 8 lanes a phase); lanes reading the same word share
    it (a broadcast)."""
    per_phase = 128 // access_bytes
    worst = 1
    for start in range(0, 32, per_phase):
        banks = collections.defaultdict(set)
        for off in offsets[start:start + per_phase]:
            if off < 0:
                continue
            first = off * elem_bytes // 4
            for word in range(first, first + access_bytes // 4):
                banks[word % 32].add(word)
        worst = max([worst] + [len(words) for words in banks.values()])
    return worst


def test_bank_model_sees_the_old_staging_conflicts():
    """The check can fail: the former forward staging stored element (k, c) at k * ldw + c with
    consecutive threads on consecutive k (ldw = 200 at H = 100): 8-way conflicts."""
    old = [k * 200 + 7 for k in range(32)]
    assert wavefronts(old, 4, 4) == 8
    assert wavefronts(list(range(32)), 4, 4) == 1
    assert wavefronts([0] * 32, 8, 8) == 1  # a broadcast
    assert wavefronts([2 * i for i in range(32)], 4, 4) == 2
    assert wavefronts([4 * (i % 4) for i in range(32)], 4, 16) == 1  # 4 pieces, broadcast


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shared_weight_accesses_are_conflict_free(emulated, dtype, backward):
    """Staging stores and the contraction's weight reads of the shared-memory kernels, in the
    plans the launchers pick (latency and throughput configurations; one SM, so that the
    latency plan does not go to registers): one wavefront per 128 bytes in every warp
    instruction, for odd and round hidden sizes. The one exception is unavoidable: when only
    the unpadded weight tile fits in shared memory, its reads may conflict (the kernel still runs
    rather than falling back to global memory)."""
    emulated.configure(sm_count=1)
    checked, configs, unpadded = 0, set(), []
    for rows in (2, 64):
        for gates in (2, 3):
            for hidden in (5, 33, 64, 100, 128, 256):
                for pattern in ("staging", "weight_reads"):
                    offsets, info = smem_accesses(emulated, pattern, dtype, gates, hidden, rows,
                                                  backward)
                    if info["weights"] != SHARED:
                        assert len(offsets) == 0
                        continue
                    assert info["weights"] == SHARED and info["slice"] == 0
                    configs.add(info["throughput"])
                    worst = max(wavefronts(i, dtype.itemsize, info["access_bytes"])
                                for i in offsets.tolist())
                    if pattern == "weight_reads" and not info["padded"]:
                        assert info["padded_smem"] > emulated.DEFAULTS["smem_optin"], info
                        unpadded.append((gates, hidden, worst))
                        continue
                    assert worst == 1, (pattern, rows, gates, hidden, info)
                    checked += len(offsets)
    assert configs == {0, 1} and checked > 1000
    print("unpadded weight tiles (gates, hidden, wavefronts):", unpadded)
    assert len(unpadded) <= 2, unpadded  # the largest tiles that fit only (H = 128, 3 gates)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_register_kernel_vector_reads_are_conflict_free(emulated, dtype, backward):
    """The register kernels read the state (forward) or gate gradients (backward) as 16-byte
    pieces that every unit of a warp shares: one wavefront per quarter warp."""
    seen = 0
    for gates in (2, 3):
        for hidden in (5, 33, 64, 100, 128):
            offsets, info = smem_accesses(emulated, "vector_reads", dtype, gates, hidden, 1,
                                          backward)
            assert (info["weights"] == REGISTERS) is has_register_variant(dtype, gates, hidden)
            if info["weights"] != REGISTERS:
                continue
            assert info["access_bytes"] == 16 and info["ldv"] == 4 * info["slice"] >= hidden
            for instruction in offsets.tolist():
                assert wavefronts(instruction, dtype.itemsize, 16) == 1, (gates, hidden)
            seen += 1
    assert seen == (5 if dtype == torch.float32 else 3) + (3 if dtype == torch.float32 else 0)
