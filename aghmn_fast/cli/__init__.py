"""The ``aghmn-fast`` command line (:func:`main`, the console script's entry point).

One module per command (:mod:`.train`, :mod:`.evaluate`, :mod:`.calibrate`, ...), their shared
help texts, argument types and exit codes in :mod:`.options`, the parser and the error boundary
in :mod:`.program`.
"""
from .program import *  # noqa: F401,F403 (temporary: the package's names while the modules move)
from .program import (_ProcessInterrupts, _one_line, COMMANDS, DATA_HELP, EXIT_USAGE, OPTIONAL_MODULES,  # noqa: F401
                      SUBCOMMAND_MODULES, UsageError, build_parser, debug_requested, main,
                      positive_int, run_guarded, run_program, show_encoding_progress)
