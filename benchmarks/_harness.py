"""Timing helpers shared by every benchmark: medians of repeated batches.

Each figure is the median over `REPEATS` batches of the per-call time in a
batch of `number` calls, so a noisy neighbour on a shared machine moves a
few batches, not the figure.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from collections.abc import Awaitable, Callable
from typing import Any

from llmguard._wrap import SYNC, Lane, Layer


REPEATS = 15


def per_call(fn: Callable[[], Any], number: int = 20_000, repeats: int = REPEATS) -> float:
    """Median seconds per call of *fn*."""
    for _ in range(min(number, 1000)):  # warm up
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def per_call_async(
    fn: Callable[[], Awaitable[Any]], number: int = 20_000, repeats: int = REPEATS
) -> float:
    """Median seconds per awaited call of *fn*, on one event loop."""

    async def batch(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        return (time.perf_counter() - start) / n

    async def main() -> float:
        await batch(min(number, 1000))
        return statistics.median([await batch(number) for _ in range(repeats)])

    return asyncio.run(main())


def row(name: str, seconds: float, baseline: float | None = None, ref: str = "") -> str:
    """A result line: the time in µs and, if given, the ratio to a baseline."""
    text = f"  {name:<52} {seconds * 1e6:9.3f} µs"
    if baseline is not None and baseline > 0:
        text += f"   {seconds / baseline:6.2f}x {ref}"
    return text


def overhead(guarded: float, bare: float) -> float:
    """What the guard adds on top of the bare call (never below zero)."""
    return max(guarded - bare, 0.0)


class PassThrough(Layer):
    """A layer that does nothing, on the core's fast lane: what a guard alone on a function runs on."""

    def lane(self, shape: str) -> Lane | None:
        return Lane(None, None, self.resume if shape == SYNC else self.resume_async)
