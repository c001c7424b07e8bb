"""``aghmn-fast serve``: the server of the torch-free ``aghmn-fast-runtime`` distribution
(``aghmn_runtime.serving``, its ``[serve]`` extra; ``aghmn-serve`` there), which serves checkpoints
through this package's torch recognizer (:mod:`aghmn_fast.serving_plugin`) and ``.aghmn`` files on the
native runtime. Without that distribution, ``serve`` is one line saying how to install it."""
from __future__ import annotations


def _server_cli():
    import aghmn_runtime.serving.cli as cli
    return cli


def add_parser(sub) -> None:
    """Add ``serve``: the server's own options when aghmn-fast-runtime is installed, otherwise a
    ``serve`` that takes any command line and answers how to install the server."""
    try:
        cli = _server_cli()
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "aghmn_runtime":
            raise
        # no option prefix: every argument is taken as is, so that any serve command line gets
        # the one line of run(), not "unrecognized arguments"
        p = sub.add_parser("serve", help="serve a model over HTTP and WebSocket (needs the [serve] extra)",
                           prefix_chars="\0", add_help=False)
        p.add_argument("options", nargs="*")
        p.set_defaults(debug=False)
        return
    cli.add_parser(sub)


def run(args) -> int:
    """The ``serve`` command; an ``ImportError`` naming ``aghmn_runtime`` (one line from the CLI,
    exit 2, naming the extra to install) when the server is not installed."""
    try:
        cli = _server_cli()
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "aghmn_runtime":
            raise
        raise ImportError("aghmn-fast serve needs the server of the aghmn-fast-runtime distribution",
                          name="aghmn_runtime") from None
    return cli.run(args)


COMMANDS = {"serve": run}
