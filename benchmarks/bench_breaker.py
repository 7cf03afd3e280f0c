"""Success-path overhead of @lg.breaker beside pybreaker and circuitbreaker (closed circuit, calls that succeed).

Each figure is what the guard adds to a bare call, the batches of every
candidate taken turn about (`_harness.interleaved_samples`) so a noisy
neighbour moves them alike, medians of the paired differences. The
"own work" line subtracts `_harness.PassThrough` (a guard doing nothing on
the same runner): what the breaker itself costs, beside what the runner
every llmguard guard shares costs.
"""

from __future__ import annotations

import warnings

from typing import Any

from _harness import (
    PassThrough,
    interleaved_samples,
    overhead,
    paired_difference,
    per_call,
    per_call_async,
    row,
)

import llmguard as lg


def target(q: str, n: int = 1) -> str:
    return q


async def atarget(q: str, n: int = 1) -> str:
    return q


def run() -> dict[str, float]:
    import circuitbreaker
    import pybreaker

    warnings.simplefilter("ignore")
    print("breaker: success-path overhead per call on a closed circuit (guarded minus bare, paired medians)")
    fns: dict[str, Any] = {
        "bare": target,
        "pybreaker": pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(target),
        "circuitbreaker": circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)(target),
        "passthrough": PassThrough()(target),
        "ours": lg.breaker(failures=5, cooldown=30)(target),
        "ratio": lg.breaker(failures=5, ratio=0.5, cooldown=30)(target),
    }
    samples = interleaved_samples({k: (lambda f=f: f("q", n=2)) for k, f in fns.items()}, number=5_000, repeats=21)
    cost = {k: max(paired_difference(samples, k, "bare"), 0.0) for k in fns if k != "bare"}
    own = max(paired_difference(samples, "ours", "passthrough"), 0.0)
    pyb = cost["pybreaker"]
    print(row("sync  pybreaker.CircuitBreaker", pyb))
    print(row("sync  circuitbreaker.circuit", cost["circuitbreaker"], pyb, "of pybreaker"))
    print(row("sync  @lg.breaker(failures=5)", cost["ours"], pyb, "of pybreaker (target <= 0.50x)"))
    print(row("sync  @lg.breaker(failures=5): own work (minus a pass-through guard)", own, pyb, "of pybreaker"))
    print(row("sync  a pass-through guard (the runner alone, for reference)", cost["passthrough"], pyb, "of pybreaker"))
    print(row("sync  @lg.breaker(failures=5, ratio=0.5) (report)", cost["ratio"], pyb, "of pybreaker"))

    # pybreaker runs coroutines only through Tornado: the async anchor is circuitbreaker.
    abare = per_call_async(lambda: atarget("q", n=2))
    acb = overhead(per_call_async(lambda f=circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30)(atarget): f("q", n=2)), abare)
    aours = overhead(per_call_async(lambda f=lg.breaker(failures=5, cooldown=30)(atarget): f("q", n=2)), abare)
    print(row("async circuitbreaker.circuit", acb))
    print(row("async @lg.breaker(failures=5)", aours, acb, "of circuitbreaker"))
    redis = _redis_row(pyb)
    return {
        **redis,
        "breaker_sync": cost["ours"],
        "pybreaker_sync": pyb,
        "breaker_sync_ratio": cost["ours"] / pyb if pyb else 0.0,
        "breaker_own_ratio": own / pyb if pyb else 0.0,
        "circuitbreaker_sync": cost["circuitbreaker"],
        "breaker_async": aours,
        "circuitbreaker_async": acb,
    }


def _redis_row(pyb: float) -> dict[str, float]:
    """The success path on a Redis store: one round trip to admit, one to record (a local redis-server)."""
    import os

    from bench_budget import _redis_url, _round_trips

    from llmguard.stores.breaker import RedisBreakerStore

    url, proc = _redis_url()
    if url is None:
        print("  (no redis-server: the Redis row skipped)")
        return {}
    try:
        store = RedisBreakerStore(url, namespace=f"bench{os.getpid()}")
        guarded = lg.breaker(failures=5, store=store, name="bench")(target)
        guarded("q")  # load the scripts
        calls = 2000
        before = _round_trips(store.client)
        for _ in range(calls):
            guarded("q")
        trips = (_round_trips(store.client) - before) / calls
        rtime = per_call(lambda: guarded("q"), number=2000, repeats=7)
        print(row("sync  @lg.breaker, Redis store (local server, report)", rtime, pyb, "of pybreaker"))
        print(f"  {'Redis round trips per call (admit + record)':<52} {trips:9.3f}")
        store.close()
        return {"breaker_redis_per_call": rtime, "breaker_redis_round_trips": trips}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=5)


if __name__ == "__main__":
    run()
