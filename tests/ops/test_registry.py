"""The op-generic machinery: every op is its folder's spec, and nothing that loads, registers,
builds, compiles or sweeps the ops names one (so the file list of docs/ARCHITECTURE.md "A new
op" is true); a toy op made at run time as a folder of its own is picked up with no other edit."""
import ast
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from aghmn_fast import ops
from aghmn_fast.ops import registry
from aghmn_fast.ops.catalog import specs

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: The files that load, register, dispatch, build, compile or sweep the ops, for every op at
#: once: none may name an op (docs/ARCHITECTURE.md lists them as the files a new op does NOT
#: touch). Python files are read without docstrings and comments, the others without comments.
GENERIC = ["aghmn_fast/ops/registry.py", "aghmn_fast/ops/extension.py",
           "aghmn_fast/ops/common.py", "aghmn_fast/ops/spec.py", "aghmn_fast/ops/catalog.py",
           "aghmn_fast/_extension.py",
           "aghmn_fast/ops/compile_check.py", "aghmn_fast/ops/triton_common.py",
           "aghmn_fast/ops/cuda_arches.py", "tests/ops/conformance.py", "tests/cuda_emulator.py",
           "tests/conftest.py", "setup.py", "CMakeLists.txt", "csrc/tests/emulated_kernels.cpp",
           "csrc/tests/emulated_abi.h", "csrc/tests/simt_emulator.h",
           "csrc/common/recurrence.cuh", "csrc/common/launch_plan.h",
           "csrc/common/cuda_kernels.h", "csrc/common/cuda_launch.h"]


def _names_in_code(path: pathlib.Path):
    """Identifiers, attribute names and string constants of a file, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings):
            yield node.value


def _names_in_text(path: pathlib.Path):
    """A C++ or CMake file's text without its comments (``//``, ``/* */``; ``#`` in CMake)."""
    text = path.read_text()
    if path.name == "CMakeLists.txt":
        return [re.sub(r"#.*", "", line) for line in text.splitlines()]
    return [re.sub(r"//.*", "", line)
            for line in re.sub(r"/\*.*?\*/", "", text, flags=re.S).splitlines()]


def _names_in(path: pathlib.Path):
    return _names_in_code(path) if path.suffix == ".py" else _names_in_text(path)


def _op_words():
    """Every op folder's name, public functions and raw ops."""
    words = set()
    for spec in specs():
        words |= {spec.name, *spec.raw_ops, *(f.name for f in spec.functions)}
    return words


def test_every_op_folder_declares_itself():
    folders = sorted(p.parent.name for p in (ROOT / "aghmn_fast" / "ops").glob("*/op.py"))
    assert [s.name for s in specs()] == folders and folders
    for spec in specs():
        assert (ROOT / "csrc" / spec.name).is_dir(), spec.name
        assert (ROOT / "tests" / "ops" / f"test_{spec.name}.py").is_file(), spec.name
        schemas = (ROOT / "csrc" / "library.cpp").read_text()
        for raw in spec.raw_ops:
            assert re.search(rf'm\.def\(\s*"{raw}\(', schemas), raw
        assert spec.min_shared_bytes(100, 10, 4) > 0


def _op_pattern(words):
    # "_" separates words too: register_agru_autograd names an op
    return re.compile("|".join(rf"(?<![A-Za-z0-9]){re.escape(w)}(?![A-Za-z0-9])"
                               for w in sorted(words, key=len, reverse=True)))


def _ops_named(path: pathlib.Path, words):
    pattern = _op_pattern(words)
    return sorted({m.group(0) for name in _names_in(path) for m in pattern.finditer(name)})


def test_no_op_is_named_in_the_generic_files():
    words = _op_words()
    for rel in GENERIC:
        found = _ops_named(ROOT / rel, words)
        assert not found, f"{rel} names ops: {found}"


def test_the_scan_sees_an_op_named_in_code_but_not_in_comments(tmp_path):
    """The check above can fail: a name in code counts, in Python, C++ and CMake alike; the
    same name in a comment or docstring does not."""
    words = _op_words()
    op = sorted(words)[0]
    cases = {"a.py": (f'"""{op}"""\nx = 1  # {op}\n', f"from .{op}.triton import kernel\n"),
             "a.cpp": (f"// {op}\n/* {op}\n */ int x;\n", f'#include "{op}/{op}_kernels.cu"\n'),
             "CMakeLists.txt": (f"# {op}\nset(A b)\n", f"set(A csrc/{op})\n")}
    for name, (clean, naming) in cases.items():
        path = tmp_path / name
        path.write_text(clean)
        assert _ops_named(path, words) == [], name
        path.write_text(clean + naming)
        assert _ops_named(path, words) == [op], name


def test_a_backend_gets_every_op_and_the_reference_for_those_it_leaves_out(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    calls = []
    some = next(iter(registry.OPS))
    ops.register_backend("test-partial", devices=("cpu",), priority=-99,
                         **{some: lambda *a: calls.append(a) or "mine"})
    backend = registry._REGISTRY["test-partial"]
    assert set(backend.functions) == set(registry.OPS)
    for name, (_, fn) in registry.OPS.items():
        assert backend.functions[name] is (backend.functions[some] if name == some
                                           else fn.reference)
    assert getattr(backend, some) is backend.functions[some]
    with pytest.raises(ValueError, match="no op named lstm"):
        ops.register_backend("test-bad", devices=("cpu",), priority=0, lstm=lambda: None)


def test_cuda_choice_has_one_default_and_only_measured_exceptions():
    assert registry.CUDA_DEFAULT == ("cuda", "triton")
    assert all(row != registry.CUDA_DEFAULT for row in registry.CUDA_CHOICE.values())
    cuda = torch.device("cuda")
    for name in registry.OPS:
        assert registry.CUDA_CHOICE.get((name, "latency"), registry.CUDA_DEFAULT)
        assert ops.resolve_backend("reference", cuda, name, 1).name == "reference"


# ---- a worked example: a new op is its folder, and nothing else is edited --------------------

#: A toy op folder, written into a copy of the package: raw op ``toy_double_forward`` and public
#: function ``toy_double`` (y = 2 x). Pure PyTorch stands in for its kernels (it has no C++, so
#: the compiled extension, whose raw ops come from csrc/, is not among its implementations),
#: plus one Triton kernel for the compile check to find.
TOY_OP = '''
"""A toy op made by tests/ops/test_registry.py: y = 2 x."""
import torch

from ..spec import Function, OpSpec


def toy_double_forward(x):
    return (x * 2,)


def toy_double_ref(x):
    return x + x


def toy_double_fused(kernels, x):
    return kernels.toy_double_forward(x)[0]


def _triton_compile():
    from .triton import COMPILE_TARGETS
    return COMPILE_TARGETS


SPEC = OpSpec(
    name="toy", raw_ops=("toy_double_forward",),
    functions=(Function("toy_double", toy_double_ref, toy_double_fused,
                        lambda x: (x, x.shape[-1], 1)),),
    register_autograd=lambda kernels: None, register_fakes=lambda kernels: None,
    load_triton=lambda: {"toy_double_forward": toy_double_forward},
    min_shared_bytes=lambda hidden, steps, itemsize: 0,
    output_shapes={"toy_double_forward": lambda x: (tuple(x.shape),)},
    triton_compile=_triton_compile)
'''

TOY_TRITON = '''
import triton
import triton.language as tl

from ..triton_common import CompileTargets


@triton.jit
def _toy_double_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + at, 2 * tl.load(x_ptr + at, mask=at < n), mask=at < n)


COMPILE_TARGETS = CompileTargets(
    gates=1, recurrences=(),
    per_hidden=((_toy_double_kernel, lambda H: dict(BLOCK=triton.next_power_of_2(H),
                                                    num_warps=1)),))
'''

#: The lines the toy op adds to the two edited Python files (its public function, its reference).
TOY_EDITS = {"ops/__init__.py": '''

def toy_double(x, backend=None):
    """y = 2 x (the toy op of tests/ops/test_registry.py)."""
    return call("toy_double", backend, x.shape[0], (x,))
''', "reference.py": '''
from .ops.toy.op import toy_double_ref as toy_double  # noqa: E402
'''}

#: Run in a fresh interpreter on the copy: the generic machinery, untouched, sees the toy op.
TOY_CHECK = '''
import sys
import torch
from aghmn_fast import ops
from aghmn_fast.ops import compile_check as cc, registry
from aghmn_fast.ops.common import Kernels
from aghmn_fast.ops.catalog import specs
import conformance
import cuda_emulator

assert ops.__file__.startswith(sys.argv[1]), ops.__file__
assert "toy" in [s.name for s in specs()]
x = torch.randn(3, 5, dtype=torch.float64)
from aghmn_fast.reference import toy_double
assert torch.equal(toy_double(x), 2 * x) and torch.equal(ops.toy_double(x), 2 * x)

# registry: every backend has the op (the reference, Triton in its interpreter) ...
assert "toy_double" in registry.OPS and "triton" in ops.backends("cpu"), ops.backend_errors()
for name in ops.backends("cpu"):
    assert torch.equal(registry.call("toy_double", name, 3, (x,)), 2 * x), name
# ... and so does a backend built on an implementation's raw Kernels (its fused path)
kernels = Kernels({"toy_double_forward": lambda t: (t * 2,)})
ops.register_backend("toy-impl", devices=("cpu",), priority=-5, **registry.functions_on(kernels))
assert torch.equal(registry.call("toy_double", "toy-impl", 3, (x,)), 2 * x)

# the conformance harness: its raw op, and the public function through any implementation
assert "toy_double_forward" in conformance.raw_op_names()
for backend in (None, "reference", "triton"):
    impl = conformance.Implementation("toy", torch.device("cpu"), kernels, backend, False)
    assert torch.equal(impl.toy_double(x), 2 * x), backend

# the emulator harness: it knows the raw op's outputs, and says which entry point is missing
import types
lib = types.SimpleNamespace(**{name: lambda *args: None for name in (
    "emu_configure", "emu_take_message", "emu_launch_record", "emu_clear_launches")})
lib.emu_max_dims = lambda: 8
emulated = cuda_emulator.EmulatedOps(lib)
assert emulated.output_shapes["toy_double_forward"](x) == ((3, 5),)
try:
    emulated.toy_double_forward
    raise AssertionError("an emulated toy op without C++")
except AttributeError as exc:
    assert "emu_toy_double_forward" in str(exc), exc

# compile_check: the toy's kernel is among the variants, with its signature
chosen = [v for v in cc.variants((100,), (torch.float32,), rows=(1,), tf32=(False,))
          if cc.label(v).startswith("_toy_double_kernel ")]
assert [cc.label(v) for v in chosen] == [
    "_toy_double_kernel fp32 align=16 warps=1 BLOCK=128"], [cc.label(v) for v in chosen]
assert cc._signature(chosen[0]["kernel"], torch.float32, {"BLOCK": 128}) == {
    "x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
print("toy op ok")
'''


def test_a_toy_op_folder_is_picked_up_with_no_other_edit(tmp_path):
    """docs/ARCHITECTURE.md "A new op", worked: a copy of the package plus one new folder
    ``ops/toy/`` (op.py, triton.py) and the public function and reference lines (TOY_EDITS),
    no other change: the registry, ``Kernels``, the conformance harness, the emulator harness
    and compile_check all handle the new op."""
    copy = tmp_path / "aghmn_fast"
    shutil.copytree(ROOT / "aghmn_fast", copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    toy = copy / "ops" / "toy"
    toy.mkdir()
    (toy / "__init__.py").write_text("")
    (toy / "op.py").write_text(textwrap.dedent(TOY_OP))
    (toy / "triton.py").write_text(textwrap.dedent(TOY_TRITON))
    for rel, lines in TOY_EDITS.items():
        with open(copy / rel, "a") as f:
            f.write(lines)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), str(ROOT / "tests"), str(ROOT / "tests" / "ops")]))
    run = subprocess.run([sys.executable, "-c", TOY_CHECK, str(tmp_path)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "toy op ok" in run.stdout, run.stderr[-4000:]
