"""``aghmn-fast export``: a checkpoint as one ``.aghmn`` file for the native runtime.

The file (format version 1, docs/RUNTIME.md) holds the model's sizes, label names, vocabulary,
embedding table and the weights already packed the way the stream kernel reads them (exactly what
the streaming recognizer's "push" path packs), a reader's extra weights (CNN), free-form JSON
provenance, and an FNV-1a 64 checksum. Layout (little-endian): magic ``AGHMNRT\\0``, u32 version,
u32 section count, a table of (tag[8], u64 offset, u64 size), the payloads at multiples of 64, the
checksum over every byte before it in the last 8 bytes.

Only word readers (BiGRU, CNN) can be exported: the MiniLM sentence reader needs its sentence
encoder, which the runtime does not have.
"""
from __future__ import annotations

import datetime
import json
import os
import struct
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

if TYPE_CHECKING:
    import torch

MAGIC = b"AGHMNRT\0"
FORMAT_VERSION = 1
READER_CODES = {"bigru": 1, "cnn": 2}
ALIGN = 64
FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit hash of ``data`` (the file's checksum)."""
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def _strings(items: Sequence[str]) -> bytes:
    out = [struct.pack("<I", len(items))]
    for s in items:
        b = s.encode("utf-8")
        out += [struct.pack("<I", len(b)), b]
    return b"".join(out)


def _floats(*tensors: "torch.Tensor") -> bytes:
    import torch   # here, not at the top: the CLI registers this module for every command
    return b"".join(t.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4").tobytes()
                    for t in tensors)


def pack_file(sections: List[Tuple[str, bytes]]) -> bytes:
    """The bytes of a format-1 file holding ``sections`` ((tag, payload) in order)."""
    header = 16 + 24 * len(sections)
    offset = -(-header // ALIGN) * ALIGN
    table, body = [], bytearray()
    for tag, payload in sections:
        tag_bytes = tag.encode("ascii")
        assert len(tag_bytes) <= 8, tag
        table.append(struct.pack("<8sQQ", tag_bytes, offset + len(body), len(payload)))
        body += payload
        body += b"\0" * (-len(body) % ALIGN)
    head = MAGIC + struct.pack("<II", FORMAT_VERSION, len(sections)) + b"".join(table)
    data = head + b"\0" * (offset - len(head)) + bytes(body)
    return data + struct.pack("<Q", fnv1a64(data))


def model_sections(model, vocab, label_names: Sequence[str], meta: Dict) -> List[Tuple[str, bytes]]:
    """The sections of an :class:`~aghmn_fast.models.AGHMN` with its vocabulary and labels.

    Raises ``ValueError`` for a model the runtime cannot run (a sentence reader)."""
    import torch

    from .streaming import StreamingRecognizer
    cfg = model.config
    if cfg.reader not in READER_CODES:
        raise ValueError(f"reader {cfg.reader!r} cannot be exported: the native runtime runs the "
                         f"word readers ({', '.join(READER_CODES)}); a sentence reader needs its "
                         "sentence encoder")
    model = model.float().eval()
    if len(vocab.itos) != model.embedding.weight.shape[0]:
        raise ValueError(f"the vocabulary has {len(vocab.itos)} tokens, the embedding table "
                         f"{model.embedding.weight.shape[0]} rows")
    rec = StreamingRecognizer(model, torch.device("cpu"), vocab=vocab, label_names=label_names,
                              mode="push")
    packed, sizes = rec.compute.packed, rec.compute.sizes
    H, E, C, K, D, S, hops, max_len = (sizes[k] for k in ("H", "E", "C", "K", "D", "S", "hops", "max_len"))
    filters = cfg.cnn_filters if cfg.reader == "cnn" else 0
    dims = [H, E, C, K, D, S, hops, max_len, READER_CODES[cfg.reader], len(vocab.itos), filters,
            vocab.PAD_ID, vocab.UNK_ID, packed.numel()]
    sections = [("dims", struct.pack("<14q", *dims)), ("labels", _strings(label_names)),
                ("vocab", _strings(vocab.itos)), ("embed", _floats(model.embedding.weight)),
                ("packed", _floats(packed))]
    if cfg.reader == "cnn":
        reader = model.reader
        sections.append(("cnn", _floats(*[p for conv in reader.convs for p in (conv.weight, conv.bias)],
                                         reader.proj.weight, reader.proj.bias)))
    sections.append(("meta", json.dumps(meta, sort_keys=True, default=str).encode("utf-8")))
    return sections


def export_checkpoint(checkpoint: str, out: str) -> Dict:
    """Write ``checkpoint`` (from ``aghmn-fast train``) as a ``.aghmn`` model file ``out``,
    atomically. Returns a summary (reader, sizes, bytes written).

    Raises ``FileNotFoundError`` for a missing checkpoint and ``ValueError`` for a file that is
    not a checkpoint or a model the runtime cannot run (the MiniLM sentence reader)."""
    from . import __version__
    from ._io import atomic_write
    from .models.checkpoint import load_checkpoint
    model, vocab, labels, _ = load_checkpoint(checkpoint, backend="cpu")
    config = {k: v for k, v in vars(model.config).items() if k != "backend"}
    meta = {"source_checkpoint": os.path.basename(checkpoint), "config": config,
            "aghmn_fast_version": __version__, "format_version": FORMAT_VERSION,
            "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    data = pack_file(model_sections(model, vocab, labels, meta))
    atomic_write(out, lambda f: f.write(data))
    return {"out": out, "bytes": len(data), "reader": model.config.reader,
            "labels": list(labels), "vocab": len(vocab.itos), "window": model.config.window}
