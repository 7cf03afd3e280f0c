"""Where `ratelimit` keeps its limits: in memory (default) or in Redis (shared).

One number per limit and key (GCRA's theoretical arrival time): see
`llmguard.stores._ratelimit_base` for the decision every store makes
atomically. `MemoryRateLimitStore` serves one process (threads and asyncio
alike) on llmguard's clock; `RedisRateLimitStore` serves many processes and
machines, one Lua script per decision, on the server's clock.
"""

from __future__ import annotations

from ._ratelimit_base import Grant, RateLimitStore
from ._ratelimit_memory import MemoryRateLimitStore
from ._ratelimit_redis import RedisRateLimitStore


__all__ = ["Grant", "MemoryRateLimitStore", "RateLimitStore", "RedisRateLimitStore"]
