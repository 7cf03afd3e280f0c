"""End to end, as users see it: a real anthropic SDK call, bare and under guards.

The server is llmguard's ``FakeProvider`` running in another process (so its
work does not share this interpreter's lock), on 127.0.0.1: a bare
``client.messages.create`` is a real HTTP round trip, about a millisecond.
Sync (``anthropic.Anthropic``) and async (``anthropic.AsyncAnthropic``):

* bare;
* each guard alone: ``retry(attempts=4)``; ``budget`` in the README's
  configuration; ``cache`` missing every call (each call asks something
  new, so the key differs); ``trace`` with no OTel SDK configured;
  ``timeout(30, first_token=5, idle=10)`` (sync: a worker thread per call);
* the untraced stack ``retry → budget → timeout``;
* the README stack ``trace → cache → retry → budget → timeout``, the cache
  missing every call, and the same without ``timeout``.

A batch is `CALLS` pairs of calls, bare then guarded, each call timed on
its own; the batch's figure is the median guarded call minus the median
bare call (medians: one call in a hundred on a shared machine takes 5-50x
the others, and a mean would be that call). Each row is the median of
`BATCHES` such batches, the configurations' batches taken in turn, so load
drifting on a shared machine touches both sides alike; printed as µs
added and as % of the bare call. The bare figure is the median over every
batch. Medians leave out the tail: a guard that made every hundredth call
slow would not show here.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import subprocess
import sys
import time
import warnings

from collections.abc import Callable
from typing import Any

from _harness import stacked


BATCHES = 5
CALLS = 200
MODEL = "claude-sonnet-4-6"

CONFIGS: dict[str, tuple[str, ...]] = {
    "retry": ("retry",),
    "budget (README config)": ("budget",),
    "cache miss": ("cache",),
    "trace, no OTel SDK": ("trace",),
    "timeout": ("timeout",),
    "untraced stack: retry → budget → timeout": ("retry", "budget", "timeout"),
    "README stack (cache miss)": ("trace", "cache", "retry", "budget", "timeout"),
    "README stack without timeout (cache miss)": ("trace", "cache", "retry", "budget"),
}

SERVER = """
import sys
from llmguard.testing import FakeProvider
fake = FakeProvider().start()
print(fake.anthropic_base_url, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin (or kills us)
fake.stop()
"""


def _start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed code
        [sys.executable, "-c", SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None  # noqa: S101 - Popen with stdout=PIPE
    url = proc.stdout.readline().strip()
    if not url:
        proc.kill()
        msg = "the fake provider process did not start"
        raise RuntimeError(msg)
    return proc, url


def _stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None  # noqa: S101 - Popen with stdin=PIPE
    proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _report(kind: str, bare: dict[str, list[float]], guarded: dict[str, list[float]]) -> dict[str, float]:
    """Print each configuration's added time; bare[name][i] was taken beside guarded[name][i]."""
    base = statistics.median(itertools.chain.from_iterable(bare.values()))
    print(f"  {kind} bare messages.create{'':<31} {base * 1e6:9.1f} µs")
    out = {"bare": base}
    for name, samples in guarded.items():
        added = statistics.median(g - b for g, b in zip(samples, bare[name], strict=True))
        print(f"  {kind} {name:<52} {added * 1e6:+9.1f} µs  {added / base * 100:+6.1f} %")
        out[name] = added
    return out


def _sync(url: str) -> dict[str, float]:
    import anthropic

    client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    fresh = itertools.count().__next__

    def ask(q: str, user: str = "anon", model: str = MODEL) -> Any:
        return client.messages.create(
            model=model, max_tokens=512, messages=[{"role": "user", "content": q}]
        )

    fns = {name: stacked(ask, *guards) for name, guards in CONFIGS.items()}

    def batch(fn: Callable[..., Any]) -> tuple[float, float]:
        bare, guarded = [], []
        for _ in range(CALLS):
            start = time.perf_counter()
            ask(f"question {fresh()}", user="ada")
            middle = time.perf_counter()
            fn(f"question {fresh()}", user="ada")
            bare.append(middle - start)
            guarded.append(time.perf_counter() - middle)
        return statistics.median(bare), statistics.median(guarded)

    for fn in (ask, *fns.values()):  # warm up: connection, pricing tables, first-call paths
        for _ in range(20):
            fn(f"question {fresh()}", user="ada")
    bare: dict[str, list[float]] = {name: [] for name in fns}
    guarded: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(BATCHES):
        for name, fn in fns.items():
            b, g = batch(fn)
            bare[name].append(b)
            guarded[name].append(g)
    client.close()
    return _report("sync ", bare, guarded)


def _async(url: str) -> dict[str, float]:
    import anthropic

    async def main() -> dict[str, float]:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        fresh = itertools.count().__next__

        async def ask(q: str, user: str = "anon", model: str = MODEL) -> Any:
            return await client.messages.create(
                model=model, max_tokens=512, messages=[{"role": "user", "content": q}]
            )

        fns = {name: stacked(ask, *guards) for name, guards in CONFIGS.items()}

        async def batch(fn: Callable[..., Any]) -> tuple[float, float]:
            bare, guarded = [], []
            for _ in range(CALLS):
                start = time.perf_counter()
                await ask(f"question {fresh()}", user="ada")
                middle = time.perf_counter()
                await fn(f"question {fresh()}", user="ada")
                bare.append(middle - start)
                guarded.append(time.perf_counter() - middle)
            return statistics.median(bare), statistics.median(guarded)

        for fn in (ask, *fns.values()):
            for _ in range(20):
                await fn(f"question {fresh()}", user="ada")
        bare: dict[str, list[float]] = {name: [] for name in fns}
        guarded: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(BATCHES):
            for name, fn in fns.items():
                b, g = await batch(fn)
                bare[name].append(b)
                guarded[name].append(g)
        await client.close()
        return _report("async", bare, guarded)

    return asyncio.run(main())


def run() -> dict[str, float]:
    warnings.simplefilter("ignore")
    print("e2e: anthropic SDK messages.create against FakeProvider in another process; added per call,")
    print(f"     median over {BATCHES} batches of {CALLS} (bare, guarded) pairs of (median guarded - median bare)")
    started = time.perf_counter()
    proc, url = _start_server()
    try:
        results = {f"sync_{k}": v for k, v in _sync(url).items()}
        results |= {f"async_{k}": v for k, v in _async(url).items()}
    finally:
        _stop_server(proc)
    print(f"  (e2e took {time.perf_counter() - started:.0f} s)")
    return results


if __name__ == "__main__":
    run()
