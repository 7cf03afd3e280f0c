"""Where guards keep state: in memory (default) or in Redis (shared).

Each guard that keeps state (budget, cache, ratelimit, breaker) has its own
store pair in this package (``<guard>.py``), with one interface and two
implementations: a thread- and asyncio-safe in-memory one, and a Redis one
where every decision is one atomic server-side script. What they share —
turning a URL or client into a redis-py client, key naming — lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit


S = TypeVar("S")

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


# redis-py waits forever by default; a store's decision must fail (and follow its guard's
# ``on_store_error``) within seconds when Redis is gone.
_TIMEOUTS: Final = (("socket_timeout", "2"), ("socket_connect_timeout", "2"))
POOL_WAIT: Final = 5.0  # seconds a caller waits for a free connection


def with_timeouts(url: str) -> str:
    """*url* with socket timeouts added unless it sets its own."""
    query = dict(parse_qsl(urlsplit(url).query))
    extra = "&".join(f"{k}={v}" for k, v in _TIMEOUTS if k not in query)
    if not extra:
        return url
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def pooled_client(url: str, max_connections: int, *, asynchronous: bool = False) -> Any:
    """A redis-py client for *url* whose callers wait for a free connection rather than fail.

    redis-py's default pool raises "Too many connections" past its size;
    hundreds of threads deciding at once should queue instead (up to
    `POOL_WAIT` seconds), holding at most *max_connections*. Without redis-py
    installed, *url* itself (`redis_client` then says what to install).
    """
    try:
        import redis  # noqa: PLC0415 - optional dependency
        import redis.asyncio  # noqa: PLC0415
    except ImportError:  # pragma: no cover - depends on the install
        return url
    module: Any = redis.asyncio if asynchronous else redis
    pool = module.BlockingConnectionPool.from_url(with_timeouts(url), max_connections=max_connections, timeout=POOL_WAIT)
    return module.Redis(connection_pool=pool)


def resolve_store(guard: str, store: Any, base: type[Any], redis_store: Callable[[Any], S]) -> S | None:
    """A guard's ``store=`` argument as its store: None, one of *base*, or *redis_store* of a Redis target.

    Anything else is a ValueError naming ``guard(store=...)``.
    """
    if store is None or isinstance(store, base):
        return store
    if is_redis_target(store):
        return redis_store(store)
    shown = repr(store) if isinstance(store, str) else type(store).__name__
    msg = f"{guard}(store=...) must be a {base.__name__}, a redis:// URL or a redis-py client, got {shown}"
    raise ValueError(msg)
