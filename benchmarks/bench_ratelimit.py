"""@lg.ratelimit: acquire on the success path beside aiolimiter and limits, and the rate held by 500 waiters.

1. The success path (capacity to spare, nobody waits), per call, guarded
   minus bare: ``@lg.ratelimit(rpm=...)`` around an async function beside
   ``async with aiolimiter.AsyncLimiter(...)`` around it (target <= 1x), and
   the sync guard beside ``limits``' moving window ``hit`` (in memory); the
   store's decision alone (`MemoryRateLimitStore.acquire`) beside
   ``AsyncLimiter.acquire`` too.
2. The rate held: 500 asyncio tasks (and 500 threads) asking at once through
   ``rpm`` set so they take 10 s; the rate measured from the first to the
   last admission against the configured one (target within +-2 %), and
   the process's CPU time while they wait as a share of wall time (target
   <= 5 %). ``LLMGUARD_BENCH_SHORT=1`` runs 100 waiters over 2 s instead.
3. Per-call time through ``retry -> budget -> ratelimit -> timeout`` with 100
   and with 10,000 asyncio callers at once (target <= 1.2x).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
import warnings

from collections.abc import Awaitable, Callable
from typing import Any

from _harness import PassThrough, interleaved, load_average, overhead, row

import llmguard as lg

from llmguard.stores.ratelimit import MemoryRateLimitStore


def target(q: str) -> str:
    return q


async def atarget(q: str) -> str:
    return q


HUGE = 1e12  # per minute: never waits in a benchmark's lifetime


def _interleaved_async(fns: dict[str, Callable[[], Awaitable[Any]]], number: int = 5_000, repeats: int = 15) -> dict[str, float]:
    """Median seconds per awaited call of each of *fns*, their batches taken turn about on one loop (see `interleaved`)."""

    async def main() -> dict[str, float]:
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for fn in fns.values():  # warm up
            for _ in range(500):
                await fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(number):
                    await fn()
                samples[name].append((time.perf_counter() - start) / number)
        return {name: statistics.median(s) for name, s in samples.items()}

    return asyncio.run(main())


def success_path() -> dict[str, float]:
    import aiolimiter

    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    warnings.simplefilter("ignore")
    out: dict[str, float] = {}
    limiter = aiolimiter.AsyncLimiter(HUGE, 60)

    async def with_aiolimiter() -> str:
        async with limiter:
            return await atarget("q")

    guarded = lg.ratelimit(rpm=HUGE)(atarget)
    nothing = PassThrough()(atarget)
    a = _interleaved_async(
        {
            "bare": lambda: atarget("q"),
            "aiolimiter": with_aiolimiter,
            "ours": lambda: guarded("q"),
            "runner": lambda: nothing("q"),
            "aio acquire": limiter.acquire,
        }
    )
    aio, ours, floor = (overhead(a[k], a["bare"]) for k in ("aiolimiter", "ours", "runner"))
    print(row("async aiolimiter: async with limiter around the call", aio))
    print(row("async @lg.ratelimit(rpm=...)", ours, aio, "of aiolimiter (target <= 1x)"))
    print(row("async a guard doing nothing (the runner alone)", floor, aio, "of aiolimiter"))
    print(row("async @lg.ratelimit minus the runner alone", overhead(ours, floor), aio, "of aiolimiter"))
    out["async_guard_ratio"] = ours / aio

    store = MemoryRateLimitStore()
    cells = [("bench::rpm", 60.0 / HUGE)]
    window = MovingWindowRateLimiter(MemoryStorage())
    item = parse("1000000000/minute")
    sync_guarded = lg.ratelimit(rpm=HUGE)(target)

    def with_limits() -> str:
        window.hit(item, "bench")
        return target("q")

    t = interleaved(
        {
            "bare": lambda: target("q"),
            "decision": lambda: store.acquire(cells, 60.0),
            "limits": with_limits,
            "ours": lambda: sync_guarded("q"),
        }
    )
    print(row("async aiolimiter: await limiter.acquire()", a["aio acquire"]))
    print(row("MemoryRateLimitStore.acquire (the decision alone)", t["decision"], a["aio acquire"], "of aiolimiter.acquire"))
    out["decision_ratio"] = t["decision"] / a["aio acquire"]
    mov, sync_ours = overhead(t["limits"], t["bare"]), overhead(t["ours"], t["bare"])
    print(row("sync  limits MovingWindowRateLimiter.hit + the call", mov))
    print(row("sync  @lg.ratelimit(rpm=...)", sync_ours, mov, "of limits' moving window"))
    out["sync_guard_ratio"] = sync_ours / mov
    return out


def _rate_async(waiters: int, seconds: float) -> tuple[float, float]:
    """(measured rate / configured rate, CPU / wall while waiting) for *waiters* tasks over *seconds*."""
    rpm = waiters / seconds * 60.0
    admitted: list[float] = []

    @lg.ratelimit(rpm=rpm, max_wait=None)
    async def ask() -> None:
        admitted.append(time.monotonic())

    async def main() -> None:
        await asyncio.gather(*(ask() for _ in range(waiters)))

    cpu, wall = time.process_time(), time.monotonic()
    asyncio.run(main())
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    measured = (len(admitted) - 1) / (admitted[-1] - admitted[0])
    return measured / (rpm / 60.0), cpu / wall


def _rate_threads(waiters: int, seconds: float) -> tuple[float, float]:
    """`_rate_async` with one thread per waiter."""
    rpm = waiters / seconds * 60.0
    admitted: list[float] = []
    lock = threading.Lock()

    @lg.ratelimit(rpm=rpm, max_wait=None)
    def ask() -> None:
        now = time.monotonic()
        with lock:
            admitted.append(now)

    threads = [threading.Thread(target=ask) for _ in range(waiters)]
    cpu, wall = time.process_time(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    admitted.sort()
    measured = (len(admitted) - 1) / (admitted[-1] - admitted[0])
    return measured / (rpm / 60.0), cpu / wall


def _rate_aiolimiter(waiters: int, seconds: float) -> tuple[float, float]:
    """The same 500 waiters through aiolimiter (a leaky bucket: its first max_rate go at once)."""
    import aiolimiter

    per_second = waiters / seconds
    admitted: list[float] = []

    async def main() -> None:
        limiter = aiolimiter.AsyncLimiter(per_second, 1.0)

        async def ask() -> None:
            async with limiter:
                admitted.append(time.monotonic())

        await asyncio.gather(*(ask() for _ in range(waiters)))

    cpu, wall = time.process_time(), time.monotonic()
    asyncio.run(main())
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    measured = (len(admitted) - 1) / (admitted[-1] - admitted[0])
    return measured / per_second, cpu / wall


def rate_held() -> dict[str, float]:
    short = os.environ.get("LLMGUARD_BENCH_SHORT") == "1"
    waiters, seconds = (100, 2.0) if short else (500, 10.0)
    out: dict[str, float] = {}
    print(f"rate held: {waiters} waiters asking at once, rpm set for {seconds:g} s (target +-2 %, CPU <= 5 % of wall)")
    for name, fn in (("asyncio tasks", _rate_async), ("threads", _rate_threads), ("aiolimiter (anchor)", _rate_aiolimiter)):
        ratio, cpu = fn(waiters, seconds)
        print(f"  {name:<22} rate {ratio * 100:7.2f} % of configured ({(ratio - 1) * 100:+.2f} %)   CPU {cpu * 100:5.2f} % of wall")
        out[f"{name} rate"] = ratio
        out[f"{name} cpu"] = cpu
    return out


def concurrency() -> dict[str, float]:
    """Per-call time through a stack with the limit, 100 vs 10,000 asyncio callers at once (target <= 1.2x)."""

    @lg.retry(attempts=3)
    @lg.budget(tokens=10**15, max_output=16)
    @lg.ratelimit(rpm=HUGE)
    @lg.timeout(30)
    async def ask(q: str) -> str:
        return await atarget(q)

    def per_call_at(n: int, rounds: int = 5) -> float:
        async def once() -> float:
            start = time.perf_counter()
            await asyncio.gather(*(ask("q") for _ in range(n)))
            return (time.perf_counter() - start) / n

        async def main() -> float:
            await once()  # warm up
            return statistics.median([await once() for _ in range(rounds)])

        return asyncio.run(main())

    few, many = per_call_at(100, rounds=50), per_call_at(10_000)
    print("concurrency: retry -> budget -> ratelimit -> timeout on async def, callers gathered at once")
    print(row("per call, 100 callers", few))
    print(row("per call, 10,000 callers", many, few, "of 100 callers (target <= 1.2x)"))
    return {"concurrency_ratio": many / few}


def run() -> dict[str, float]:
    print(f"ratelimit: success path per call (guarded minus bare); load {load_average()}")
    out = success_path()
    out.update(concurrency())
    out.update(rate_held())
    return out


if __name__ == "__main__":
    run()
