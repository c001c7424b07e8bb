"""The project's version. Its one source is the three ``AGHMN_RUNTIME_VERSION_*`` lines of the
native runtime's header, ``csrc/runtime/aghmn_runtime.h`` (docs/RUNTIME.md, "Versions and ABI").
A checkout reads the header itself (with ``runtime/header_version.py``, the one parser); an
installed wheel, which has neither, its own metadata (written from the header when it was built).
"""
import os
import runpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "runtime", "aghmn_runtime.h")
PARSER = os.path.join(ROOT, "runtime", "header_version.py")


def header_version(path: str = HEADER) -> str:
    """MAJOR.MINOR.PATCH of the runtime header at ``path`` (the checkout's by default)."""
    return runpy.run_path(PARSER)["header_version"](path)


def version() -> str:
    """The checkout's header version, else the installed distribution's."""
    if os.path.isfile(HEADER) and os.path.isfile(PARSER):
        return header_version()
    from importlib.metadata import version as installed_version
    return installed_version("aghmn-fast")
