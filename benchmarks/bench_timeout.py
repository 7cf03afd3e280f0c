"""What @lg.timeout adds to a call of its own: async (the loop's timer wheel) and sync (the worker hop).

An ``async def`` returning a constant under ``@lg.timeout(5)`` beside the
same function bare, under a guard that does nothing (the runner's own
share) and inside ``asyncio.timeout(5)`` (the anchor), batches taken turn about (`interleaved_samples_async`); each figure
is the median over rounds of the paired difference, the ratio guarded over
bare. Sync ``def`` likewise: there the call runs in a worker thread (the
caller waits on it), which is most of the figure.
"""

from __future__ import annotations

import asyncio
import statistics

from typing import Any

from _harness import interleaved_samples, interleaved_samples_async, paired_difference, row

import llmguard as lg

from llmguard._runner import Guard


def target(q: str, n: int = 1) -> str:
    return q


async def atarget(q: str, n: int = 1) -> str:
    return q


def run() -> dict[str, float]:
    print("timeout: what @lg.timeout(5) adds to a call (median of paired batch differences)")
    nothing = Guard()  # a guard whose run only proceeds: the runner's share of any guard
    timed: Any = lg.timeout(5)(atarget)
    passed: Any = nothing(atarget)

    async def by_hand() -> str:
        async with asyncio.timeout(5):
            return await atarget("q", n=2)

    a = interleaved_samples_async(
        {
            "bare": lambda: atarget("q", n=2),
            "asyncio": by_hand,
            "guard": lambda: passed("q", n=2),
            "timeout": lambda: timed("q", n=2),
        },
        number=5_000,
    )
    abare, adiff = statistics.median(a["bare"]), paired_difference(a, "timeout", "bare")
    print(row("async bare call", abare))
    print(row("async a guard that only proceeds, added (the runner)", paired_difference(a, "guard", "bare")))
    aio = paired_difference(a, "asyncio", "bare")
    print(row("async asyncio.timeout(5) around the call, added", aio))
    print(row("async @lg.timeout(5), added (target <= 2 µs)", adiff, aio, "of asyncio.timeout"))
    print(row("async @lg.timeout(5), over the runner (its own work)", paired_difference(a, "timeout", "guard")))
    print(row("async @lg.timeout(5), whole call", abare + adiff, abare, "of bare"))

    stimed: Any = lg.timeout(5)(target)
    s = interleaved_samples({"bare": lambda: target("q", n=2), "timeout": lambda: stimed("q", n=2)}, number=500)
    sbare, sdiff = statistics.median(s["bare"]), paired_difference(s, "timeout", "bare")
    print(row("sync  bare call", sbare))
    print(row("sync  @lg.timeout(5), added (the worker hop; report)", sdiff))
    print(row("sync  @lg.timeout(5), whole call", sbare + sdiff, sbare, "of bare"))
    return {"timeout_async_us": adiff * 1e6, "timeout_sync_us": sdiff * 1e6}


if __name__ == "__main__":
    run()
