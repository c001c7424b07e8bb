"""Word vectors for our vocabulary from the ``wordllama`` package's static token embeddings.

WordLlama (MIT) ships a 32,000 x 256 float16 token-embedding table (``l2_supercat_256``, trained
Matryoshka-style so that the leading 64 or 128 columns are usable on their own) and the
tokenizer that goes with it, both inside the wheel. Its own loader looks for the tokenizer in a
folder the wheel does not have and then downloads it, so both files are opened here directly
from the installed package (which is located, never imported): nothing touches the network.

A word of our vocabulary (the authors' tokens: lower-case ASCII letters, ``!`` or ``?``) gets the
mean of the vectors of its WordLlama pieces, the word tokenized alone as at the start of a word.
The result goes through :func:`aghmn_fast.data.build_embeddings` like any pretrained set (unit
L2 norm per row), so the reader, the checkpoint and the one-call streaming push are unchanged.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable

import numpy as np

SOURCE = "wordllama"
FULL_DIM = 256
_WEIGHTS = ("weights", "l2_supercat_256.safetensors")
_TOKENIZER = ("tokenizers", "l2_supercat_tokenizer_config.json")
_TENSOR_KEY = "embedding.weight"


def _package_file(parts: tuple[str, str]) -> str:
    # find_spec locates the package without running its __init__, which would reconfigure
    # the root logger (logging.basicConfig at INFO) of whatever program imports us.
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"embeddings {SOURCE!r} need the wordllama package: "
                          "pip install wordllama", name="wordllama")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the wordllama package is installed but {'/'.join(parts)} is "
                                "missing from it; reinstall it with "
                                "pip install --force-reinstall wordllama")
    return path


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, object]:
    """(token table [32000, 256] float16, tokenizer), read once per process."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    table = load_file(_package_file(_WEIGHTS)).get(_TENSOR_KEY)
    if table is None or table.ndim != 2 or table.shape[1] != FULL_DIM:
        raise ValueError(f"wordllama weights: expected a [vocab, {FULL_DIM}] tensor "
                         f"{_TENSOR_KEY!r}, got {None if table is None else table.shape}")
    tokenizer = Tokenizer.from_file(_package_file(_TOKENIZER))
    return table, tokenizer


def check_dim(dim: int | None) -> int:
    """The truncation width for ``dim`` (None = all 256 columns); ``ValueError`` if out of range."""
    if dim is None:
        return FULL_DIM
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= FULL_DIM:
        raise ValueError(f"dim for {SOURCE!r} must be an int in [1, {FULL_DIM}] (64, 128 or 256 "
                         f"are the trained truncations), got {dim!r}")
    return dim


def wordllama_vectors(wanted: Iterable[str], dim: int | None = None
                      ) -> tuple[dict[str, np.ndarray], int]:
    """Vectors (float32, first ``dim`` columns) for the words of ``wanted``, and ``dim``.

    Each word is tokenized alone with WordLlama's tokenizer (no special tokens) and its pieces'
    rows averaged after truncation. A word with no pieces (the empty string) is left out, so
    the caller treats it as out of vocabulary. Deterministic: no randomness, no network.
    """
    d = check_dim(dim)
    table, tokenizer = _load()
    words = [w for w in dict.fromkeys(wanted) if w]
    found: dict[str, np.ndarray] = {}
    for word, enc in zip(words, tokenizer.encode_batch(words, add_special_tokens=False)):
        ids = enc.ids
        if ids:
            found[word] = table[ids, :d].astype(np.float32).mean(axis=0)
    return found, d
