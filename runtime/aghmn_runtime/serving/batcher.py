"""Micro-batching: concurrent requests gathered into one engine call on one worker thread.

The worker never waits for a timer when it is idle: a request that arrives while nothing is
being computed is sent to the engine at once (a lone client sees the in-process latency plus the
HTTP cost). While a batch is being computed, new requests queue up; when it finishes, everything
queued (up to ``max_batch`` utterances) forms the next batch, so batches grow with the load by
themselves. ``max_wait_ms`` > 0 additionally lets a batch linger that long for companions, but
only right after a batch of more than one utterance (that is, under load).

All engine work (batches, deletes, expiry sweeps) runs in one place, in the order it was
submitted: the engine and its recognizer are not thread-safe, and a single owner needs no lock.
By default that place is the event loop itself (``worker_thread=False``): a batch blocks the loop
while it computes, and the requests that arrive meanwhile wait in the sockets and form the next
batch. A worker thread (``worker_thread=True``) lets the loop parse requests while a batch
computes, but the two threads then contend for the GIL (Python hands it over only every
``sys.getswitchinterval()``, 5 ms by default), which costs more than the overlap gains on a small
machine; measure before choosing it.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from typing import Any, Callable, List, Optional, Sequence


class Overloaded(Exception):
    """The queue is full: the request is refused (HTTP 503) rather than queued without bound."""


class _Push:
    __slots__ = ("items", "future", "tag")

    def __init__(self, items, future, tag=None):
        self.items, self.future, self.tag = items, future, tag


class _Call:
    __slots__ = ("fn", "future")

    def __init__(self, fn, future):
        self.fn, self.future = fn, future


class MicroBatcher:
    """Feeds ``process(list_of_items) -> list_of_results`` with batches of queued items.

    Args:
        process: the engine call; one result per item, in order (run on the worker thread).
        max_batch: the most utterances in one call (a single request larger than this is still
            processed whole, alone).
        max_wait_ms: how long a batch may wait for more items under load (0: never waits).
        max_queue: the most utterances waiting; beyond it :meth:`submit` raises
            :class:`Overloaded`.
        on_batch: optional ``on_batch(n_items, seconds)`` called after every batch (metrics).
        worker_thread: run the engine on a dedicated thread instead of the event loop (see the
            module doc).
    """

    def __init__(self, process: Callable[[List[Any]], List[Any]], max_batch: int = 256,
                 max_wait_ms: float = 0.0, max_queue: int = 8192,
                 on_batch: Optional[Callable[[int, float], None]] = None, worker_thread: bool = False):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._process = process
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: "collections.deque" = collections.deque()
        self._depth = 0          # utterances queued (not yet handed to the worker thread)
        self._executor = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aghmn-engine")
                          if worker_thread else None)
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self._last_batch = 0

    @property
    def depth(self) -> int:
        """Utterances waiting for the worker."""
        return self._depth

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aghmn-batcher")

    async def stop(self) -> None:
        """Process everything already queued, then stop the worker (refuses new work)."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[Any], tag: Any = None) -> List[Any]:
        """Queue items (kept together in one batch) and wait for their results; ``tag`` marks
        them for :meth:`withdraw`."""
        if self._closing or self._task is None:
            raise Overloaded("the server is shutting down")
        if self._depth + len(items) > self.max_queue and self._depth:
            raise Overloaded(f"too many queued utterances (limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Push(list(items), future, tag))
        self._depth += len(items)
        self._wake.set()
        return await future

    def withdraw(self, match: Callable[[Any], bool], reason: str) -> int:
        """Refuse the queued submissions whose tag (not None) ``match`` accepts: they will not be
        processed, their :meth:`submit` raises ``Overloaded(reason)``. Submissions already taken
        into a batch are not affected. Returns how many utterances were withdrawn."""
        kept, n = [], 0
        for job in self._queue:
            if isinstance(job, _Push) and job.tag is not None and match(job.tag):
                n += len(job.items)
                if not job.future.done():
                    job.future.set_exception(Overloaded(reason))
            else:
                kept.append(job)
        if n:
            self._queue.clear()   # the same deque: the worker holds a reference to it
            self._queue.extend(kept)
            self._depth -= n
        return n

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the worker thread after everything queued before it."""
        if self._task is None:
            raise Overloaded("the server is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(fn, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if isinstance(queue[0], _Call):
                job = queue.popleft()
                await self._execute(loop, job.future, job.fn)
                continue
            await self._settle()
            groups = self._take([])
            if self.max_wait and self._last_batch > 1:
                deadline = time.perf_counter() + self.max_wait
                while (sum(len(g.items) for g in groups) < self.max_batch
                       and not (queue and isinstance(queue[0], _Call))):
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except asyncio.TimeoutError:
                        break
                    groups = self._take(groups)
            items = [item for g in groups for item in g.items]
            self._depth -= len(items)
            self._last_batch = len(items)
            start = time.perf_counter()
            try:
                results = await self._in_worker(loop, self._process, items)
            except Exception as exc:  # the engine failed as a whole: every request learns why
                for g in groups:
                    if not g.future.done():
                        g.future.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(items), time.perf_counter() - start)
            offset = 0
            for g in groups:
                n = len(g.items)
                if not g.future.done():     # a client that went away has cancelled its future
                    g.future.set_result(results[offset:offset + n])
                offset += n

    def _take(self, groups: List[_Push]) -> List[_Push]:
        """Move queued push groups into ``groups`` while the batch has room (at least one)."""
        queue, size = self._queue, sum(len(g.items) for g in groups)
        while queue and isinstance(queue[0], _Push):
            if queue[0].future.done():   # cancelled while queued: its client is gone, skip it
                self._depth -= len(queue.popleft().items)
                continue
            if groups and size + len(queue[0].items) > self.max_batch:
                break
            g = queue.popleft()
            groups.append(g)
            size += len(g.items)
        return groups

    async def _in_worker(self, loop, fn, *args):
        if self._executor is None:
            return fn(*args)
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _settle(self) -> None:
        """Let the event loop turn requests that already arrived into queued items (a few loop
        iterations, until the queue stops growing), so that they join this batch. A lone request
        costs one iteration, no timer."""
        previous = -1
        for _ in range(8):
            if self._depth == previous:
                return
            previous = self._depth
            await asyncio.sleep(0)

    async def _execute(self, loop, future, fn) -> None:
        try:
            result = await self._in_worker(loop, fn)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)
