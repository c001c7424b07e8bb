"""How ``aghmn-fast`` loads its subcommands: a broken subcommand module fails loudly (it never
silently loses its subcommand), while a missing optional extra is still one clean line."""
import sys

import pytest

from aghmn_fast import cli


def test_every_subcommand_module_adds_its_commands():
    parser = cli.build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert {"train", "eval", "demo-stream", "stream", "bench", "serve"} <= commands


def test_a_broken_subcommand_module_is_an_error_not_a_missing_command(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES",
                        cli.SUBCOMMAND_MODULES + ("aghmn_fast.no_such_cli_module",))
    with pytest.raises(ModuleNotFoundError, match="no_such_cli_module"):
        cli.build_parser()


def test_a_missing_optional_extra_is_one_clean_line(monkeypatch, capsys, tmp_path):
    for name in [m for m in sys.modules if m == "starlette" or m.startswith("starlette.")
                 or m == "aghmn_runtime.serving.app"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)  # importing it raises ImportError
    code = cli.main(["serve", "--checkpoint", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and err.count("\n") == 1
    assert err.startswith("aghmn-fast serve: error:") and "pip install" in err
