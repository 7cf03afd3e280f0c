"""`RedisRateLimitStore`: rate limits shared by every process using one Redis server."""

from __future__ import annotations

import asyncio
import weakref

from typing import Any, Final, cast

from . import key as _key
from . import pooled_client, redis_client
from ._ratelimit_base import Grant, RateLimitStore


# Times are integer microseconds of the server's clock (TIME), never the
# clients': processes on machines whose clocks disagree share one schedule.
# A cell is one string, its TAT, expiring when it passes (an idle cell and
# an absent one are the same). One script per decision.
_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function put(k, tat)
  if tat > now then
    redis.call('SET', k, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', k)
  end
end
"""

# KEYS: the cells. ARGV[1]: max wait (µs); ARGV[1 + i]: cell i's cost (µs).
# Returns {admitted, wait (µs), index of the cell that set the turn (0: none)}.
_ACQUIRE: Final = _NOW + """
local admit, which = now, 0
local tats = {}
for i, k in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', k) or '0')
  tats[i] = tat
  if tat > admit then admit, which = tat, i end
end
local wait = admit - now
if wait > tonumber(ARGV[1]) then return {0, string.format('%.0f', wait), which} end
for i, k in ipairs(KEYS) do
  put(k, math.max(tats[i], admit) + tonumber(ARGV[i + 1]))
end
return {1, string.format('%.0f', wait), which}
"""

# KEYS: the cells. ARGV[i]: seconds (µs) to move cell i's TAT by.
_ADJUST: Final = _NOW + """
for i, k in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', k) or '0')
  if tat > now then put(k, tat + tonumber(ARGV[i])) end
end
return 1
"""

# KEYS: the cells. ARGV[1]: the pause (µs).
_PUSH: Final = _NOW + """
local until_ = now + tonumber(ARGV[1])
for _, k in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', k) or '0')
  put(k, math.max(tat, until_))
end
return 1
"""

_AHEAD: Final = _NOW + """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
return string.format('%.0f', math.max(tat - now, 0))
"""

_US: Final = 1_000_000


def _us(seconds: float) -> str:
    return str(round(seconds * _US))


class RedisRateLimitStore(RateLimitStore):
    """Rate limits in Redis, shared by every process and machine using it.

    Every decision is one Lua script (EVALSHA: one round trip), atomic on the
    server, on the server's clock. A cell is one small string key,
    ``llmguard:ratelimit:<namespace>:<cell>``, expiring when it goes idle.

    *target* is a ``redis://`` / ``rediss://`` / ``unix://`` URL or a
    redis-py client. From a URL, async calls use a ``redis.asyncio`` client
    per event loop (connections from a blocking pool of *max_connections*);
    with a client you built, async calls use it directly (one blocking
    round trip). Redis Cluster is not supported (a call's cells may hash to
    different slots).
    """

    def __init__(self, target: Any, *, namespace: str = "default", max_connections: int = 64) -> None:
        if not isinstance(namespace, str) or not namespace or ":" in namespace:
            msg = f"RedisRateLimitStore(namespace=...) must be a non-empty string without ':', got {namespace!r}"
            raise ValueError(msg)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            msg = f"RedisRateLimitStore(max_connections=...) must be an int >= 1, got {max_connections!r}"
            raise ValueError(msg)
        self._url = target if isinstance(target, str) else None
        self._max_connections = max_connections
        self._client = redis_client(self._pooled(target) if isinstance(target, str) else target)
        self._prefix = _key("ratelimit", namespace) + ":"
        self._scripts = self._register(self._client)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, ...]] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"RedisRateLimitStore({self._client!r}, prefix={self._prefix!r})"

    @staticmethod
    def _register(client: Any) -> tuple[Any, ...]:
        return tuple(client.register_script(s) for s in (_ACQUIRE, _ADJUST, _PUSH, _AHEAD))

    def _pooled(self, url: str, *, asynchronous: bool = False) -> Any:
        """A client whose callers wait for a free connection rather than fail (`stores.pooled_client`)."""
        return pooled_client(url, self._max_connections, asynchronous=asynchronous)

    @property
    def client(self) -> Any:
        """The sync redis-py client."""
        return self._client

    def close(self) -> None:
        """Close the sync connections this store opened (a client you passed stays yours)."""
        if self._url is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close this event loop's async connections, then the sync ones."""
        found = self._async.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await (getattr(found[0], "aclose", None) or found[0].close)()  # redis-py < 5.0.1: close()
        self.close()

    # -- the decisions ----------------------------------------------------------

    def _keys(self, names: list[str]) -> list[str]:
        prefix = self._prefix
        return [prefix + n for n in names]

    @staticmethod
    def _acquire_args(cells: list[tuple[str, float]], max_wait: float) -> list[str]:
        return [_us(max_wait), *(_us(cost) for _, cost in cells)]

    @staticmethod
    def _grant(reply: Any) -> Grant:
        admitted, wait, which = reply
        return Grant(bool(int(admitted)), int(wait) / _US, int(which) - 1)

    def acquire(self, cells: list[tuple[str, float]], max_wait: float) -> Grant:
        """See `RateLimitStore.acquire`."""
        reply = self._scripts[0](keys=self._keys([n for n, _ in cells]), args=self._acquire_args(cells, max_wait))
        return self._grant(reply)

    def adjust(self, cells: list[tuple[str, float]]) -> None:
        """See `RateLimitStore.adjust`."""
        self._scripts[1](keys=self._keys([n for n, _ in cells]), args=[_us(s) for _, s in cells])

    def push(self, cells: list[str], pause: float) -> None:
        """See `RateLimitStore.push`."""
        self._scripts[2](keys=self._keys(cells), args=[_us(pause)])

    def ahead(self, cell: str) -> float:
        """See `RateLimitStore.ahead`."""
        return int(self._scripts[3](keys=self._keys([cell]), args=[])) / _US

    # -- async ------------------------------------------------------------------

    def _async_scripts(self) -> tuple[Any, ...]:
        if self._url is None:
            return self._scripts  # a client you passed: one blocking round trip
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            client = self._pooled(self._url, asynchronous=True)
            found = self._async[loop] = (client, self._register(client))
        return cast("tuple[Any, ...]", found[1])

    async def _arun(self, index: int, keys: list[str], args: list[str]) -> Any:
        scripts = self._async_scripts()
        reply = scripts[index](keys=keys, args=args)
        return (await reply) if scripts is not self._scripts else reply

    async def aacquire(self, cells: list[tuple[str, float]], max_wait: float) -> Grant:
        """`acquire` on an event loop."""
        reply = await self._arun(0, self._keys([n for n, _ in cells]), self._acquire_args(cells, max_wait))
        return self._grant(reply)

    async def aadjust(self, cells: list[tuple[str, float]]) -> None:
        """`adjust` on an event loop."""
        await self._arun(1, self._keys([n for n, _ in cells]), [_us(s) for _, s in cells])

    async def apush(self, cells: list[str], pause: float) -> None:
        """`push` on an event loop."""
        await self._arun(2, self._keys(cells), [_us(pause)])
