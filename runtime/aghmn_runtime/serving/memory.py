"""The memory budget of a server's live conversations (``--max-memory``), in bytes.

A live conversation costs its recognizer state (``bytes_per_conversation`` of either engine: the
K ring slots of reader vectors and fusion projections, K * H * 4 * (1 + 3 D) bytes for D fusion
directions, e.g. 26.3 KiB at K = 40, H = 24 and 28 MiB at K = 4096, H = 256, bidirectional;
K * H * 4 with ``--projection-cache off``, the reader vectors only: 3.75 KiB and 4 MiB) plus
the engine's bookkeeping (:data:`BOOKKEEPING_BYTES`: its tables, the last answer kept for
retries, the store's count). The server holds at most
``min(--max-conversations, budget // that)`` conversations in memory and refuses to start when one
alone exceeds the budget. The default budget is :data:`DEFAULT_FRACTION` of the machine's memory
(the smaller of physical memory and the cgroup's limit, as a container sees it).

Not counted: the ``memory`` store's texts (the last K + 1 texts of every stored conversation,
held in the process; SQLite and Redis keep them outside it), the model itself and the server's
fixed cost (Python, the HTTP stack), a few tens of MB.
"""
from __future__ import annotations

import os
import re
from typing import Optional

# Per live conversation beyond the recognizer state: the engine's count, LRU entry and last
# answer (a dict of C probabilities), the recognizer's table entry and the SQLite store's count;
# measured 1.3 KiB (runtime) and 1.6 KiB (torch) of resident memory at 20,000 conversations
# (docs/results/serving-memory.md), rounded up with room for allocator slack and longer ids.
BOOKKEEPING_BYTES = 4096
DEFAULT_FRACTION = 0.5
_FALLBACK_MEMORY = 4 << 30   # a machine whose memory cannot be read
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
          "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9,
          "tb": 10 ** 12}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")


def parse_size(text: str, what: str = "--max-memory") -> int:
    """Bytes of a size such as ``512M``, ``2G``, ``1.5GiB`` or ``1000000``: K, M, G, T (and KiB,
    MiB, ...) are powers of 1024, KB, MB, GB, TB powers of 1000. ValueError naming ``what`` for
    anything else or a size under one byte."""
    match = _SIZE.fullmatch(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{what} must be a size such as 512M, 2G or 1500000000 (bytes), got {text!r}")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"{what} must be at least one byte, got {text!r}")
    return value


def format_size(n: float) -> str:
    """``n`` bytes for people: ``26.9 KiB``, ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def machine_memory() -> Optional[int]:
    """The memory this process may use: physical memory, or the cgroup's limit when lower
    (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``); None where neither can be read."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit() and 0 < int(value) < 1 << 60:   # "max" or a huge v1 value: no limit
            sizes.append(int(value))
    return min(sizes) if sizes else None


def default_budget() -> int:
    """:data:`DEFAULT_FRACTION` of :func:`machine_memory` (of 4 GiB where it is unknown)."""
    return int(DEFAULT_FRACTION * (machine_memory() or _FALLBACK_MEMORY))


def live_capacity(budget: int, per_conversation: int, max_conversations: int, model: str = "the model") -> int:
    """The most conversations held in memory: ``min(max_conversations, budget //
    per_conversation)``. ValueError (one line, naming the sizes) when one conversation alone
    exceeds the budget."""
    if per_conversation > budget:
        raise ValueError(f"--max-memory {format_size(budget)} cannot hold one conversation of {model}: "
                         f"each needs {format_size(per_conversation)} (give a larger --max-memory)")
    return min(max_conversations, budget // per_conversation)
