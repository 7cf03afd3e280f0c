"""`RedisBreakerStore`: circuits in Redis, shared by every process and machine using it.

Each decision (admit a call, record its outcome, read the state) is one Lua
script: one round trip, atomic on the server. See `llmguard.stores.breaker`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import weakref

from typing import Any, Final

from .. import _clock, _events
from . import key as _key
from . import pooled_client, redis_client
from ._breaker_base import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBE_LEASE,
    BreakerStore,
    Cell,
    Probe,
    Rules,
    Transition,
    refused,
)


# KEYS: the circuit's hash, its probe set.
# ARGV: now (ms), probes, probe lease (ms), probe id, ttl (ms).
# The hash holds st (0 closed, 1 open, 2 half-open), gen (the closed
# period's number), until (open until, ms), lvl (failed probes in a row),
# cons (consecutive faults); the probe set the probes out, by lease end.
# Returns {0, gen} admitted (closed), {1, gen, first} a probe, {2, gen, ms}
# refused (open, half-opens in ms), {3, gen} refused (half-open, probes out).
_ADMIT: Final = """
local h, p = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local v = redis.call('HMGET', h, 'st', 'gen', 'until')
local st = tonumber(v[1] or '0')
local gen = tonumber(v[2] or '0')
if st == 0 then return {0, gen} end
local first = 0
if st == 1 then
  local untl = tonumber(v[3] or '0')
  if now < untl then return {2, gen, untl - now} end
  redis.call('HSET', h, 'st', '2')
  redis.call('DEL', p)
  first = 1
else
  redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
  if redis.call('ZCARD', p) >= tonumber(ARGV[2]) then return {3, gen} end
end
redis.call('ZADD', p, now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', h, ARGV[5])
redis.call('PEXPIRE', p, ARGV[5])
return {1, gen, first}
"""

# KEYS: the hash, the probe set, the ratio window (a hash: c<slot> calls, f<slot> faults).
# ARGV: now (ms), ticket's gen, probe id ('' for a closed ticket), verdict
#       (0 ok, 1 fault, 2 neutral, 3 open for ARGV[5] ms), ms, failures (-1:
#       none), ratio (-1: none), min calls, slot (ms), cooldown (ms), max
#       cooldown (ms), ttl (ms).
# Returns {0} nothing changed, {1, ms} opened (verdict 3), {2} closed,
# {3, ms} opened (a probe failed), {4, ms, n} opened (n consecutive faults),
# {5, ms, faults, calls} opened (the ratio).
_RECORD: Final = """
local h, p, w = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local verdict = tonumber(ARGV[4])
local ttl = ARGV[12]
local v = redis.call('HMGET', h, 'st', 'gen', 'lvl', 'cons')
local st = tonumber(v[1] or '0')
local gen = tonumber(v[2] or '0')
local lvl = tonumber(v[3] or '0')
local cons = tonumber(v[4] or '0')
if tonumber(ARGV[2]) ~= gen then return {0} end
local function opentime(level)
  local ms = tonumber(ARGV[10]) * 2 ^ math.min(level, 64)
  local cap = tonumber(ARGV[11])
  if ms > cap then ms = cap end
  return math.floor(ms)
end
local function open(ms)
  redis.call('HSET', h, 'st', '1', 'until', string.format('%.0f', now + ms), 'cons', '0', 'lvl', tostring(lvl))
  redis.call('DEL', p)
  redis.call('PEXPIRE', h, ttl)
end
if ARGV[3] ~= '' then
  if st ~= 2 or redis.call('ZREM', p, ARGV[3]) == 0 then return {0} end
  if verdict == 2 then return {0} end
  if verdict == 0 then
    redis.call('HSET', h, 'st', '0', 'gen', tostring(gen + 1), 'lvl', '0', 'cons', '0')
    redis.call('DEL', p, w)
    redis.call('PEXPIRE', h, ttl)
    return {2}
  end
  if verdict == 1 then
    lvl = lvl + 1
    local ms = opentime(lvl)
    open(ms)
    return {3, ms}
  end
  open(tonumber(ARGV[5]))
  return {1, tonumber(ARGV[5])}
end
if st ~= 0 or verdict == 2 then return {0} end
if verdict == 3 then
  open(tonumber(ARGV[5]))
  return {1, tonumber(ARGV[5])}
end
local ratio = tonumber(ARGV[7])
local calls, faults = 0, 0
if ratio >= 0 then
  local idx = math.floor(now / tonumber(ARGV[9]))
  local slot = string.format('%.0f', idx)
  redis.call('HINCRBY', w, 'c' .. slot, 1)
  if verdict == 1 then redis.call('HINCRBY', w, 'f' .. slot, 1) end
  local all = redis.call('HGETALL', w)
  for j = 1, #all, 2 do
    local i = tonumber(string.sub(all[j], 2))
    if i <= idx - 10 then
      redis.call('HDEL', w, all[j])
    elseif string.sub(all[j], 1, 1) == 'c' then
      calls = calls + tonumber(all[j + 1])
    else
      faults = faults + tonumber(all[j + 1])
    end
  end
  redis.call('PEXPIRE', w, ttl)
end
if verdict == 0 then
  if cons > 0 then redis.call('HSET', h, 'cons', '0') end
  return {0}
end
cons = cons + 1
local failures = tonumber(ARGV[6])
if failures >= 0 and cons >= failures then
  local ms = opentime(lvl)
  open(ms)
  return {4, ms, cons}
end
if ratio >= 0 and calls >= tonumber(ARGV[8]) and faults >= ratio * calls then
  local ms = opentime(lvl)
  open(ms)
  return {5, ms, faults, calls}
end
redis.call('HSET', h, 'cons', tostring(cons))
redis.call('PEXPIRE', h, ttl)
return {0}
"""

# KEYS: the hash. Returns {st, until}.
_STATE: Final = """
local v = redis.call('HMGET', KEYS[1], 'st', 'until')
return {tonumber(v[1] or '0'), tonumber(v[2] or '0')}
"""

_STATES: Final = (CLOSED, OPEN, HALF_OPEN)
_UNCOUNTED: Final = -1  # the ticket of a call let through while Redis could not be reached: never counted


class _RedisCell(Cell):
    """One circuit in Redis (see `RedisBreakerStore`)."""

    def __init__(self, store: RedisBreakerStore, name: str, rules: Rules) -> None:
        self.store = store
        self.name = name
        self.rules = rules
        self._keys = [store._prefix + name, store._prefix + name + ":p", store._prefix + name + ":w"]
        self._ids = itertools.count(1)
        self._origin = f"{os.getpid():x}.{os.urandom(4).hex()}"
        ttl = 2 * max(rules.window, rules.max_cooldown, PROBE_LEASE)
        self._ttl = str(int(ttl * 1000))
        failures = -1 if rules.failures is None else rules.failures
        ratio = -1.0 if rules.ratio is None else rules.ratio
        self._rules_args = [
            str(failures), repr(ratio), str(rules.min_calls), str(int(rules.slot * 1000) or 1),
            str(int(rules.cooldown * 1000)), str(int(rules.max_cooldown * 1000)), self._ttl,
        ]

    # -- arguments and replies, shared by the sync and async paths ----------

    def _admit_args(self) -> list[Any]:
        now = int(_clock.wall() * 1000)
        pid = f"{self._origin}.{next(self._ids)}"
        return [now, self.rules.probes, int(PROBE_LEASE * 1000), pid, self._ttl]

    def _admitted(self, reply: Any, pid: str) -> object:
        code = int(reply[0])
        if code == 0:
            return int(reply[1])
        if code == 1:
            return Probe(pid, int(reply[1]), bool(int(reply[2])))
        if code == 2:
            raise refused(self.name, OPEN, int(reply[2]) / 1000.0)
        raise refused(self.name, HALF_OPEN, 0.0)

    def _record_args(self, ticket: object, verdict: int, seconds: float) -> list[Any] | None:
        if isinstance(ticket, Probe):
            gen, pid = ticket.gen, ticket.id
        elif isinstance(ticket, int) and ticket != _UNCOUNTED:
            gen, pid = ticket, ""
        else:
            return None
        now = int(_clock.wall() * 1000)
        return [now, gen, pid, verdict, int(seconds * 1000), *self._rules_args]

    @staticmethod
    def _transition(reply: Any, reason: str) -> Transition | None:
        code = int(reply[0])
        if code == 0:
            return None
        if code == 2:
            return Transition(CLOSED)
        seconds = int(reply[1]) / 1000.0
        if code == 3:
            reason = "probe failed"
        elif code == 4:
            reason = f"{int(reply[2])} consecutive failures ({reason})"
        elif code == 5:
            reason = f"{int(reply[2])} of {int(reply[3])} calls failed ({reason})"
        return Transition(OPEN, seconds, reason)

    def _state_of(self, reply: Any) -> str:
        state = _STATES[int(reply[0])]
        if state is OPEN and _clock.wall() * 1000 >= int(reply[1]):
            return HALF_OPEN
        return state

    def _unreachable(self, stage: str, exc: Exception) -> None:
        _events.emit(_events.BREAKER_STORE_ERROR, None, level="warning", breaker=self.name, stage=stage, error=exc)

    # -- sync ------------------------------------------------------------------

    def admit(self) -> object:
        """One EVALSHA; Redis out of reach: the call goes through, uncounted (a breaker never stops calls by failing)."""
        args = self._admit_args()
        try:
            reply = self.store._admit(keys=self._keys[:2], args=args)
        except Exception as exc:  # noqa: BLE001 - reported, and the call goes on
            self._unreachable("admit", exc)
            return _UNCOUNTED
        return self._admitted(reply, args[3])

    def record(self, ticket: object, verdict: int, seconds: float, reason: str) -> Transition | None:
        """One EVALSHA (none for an uncounted ticket); Redis out of reach: the outcome is not counted."""
        args = self._record_args(ticket, verdict, seconds)
        if args is None:
            return None
        try:
            reply = self.store._record(keys=self._keys, args=args)
        except Exception as exc:  # noqa: BLE001 - reported; the caller's call is over
            self._unreachable("record", exc)
            return None
        return self._transition(reply, reason)

    def state(self) -> str:
        """The state in Redis now."""
        return self._state_of(self.store._state(keys=self._keys[:1], args=[]))

    # -- async -----------------------------------------------------------------

    async def aadmit(self) -> object:
        """`admit` on the loop's async client."""
        args = self._admit_args()
        try:
            reply = await self.store._arun(0, self._keys[:2], args)
        except Exception as exc:  # noqa: BLE001
            self._unreachable("admit", exc)
            return _UNCOUNTED
        return self._admitted(reply, args[3])

    async def arecord(self, ticket: object, verdict: int, seconds: float, reason: str) -> Transition | None:
        """`record` on the loop's async client."""
        args = self._record_args(ticket, verdict, seconds)
        if args is None:
            return None
        try:
            reply = await self.store._arun(1, self._keys, args)
        except Exception as exc:  # noqa: BLE001
            self._unreachable("record", exc)
            return None
        return self._transition(reply, reason)

    async def astate(self) -> str:
        """`state` on the loop's async client."""
        return self._state_of(await self.store._arun(2, self._keys[:1], []))


class RedisBreakerStore(BreakerStore):
    """Circuits in Redis, shared by every process and machine using it.

    Keys are ``llmguard:breaker:<namespace>:<name>`` (a hash: the state),
    ``...:p`` (the probes out) and ``...:w`` (the ratio window); each
    expires on the server after twice the longest of the window, the
    longest cooldown and a probe's lease, counted from the circuit's last
    change, so an idle circuit leaves nothing behind (and comes back closed).
    Times are the callers' wall clocks: keep the machines' clocks in sync.

    *target* is a ``redis://`` / ``rediss://`` / ``unix://`` URL or a
    redis-py client. From a URL, async calls use a ``redis.asyncio`` client
    per event loop (a client you built is used as it is, blocking). When
    Redis cannot be reached, calls go through uncounted and
    ``llmguard.breaker.store_error`` is emitted: a breaker's outage must not
    become the application's.
    """

    def __init__(self, target: Any, *, namespace: str = "default", max_connections: int = 64) -> None:
        if not isinstance(namespace, str) or not namespace or ":" in namespace:
            msg = f"RedisBreakerStore(namespace=...) must be a non-empty string without ':', got {namespace!r}"
            raise ValueError(msg)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            msg = f"RedisBreakerStore(max_connections=...) must be an int >= 1, got {max_connections!r}"
            raise ValueError(msg)
        self._url = target if isinstance(target, str) else None
        self._max_connections = max_connections
        self._client = redis_client(self._pooled(target) if isinstance(target, str) else target)
        self._prefix = _key("breaker", namespace) + ":"
        self._admit = self._client.register_script(_ADMIT)
        self._record = self._client.register_script(_RECORD)
        self._state = self._client.register_script(_STATE)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, ...]] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"RedisBreakerStore({self._client!r}, prefix={self._prefix!r})"

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
            self._client.connection_pool.disconnect()
        self._async.clear()

    def cell(self, name: str, rules: Rules, *, shared: bool = True) -> _RedisCell:  # noqa: ARG002 - Redis is shared
        """The circuit *name* in Redis (shared by every process using this namespace)."""
        return _RedisCell(self, name, rules)

    async def _arun(self, index: int, keys: list[str], args: list[Any]) -> Any:
        if self._url is None:
            return (self._admit, self._record, self._state)[index](keys=keys, args=args)
        loop = asyncio.get_running_loop()
        scripts = self._async.get(loop)
        if scripts is None:
            client = self._pooled(self._url, asynchronous=True)
            scripts = (client.register_script(_ADMIT), client.register_script(_RECORD), client.register_script(_STATE))
            self._async[loop] = scripts
        return await scripts[index](keys=keys, args=args)
