"""The test suite's own layout: no test module imports another test module (shared code lives in
tests/helpers/ or a helper module beside the tests), so collecting one module never runs
another's module-level code and a test module can move without breaking its neighbours."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_test_modules(path):
    """(line, module) for every import of a ``test_*`` module in ``path``: ``import``, ``from ...
    import``, nested in functions too, and ``importlib.import_module`` / ``__import__`` of a
    literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            # ``from pkg import test_x`` names the module in the alias
            names = [base] if "test_" in base else [f"{base}.{alias.name}".lstrip(".")
                                                    for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names = [node.args[0].value]
        for name in names:
            if any(part.startswith("test_") for part in name.split(".")):
                found.append((node.lineno, name))
    return sorted(set(found))


def test_the_scan_finds_every_kind_of_test_module_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import test_a\nfrom test_b import x\nfrom ops.test_c import y\n"
                     "from helpers import test_d\nimport helpers.training\n"
                     "def f():\n    from test_e import z\n"
                     "importlib.import_module('test_f')\n__import__('helpers')\n")
    modules = [name for _, name in _imported_test_modules(probe)]
    assert modules == ["test_a", "test_b", "ops.test_c", "helpers.test_d", "test_e", "test_f"]


def test_no_test_module_imports_another():
    offenders = {str(path.relative_to(TESTS)): found for path in sorted(TESTS.rglob("*.py"))
                 if (found := _imported_test_modules(path))}
    assert not offenders, f"move the shared code to tests/helpers/: {offenders}"
