"""Dialogue datasets: MELD from its CSVs, any dataset in the authors' JSON layout, class weights.

MELD (GPL-3.0) is read in place from a data directory and never copied into the repository.
"""
from __future__ import annotations

import csv
import io
import json
import math
import operator
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

MELD_LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
IEMOCAP_LABELS = ("happy", "sad", "neutral", "angry", "excited", "frustrated")

MELD_SPLITS = ("train", "dev", "test")
_MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
# A checkout next to a shared data folder (the layout of the Makefile's default); only ever
# resolved against the current directory, so an installed package never guesses a location.
_SHARED_MELD = os.path.join("..", "shared", "data", "meld")


@dataclass
class Dialogue:
    """One conversation: parallel lists with one entry per utterance, in speaking order.

    ``labels[i]`` indexes the label tuple of the dataset (e.g. :data:`MELD_LABELS`); ``texts``
    hold the raw utterance strings (tokenize them with :func:`aghmn_fast.data.tokenize`).
    """

    id: str
    speakers: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __post_init__(self):
        n = len(self.texts)
        if len(self.speakers) != n or len(self.labels) != n:
            raise ValueError(f"dialogue {self.id}: speakers, texts and labels must have the same "
                             f"length, got {len(self.speakers)}, {n}, {len(self.labels)}")

    def __len__(self) -> int:
        return len(self.texts)


def default_meld_root() -> str:
    """Return the MELD directory to use when none is given.

    ``$AGHMN_DATA`` if set and non-empty (returned as given, even if it does not exist, so that
    a wrong setting fails loudly), else ``../shared/data/meld`` resolved against the current
    directory (absolute). Readers raise a ``FileNotFoundError`` naming the directory, and how to
    get MELD, when it holds no MELD files.
    """
    env = os.environ.get("AGHMN_DATA")
    if env:
        return env
    return os.path.abspath(_SHARED_MELD)


def _read_utf8(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        # utf-8-sig: a BOM (common in files re-saved by spreadsheet tools) would otherwise glue
        # itself to the first column name.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}: line {line}: byte 0x{raw[e.start]:02x} at offset {e.start} is not valid "
            "UTF-8; the MELD CSVs are UTF-8 (a file re-saved as cp1252/latin-1 must be converted "
            "back, e.g. with iconv -f cp1252 -t utf-8)") from None


def _parse_id(path, row_no, line_no, column, value) -> int:
    s = value.strip()
    # isascii()+isdigit() rather than int(): int() also accepts "-1", "1_000" and non-ASCII digits.
    if not (s.isascii() and s.isdigit()):
        raise ValueError(f"{path}: row {row_no} (line {line_no}), field {column!r}: "
                         f"expected a non-negative integer, got {value!r}")
    return int(s)


def _label_index(labels: Sequence[str]) -> dict[str, int]:
    for i, name in enumerate(labels):
        if not isinstance(name, str):
            raise TypeError(f"labels[{i}] must be a str, got {type(name).__name__}")
    return {name.strip().lower(): i for i, name in enumerate(labels)}


def require_directory(path: str, what: str, holding: str, hint: str = "") -> None:
    """Raise unless ``path`` is an existing directory: ``FileNotFoundError`` when nothing is
    there, ``NotADirectoryError`` when it is a file (a user who passed ``--data FILE`` learns
    that, not that the path is missing). ``what`` names the directory, ``holding`` its files."""
    advice = f"pass the directory holding {holding} with --data or set AGHMN_DATA{hint}"
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path} is a file, not a directory ({advice})")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path} ({advice})")


def meld_split_path(root: str | None, split: str) -> str:
    """The CSV of MELD ``split`` under ``root`` (None: :func:`default_meld_root`), checked to
    exist without reading it; the errors of :func:`load_meld` for a missing directory or file."""
    if split not in MELD_SPLITS:
        raise ValueError(f"split must be one of {MELD_SPLITS}, got {split!r}")
    root = os.fspath(default_meld_root() if root is None else root)
    require_directory(root, "MELD data directory", "{train,dev,test}_sent_emo.csv",
                      "; MELD's CSVs come from github.com/declare-lab/MELD, data/MELD/, see the "
                      "README")
    path = os.path.join(root, f"{split}_sent_emo.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MELD file not found: {path}")
    return path


def load_meld(root: str | None, split: str) -> list[Dialogue]:
    """Load one MELD split ("train", "dev" or "test") from ``{root}/{split}_sent_emo.csv``.

    ``root=None`` uses :func:`default_meld_root`. Dialogues come in ascending numeric
    ``Dialogue_ID`` order (``Dialogue.id`` is that number as a string); utterances within one in
    ascending ``Utterance_ID`` order (the ids have gaps; only the order matters). Speakers and
    texts are kept exactly as in the file; labels index :data:`MELD_LABELS` (the ``Emotion``
    field is matched case-insensitively, ignoring surrounding spaces).

    Raises ``ValueError`` for an unknown ``split``; ``FileNotFoundError`` if ``root`` or the CSV
    does not exist; ``ValueError`` naming the file (and, for a bad row, the row, line and field)
    for a file that is not UTF-8, is empty or has no data rows, lacks a required column, has a row
    with the wrong number of fields, a non-integer or negative id, an unknown emotion, or a
    repeated (``Dialogue_ID``, ``Utterance_ID``) pair.
    """
    path = meld_split_path(root, split)

    # newline="" lets the csv module see the CRLF endings and quoted fields itself.
    reader = csv.reader(io.StringIO(_read_utf8(path), newline=""))
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{path}: the file is empty (expected a header row)")
    header = [name.strip() for name in header]
    col = {}
    for name in _MELD_COLUMNS:
        if name not in header:
            raise ValueError(f"{path}: missing column {name!r} (header: {header})")
        col[name] = header.index(name)

    label_of = _label_index(MELD_LABELS)
    rows: dict[int, dict[int, tuple[str, str, int, int]]] = {}
    row_no = 0
    line_end = reader.line_num
    for fields in reader:
        line_no, line_end = line_end + 1, reader.line_num
        if not fields:
            continue  # blank line, e.g. a trailing newline
        row_no += 1
        if len(fields) != len(header):
            raise ValueError(f"{path}: row {row_no} (line {line_no}): expected {len(header)} "
                             f"fields, got {len(fields)}")
        dia = _parse_id(path, row_no, line_no, "Dialogue_ID", fields[col["Dialogue_ID"]])
        utt = _parse_id(path, row_no, line_no, "Utterance_ID", fields[col["Utterance_ID"]])
        emotion = fields[col["Emotion"]]
        label = label_of.get(emotion.strip().lower())
        if label is None:
            raise ValueError(f"{path}: row {row_no} (line {line_no}), field 'Emotion': unknown "
                             f"label {emotion!r}, expected one of {MELD_LABELS}")
        utterances = rows.setdefault(dia, {})
        if utt in utterances:
            raise ValueError(f"{path}: row {row_no} (line {line_no}): Dialogue_ID {dia} "
                             f"Utterance_ID {utt} repeats row {utterances[utt][3]}")
        utterances[utt] = (fields[col["Speaker"]], fields[col["Utterance"]], label, row_no)
    if not rows:
        raise ValueError(f"{path}: no data rows after the header")

    dialogues = []
    for dia in sorted(rows):
        ordered = [rows[dia][u] for u in sorted(rows[dia])]
        dialogues.append(Dialogue(id=str(dia),
                                  speakers=[s for s, _, _, _ in ordered],
                                  texts=[t for _, t, _, _ in ordered],
                                  labels=[lab for _, _, lab, _ in ordered]))
    return dialogues


def load_json_dialogues(path: str, labels: Sequence[str]) -> list[Dialogue]:
    """Load dialogues in the authors' JSON layout; ``labels`` is e.g. :data:`IEMOCAP_LABELS`.

    The file holds a list of dialogues, each a non-empty list of utterance objects with string
    fields ``"speaker"``, ``"utterance"`` and ``"emotion"`` (other fields are ignored). Emotions
    are matched to ``labels`` case-insensitively, ignoring surrounding spaces. ``Dialogue.id`` is
    the dialogue's position in the file (``"0"``, ``"1"``, ...).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file (and the
    dialogue and utterance index) for invalid JSON or UTF-8, a wrong structure, an empty file or
    dialogue, a missing or non-string field, or an unknown emotion.
    """
    path = os.fspath(path)
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        raise ValueError(f"labels must be a non-empty sequence of label names, got {labels!r}")
    label_of = _label_index(labels)
    if len(label_of) != len(labels):
        raise ValueError(f"labels has duplicates (case-insensitively): {tuple(labels)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dialogue file not found: {path}")
    try:
        data = json.loads(_read_utf8(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                         f"{e.msg}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of dialogues, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: the file holds no dialogues")

    dialogues = []
    for d, dialog in enumerate(data):
        where = f"{path}: dialogue {d}"
        if not isinstance(dialog, list):
            raise ValueError(f"{where}: expected a list of utterances, got {type(dialog).__name__}")
        if not dialog:
            raise ValueError(f"{where}: empty dialogue (no utterances)")
        speakers, texts, ids = [], [], []
        for u, utt in enumerate(dialog):
            here = f"{where}, utterance {u}"
            if not isinstance(utt, dict):
                raise ValueError(f"{here}: expected an object, got {type(utt).__name__}")
            for key in ("speaker", "utterance", "emotion"):
                if key not in utt:
                    raise ValueError(f"{here}: missing field {key!r}")
                if not isinstance(utt[key], str):
                    raise ValueError(f"{here}: field {key!r} must be a string, "
                                     f"got {type(utt[key]).__name__}")
            label = label_of.get(utt["emotion"].strip().lower())
            if label is None:
                raise ValueError(f"{here}: unknown emotion {utt['emotion']!r}, "
                                 f"expected one of {tuple(labels)}")
            speakers.append(utt["speaker"])
            texts.append(utt["utterance"])
            ids.append(label)
        dialogues.append(Dialogue(id=str(d), speakers=speakers, texts=texts, labels=ids))
    return dialogues


def _is_index(c) -> bool:
    if isinstance(c, bool):
        return False
    try:
        operator.index(c)  # accepts numpy integers too
    except TypeError:
        return False
    return True


def label_counts(dialogues: Iterable[Dialogue], num_classes: int) -> list[int]:
    """Count the labels of all utterances of ``dialogues``: ``counts[c]`` for ``c < num_classes``.

    Raises ``ValueError`` for a label outside ``[0, num_classes)``.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    counts = Counter()
    for dialog in dialogues:
        counts.update(dialog.labels)
    bad = [c for c in counts if not (_is_index(c) and 0 <= c < num_classes)]
    if bad:
        raise ValueError(f"labels {sorted(bad, key=repr)} are outside [0, {num_classes})")
    return [counts[c] for c in range(num_classes)]


def class_weights(dialogues: Iterable[Dialogue], num_classes: int, rate: float) -> torch.Tensor:
    """Loss weights ``w_c = (n_min / n_c) ** rate`` normalised to sum 1 (float32 ``[num_classes]``).

    ``n_c`` counts the labels over all utterances of ``dialogues`` (the authors use the training
    set) and ``n_min`` is the smallest count. ``rate=0`` gives uniform weights (the IEMOCAP
    recipe), ``rate=0.5`` the MELD recipe; larger rates favour rare classes more.

    Raises ``ValueError`` for ``rate`` negative or not finite, a label outside
    ``[0, num_classes)``, or a class with zero count (its weight would be infinite).
    """
    rate = float(rate)
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"rate must be a finite number >= 0, got {rate}")
    counts = label_counts(dialogues, num_classes)
    missing = [c for c, n in enumerate(counts) if n == 0]
    if missing:
        raise ValueError(f"classes {missing} have zero count, so their weight "
                         "(n_min / n_c) ** rate is undefined; check num_classes and the data")
    n = torch.tensor(counts, dtype=torch.float64)
    w = (n.min() / n) ** rate
    return (w / w.sum()).to(torch.float32)
