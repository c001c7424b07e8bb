"""``aghmn-fast export``: a checkpoint as one ``.aghmn`` file for the native runtime.

The file (format version 2, docs/RUNTIME.md "The model file") holds the model's named tensors in
the framework's own layout (the state dict's names, shapes and float32 values) and typed
metadata (sizes by name, label names, vocabulary, reader, tokenizer, producer). The runtime packs
the weights for its kernel when it loads the file, so the kernel's private layout never leaves
the process. Layout (little-endian): magic ``AGHMNRT\\0``, u32 version, u32 section count, a
table of (tag[8], u32 flags, u32 reserved, u64 offset, u64 size), the payloads at multiples of
64, an XXH64 checksum (seed 0) over every byte before it in the last 8 bytes. Sections: ``kv``
(metadata), ``tensors`` (the tensor directory), ``data`` (the tensors' bytes, each at a multiple
of 64), all three marked required; a reader skips an optional section it does not know.

The file has no time in it: the same checkpoint exported by the same version gives the same
bytes. Exporting reads the checkpoint's state dict: no compiled extension is needed. Only word
readers (BiGRU, CNN) can be exported: the MiniLM sentence reader needs its sentence encoder,
which the runtime does not have.
"""
from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Dict, List, Mapping, Sequence, Tuple, Union

from .precision import check_precision

if TYPE_CHECKING:
    import torch

MAGIC = b"AGHMNRT\0"
FORMAT_VERSION = 2
ALIGN = 64
FLAG_REQUIRED = 1
KV_INT64, KV_STRING, KV_STRINGS = 1, 2, 3
DTYPE_F32 = 0
DTYPE_BF16 = 1  # bfloat16 bits, rounded by precision.bf16_bits (export --precision bf16)
TOKENIZER = "aghmn-words-1"   # aghmn_fast.data.text's rules; the runtime refuses another kind
READERS = ("bigru", "cnn")
FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3
MAX_DIMS = 4

KvValue = Union[int, str, List[str]]


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit hash of ``data`` (the runtime's state files' checksum)."""
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


_M64 = 0xFFFFFFFFFFFFFFFF
_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M64, 31) * _P1) & _M64


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` (the model file's checksum: a byte-serial hash such as FNV-1a costs
    milliseconds per megabyte at every load, XXH64 a tenth of one)."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        words = struct.unpack_from(f"<{(n // 32) * 4}Q", data)
        for k in range(0, len(words), 4):
            v = [_round(v[j], words[k + j]) for j in range(4)]
        i = (n // 32) * 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for lane in v:
            h = (((h ^ _round(0, lane)) * _P1) + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, struct.unpack_from("<Q", data, i)[0]), 27) * _P1 + _P4) & _M64
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ (struct.unpack_from("<I", data, i)[0] * _P1 & _M64), 23) * _P2 + _P3) & _M64
        i += 4
    while i < n:
        h = (_rotl(h ^ (data[i] * _P5 & _M64), 11) * _P1) & _M64
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    return h ^ (h >> 32)


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _pad(n: int) -> int:
    return -n % ALIGN


def kv_section(kv: Mapping[str, KvValue]) -> bytes:
    """The ``kv`` payload: u64 count, then per key (sorted) the key, a u32 type and the value
    (i64; string: u64 length + UTF-8; string array: u64 count + strings)."""
    out = [struct.pack("<Q", len(kv))]
    for key in sorted(kv):
        value = kv[key]
        if isinstance(value, bool) or not isinstance(value, (int, str, list)):
            raise TypeError(f"metadata {key!r}: unsupported type {type(value).__name__}")
        if isinstance(value, int):
            out += [_string(key), struct.pack("<Iq", KV_INT64, value)]
        elif isinstance(value, str):
            out += [_string(key), struct.pack("<I", KV_STRING), _string(value)]
        else:
            out += [_string(key), struct.pack("<IQ", KV_STRINGS, len(value))]
            out += [_string(v) for v in value]
    return b"".join(out)


def tensor_sections(tensors: Sequence[Tuple[str, "torch.Tensor"]],
                    bf16_names: Sequence[str] = ()) -> Tuple[bytes, bytes]:
    """The ``tensors`` directory and the ``data`` payload of named tensors (in the given order):
    per tensor its name, u32 dtype (0: f32, 1: bf16), u32 ndim, u64 dims, u64 offset into
    ``data`` (a multiple of 64); ``data`` holds the little-endian values, zero-padded. The
    tensors named in ``bf16_names`` are stored as bf16 (rounded by ``precision.bf16_bits``)."""
    import torch   # here, not at the top: the CLI registers this module for every command

    from .precision import bf16_bits
    directory, data = [struct.pack("<Q", len(tensors))], bytearray()
    bf16 = set(bf16_names)
    for name, t in tensors:
        t = t.detach().to(torch.float32).contiguous().cpu()
        if not 1 <= t.dim() <= MAX_DIMS:
            raise ValueError(f"tensor {name}: {t.dim()} dimensions (1 to {MAX_DIMS} are stored)")
        dtype = DTYPE_BF16 if name in bf16 else DTYPE_F32
        directory += [_string(name), struct.pack("<II", dtype, t.dim()),
                      struct.pack(f"<{t.dim()}Q", *t.shape), struct.pack("<Q", len(data))]
        if dtype == DTYPE_BF16:
            data += bf16_bits(t.numpy()).astype("<u2").tobytes()
        else:
            data += t.numpy().astype("<f4").tobytes()
        data += b"\0" * _pad(len(data))
    return b"".join(directory), bytes(data)


def bf16_tensor_names(state_dict: Mapping[str, "torch.Tensor"], reader: str) -> List[str]:
    """The tensors a bf16 file stores as bf16: those the stream kernel keeps in bf16, the
    BiGRU reader's embedding table and the weight matrices (2-D ``*weight*``) of the BiGRU
    reader, the fusion GRU, the AGRU cells and the classifier. Biases and the CNN reader (its
    table included: it runs in fp32 outside the kernel) stay f32, so the runtime and the torch
    push path (which rounds the same tensors) agree bit for bit."""
    kernel = ("fusion.", "agru.", "classifier.")
    if reader == "bigru":
        kernel += ("embedding.", "reader.gru.", "reader.proj.")
    return [n for n, t in state_dict.items()
            if n.startswith(kernel) and "weight" in n.rsplit(".", 1)[-1] and t.dim() == 2]


def pack_file(sections: Sequence[Tuple[str, bytes, bool]]) -> bytes:
    """The bytes of a format-2 file holding ``sections`` ((tag, payload, required) in order)."""
    header = 16 + 32 * len(sections)
    offset = header + _pad(header)
    table, body = [], bytearray()
    for tag, payload, required in sections:
        tag_bytes = tag.encode("ascii")
        if not 1 <= len(tag_bytes) <= 8:
            raise ValueError(f"section tag {tag!r} must be 1 to 8 ASCII characters")
        table.append(struct.pack("<8sIIQQ", tag_bytes, FLAG_REQUIRED if required else 0, 0,
                                 offset + len(body), len(payload)))
        body += payload
        body += b"\0" * _pad(len(body))
    head = MAGIC + struct.pack("<II", FORMAT_VERSION, len(sections)) + b"".join(table)
    data = head + b"\0" * (offset - len(head)) + bytes(body)
    return data + struct.pack("<Q", xxh64(data))


def check_labels(label_names: Sequence[str]) -> None:
    """Raise ``ValueError`` for label names the runtime refuses: empty, duplicate, holding a NUL
    or not encodable as UTF-8 (a lone surrogate)."""
    seen = set()
    for i, name in enumerate(label_names):
        if not isinstance(name, str) or not name:
            raise ValueError(f"label {i} ({name!r}) must be a non-empty string")
        if "\0" in name:
            raise ValueError(f"label {i} ({name!r}) holds a NUL character")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"label {i} ({name!r}) is not valid UTF-8") from None
        if name in seen:
            raise ValueError(f"label {name!r} appears twice")
        seen.add(name)


def model_sections(state_dict: Mapping[str, "torch.Tensor"], config: Mapping, itos: Sequence[str],
                   label_names: Sequence[str], producer: str,
                   source_digest: str = "", precision: str = "fp32") -> List[Tuple[str, bytes, bool]]:
    """The sections of a model: its state dict, configuration (an ``AGHMNConfig`` as a dict),
    vocabulary (id-ordered tokens) and labels. ``precision="bf16"`` stores the tensors of
    :func:`bf16_tensor_names` as bf16 and sets ``aghmn.precision`` (absent: fp32).

    Raises ``ValueError`` for a model the runtime cannot run (a sentence reader), non-finite
    weights, a vocabulary that does not fit the embedding table, or bad label names."""
    import torch
    reader = config["reader"]
    if reader not in READERS:
        raise ValueError(f"reader {reader!r} cannot be exported: the native runtime runs the "
                         f"word readers ({', '.join(READERS)}); a sentence reader needs its "
                         "sentence encoder")
    check_labels(label_names)
    if len(label_names) != config["num_classes"]:
        raise ValueError(f"{len(label_names)} labels for {config['num_classes']} classes")
    table = state_dict["embedding.weight"]
    if len(itos) != table.shape[0]:
        raise ValueError(f"the vocabulary has {len(itos)} tokens, the embedding table "
                         f"{table.shape[0]} rows")
    for name, t in state_dict.items():
        if not bool(torch.isfinite(t.detach().float()).all()):
            raise ValueError(f"tensor {name} holds non-finite values (NaN or Inf): the model is "
                             "damaged or diverged; refusing to export it")
    kv: Dict[str, KvValue] = {
        "general.architecture": "aghmn", "general.producer": producer,
        "aghmn.reader": reader, "aghmn.fusion": config["fusion"], "aghmn.summary": config["summary"],
        "aghmn.hidden_size": int(config["hidden_size"]),
        "aghmn.embedding_dim": int(config["embedding_dim"]),
        "aghmn.num_classes": int(config["num_classes"]), "aghmn.window": int(config["window"]),
        "aghmn.hops": int(config["hops"]), "aghmn.max_len": int(config["max_len"]),
        "aghmn.vocab_size": len(itos), "aghmn.labels": [str(n) for n in label_names],
        "tokenizer.kind": TOKENIZER, "tokenizer.tokens": list(itos)}
    if reader == "cnn":
        kv["aghmn.cnn_filters"] = int(config["cnn_filters"])
    if source_digest:
        kv["general.source_digest"] = source_digest
    bf16_names: List[str] = []
    if check_precision(precision) == "bf16":
        kv["aghmn.precision"] = "bf16"
        bf16_names = bf16_tensor_names(state_dict, reader)
    directory, data = tensor_sections(list(state_dict.items()), bf16_names)
    return [("kv", kv_section(kv), True), ("tensors", directory, True), ("data", data, True)]


def export_checkpoint(checkpoint: str, out: str, precision: str = "fp32") -> Dict:
    """Write ``checkpoint`` (from ``aghmn-fast train``) as a ``.aghmn`` model file ``out``,
    atomically. Returns a summary (reader, sizes, bytes written, precision). ``precision``:
    ``"fp32"`` or ``"bf16"`` (weight matrices and embedding table in bf16: about half the
    bytes; the runtime then computes as ``StreamingRecognizer(precision="bf16")``).

    Raises ``FileNotFoundError`` for a missing checkpoint and ``ValueError`` for a file that is
    not a checkpoint, a checkpoint whose tensors do not match its digest, non-finite weights or a
    model the runtime cannot run (the MiniLM sentence reader)."""
    import dataclasses

    from . import __version__
    from ._io import atomic_write
    from .models.checkpoint import load_checkpoint, tensor_digest
    check_precision(precision)
    model, vocab, labels, _ = load_checkpoint(checkpoint)
    state = model.state_dict()
    config = dataclasses.asdict(model.config)
    data = pack_file(model_sections(state, config, vocab.itos, labels, f"aghmn_fast {__version__}",
                                    tensor_digest(state), precision))
    atomic_write(out, lambda f: f.write(data))
    return {"out": out, "bytes": len(data), "reader": model.config.reader,
            "labels": list(labels), "vocab": len(vocab.itos), "window": model.config.window,
            "format_version": FORMAT_VERSION, "precision": precision}


# ---- reading (tests, golden files, tools) ----------------------------------------------------
def read_model_file(path_or_bytes) -> Tuple[Dict[str, KvValue], Dict[str, "torch.Tensor"], List[str]]:
    """Parse a format-2 file (a path or its bytes): (metadata, tensors by name, section tags).

    A reference reader for tests and tools, not the runtime's loader (``csrc/runtime/model.cpp``
    checks far more). Raises ``ValueError`` for a file it cannot read."""
    import numpy as np
    import torch
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data = bytes(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    if data[:8] != MAGIC:
        raise ValueError("not an .aghmn model file")
    version, count = struct.unpack_from("<II", data, 8)
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}, this reader reads {FORMAT_VERSION}")
    if struct.unpack("<Q", data[-8:])[0] != xxh64(data[:-8]):
        raise ValueError("checksum mismatch")
    sections = {}
    for i in range(count):
        tag, flags, _, off, size = struct.unpack_from("<8sIIQQ", data, 16 + 32 * i)
        sections[tag.rstrip(b"\0").decode("ascii")] = (off, size, flags)

    def reader(tag):
        off, size, _ = sections[tag]
        view, pos = memoryview(data)[off:off + size], 0

        def take(fmt):
            nonlocal pos
            vals = struct.unpack_from(fmt, view, pos)
            pos += struct.calcsize(fmt)
            return vals

        def string():
            nonlocal pos
            (n,) = take("<Q")
            s = bytes(view[pos:pos + n]).decode("utf-8")
            pos += n
            return s
        return take, string

    take, string = reader("kv")
    kv: Dict[str, KvValue] = {}
    for _ in range(take("<Q")[0]):
        key, (kind,) = string(), take("<I")
        kv[key] = (take("<q")[0] if kind == KV_INT64 else string() if kind == KV_STRING
                   else [string() for _ in range(take("<Q")[0])])
    take, string = reader("tensors")
    base = sections["data"][0]
    tensors = {}
    for _ in range(take("<Q")[0]):
        name, (dtype, ndim) = string(), take("<II")
        if dtype not in (DTYPE_F32, DTYPE_BF16):
            raise ValueError(f"tensor {name}: dtype {dtype} (f32, 0, and bf16, 1, are written)")
        shape, (off,) = take(f"<{ndim}Q"), take("<Q")
        n = math.prod(shape)
        if dtype == DTYPE_BF16:  # widened exactly to float32
            bits = np.frombuffer(data, dtype="<u2", count=n, offset=base + off)
            values = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(data, dtype="<f4", count=n, offset=base + off)
        tensors[name] = torch.from_numpy(values.copy()).reshape(shape)
    return kv, tensors, list(sections)


def load_model_file(path_or_bytes):
    """A format-2 file as (AGHMN model in eval mode, :class:`Vocabulary`, label names): the
    torch side of a model file (the golden-file tests run it through the torch recognizer)."""
    from .data import Vocabulary
    from .models import AGHMN, AGHMNConfig
    kv, tensors, _ = read_model_file(path_or_bytes)
    cfg = AGHMNConfig(vocab_size=kv["aghmn.vocab_size"], embedding_dim=kv["aghmn.embedding_dim"],
                      num_classes=kv["aghmn.num_classes"], hidden_size=kv["aghmn.hidden_size"],
                      window=kv["aghmn.window"], reader=kv["aghmn.reader"], fusion=kv["aghmn.fusion"],
                      summary=kv["aghmn.summary"], hops=kv["aghmn.hops"], max_len=kv["aghmn.max_len"],
                      cnn_filters=kv.get("aghmn.cnn_filters", 64))
    model = AGHMN(cfg)
    model.load_state_dict(tensors)
    return model.eval(), Vocabulary(kv["tokenizer.tokens"]), list(kv["aghmn.labels"])

