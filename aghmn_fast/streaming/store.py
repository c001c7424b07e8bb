"""The ring store: what the next utterance of each live conversation needs from its past.

Per conversation, a block of K slots (K = the model's window) holds the reader vector u [H] and
the fusion-GRU input projection [3H] (every direction) of its last K utterances; utterance n of a
conversation goes to slot ``block * K + n % K``. :class:`RingStore` owns the tensors and the
conversation table; the compute paths read and write it only through this public contract, which
a native runtime implements as well:

- ``u`` [capacity * K, H] and ``proj`` [max(D, 1), capacity * K, 3H] (D fusion directions), the
  stored rows (reallocated when the store grows or is restored: never keep them across calls);
  ``pad_proj`` [D, 3H], the projection of an empty slot (the fusion biases);
- ``open`` / ``close`` a conversation, ``count`` / ``counts`` (utterances seen), ``blocks``;
- ``window_rows(cids)`` [B, K]: the slots of each conversation's window, oldest first, -1 for
  the empty ones; ``slots(cids)`` [B]: where each conversation's next utterance goes;
- ``write(slots, u)`` stores reader vectors and their projections, ``advance(cids)`` counts one
  utterance more; ``remember(cids, u)`` does both;
- ``snapshot()`` / ``restore(...)``: every conversation's state, for state files;
- ``bytes_per_conversation`` and ``nbytes``: the memory of one conversation and of the store.

Without the projection cache (``projection_cache=False``, the "push" mode only) ``proj`` is
empty and the push kernel recomputes each window's projections from ``u``, bit for bit what the
cache would hold; ``snapshot`` then computes them with ``project`` (the kernel's, set by the push
mode), so that a state file does not depend on the mode.

Memory: the store doubles when full and halves once at most a quarter of it is open (the open
conversations move to the first blocks, so their block numbers change: read them per call), so
closed conversations' slots are reused by new ones and given back when most are closed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F


class RingStore:
    """Ring slots of reader vectors and fusion projections for many conversations.

    Args:
        window: K, the slots per conversation.
        hidden: H, the width of a reader vector.
        w_ih, b_ih: the fusion GRU's input weights [3H, H] and biases [3H], one per direction
            (empty lists for a model without fusion: only the reader vectors are stored).
        dtype, device: of the stored tensors.
        capacity: conversations the store holds before it first grows (it doubles when full).
        projection_cache: False: store the reader vectors only (see the module doc).
    """

    def __init__(self, window: int, hidden: int, w_ih: Sequence[Tensor], b_ih: Sequence[Tensor],
                 *, dtype: torch.dtype, device: torch.device, capacity: int = 4,
                 projection_cache: bool = True):
        if len(w_ih) != len(b_ih):
            raise ValueError("w_ih and b_ih must have one entry per fusion direction")
        self.window, self.hidden = window, hidden
        self.dtype, self.device = dtype, torch.device(device)
        self.w_ih, self.b_ih = list(w_ih), list(b_ih)
        self.num_dirs = len(self.w_ih)
        self.pad_proj = torch.stack(self.b_ih) if self.num_dirs else None
        self.projection_cache = projection_cache
        #: u [N, H] (stored rows) -> proj [max(D, 1), N, 3H] as the push kernel caches them; set
        #: by the push mode, needed by snapshot() without the cache
        self.project: Optional[Callable[[Tensor], Tensor]] = None
        self._initial = max(1, capacity)
        self._reset(0)

    # ---- the conversation table -----------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Conversations the store holds before it grows."""
        return self._capacity

    @property
    def bytes_per_conversation(self) -> int:
        """Bytes of one open conversation's state: K slots of u [H] and, with the projection
        cache, proj [max(D, 1), 3H]."""
        width = self.proj.shape[0] if self.projection_cache else 0
        return self.window * self.hidden * (1 + 3 * width) * self.u.element_size()

    @property
    def nbytes(self) -> int:
        """Bytes the store's tensors hold now (its capacity, open or not)."""
        return self.u.nbytes + self.proj.nbytes

    @property
    def conversations(self) -> List[Hashable]:
        """Ids of the open conversations, in opening order."""
        return list(self._blocks)

    def __contains__(self, cid: Hashable) -> bool:
        return cid in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def count(self, cid: Hashable) -> int:
        """Utterances stored for a conversation so far (0 if it is not open)."""
        return self._counts.get(cid, 0)

    def counts(self, cids: Sequence[Hashable]) -> List[int]:
        """Utterances stored so far, per open conversation."""
        return [self._counts[c] for c in cids]

    def blocks(self, cids: Sequence[Hashable]) -> List[int]:
        """The block (of K slots) of each open conversation."""
        return [self._blocks[c] for c in cids]

    def open(self, cid: Hashable) -> None:
        """Give a new conversation a block (growing the store when full); no-op if open."""
        if cid in self._blocks:
            return
        if not self._free:
            self._reallocate(2 * self._capacity)
        block = self._free.pop()
        K = self.window
        self.u[block * K:(block + 1) * K] = 0   # a reused block holds a closed conversation's
        self.proj[:, block * K:(block + 1) * K] = 0
        self._blocks[cid], self._counts[cid] = block, 0

    def close(self, cid: Hashable) -> None:
        """Forget a conversation and free its block; ``KeyError`` if it is not open. Once at
        most a quarter of the store is open, it halves (see the module doc)."""
        if cid not in self._blocks:
            raise KeyError(f"unknown conversation_id {cid!r}")
        self._free.append(self._blocks.pop(cid))
        del self._counts[cid]
        # Half the store, the open conversations in its first quarter: neither growing again
        # (twice as many) nor shrinking again (half as many) follows soon, and the copies cost
        # O(1) per close, amortised.
        if self._capacity > self._initial and len(self._blocks) <= self._capacity // 4:
            self._reallocate(max(self._initial, self._capacity // 2))

    # ---- what the compute paths read and write ---------------------------------------------------
    def window_rows(self, cids: Sequence[Hashable]) -> Tensor:
        """Slots [B, K] of each conversation's stored utterances, oldest first, -1 where empty."""
        K, rows = self.window, []
        for cid in cids:
            n, base = self._counts[cid], self._blocks[cid] * K
            m = min(n, K)
            rows.append([-1] * (K - m) + [base + (i % K) for i in range(n - m, n)])
        return torch.tensor(rows, dtype=torch.int64, device=self.device).reshape(-1, K)

    def slots(self, cids: Sequence[Hashable]) -> Tensor:
        """The slot [B] each conversation's next utterance goes to."""
        K = self.window
        return torch.tensor([self._blocks[c] * K + self._counts[c] % K for c in cids],
                            dtype=torch.int64, device=self.device)

    def write(self, slots: Tensor, u: Tensor) -> None:
        """Store reader vectors u [B, H] and their fusion projections at ``slots`` [B]."""
        self.u.index_copy_(0, slots, u)
        for d in range(self.num_dirs if self.projection_cache else 0):
            self.proj[d].index_copy_(0, slots, F.linear(u, self.w_ih[d], self.b_ih[d]))

    def advance(self, cids: Sequence[Hashable]) -> None:
        """Count one more utterance for each conversation (after its write)."""
        for c in cids:
            self._counts[c] += 1

    def remember(self, cids: Sequence[Hashable], u: Tensor) -> None:
        """Write the new utterances u [B, H] of ``cids`` and count them."""
        self.write(self.slots(cids), u)
        self.advance(cids)

    # ---- state files ----------------------------------------------------------------------------
    def snapshot(self) -> Tuple[List[Hashable], List[int], Tensor, Tensor]:
        """``(ids, counts, u [n*K, H], proj [max(D,1), n*K, 3H])`` of every open conversation,
        the tensors on the CPU, each conversation's K slots in ring order."""
        ids, K = list(self._blocks), self.window
        slots = torch.tensor([self._blocks[c] * K + k for c in ids for k in range(K)],
                             dtype=torch.int64, device=self.device)
        if self.projection_cache:
            return ids, self.counts(ids), self.u[slots].cpu(), self.proj[:, slots].cpu()
        if self.project is None:
            raise RuntimeError("a store without the projection cache needs its push mode's "
                               "project() to save its state")
        u = self.u[slots].contiguous()
        proj = self.project(u)
        # Slots not yet written hold zeros in the cache (open() zeroes a block).
        unwritten = torch.tensor([k >= n for n in self.counts(ids) for k in range(K)],
                                 dtype=torch.bool, device=self.device)
        proj[:, unwritten] = 0
        return ids, self.counts(ids), u.cpu(), proj.cpu()

    def restore(self, ids: list, counts: list, u: Tensor, proj: Tensor) -> None:
        """Replace every conversation with a :meth:`snapshot`'s; ``ValueError`` (naming what is
        wrong) for inconsistent input, in which case nothing changes."""
        K, width = self.window, self.proj.shape[0]
        if not isinstance(ids, list) or not isinstance(counts, list) or len(ids) != len(counts):
            raise ValueError("ids and counts must be lists of one length")
        n = len(ids)
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts):
            raise ValueError("counts must be positive integers")
        if (not isinstance(u, Tensor) or not isinstance(proj, Tensor)
                or tuple(u.shape) != (n * K, self.hidden)
                or tuple(proj.shape) != (width, n * K, 3 * self.hidden)
                or not u.is_floating_point() or not proj.is_floating_point()):
            raise ValueError("stored tensors have the wrong shape or type")
        if len(set(ids)) != n:
            raise ValueError("a conversation id appears twice")
        self._reset(n)
        self._free = list(range(self._capacity - 1, n - 1, -1))
        for b, (cid, count) in enumerate(zip(ids, counts)):
            self._blocks[cid], self._counts[cid] = b, count
        self.u[: n * K] = u.to(self.device, self.dtype)
        if self.projection_cache:   # else recomputed from u at every push
            self.proj[:, : n * K] = proj.to(self.device, self.dtype)

    # ---- internals ------------------------------------------------------------------------------
    def _reset(self, conversations: int) -> None:
        self._blocks: Dict[Hashable, int] = {}   # conversation -> block of K slots
        self._counts: Dict[Hashable, int] = {}   # conversation -> utterances seen
        self._free: List[int] = []
        self._capacity = 0
        self.u = torch.zeros(0, self.hidden, dtype=self.dtype, device=self.device)
        self.proj = torch.zeros(max(self.num_dirs, 1), 0, 3 * self.hidden, dtype=self.dtype,
                                device=self.device)
        self._reallocate(max(self._initial, conversations))

    def _reallocate(self, capacity: int) -> None:
        """Tensors of ``capacity`` blocks, open conversation i moved to block i. On the CPU the
        new tensors are left uninitialised (``open`` zeroes a block when a conversation takes
        it), so that a block never used costs address space, not resident memory; elsewhere
        they are zeroed."""
        K = self.window
        new = self.u.new_empty if self.device.type == "cpu" else self.u.new_zeros
        u = new(capacity * K, self.hidden)
        proj = new(self.proj.shape[0], capacity * K if self.projection_cache else 0, 3 * self.hidden)
        ids = list(self._blocks)
        if ids:
            old = torch.tensor([self._blocks[c] * K + k for c in ids for k in range(K)],
                               dtype=torch.int64, device=self.device)
            u[:len(ids) * K] = self.u[old]
            if self.projection_cache:
                proj[:, :len(ids) * K] = self.proj[:, old]
        elif capacity:   # the "ops" path reads row 0 (masked) for empty slots: never garbage
            u[:K] = 0
            proj[:, :K] = 0
        self._blocks = {c: b for b, c in enumerate(ids)}
        self._free = list(range(capacity - 1, len(ids) - 1, -1))   # the lowest is taken first
        self.u, self.proj = u, proj   # the old tensors are freed here
        self._capacity = capacity
        if self.device.type == "cpu":
            _release_free_heap()


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def _release_free_heap() -> None:
    """Give the heap's free pages back to the operating system after the store's tensors were
    replaced: glibc raises its mmap threshold to the size of each mapped block freed, so the
    next tensors of a growing or shrinking store come from the heap, and freed there they would
    stay resident (measured: the K = 40 store of 20,000 conversations kept a second copy of
    itself after a close-all and reopen cycle without this)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
