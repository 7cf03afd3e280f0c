"""The cache hit path for a 1.2 KB chat request, beside what one would write by hand.

* "canonical JSON + sha256 + dict": the least a correct exact cache must do
  (hash a sorted-key JSON form of the whole request, look it up) — the
  reference; the target is a hit within 1.5x of it.
* "cachetools.cached, hand-made key": the usual shortcut, a tuple of the
  fields someone remembered to include (and only those: a key too narrow
  serves one request's answer to another, the bug that shortcut costs).
* llmguard's hit: the runner (the cache's ``enter`` answers a hit from
  memory in place), binding and normalising every argument, the canonical
  JSON and SHA-256, the TTL+LRU lookup, and the hit counted with what it
  saved (the call record too, when anyone listens for it).

Then the miss path's own cost and the memory each entry takes.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import statistics
import time
import tracemalloc

from typing import Any

import cachetools

from _harness import overhead, per_call, per_call_async, row

from llmguard._cache import cache
from llmguard._record import Usage
from llmguard._runner import Guard
from llmguard.stores.cache import CacheEntry


SYSTEM = "You are a careful assistant who answers briefly and cites the manual. " * 2
MESSAGES = [
    {
        "role": "user" if i % 2 == 0 else "assistant",
        "content": f"turn {i}: " + "please summarise the retry policy for overloaded errors " * 2,
    }
    for i in range(6)
]
REQUEST = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 512,
    "temperature": 0.2,
    "system": SYSTEM,
    "messages": MESSAGES,
}
ANSWER = "cached answer"


def ask(
    messages: list[dict[str, Any]],
    model: str = "claude-sonnet-4-6",
    max_tokens: int = 512,
    temperature: float = 0.2,
    system: str = SYSTEM,
    timeout: float | None = None,
) -> str:
    return ANSWER


async def aask(
    messages: list[dict[str, Any]],
    model: str = "claude-sonnet-4-6",
    max_tokens: int = 512,
    temperature: float = 0.2,
    system: str = SYSTEM,
    timeout: float | None = None,  # noqa: ASYNC109 - the transport argument the key leaves out
) -> str:
    return ANSWER


def hand_key(
    messages: list[dict[str, Any]],
    model: str = "claude-sonnet-4-6",
    max_tokens: int = 512,
    temperature: float = 0.2,
    system: str = SYSTEM,
    timeout: float | None = None,
) -> Any:
    return cachetools.keys.hashkey(
        model, max_tokens, temperature, system, tuple((m["role"], m["content"]) for m in messages)
    )


def _paired(reference: Any, candidate: Any, number: int = 5_000, repeats: int = 21) -> float:
    """Median ratio candidate/reference over alternating batches.

    On a shared machine load drifts between two separate timings; batches
    taken turn about see the same load, so their ratio is steadier.
    """
    for _ in range(1000):
        reference()
        candidate()
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            reference()
        ref = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(number):
            candidate()
        ratios.append((time.perf_counter() - start) / ref)
    return statistics.median(ratios)


def _memory_per_entry(value: Any, n: int = 2000) -> float:
    """Bytes one cached entry adds (key, entry, TTL/LRU bookkeeping; not the value)."""

    @cache(maxsize=n + 1)
    def f(i: int, messages: Any) -> Any:
        return value

    f(-1, MESSAGES)  # warm up per-function structures
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(n):
        f(i, MESSAGES)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / n


def run() -> dict[str, float]:
    size = len(json.dumps(REQUEST))
    print(f"cache: hit path for a {size / 1000:.1f} KB chat request (per call)")
    table: dict[bytes, str] = {}

    def by_hand() -> str | None:
        digest = hashlib.sha256(
            json.dumps(REQUEST, sort_keys=True, separators=(",", ":")).encode()
        ).digest()
        return table.get(digest)

    by_hand()
    reference = per_call(by_hand)
    tools = cachetools.cached(cachetools.TTLCache(1024, 3600), key=hand_key)(ask)
    tools(MESSAGES)
    tools_hit = per_call(lambda: tools(MESSAGES))
    bare = Guard()(ask)
    core = per_call(lambda: bare(MESSAGES))
    cached = cache(ask)
    cached(MESSAGES)
    hit = per_call(lambda: cached(MESSAGES))
    print(row("canonical JSON + sha256 + dict lookup (reference)", reference))
    print(row("cachetools.cached, hand-made key (partial!)", tools_hit, reference, "of ref"))
    print(row("the runner, a guard with no hooks (no cache)", core, reference, "of ref"))
    print(row("llmguard cache hit, sync", hit, reference, "of ref"))
    print(row("  ... vs cachetools.cached", hit, tools_hit, "of cachetools"))
    paired = _paired(by_hand, lambda: cached(MESSAGES))
    print(f"  {'hit / reference, batches taken turn about (target <= 1.5)':<52} {paired:9.2f}x")

    acached = cache(aask)
    asyncio.run(acached(MESSAGES))
    ahit = per_call_async(lambda: acached(MESSAGES))
    print(row("llmguard cache hit, async", ahit, reference, "of ref"))

    counter = iter(range(10**9))
    missing = cache(maxsize=4096)(ask)
    miss = per_call(lambda: missing(MESSAGES, max_tokens=next(counter)), number=5_000)
    bare_miss = per_call(lambda: bare(MESSAGES, max_tokens=next(counter)), number=5_000)
    print(row("llmguard cache miss (key + store + record)", miss))
    print(row("  cache's own cost on a miss (minus the runner)", overhead(miss, bare_miss)))

    small = _memory_per_entry(ANSWER)
    print(f"  {'memory per entry (key, entry, TTL+LRU bookkeeping)':<52} {small:9.0f} B")
    print(f"  {'CacheEntry object alone':<52} {_sizeof_entry():9.0f} B")
    return {
        "cache_hit_sync": hit,
        "cache_hit_async": ahit,
        "cache_hit_vs_reference": paired,
        "cache_hit_vs_cachetools": hit / tools_hit,
        "cache_miss_overhead": overhead(miss, bare_miss),
        "cache_bytes_per_entry": small,
    }


def _sizeof_entry() -> int:
    import sys

    return sys.getsizeof(CacheEntry(value=ANSWER, usage=Usage(1, 1)))


if __name__ == "__main__":
    run()
