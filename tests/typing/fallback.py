"""`lg.fallback` keeps the decorated function's type (checked by mypy --strict, not run)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import llmguard as lg


def other(q: str, model: str = "gpt-4o-mini") -> str:
    return q


@lg.fallback(other, {"model": "claude-haiku-4-5"}, default="")
def ask(q: str, model: str = "claude-sonnet-4-6") -> str:
    return q


@lg.fallback({"model": "claude-haiku-4-5"}, on=(lg.ErrorKind.OVERLOADED, TimeoutError), reject=lambda r: not r, breaker=False)
async def aask(q: str, model: str = "claude-sonnet-4-6") -> str:
    return q


assert_type(ask("x"), str)
coro = aask("x")
same = assert_type(coro, Coroutine[Any, Any, str])
same.close()
ask(1)  # type: ignore[arg-type]
