"""The tokenizer's rules as a table over every code point, for the native runtime.

``python -m aghmn_fast.data.text_table --out csrc/runtime/text_table.h`` writes the C++ header that
the runtime's ``normalize`` reads, derived from the very functions :func:`aghmn_fast.data.text.normalize`
uses (``str.lower``, ``str.isspace``, ``unicodedata`` NFD and category ``Mn``), so the rules have
one definition. ``--check FILE`` exits 1 when FILE differs from what this Python would write (a
stale table).

Why a per-code-point table is exact. ``normalize(s)`` lower-cases, strips, decomposes (NFD) and
drops marks, then turns runs of other characters into one space. Each of these acts on one code
point at a time, except three things the generator checks or the runtime reproduces:

- ``str.lower`` maps final sigma by context (``σ``/``ς``): both leave no letter, so both give
  "not kept" either way (checked below for every context-dependent code point);
- ``strip()`` runs after ``lower()``: whitespace lowers to itself and nothing else lowers to
  whitespace (checked), so the runtime strips the code points whose table entry says whitespace;
- NFD reorders combining marks, never across a starter: the letters and ``!?`` it keeps are
  starters, so the order of kept characters does not change.

Per code point the table holds what steps 1-4 make of it before the runs are merged: a string
over ``[a-zA-Z!?]`` and ``' '`` (one "not kept" character), possibly empty (a combining mark), and
whether ``str.isspace`` is true for it. The runtime then merges: a space before every ``!``/``?``
and every run of "not kept" characters becomes one space.
"""
from __future__ import annotations

import argparse
import sys
import unicodedata
from typing import Dict, List, Tuple

from .text import normalize

MAX_CODE_POINT = 0x10FFFF
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?")
NOT_KEPT = " "  # the table's mark for one character outside [a-zA-Z!?]


def _is_surrogate(cp: int) -> bool:
    return 0xD800 <= cp <= 0xDFFF


def expansion(cp: int) -> str:
    """What steps 1-4 (lower, NFD, drop marks, keep only ``[a-zA-Z!?]``) make of one code point,
    before runs are merged: kept characters as they are, every other one as ``NOT_KEPT``."""
    lowered = chr(cp).lower()
    out = []
    for c in unicodedata.normalize("NFD", lowered):
        if unicodedata.category(c) == "Mn":
            continue
        out.append(c if c in _KEPT else NOT_KEPT)
    return "".join(out)


def merge(expanded: str) -> str:
    """The runtime's last step over concatenated expansions: a space before every ``!``/``?``,
    every run of ``NOT_KEPT`` as one space."""
    out, pending = [], False
    for c in expanded:
        if c == NOT_KEPT:
            pending = True
            continue
        if pending or c in "!?":
            out.append(" ")
        pending = False
        out.append(c)
    if pending:
        out.append(" ")
    return "".join(out)


def check_assumptions() -> None:
    """Raise ``AssertionError`` if this Python's Unicode data breaks a premise of the table (see
    the module docstring)."""
    for cp in range(MAX_CODE_POINT + 1):
        if _is_surrogate(cp):
            continue
        c = chr(cp)
        low = c.lower()
        if c.isspace():
            assert low == c, f"whitespace U+{cp:04X} changes under lower()"
        else:
            assert not any(x.isspace() for x in low), f"U+{cp:04X} lowers to whitespace"
    # The table, merged as the runtime merges it, gives normalize() of every single code point.
    for cp in range(MAX_CODE_POINT + 1):
        if not _is_surrogate(cp):
            c = chr(cp)
            text = "" if c.isspace() else expansion(cp)  # strip() leaves nothing of whitespace
            assert merge(text) == normalize(c), f"table disagrees with normalize at U+{cp:04X}"
    # Context-dependent lower-casing (final sigma): every form must leave no kept character.
    for ctx in ("Σ", "aΣ", "aΣa", "Σa"):
        low = ctx.lower()
        for c in low:
            if c not in "a":
                assert expansion(ord(c)) == NOT_KEPT, f"context lower-casing of {ctx!r} keeps {c!r}"


def build_table() -> Tuple[List[str], List[Tuple[int, int, bool]]]:
    """(strings, entries): ``strings[0]`` is ``NOT_KEPT``; ``entries`` lists, in code point order,
    (code point, string index, is whitespace) for every code point whose expansion is not the
    default (one "not kept" character) or that is whitespace. Surrogates are left out (they are not
    valid in UTF-8 text)."""
    strings: List[str] = [NOT_KEPT]
    index: Dict[str, int] = {NOT_KEPT: 0}
    entries: List[Tuple[int, int, bool]] = []
    for cp in range(MAX_CODE_POINT + 1):
        if _is_surrogate(cp):
            continue
        text = expansion(cp)
        space = chr(cp).isspace()
        if text == NOT_KEPT and not space:
            continue
        if text not in index:
            index[text] = len(strings)
            strings.append(text)
        entries.append((cp, index[text], space))
    return strings, entries


def _c_string(s: str) -> str:
    assert all(c in _KEPT or c == NOT_KEPT for c in s)
    return '"' + s + '"'


def render_header() -> str:
    """The text of csrc/runtime/text_table.h."""
    check_assumptions()
    strings, entries = build_table()
    assert len(strings) < 1 << 15, "string index must fit 15 bits"
    lines = [
        "// GENERATED by `python -m aghmn_fast.data.text_table --out csrc/runtime/text_table.h`:",
        "// do not edit. What aghmn_fast/data/text.py's normalize makes of every code point under",
        f"// Unicode {unicodedata.unidata_version} (the rules: aghmn_fast/data/text_table.py).",
        "#pragma once",
        "#include <cstdint>",
        "",
        "namespace aghmn {",
        "namespace text_table {",
        "",
        f'constexpr const char* kUnicodeVersion = "{unicodedata.unidata_version}";',
        "",
        "// Expansions: ' ' is one character outside [a-zA-Z!?]; \"\" a dropped combining mark.",
        f"constexpr int kNumStrings = {len(strings)};",
        "constexpr const char* kStrings[kNumStrings] = {",
    ]
    lines += [f"    {_c_string(s)}," for s in strings]
    lines += [
        "};",
        "",
        "// Code points whose expansion is not kStrings[0] or that are whitespace (str.isspace),",
        "// sorted: (code point << 16) | (string index << 1) | whitespace. All others: kStrings[0].",
        f"constexpr int kNumEntries = {len(entries)};",
        "constexpr uint64_t kEntries[kNumEntries] = {",
    ]
    row = []
    for cp, idx, space in entries:
        row.append(f"0x{(cp << 16) | (idx << 1) | int(space):x}ull,")
        if len(row) == 6:
            lines.append("    " + " ".join(row))
            row = []
    if row:
        lines.append("    " + " ".join(row))
    lines += ["};", "", "}  // namespace text_table", "}  // namespace aghmn", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line: ``--out FILE`` writes the header, ``--check FILE`` compares it (exit 1 if
    stale)."""
    parser = argparse.ArgumentParser(prog="python -m aghmn_fast.data.text_table",
                                     description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="write the header here")
    group.add_argument("--check", help="exit 1 if this header is not what --out would write")
    args = parser.parse_args(argv)
    text = render_header()
    if args.out:
        with open(args.out, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
        return 0
    with open(args.check, encoding="ascii") as f:
        if f.read() != text:
            print(f"{args.check} is stale: regenerate it with python -m aghmn_fast.data.text_table "
                  f"--out {args.check}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
