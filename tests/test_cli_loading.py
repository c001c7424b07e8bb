"""How ``aghmn-fast`` loads its subcommands: a broken subcommand module fails loudly (it never
silently loses its subcommand), while a missing optional extra is still one clean line."""
import sys


from aghmn_fast.cli import program as cli


def test_every_subcommand_module_adds_its_commands():
    parser = cli.build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert {"train", "eval", "demo-stream", "stream", "bench", "serve"} <= commands


def test_every_command_module_is_imported_by_name_and_registers_itself():
    """The parser imports its command modules statically (no importlib indirection: a broken
    module fails the import of the CLI itself, loudly); each registers the commands it runs."""
    import pathlib
    source = pathlib.Path(cli.__file__).read_text()
    assert "importlib" not in source and "import_module" not in source
    parser = cli.build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert commands == set(cli.COMMANDS)
    for module in cli.COMMAND_MODULES:
        assert set(module.COMMANDS) <= commands, module.__name__


def test_a_missing_optional_extra_is_one_clean_line(monkeypatch, capsys, tmp_path):
    for name in [m for m in sys.modules if m == "starlette" or m.startswith("starlette.")
                 or m == "aghmn_runtime.serving.app"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)  # importing it raises ImportError
    code = cli.main(["serve", "--checkpoint", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and err.count("\n") == 1
    assert err.startswith("aghmn-fast serve: error:") and "pip install" in err


def test_help_texts_are_plain_text():
    """--help shows no reStructuredText (double backticks, :func: roles) from the docstrings."""
    parser = cli.build_parser()
    pages = [parser.format_help()] + [p.format_help() for p in
                                      parser._subparsers._group_actions[0].choices.values()]
    for page in pages:
        assert "``" not in page and ":func:" not in page and ":mod:" not in page, page


def test_a_ctrl_c_swallowed_by_the_command_still_exits_130():
    """A SIGINT whose KeyboardInterrupt a library swallowed (the command then finished) is still
    an interruption: exit 130, not 0."""
    class Interrupts:  # the process's handler, as after one SIGINT
        interrupted, finished, reported = True, False, False

        def report(self):
            self.reported = True
            return cli.EXIT_INTERRUPTED

    interrupts = Interrupts()
    assert cli.run_guarded("aghmn-fast stream", lambda: 0, interrupts=interrupts) == 130
    assert interrupts.reported and interrupts.finished
    interrupts.interrupted = False
    assert cli.run_guarded("aghmn-fast stream", lambda: 0, interrupts=interrupts) == 0
