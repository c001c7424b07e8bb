"""The documentation's command lines and snippets work as written: every `pip install` line names
extras that exist and builds the extension against the installed torch, every README python
snippet runs (those that need a server at least compile), and every relative link (README,
CONTRIBUTING, docs/, docs/results/) reaches its file and heading."""
import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from cli_helpers import tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# A fenced block's lines, or an inline `code span`: where a command a reader copies can be.
_FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")


def _install_commands():
    """(file:line, argv) of every `pip install` / `pip wheel` in the docs, split at && and ;,
    comments removed."""
    found = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            pieces = _SPAN.findall(line) if "`" in line else [line]
            for piece in pieces:
                for command in re.split(r"&&|;", piece):
                    command = re.sub(r"\s#.*$", "", command).strip()
                    if re.match(r"(python -m )?pip (install|wheel)\b", command):
                        found.append((f"{doc.name}:{number}", shlex.split(command)))
    return found


INSTALLS = _install_commands()


def test_the_docs_install_lines_were_found():
    assert len(INSTALLS) >= 5, INSTALLS
    assert any("README.md" in where for where, _ in INSTALLS)


@pytest.mark.parametrize("where,argv", INSTALLS, ids=[w for w, _ in INSTALLS])
def test_every_install_line_in_the_docs_works_as_written(where, argv):
    targets = [a for i, a in enumerate(argv[2:], 2) if not a.startswith("-")
               and argv[i - 1] not in ("-c", "--constraint", "-r", "--requirement")]
    assert targets, (where, argv)
    extras = PYPROJECT["project"]["optional-dependencies"]
    for target in targets:
        local = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
        if local:
            # The extension is compiled against the torch already installed: pip's isolated build
            # environment would fetch another torch (or fail offline).
            assert "--no-build-isolation" in argv, f"{where}: {' '.join(argv)}"
            for extra in filter(None, (local.group(1) or "").split(",")):
                assert extra in extras, f"{where}: no extra [{extra}] in pyproject.toml"
            continue
        # a wheel (or sdist) an earlier line of the same doc builds, maybe found by
        # "$(ls dist/NAME-*.whl)[extra]"
        wheel = re.fullmatch(r"(?:\$\(ls )?([^()\[\]]+\.(?:whl|tar\.gz))\)?(?:\[([\w,-]+)\])?", target)
        if wheel:
            assert any(a.endswith(("wheel", "-w")) for _, a2 in INSTALLS if _.split(":")[0] == where.split(":")[0]
                       for a in a2), f"{where}: no line builds {target}"
            project = ROOT / ("runtime" if "aghmn_fast_runtime" in wheel.group(1) else ".")
            _assert_extras(where, project, wheel.group(2))
            continue
        # another distribution of this repository (e.g. ./runtime), maybe with extras
        other = re.fullmatch(r"(\./[\w/.-]+?)(?:\[([\w,-]+)\])?", target)
        if other:
            assert (ROOT / other.group(1) / "pyproject.toml").is_file(), f"{where}: {target} is no project"
            _assert_extras(where, ROOT / other.group(1), other.group(2))
            continue
        requirement = Requirement(target)  # a PyPI requirement: it must at least parse
        if requirement.name == "torch":
            supported = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"]
                             if Requirement(r).name == "torch")
            pinned = [s.version for s in requirement.specifier if s.operator == "=="]
            assert all(v in supported.specifier for v in pinned), f"{where}: torch {pinned}"


def _assert_extras(where, project: Path, extras) -> None:
    """Every extra of a comma-separated list (or None) is one of ``project``'s pyproject.toml."""
    declared = tomllib.loads((project / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    for extra in filter(None, (extras or "").split(",")):
        assert extra in declared, f"{where}: no extra [{extra}] in {project.name}/pyproject.toml"


def _snippets(doc, language="python"):
    return [(f"{doc.name} snippet {i}", body) for i, (lang, body) in
            enumerate(_FENCE.findall(doc.read_text()), 1) if lang == language]


README_SNIPPETS = _snippets(ROOT / "README.md")
NEEDS_A_SERVER = re.compile(r"\b(?:ws|https?)://")


def test_every_python_snippet_of_the_docs_compiles():
    snippets = [s for doc in DOCS for s in _snippets(doc)]
    assert len(README_SNIPPETS) >= 3, README_SNIPPETS
    for where, body in snippets:
        compile(body, where, "exec")


@pytest.mark.parametrize("where,body", [s for s in README_SNIPPETS if not NEEDS_A_SERVER.search(s[1])],
                         ids=lambda v: v if v.startswith("README") else "")
def test_readme_python_snippets_run_as_written(where, body, tmp_path, monkeypatch):
    # The checkpoint the README's commands train, made tiny here; run from a fresh folder.
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    tiny_checkpoint(tmp_path / "runs" / "demo" / "best.pt")
    monkeypatch.chdir(tmp_path)
    exec(compile(body, where, "exec"), {"__name__": "__readme__"})


# ---- links -------------------------------------------------------------------------------------

LINKED_DOCS = DOCS + sorted((ROOT / "docs" / "results").glob("*.md"))
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")


def _anchors(doc):
    """GitHub's anchor of every heading of ``doc`` (lower case, punctuation dropped, spaces to
    hyphens, repeats numbered)."""
    seen, anchors = {}, set()
    text = _FENCE.sub("", doc.read_text())
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _relative_links():
    """(where, target) of every relative Markdown link of the docs, outside code blocks."""
    found = []
    for doc in LINKED_DOCS:
        text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text())
        for number, line in enumerate(text.splitlines(), 1):
            for target in _LINK.findall(re.sub(r"`[^`\n]*`", "", line)):
                if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                    found.append((f"{doc.relative_to(ROOT)}:{number}", doc, target))
    return found


def test_the_link_check_reads_anchors_as_github_does(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# Native runtime\n## Load test (code of ce9ce56, `quiet`)\n## Notes\n## Notes\n"
                   "```\n# not a heading\n```\n")
    assert _anchors(doc) == {"native-runtime", "load-test-code-of-ce9ce56-quiet", "notes", "notes-1"}


def test_every_relative_link_of_the_docs_resolves():
    links = _relative_links()
    assert any("RESULTS.md#native-runtime" in target for _, _, target in links)  # the scan works
    broken = []
    for where, doc, target in links:
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            broken.append(f"{where}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{where}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)
