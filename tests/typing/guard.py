"""`lg.guard(...)` keeps the decorated function's type (checked by mypy --strict, not run)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import llmguard as lg


@lg.guard(retry=4, timeout=30, breaker=True)
def ask(q: str, model: str = "claude-sonnet-4-6") -> str:
    return q


@lg.guard(retry=True, ratelimit={"rpm": 60})
async def aask(q: str) -> str:
    return q


assert_type(ask("x"), str)
coro = aask("x")
same = assert_type(coro, Coroutine[Any, Any, str])
same.close()
ask(1)  # type: ignore[arg-type]
