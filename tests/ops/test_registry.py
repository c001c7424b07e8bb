"""The op-generic machinery: every op is its folder's spec, and nothing that loads, registers or
sweeps the ops names one (so the file list of docs/ARCHITECTURE.md "Adding an op" is true)."""
import ast
import pathlib
import re

import pytest
import torch

from aghmn_fast import ops
from aghmn_fast.ops import registry
from aghmn_fast.ops.spec import specs

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: The files that load, register, dispatch or sweep the ops, for every op at once: none may
#: name an op (docs/ARCHITECTURE.md lists them as the files a new op does NOT touch).
GENERIC = ["aghmn_fast/ops/registry.py", "aghmn_fast/ops/extension.py",
           "aghmn_fast/ops/common.py", "aghmn_fast/ops/spec.py", "tests/ops/conformance.py"]


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


def test_no_op_is_named_in_the_generic_files():
    words = _op_words()
    # "_" separates words too: register_agru_autograd names an op
    pattern = re.compile("|".join(rf"(?<![A-Za-z0-9]){re.escape(w)}(?![A-Za-z0-9])"
                                  for w in sorted(words, key=len, reverse=True)))
    for rel in GENERIC:
        found = sorted({m.group(0) for name in _names_in_code(ROOT / rel)
                        for m in pattern.finditer(name)})
        assert not found, f"{rel} names ops: {found}"


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
