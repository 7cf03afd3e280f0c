"""Overhead of the one runner with a guard that does nothing, beside a bare call and functools.wraps.

The guard is `_harness.PassThrough` (``enter`` and ``leave`` hooks that
return at once): what every guard pays before its own work.
"""

from __future__ import annotations

import functools

from typing import Any

from _harness import PassThrough, overhead, per_call, per_call_async, row


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
    print("core: the one runner with a pass-through guard (per call)")
    bare = per_call(lambda: target("q", n=2))
    ft = per_call(lambda f=with_functools(target): f("q", n=2))
    core = per_call(lambda f=PassThrough()(target): f("q", n=2))
    print(row("sync  bare call", bare))
    print(row("sync  functools.wraps", ft, bare, "of bare"))
    print(row("sync  llmguard runner + pass-through guard", core, bare, "of bare"))
    print(row("sync  runner overhead vs functools.wraps overhead", overhead(core, bare), overhead(ft, bare), "of functools"))

    abare = per_call_async(lambda: atarget("q", n=2))
    aft = per_call_async(lambda f=with_functools_async(atarget): f("q", n=2))
    acore = per_call_async(lambda f=PassThrough()(atarget): f("q", n=2))
    print(row("async bare call", abare))
    print(row("async functools.wraps", aft, abare, "of bare"))
    print(row("async llmguard runner + pass-through guard", acore, abare, "of bare"))
    print(row("async runner overhead vs functools.wraps overhead", overhead(acore, abare), overhead(aft, abare), "of functools"))
    return {
        "core_sync_overhead": overhead(core, bare),
        "core_async_overhead": overhead(acore, abare),
    }


if __name__ == "__main__":
    run()
