"""Overhead of the bare wrapping core, beside a bare call and functools.wraps.

Two paths: the general one (a `Layer` with only ``around``: what stacked
guards and guards without a lane take) and the fast lane (a layer guarding
a function alone with a `Lane`, as retry, timeout and budget do).
"""

from __future__ import annotations

import functools

from typing import Any

from _harness import PassThrough, overhead, per_call, per_call_async, row

from llmguard._wrap import Layer, wrap


def target(q: str, n: int = 1) -> str:
    return q


async def atarget(q: str, n: int = 1) -> str:
    return q


def with_functools(fn: Any) -> Any:
    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return inner


def with_functools_async(fn: Any) -> Any:
    @functools.wraps(fn)
    async def inner(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return inner


def run() -> dict[str, float]:
    print("core: the wrapping core with a pass-through layer (per call)")
    layer = Layer()
    bare = per_call(lambda: target("q", n=2))
    ft = per_call(lambda f=with_functools(target): f("q", n=2))
    core = per_call(lambda f=wrap(layer, target): f("q", n=2))
    print(row("sync  bare call", bare))
    print(row("sync  functools.wraps", ft, bare, "of bare"))
    print(row("sync  llmguard core", core, bare, "of bare"))
    print(row("sync  core overhead vs functools.wraps overhead", overhead(core, bare), overhead(ft, bare), "of functools"))
    lane = per_call(lambda f=wrap(PassThrough(), target): f("q", n=2))
    print(row("sync  lane overhead vs functools.wraps overhead", overhead(lane, bare), overhead(ft, bare), "of functools"))

    abare = per_call_async(lambda: atarget("q", n=2))
    aft = per_call_async(lambda f=with_functools_async(atarget): f("q", n=2))
    acore = per_call_async(lambda f=wrap(layer, atarget): f("q", n=2))
    print(row("async bare call", abare))
    print(row("async functools.wraps", aft, abare, "of bare"))
    print(row("async llmguard core", acore, abare, "of bare"))
    print(row("async core overhead vs functools.wraps overhead", overhead(acore, abare), overhead(aft, abare), "of functools"))
    alane = per_call_async(lambda f=wrap(PassThrough(), atarget): f("q", n=2))
    print(row("async lane overhead vs functools.wraps overhead", overhead(alane, abare), overhead(aft, abare), "of functools"))
    return {
        "core_sync_overhead": overhead(core, bare),
        "core_async_overhead": overhead(acore, abare),
        "lane_sync_overhead": overhead(lane, bare),
        "lane_async_overhead": overhead(alane, abare),
    }


if __name__ == "__main__":
    run()
