"""The project's version. Its one source is the three ``AGHMN_RUNTIME_VERSION_*`` lines of the
native runtime's header, ``csrc/runtime/aghmn_runtime.h`` (CMake, both distributions' setup.py and
``aghmn_version()`` read them; docs/RUNTIME.md, "Versions and ABI"). A checkout reads the header
itself; an installed wheel, which has no header, its own metadata (written from the header when
it was built). Stdlib only: the root setup.py runs this file before anything is installed.
"""
import os
import re

HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "csrc", "runtime", "aghmn_runtime.h")


def header_version(path: str = HEADER) -> str:
    """MAJOR.MINOR.PATCH of the runtime header at ``path``; ``ValueError`` if a line is missing."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    parts = [re.search(rf"^#define AGHMN_RUNTIME_VERSION_{p} (\d+)$", text, re.M)
             for p in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise ValueError(f"{path} lacks an AGHMN_RUNTIME_VERSION_MAJOR/MINOR/PATCH line")
    return ".".join(m.group(1) for m in parts)


def version() -> str:
    """The checkout's header version, else the installed distribution's."""
    if os.path.isfile(HEADER):
        return header_version()
    from importlib.metadata import version as installed_version
    return installed_version("aghmn-fast")
