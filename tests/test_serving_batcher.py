"""The micro-batcher: a lone request never waits for the timer, concurrent ones are gathered,
bounds are kept, overload is refused, calls keep their order, failures reach every waiter."""
import asyncio
import time

import pytest

from aghmn_runtime.serving.batcher import MicroBatcher, Overloaded


def _recorder(delay=0.0):
    batches = []

    def process(items):
        batches.append(list(items))
        if delay:
            time.sleep(delay)
        return [f"r{item}" for item in items]
    return process, batches


@pytest.mark.parametrize("worker_thread", [False, True])
def test_lone_request_does_not_wait_for_the_timer(worker_thread):
    process, batches = _recorder()

    async def main():
        b = MicroBatcher(process, max_batch=64, max_wait_ms=5000, worker_thread=worker_thread)
        b.start()
        t0 = time.perf_counter()
        for i in range(5):
            assert await b.submit([i]) == [f"r{i}"]
        elapsed = time.perf_counter() - t0
        await b.stop()
        return elapsed

    # five lone requests; one timer wait alone would be 5 s (the margin is for a loaded machine)
    assert asyncio.run(main()) < 2.5
    assert batches == [[0], [1], [2], [3], [4]]


@pytest.mark.parametrize("worker_thread", [False, True])
def test_concurrent_requests_are_gathered_within_bounds(worker_thread):
    process, batches = _recorder(delay=0.01)

    async def main():
        b = MicroBatcher(process, max_batch=16, worker_thread=worker_thread)
        b.start()
        results = await asyncio.gather(*[b.submit([i]) for i in range(100)])
        group = await b.submit(list(range(100, 140)))   # larger than max_batch: served whole, alone
        await b.stop()
        return results, group

    results, group = asyncio.run(main())
    assert results == [[f"r{i}"] for i in range(100)]
    assert group == [f"r{i}" for i in range(100, 140)]
    assert all(len(batch) <= 16 for batch in batches[:-1]) and batches[-1] == list(range(100, 140))
    assert len(batches) <= 100 // 16 + 3   # gathered, not one by one
    assert [i for batch in batches for i in batch] == list(range(140))   # arrival order kept


def test_max_wait_lingers_only_under_load():
    process, batches = _recorder(delay=0.005)

    async def main():
        b = MicroBatcher(process, max_batch=1000, max_wait_ms=300)   # >> the trickle's ~15 ms
        b.start()
        first = [asyncio.ensure_future(b.submit([i])) for i in range(2)]
        await asyncio.sleep(0)
        later = []
        for i in range(2, 12):   # trickles in while the batcher lingers
            later.append(asyncio.ensure_future(b.submit([i])))
            await asyncio.sleep(0.001)
        await asyncio.gather(*first, *later)
        await b.stop()

    asyncio.run(main())
    # the first batch starts at once (no load before it); the second lingers and takes the rest
    assert len(batches[0]) <= 3 and len(batches) == 2


def test_overload_calls_and_failures():
    calls = []

    def process(items):
        if "boom" in items:
            raise RuntimeError("engine failed")
        time.sleep(0.02)
        return items

    async def main():
        b = MicroBatcher(process, max_batch=4, max_queue=8)
        b.start()
        busy = asyncio.ensure_future(b.submit(["a"]))
        await asyncio.sleep(0.005)                       # "a" is computing
        queued = [asyncio.ensure_future(b.submit([f"q{i}"])) for i in range(8)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit 8"):
            await b.submit(["over"])
        order = asyncio.ensure_future(b.call(lambda: calls.append("call") or "done"))
        assert await busy == ["a"]
        assert [await q for q in queued] == [[f"q{i}"] for i in range(8)]
        assert await order == "done"
        with pytest.raises(RuntimeError, match="engine failed"):
            await b.submit(["boom"])
        assert await b.submit(["fine"]) == ["fine"]      # still serving
        await b.stop()
        with pytest.raises(Overloaded, match="shutting down"):
            await b.submit(["late"])

    asyncio.run(main())
    assert calls == ["call"]
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda items: items, max_batch=0)
