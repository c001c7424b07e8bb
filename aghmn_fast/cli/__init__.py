"""The ``aghmn-fast`` command line; :func:`main` is the console script's entry point.

One module per command (:mod:`.train`, :mod:`.evaluate`, :mod:`.calibrate`, :mod:`.demo_stream`,
:mod:`.stream`, :mod:`.train_teacher`, :mod:`.export`, :mod:`.bench`, and :mod:`.serve`, which
hands over to the server of aghmn-fast-runtime, ``aghmn_runtime.serving.cli``), the help texts,
argument types and exit codes they share in :mod:`.options`, and the parser, :func:`main` and the
error boundary in :mod:`.program`.
"""
from .program import build_parser, main

__all__ = ["build_parser", "main"]
