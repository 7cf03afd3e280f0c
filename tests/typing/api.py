"""Checked by ``mypy --strict``: guarded functions keep their static types.

Not run by pytest; every ``assert_type`` here fails the type check if a
guard erased a parameter or return type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, assert_type

from llmguard._runner import Guard, wrap


layer = Guard()


@layer
def ask(q: str, *, n: int = 1) -> str:
    return q * n


@layer
async def ask_async(q: str) -> int:
    return len(q)


@layer
def chunks(q: str) -> Iterator[str]:
    yield q


@layer
async def achunks(q: str) -> AsyncIterator[bytes]:
    yield q.encode()


class Service:
    """A class whose method is guarded."""

    @layer
    def method(self, q: str) -> float:
        return float(len(q))


def plain(x: int) -> list[int]:
    return [x]


assert_type(ask("hi", n=2), str)
coro = ask_async("hi")
same = assert_type(coro, Coroutine[Any, Any, int])
same.close()
assert_type(chunks("x"), Iterator[str])
assert_type(achunks("x"), AsyncIterator[bytes])
assert_type(Service().method("x"), float)
guarded_plain = wrap(layer, plain)
assert_type(guarded_plain(3), list[int])
guarded_plain("x")  # type: ignore[arg-type]

ask(1)  # type: ignore[arg-type]
ask("x", m=3)  # type: ignore[call-arg]


# The guards keep the types too.
import llmguard as lg  # noqa: E402


@lg.retry
def retried(q: str) -> int:
    return len(q)


@lg.retry(attempts=3)
@lg.timeout(5)
async def timed(q: str) -> bytes:
    return q.encode()


assert_type(retried("x"), int)
timed_coro = timed("x")
same_timed = assert_type(timed_coro, Coroutine[Any, Any, bytes])
same_timed.close()
retried(3)  # type: ignore[arg-type]


@lg.trace
@lg.retry
def traced(q: str, *, n: int = 1) -> list[str]:
    return [q] * n


@lg.trace(name="ask")
async def traced_async(q: str) -> str:
    return q


assert_type(traced("x", n=2), list[str])
traced_coro = traced_async("x")
same_traced = assert_type(traced_coro, Coroutine[Any, Any, str])
same_traced.close()
traced("x", m=1)  # type: ignore[call-arg]


@lg.cache
def cached(q: str) -> str:
    return q


@lg.cache(ttl=60)
async def cached_async(q: str, *, model: str = "gpt-4o") -> dict[str, str]:
    return {model: q}


assert_type(cached("x"), str)
cached_coro = cached_async("x", model="m")
same_cached = assert_type(cached_coro, Coroutine[Any, Any, dict[str, str]])
same_cached.close()
assert_type(lg.cache_info(cached), lg.CacheInfo)


@lg.budget(usd=5.0, per="day", max_output=256)
def budgeted(q: str, model: str = "claude-haiku-4-5") -> str:
    return q


@lg.budget
async def budgeted_async(q: str) -> float:
    return 1.0


assert_type(budgeted("x"), str)
budgeted_coro = budgeted_async("x")
same_budgeted = assert_type(budgeted_coro, Coroutine[Any, Any, float])
same_budgeted.close()
with lg.budget(usd=0.5) as scope:
    assert_type(scope.spent, float)


@lg.breaker
def broken(q: str) -> int:
    return len(q)


@lg.retry
@lg.breaker(failures=3, cooldown=10)
async def broken_async(q: str, *, model: str = "gpt-4o") -> bytes:
    return q.encode()


assert_type(broken("x"), int)
broken_coro = broken_async("x", model="m")
same_broken = assert_type(broken_coro, Coroutine[Any, Any, bytes])
same_broken.close()
broken(3)  # type: ignore[arg-type]


@lg.route({"simple": "claude-haiku-4-5", "complex": "claude-sonnet-4-6"}, rules=[lg.RouteRule("complex", tools=True)])
def routed(q: str, model: str = "claude-sonnet-4-6") -> str:
    return q


@lg.route(["gpt-4.1-nano", "gpt-4o"], classifier=lambda request: None if request.images else "gpt-4.1-nano")
async def routed_async(q: str, model: str = "gpt-4o") -> bytes:
    return q.encode()


assert_type(routed("x"), str)
routed_coro = routed_async("x", model="m")
same_routed = assert_type(routed_coro, Coroutine[Any, Any, bytes])
same_routed.close()
