"""Timing helpers shared by every benchmark: medians of repeated batches.

Each figure is the median over `REPEATS` batches of the per-call time in a
batch of `number` calls, so a noisy neighbour on a shared machine moves a
few batches, not the figure.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from collections.abc import Awaitable, Callable
from typing import Any


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


def paired_difference(samples: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of *a*'s batch minus *b*'s batch of the same round."""
    return statistics.median(x - y for x, y in zip(samples[a], samples[b], strict=True))


def row(name: str, seconds: float, baseline: float | None = None, ref: str = "") -> str:
    """A result line: the time in µs and, if given, the ratio to a baseline."""
    text = f"  {name:<52} {seconds * 1e6:9.3f} µs"
    if baseline is not None and baseline > 0:
        text += f"   {seconds / baseline:6.2f}x {ref}"
    return text


def overhead(guarded: float, bare: float) -> float:
    """What the guard adds on top of the bare call (never below zero)."""
    return max(guarded - bare, 0.0)


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages, for the header of a run."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


# A guard that does nothing of its own: the reference for "a guard's own work"
# (a guard's cost alone minus this one's alone) and, stacked, the dispatch of
# one more guard. The one place the benchmarks know the core's guard API, so
# they run unchanged on both sides of issue #13's rewrite: a `Guard` of the
# one runner (``llmguard._runner``) where it exists, otherwise a `Layer` of
# the old core with a fast `Lane` (what a guard alone on a function ran on).
try:
    from llmguard._runner import Guard as _Guard
except ImportError:  # the core before the one runner
    from llmguard._wrap import SYNC, Lane, Layer

    class PassThrough(Layer):
        """A layer that does nothing, on the core's fast lane: what a guard alone on a function runs on."""

        def lane(self, shape: str) -> Lane | None:
            return Lane(None, None, self.resume if shape == SYNC else self.resume_async)

else:

    class PassThrough(_Guard):  # type: ignore[no-redef]
        """A guard that sees every call and does nothing: ``enter`` and ``leave`` hooks that return at once.

        Both hooks are defined (the runner may skip a guard without hooks, and
        most guards have these two), so one more of it on a stack costs what
        the runner's dispatch of a guard costs.
        """

        name = "passthrough"

        def enter(self, call: Any) -> None:  # type: ignore[override]
            return None

        def leave(self, call: Any, state: Any, result: Any) -> Any:  # type: ignore[override]
            return result


def interleaved(
    fns: dict[str, Callable[[], Any]], number: int = 2_000, repeats: int = REPEATS
) -> dict[str, float]:
    """Median seconds per call of each of *fns*, their batches taken turn about.

    One batch of each, then the next round: load drifting on a shared
    machine touches every candidate alike, so differences and ratios
    between them hold better than with one timing after another.
    """
    return {name: statistics.median(s) for name, s in interleaved_samples(fns, number, repeats).items()}


def interleaved_samples(
    fns: dict[str, Callable[[], Any]], number: int = 2_000, repeats: int = REPEATS
) -> dict[str, list[float]]:
    """Seconds per call of each of *fns* in each round of `interleaved` (round i at index i)."""
    for fn in fns.values():  # warm up
        for _ in range(min(number, 500)):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples[name].append((time.perf_counter() - start) / number)
    return samples


def interleaved_async(
    fns: dict[str, Callable[[], Awaitable[Any]]], number: int = 2_000, repeats: int = REPEATS
) -> dict[str, float]:
    """`interleaved` for coroutine functions, every batch on one event loop."""
    return {name: statistics.median(s) for name, s in interleaved_samples_async(fns, number, repeats).items()}


def interleaved_samples_async(
    fns: dict[str, Callable[[], Awaitable[Any]]], number: int = 2_000, repeats: int = REPEATS
) -> dict[str, list[float]]:
    """`interleaved_samples` for coroutine functions, every batch on one event loop."""

    async def batch(fn: Callable[[], Awaitable[Any]], n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        return (time.perf_counter() - start) / n

    async def main() -> dict[str, list[float]]:
        for fn in fns.values():
            await batch(fn, min(number, 500))
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                samples[name].append(await batch(fn, number))
        return samples

    return asyncio.run(main())


def anthropic_message(model: str = "claude-sonnet-4-6", input_tokens: int = 25, output_tokens: int = 12) -> Any:
    """A real anthropic ``Message``, parsed from a body like the API's: what ``messages.create`` returns."""
    import anthropic.types as at

    return at.Message.model_validate({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello! How can I help you today?"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    })


# The guards of the README's example, each a fresh decorator per call (a
# budget or cache keeps its own ledger / entries per decorated function).
def readme_guards() -> dict[str, Callable[[], Callable[[Any], Any]]]:
    import llmguard as lg

    return {
        "trace": lambda: lg.trace,
        "cache": lambda: lg.cache(ttl=3600),
        "retry": lambda: lg.retry(attempts=4),
        "budget": lambda: lg.budget(usd=1000.0, per="day", key=lambda user, **_: user, max_output=512),
        "timeout": lambda: lg.timeout(30, first_token=5, idle=10),
    }


def stacked(fn: Any, *names: str) -> Any:
    """*fn* under the README guards *names*, listed outermost first (as written above a ``def``)."""
    guards = readme_guards()
    for name in reversed(names):
        fn = guards[name]()(fn)
    return fn
