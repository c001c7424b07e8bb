"""The authors' text preprocessing (AGHMN spec section 8).

The rules are reproduced exactly, quirks included, because the vocabulary and the published numbers
were produced with them:

1. lower-case, then strip surrounding whitespace;
2. Unicode NFD, dropping combining marks (category ``Mn``): ``"café"`` -> ``"cafe"``;
3. a space before every ``!`` and ``?``;
4. every run of characters outside ``[a-zA-Z!?]`` becomes one space (digits, apostrophes, curly
   quotes, dashes and letters NFD cannot reduce to ASCII, such as ``"ß"``, all vanish);
5. split on single spaces with ``str.split(" ")``, so empty-string tokens survive wherever the
   string starts or ends with a space after step 4;
6. keep the first ``max_len`` tokens.

Edge cases this produces (all on purpose):

============== =========================
input          tokens
============== =========================
``""``         ``[""]``
``"..."``      ``["", ""]``
``"Hi."``      ``["hi", ""]``
``"!!!"``      ``["", "!", "!", "!"]``
``"don't"``    ``["don", "t"]``
``"I'm 25"``   ``["i", "m", ""]``
``"Wow!"``     ``["wow", "!"]``
============== =========================

A token list is therefore never empty, which keeps packed sequences at length >= 1.
"""
from __future__ import annotations

import re
import unicodedata

MAX_LEN = 60

_BANG_OR_QUESTION = re.compile(r"([!?])")
_NOT_KEPT = re.compile(r"[^a-zA-Z!?]+")


def _strip_accents(s: str) -> str:
    if s.isascii():  # NFD leaves ASCII as it is and it has no combining marks (the common case)
        return s
    return "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")


def normalize(text: str) -> str:
    """Apply steps 1-4 of the module docstring to ``text`` and return the normalised string.

    The result contains only ASCII letters, ``!``, ``?`` and single spaces (possibly leading or
    trailing). Raises ``TypeError`` if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    s = _strip_accents(text.lower().strip())
    s = _BANG_OR_QUESTION.sub(r" \1", s)
    return _NOT_KEPT.sub(" ", s)


def tokenize(text: str, max_len: int = MAX_LEN) -> list[str]:
    """Split ``text`` into the authors' tokens, keeping at most ``max_len`` of them.

    See the module docstring for the rules and edge cases: the result is never empty (``""``
    gives ``[""]``) and may contain empty-string tokens, e.g. ``tokenize("Hi.") == ["hi", ""]``.

    Raises ``TypeError`` if ``text`` is not a ``str`` or ``max_len`` not an ``int``, and
    ``ValueError`` if ``max_len < 1``.
    """
    # bool is an int subclass; tokenize(s, True) is surely a mistake.
    if not isinstance(max_len, int) or isinstance(max_len, bool):
        raise TypeError(f"max_len must be an int, got {type(max_len).__name__}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return normalize(text).split(" ")[:max_len]
