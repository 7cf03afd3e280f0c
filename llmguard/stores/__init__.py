"""Where guards keep state: in memory (default) or in Redis (shared).

Each guard that keeps state (budget, cache, ratelimit, breaker) has its own
store pair in this package (``<guard>.py``), with one interface and two
implementations: a thread- and asyncio-safe in-memory one, and a Redis one
where every decision is one atomic server-side script. What they share —
turning a URL or client into a redis-py client, key naming — lives here.
"""

from __future__ import annotations

from typing import Any


KEY_PREFIX = "llmguard"


def redis_client(target: Any) -> Any:
    """A redis-py client from a URL (``redis://...``) or an existing client.

    redis-py is imported only here and only when a Redis store is asked for,
    so llmguard works without it installed.
    """
    if isinstance(target, str):
        try:
            import redis  # noqa: PLC0415 - optional dependency
        except ImportError as exc:  # pragma: no cover - depends on the install
            msg = "a Redis store needs redis-py: pip install 'llmguard[redis]'"
            raise ImportError(msg) from exc
        return redis.Redis.from_url(target)
    if not hasattr(target, "evalsha") and not hasattr(target, "eval"):
        msg = f"store=... must be a redis URL or a redis-py client, got {type(target).__name__}"
        raise TypeError(msg)
    return target


def is_redis_target(store: object) -> bool:
    """Whether *store* names a Redis server: a redis URL or a redis-py client.

    How a guard's ``store=`` argument is read: anything else must be that
    guard's own store class, or the guard says what it takes.
    """
    if isinstance(store, str):
        return store.startswith(("redis://", "rediss://", "unix://"))
    return hasattr(store, "evalsha")


def key(*parts: str) -> str:
    """A namespaced Redis key: ``llmguard:<part>:<part>...``."""
    return ":".join((KEY_PREFIX, *parts))
