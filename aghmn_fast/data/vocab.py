"""Word vocabulary: ``<pad>`` = 0, ``<unk>`` = 1, then words by descending count."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

_FORMAT = "aghmn_fast.Vocabulary/1"


class Vocabulary:
    """A fixed mapping between tokens and integer ids.

    ``itos[i]`` is the token of id ``i`` and ``stoi[token]`` its id. Ids 0 and 1 are always
    :attr:`PAD` and :attr:`UNK`. Build one from data with :meth:`build`; store it in a checkpoint
    with :meth:`to_dict` (plain JSON types) and restore it with :meth:`from_dict`.

    Treat instances as immutable: ``itos`` and ``stoi`` are exposed for speed, not for editing.
    """

    PAD = "<pad>"
    UNK = "<unk>"
    PAD_ID = 0
    UNK_ID = 1

    def __init__(self, itos: Sequence[str]):
        """Wrap an id-ordered token list that starts with ``[PAD, UNK]`` and has no duplicates.

        Raises ``TypeError`` for a non-sequence or a non-``str`` token and ``ValueError`` for a
        wrong prefix or a duplicate token.
        """
        if isinstance(itos, (str, bytes)) or not isinstance(itos, Sequence):
            raise TypeError(f"itos must be a sequence of str, got {type(itos).__name__}")
        itos = list(itos)
        for i, tok in enumerate(itos):
            if not isinstance(tok, str):
                raise TypeError(f"itos[{i}] must be a str, got {type(tok).__name__}")
        if itos[:2] != [self.PAD, self.UNK]:
            raise ValueError(f"itos must start with [{self.PAD!r}, {self.UNK!r}], got {itos[:2]!r}")
        stoi: dict[str, int] = {}
        for i, tok in enumerate(itos):
            if tok in stoi:
                raise ValueError(f"itos has duplicate token {tok!r} at ids {stoi[tok]} and {i}")
            stoi[tok] = i
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = stoi

    @classmethod
    def build(cls, token_lists: Iterable[Iterable[str]], min_count: int = 2) -> "Vocabulary":
        """Count the tokens of ``token_lists`` and keep those seen at least ``min_count`` times.

        Ids after ``<pad>``/``<unk>`` follow descending count, ties broken by the token string, so
        the result depends only on the token counts (not on the order of the data). The empty
        string is an ordinary token (the tokenizer produces it). Tokens equal to ``"<pad>"`` or
        ``"<unk>"`` are not counted: they already have their reserved ids.

        Raises ``TypeError`` if a token list is a bare ``str`` (it would be split into characters)
        or contains a non-``str`` token, and ``ValueError`` if ``min_count < 1``.
        """
        if not isinstance(min_count, int) or isinstance(min_count, bool):
            raise TypeError(f"min_count must be an int, got {type(min_count).__name__}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for n, tokens in enumerate(token_lists):
            if isinstance(tokens, (str, bytes)):
                raise TypeError(f"token_lists[{n}] is a {type(tokens).__name__}, expected a list "
                                "of tokens (did you forget to tokenize?)")
            tokens = list(tokens)
            for tok in tokens:
                if not isinstance(tok, str):
                    raise TypeError(f"token_lists[{n}] contains a {type(tok).__name__}, "
                                    "expected str tokens")
            counts.update(tokens)
        for special in (cls.PAD, cls.UNK):
            counts.pop(special, None)
        kept = sorted((tok for tok, c in counts.items() if c >= min_count),
                      key=lambda tok: (-counts[tok], tok))
        return cls([cls.PAD, cls.UNK, *kept])

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Map ``tokens`` to ids; tokens not in the vocabulary map to ``UNK_ID`` (1).

        Raises ``TypeError`` if ``tokens`` is a bare ``str``.
        """
        if isinstance(tokens, (str, bytes)):
            raise TypeError("tokens must be a list of tokens, got a str "
                            "(did you forget to tokenize?)")
        get = self.stoi.get
        return [get(tok, self.UNK_ID) for tok in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Map ids back to tokens. Raises ``IndexError`` for an id outside ``[0, len(self))``."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise IndexError(f"id {i} out of range for a vocabulary of {len(self.itos)} tokens")
            out.append(self.itos[i])
        return out

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self.itos == other.itos

    __hash__ = None  # mutable lists inside: equal objects must not pretend to hash alike

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def to_dict(self) -> dict:
        """Return a JSON-safe dict (only ``str`` and ``list``) that :meth:`from_dict` restores."""
        return {"format": _FORMAT, "itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Vocabulary":
        """Rebuild a vocabulary from the output of :meth:`to_dict`.

        Raises ``TypeError`` if ``d`` is not a mapping and ``ValueError`` if it lacks ``"itos"`` or
        names another format.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"d must be a dict, got {type(d).__name__}")
        if "itos" not in d:
            raise ValueError("d has no 'itos' entry; is it the output of Vocabulary.to_dict()?")
        fmt = d.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"d has format {fmt!r}, expected {_FORMAT!r}")
        return cls(d["itos"])
