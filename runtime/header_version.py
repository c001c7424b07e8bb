"""The project's version from its one source, the three ``AGHMN_RUNTIME_VERSION_*`` lines of the
native runtime's header (docs/RUNTIME.md, "Versions and ABI"). Stdlib only and run as a file
(``runpy``), not imported: ``runtime/setup.py`` (in a checkout and in the sdist, which carries
this file and a copy of the header), the root ``setup.py`` and ``aghmn_fast/_version.py`` use it.
"""
import re


def header_version(path: str) -> str:
    """MAJOR.MINOR.PATCH of the runtime header at ``path``; ``ValueError`` if a line is missing."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    parts = [re.search(rf"^#define AGHMN_RUNTIME_VERSION_{p} (\d+)$", text, re.M)
             for p in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise ValueError(f"{path} lacks an AGHMN_RUNTIME_VERSION_MAJOR/MINOR/PATCH line")
    return ".".join(m.group(1) for m in parts)
