"""The package's import graph, read from the source with ``ast``: every ``import`` and ``from ...
import`` of every module, at the top or inside a function (lazy), and ``importlib.import_module``
of a literal name. No module may reach itself through imports (no loop, lazy ones included), and
the layers import downwards only: the command line above training, training above inference.
The same holds for ``aghmn_runtime`` (the runtime distribution, with the server)."""
import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "aghmn_fast"
RUNTIME_PACKAGE = REPO / "runtime" / "aghmn_runtime"


def _top_package_attributes(tree, modules):
    """aghmn_fast/__init__.py loads its ``_SUBMODULES`` on first use (PEP 562)."""
    for assign in tree.body:
        if isinstance(assign, ast.Assign) and getattr(assign.targets[0], "id", "") == "_SUBMODULES":
            return [f"aghmn_fast.{n}" for n in ast.literal_eval(assign.value)]
    raise AssertionError("aghmn_fast/__init__.py has no _SUBMODULES")


# The two places that import a computed name, and what they can import.
COMPUTED_IMPORTS = {
    "aghmn_fast": _top_package_attributes,
    # the op registry discovers every op package's op.py
    "aghmn_fast.ops.catalog": lambda tree, modules: [m for m in modules if m.startswith("aghmn_fast.ops.")
                                                  and m.endswith(".op")],
    # the server's torch recognizer: aghmn_fast.serving_plugin, another distribution's module
    "aghmn_runtime.serving.recognizers": lambda tree, modules: [],
}


def _module_names(root=PACKAGE):
    """Dotted name -> file, for every module of the package (a package is its __init__.py)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_package(path):
    return path.name == "__init__.py"


def _resolve(importer, path, level, module):
    base = importer.split(".") if _is_package(path) else importer.split(".")[:-1]
    if level:
        base = base[:len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))
    return module


def imports_of(name, path, modules):
    """The package's modules that module ``name`` (file ``path``) imports, lazily or not."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = _resolve(name, path, node.level, node.module)
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                targets.append(sub if sub in modules else origin)
        elif (isinstance(node, ast.Call) and node.args
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            arg = node.args[0]
            if isinstance(arg, ast.Constant):
                level = len(arg.value) - len(arg.value.lstrip("."))
                targets = [_resolve(name, path, level, arg.value.lstrip(".")) if level else arg.value]
            else:  # a computed name: only where its targets are known (COMPUTED_IMPORTS)
                assert name in COMPUTED_IMPORTS, f"{path}: import_module of a computed name"
                targets = COMPUTED_IMPORTS[name](tree, modules)
        for target in targets:
            # the longest module of the package that the dotted name starts with
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root=PACKAGE):
    modules = _module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def loops(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def test_the_scan_sees_lazy_relative_and_literal_imports(tmp_path):
    root = tmp_path / "aghmn_fast"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "a.py").write_text("def f():\n    from . import b\n")
    (root / "sub" / "b.py").write_text("from ..c import x\n")
    (root / "c.py").write_text("import importlib\ndef g():\n    importlib.import_module('aghmn_fast.sub.a')\n")
    graph = import_graph(root)
    assert graph["aghmn_fast.sub.a"] == {"aghmn_fast.sub.b"}
    assert graph["aghmn_fast.sub.b"] == {"aghmn_fast.c"}
    assert graph["aghmn_fast.c"] == {"aghmn_fast.sub.a"}
    assert loops(graph) == [{"aghmn_fast.sub.a", "aghmn_fast.sub.b", "aghmn_fast.c"}]


@pytest.mark.parametrize("root", [PACKAGE, RUNTIME_PACKAGE], ids=lambda p: p.name)
def test_no_import_loop_in_the_package(root):
    found = [sorted(loop) for loop in loops(import_graph(root))]
    assert not found, f"import loops: {found}"


LAYERS = [   # (lower, upper): nothing in lower imports upper
    ("aghmn_fast.training", "aghmn_fast.cli"),
    ("aghmn_fast.streaming", "aghmn_fast.training"),
    ("aghmn_fast.models", "aghmn_fast.training"),
    ("aghmn_fast.models", "aghmn_fast.streaming"),
    ("aghmn_fast.data", "aghmn_fast.models"),
    ("aghmn_fast.ops", "aghmn_fast.models"),
]


def test_layers_import_downwards():
    graph = import_graph()   # one graph for every rule; the message names each rule broken
    wrong = {}
    for lower, upper in LAYERS:
        found = sorted((m, t) for m, targets in graph.items() if m == lower or m.startswith(lower + ".")
                       for t in targets if t == upper or t.startswith(upper + "."))
        if found:
            wrong[f"{lower} must not import {upper}"] = found
    assert not wrong, wrong


def test_only_the_command_line_imports_the_command_line():
    graph = import_graph()
    wrong = sorted(m for m, targets in graph.items() if not m.startswith("aghmn_fast.cli")
                   and any(t.startswith("aghmn_fast.cli") for t in targets))
    assert not wrong


def test_the_server_imports_nothing_of_aghmn_fast_by_name():
    """aghmn_runtime (and its server) installs without aghmn-fast: no import of it, lazy or not,
    but the torch recognizer's plug-in module, which it loads by a name it can do without."""
    wrong = []
    for path in RUNTIME_PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("aghmn_fast", "torch")]
    assert not wrong, wrong
