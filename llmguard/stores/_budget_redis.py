"""`RedisBudgetStore`: ledgers in Redis, shared by every process and machine using it.

Every operation is one Lua script (one round trip, atomic on the server);
settlements that cannot reach Redis are kept and replayed (see
`llmguard.stores.budget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import weakref

from collections import deque
from typing import Any, Final

from .. import _events
from . import key as _key
from . import pooled_client, redis_client
from ._budget_base import PICO, BudgetStore, BudgetStoreError, Crossing, Ledger, Line, Refusal


# Expired leases, dropped from bucket *h*'s lease set *z* (before reserving,
# or reading): their holds are given back, and they move to the set
# ``<z>x`` (kept as long as the bucket, at most a day), so a settlement that
# comes after its lease expired still charges, once. The charge ids settle
# remembers there go after a day too: every purge drops what is older, so the
# set stays bounded whether or not a lease expires. A Lua function over
# (h, z, now); the scripts below start with it.
_PURGE: Final = """
local function purge(h, z, now)
  local x = z .. 'x'
  redis.call('ZREMRANGEBYSCORE', x, '-inf', now - 86400000)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'WITHSCORES')
  if #old == 0 then return end
  for j = 1, #old, 2 do
    local m = old[j]
    local u, t = string.match(m, '|(%d+)|(%d+)$')
    if u and u ~= '0' then redis.call('HINCRBY', h, 'ru', '-' .. u) end
    if t and t ~= '0' then redis.call('HINCRBY', h, 'rt', '-' .. t) end
    redis.call('ZADD', x, old[j+1], m)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  local ttl = redis.call('PTTL', h)
  if ttl > 0 then redis.call('PEXPIRE', x, ttl) end
end
"""

# KEYS: per line, the bucket hash and its lease set.
# ARGV: now (ms), lease end (ms), reservation id, then per line five values:
#       usd, tokens, usd limit (-1: none), tokens limit (-1: none), ttl (ms, -1: none).
# Amounts travel as decimal strings and reach the counters through HINCRBY
# untouched: Lua numbers are doubles, exact only to 2^53, so they are used for
# comparisons, never for what is stored.
_RESERVE: Final = _PURGE + """
local now = tonumber(ARGV[1])
local n = #KEYS / 2
for i = 1, n do
  purge(KEYS[2*i-1], KEYS[2*i], now)
end
-- Already held (the client sent this reserve again after losing its reply,
-- as redis-py's own retries do): hold it once.
if n > 0 and redis.call('ZSCORE', KEYS[2], ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5]) then
  return 0
end
for i = 1, n do
  local a = 3 + (i-1)*5
  local v = redis.call('HMGET', KEYS[2*i-1], 'su', 'st', 'ru', 'rt')
  local su, st = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  local ru, rt = tonumber(v[3] or '0'), tonumber(v[4] or '0')
  local ul, tl = tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
  if ul >= 0 and (su + ru + tonumber(ARGV[a+1]) > ul or su >= ul) then
    return {i, 'usd', v[1] or '0', v[3] or '0'}
  end
  if tl >= 0 and (st + rt + tonumber(ARGV[a+2]) > tl or st >= tl) then
    return {i, 'tokens', v[2] or '0', v[4] or '0'}
  end
end
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  local a = 3 + (i-1)*5
  if ARGV[a+1] ~= '0' then redis.call('HINCRBY', h, 'ru', ARGV[a+1]) end
  if ARGV[a+2] ~= '0' then redis.call('HINCRBY', h, 'rt', ARGV[a+2]) end
  if redis.call('EXISTS', h) == 0 then redis.call('HSET', h, 'su', '0') end
  redis.call('ZADD', z, ARGV[2], ARGV[3] .. '|' .. ARGV[a+1] .. '|' .. ARGV[a+2])
  local ttl = tonumber(ARGV[a+5])
  if ttl > 0 then
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', z, ttl)
  end
end
return 0
"""

# KEYS: as for reserve.
# ARGV: reservation id, count (0/1), estimated (0/1), held (1: settle the
#       reservation *id*, exactly once; 0: charge without one, once per id,
#       remembered among the expired leases as "<id>|c"), then per line
#       seven values: reserved usd, reserved tokens, charged usd, charged
#       tokens, ttl (ms, -1: none), usd alert levels and tokens alert levels
#       (comma-separated, ascending; empty: report none).
# A held line whose lease is neither in the lease set nor among the expired
# ones was settled already (a retried or replayed settlement): it is skipped.
# Returns, per crossing: line, unit, first level crossed, new level, spend (string).
_SETTLE: Final = """
local function level(csv, spent, old)
  local lv, i = 0, 0
  for th in string.gmatch(csv, '[^,]+') do
    i = i + 1
    if spent >= tonumber(th) then lv = i end
  end
  if lv < old then return old end
  return lv
end
local out = {}
local n = #KEYS / 2
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  local a = 4 + (i-1)*7
  local ru, rt = ARGV[a+1], ARGV[a+2]
  local charge = true
  if ARGV[4] == '0' then
    local t = redis.call('TIME')
    if redis.call('ZADD', z .. 'x', 'NX', t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1] .. '|c') == 0 then
      charge = false
    end
  elseif ARGV[4] == '1' then
    local m = ARGV[1] .. '|' .. ru .. '|' .. rt
    if redis.call('ZREM', z, m) == 1 then
      if ru ~= '0' then redis.call('HINCRBY', h, 'ru', '-' .. ru) end
      if rt ~= '0' then redis.call('HINCRBY', h, 'rt', '-' .. rt) end
    elseif redis.call('ZREM', z .. 'x', m) == 0 then
      charge = false
    end
  end
  if charge then
    if ARGV[a+3] ~= '0' then redis.call('HINCRBY', h, 'su', ARGV[a+3]) end
    if ARGV[a+4] ~= '0' then redis.call('HINCRBY', h, 'st', ARGV[a+4]) end
    if ARGV[2] == '1' then
      redis.call('HINCRBY', h, 'n', 1)
      if ARGV[3] == '1' then redis.call('HINCRBY', h, 'e', 1) end
    end
    local ttl = tonumber(ARGV[a+5])
    if ttl > 0 then redis.call('PEXPIRE', h, ttl) end
    -- the id just remembered goes with the bucket (which may have been made just now)
    local left = redis.call('PTTL', h)
    if ARGV[4] == '0' and left > 0 then redis.call('PEXPIRE', z .. 'x', left) end
  end
  local v = redis.call('HMGET', h, 'su', 'st', 'au', 'at')
  local su, st = v[1] or '0', v[2] or '0'
  if ARGV[a+6] ~= '' then
    local old = tonumber(v[3] or '0')
    local new = level(ARGV[a+6], tonumber(su), old)
    if new > old then
      redis.call('HSET', h, 'au', new)
      table.insert(out, i); table.insert(out, 'usd'); table.insert(out, old)
      table.insert(out, new); table.insert(out, su)
    end
  end
  if ARGV[a+7] ~= '' then
    local old = tonumber(v[4] or '0')
    local new = level(ARGV[a+7], tonumber(st), old)
    if new > old then
      redis.call('HSET', h, 'at', new)
      table.insert(out, i); table.insert(out, 'tokens'); table.insert(out, old)
      table.insert(out, new); table.insert(out, st)
    end
  end
end
return out
"""

# KEYS: bucket hash, lease set. ARGV: now (ms).
_LEDGER: Final = _PURGE + """
purge(KEYS[1], KEYS[2], tonumber(ARGV[1]))
return redis.call('HMGET', KEYS[1], 'su', 'st', 'ru', 'rt', 'n', 'e')
"""

# Kept settlements applied per successful round trip. Each is one more round
# trip inside the call that succeeded (~0.1-1 ms on a LAN): 32 adds a few ms
# to that one call, and still drains a full queue (10,000) in ~300 calls.
_RETRY_BATCH: Final = 32


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _ttl_ms(ttl: float | None) -> str:
    return "-1" if ttl is None else str(max(_ms(ttl), 1000))


def _int(value: Any) -> int:
    return 0 if value is None or value is False else int(value)


def _unreachable(exc: Exception) -> bool:
    """Whether *exc* says Redis could not be reached (a kept settlement waits), not that it refused it."""
    try:
        import redis  # noqa: PLC0415 - optional dependency
    except ImportError:  # pragma: no cover - a store needs redis-py
        return True
    # ReadOnlyError: a replica mid-failover, as transient as a lost connection.
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError))


def _never_sent(exc: Exception) -> bool:
    """Whether *exc* (unreachable) says the request never left: no connection was made or lent.

    redis-py raises these before sending anything ("Error 111 connecting
    to ...", "Timeout connecting to server", the pool's "No connection
    available."); any other error may come after the server ran the request.
    An error not recognized here is taken to be one that may have.
    """
    text = str(exc)
    return "connecting to" in text or "No connection available" in text


class RedisBudgetStore(BudgetStore):
    """Ledgers in Redis, shared by every process and machine using it.

    Every operation is one Lua script (EVALSHA: one round trip), atomic on
    the server. Keys are ``llmguard:budget:<namespace>:<bucket>`` (a hash)
    and ``...:r`` (the sorted set of leases, by expiry); both expire with
    their window (kept one more window, or one lease, whichever is longer,
    for reports). A lifetime budget (``per=None``) does not expire.

    *target* is a ``redis://`` / ``rediss://`` / ``unix://`` URL or a
    redis-py client. From a URL, async calls use a ``redis.asyncio`` client
    per event loop; with a client you built, async calls use it directly
    (one blocking round trip). Clients built from a URL use a blocking
    connection pool of *max_connections* per process (and per event loop),
    so a burst of callers waits for a connection instead of failing. Stream settlements run in the stream's finish
    hook, which is synchronous, and so always use the sync client. Redis
    Cluster is not supported (a call's buckets may hash to different slots).

    A settlement that fails is kept (up to *pending_settlements*, oldest
    dropped first) and applied on the next successful round trip (up to 32
    per round trip), only if its reservation is still held (see the module
    docs). One Redis refuses then is dropped; ``dropped_settlements`` counts
    both. A reserve whose reply was lost keeps a release of its reservation
    in the same queue.
    """

    def __init__(
        self,
        target: Any,
        *,
        namespace: str = "default",
        max_connections: int = 64,
        pending_settlements: int = 10_000,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or ":" in namespace:
            msg = f"RedisBudgetStore(namespace=...) must be a non-empty string without ':', got {namespace!r}"
            raise ValueError(msg)
        for name, value, least in (("max_connections", max_connections, 1), ("pending_settlements", pending_settlements, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                msg = f"RedisBudgetStore({name}=...) must be an int >= {least}, got {value!r}"
                raise ValueError(msg)
        self._url = target if isinstance(target, str) else None
        self._max_connections = max_connections
        if isinstance(target, str):
            target = self._pooled(target)
        self._client = redis_client(target)
        self._prefix = _key("budget", namespace) + ":"
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._ledger = self._client.register_script(_LEDGER)
        # Settlements that failed, kept for the next successful round trip:
        # (keys, settle arguments with the alert levels blanked).
        self._pending: deque[tuple[list[str], list[Any]]] = deque()
        self._pending_max = pending_settlements
        self._retrying = threading.Lock()  # one retrier at a time
        self.dropped_settlements = 0  # kept settlements pushed out of a full queue or refused on replay
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self._ids = itertools.count(1)
        self._origin = f"{os.getpid():x}.{os.urandom(4).hex()}"

    def __repr__(self) -> str:
        return f"RedisBudgetStore({self._client!r}, prefix={self._prefix!r})"

    def _pooled(self, url: str, *, asynchronous: bool = False) -> Any:
        """A client whose callers wait for a free connection rather than fail (`stores.pooled_client`)."""
        return pooled_client(url, self._max_connections, asynchronous=asynchronous)

    @property
    def client(self) -> Any:
        """The sync redis-py client."""
        return self._client

    def close(self) -> None:
        """Close the connections this store opened (a client you passed stays yours).

        Async connections are closed on their event loop when it is not
        running (e.g. after ``asyncio.run`` returned but before the loop is
        closed); from inside a running loop, use `aclose`.
        """
        if self._url is not None:
            self._client.connection_pool.disconnect()
        for loop, scripts in list(self._async.items()):
            if not loop.is_closed() and not loop.is_running():
                with contextlib.suppress(RuntimeError):  # another loop runs in this thread
                    loop.run_until_complete(scripts[0].connection_pool.disconnect())
        self._async.clear()

    async def aclose(self) -> None:
        """Close this event loop's async connections, then the sync ones."""
        scripts = self._async.pop(asyncio.get_running_loop(), None)
        if scripts is not None:
            await scripts[0].connection_pool.disconnect()
        self.close()

    def new_id(self) -> str:
        """A reservation id unique across processes (pid, random, counter)."""
        return f"{self._origin}.{next(self._ids)}"

    def _keys(self, lines: list[Line]) -> list[str]:
        keys: list[str] = []
        for line in lines:
            h = self._prefix + line.bucket
            keys.append(h)
            keys.append(h + ":r")
        return keys

    @staticmethod
    def _reserve_args(rid: str, lines: list[Line], now: float, lease: float) -> list[Any]:
        args: list[Any] = [_ms(now), _ms(now + lease), rid]
        for line in lines:
            args += (
                line.usd,
                line.tokens,
                -1 if line.usd_limit is None else line.usd_limit,
                -1 if line.tokens_limit is None else line.tokens_limit,
                _ttl_ms(line.ttl),
            )
        return args

    @staticmethod
    def _settle_args(rid: str, lines: list[Line], *, count: bool, estimated: bool, held: bool = True) -> list[Any]:
        args: list[Any] = [rid, int(count), int(estimated), int(held)]
        for line in lines:
            args += (
                line.usd,
                line.tokens,
                line.charge_usd,
                line.charge_tokens,
                _ttl_ms(line.ttl),
                ",".join(map(str, line.usd_alerts)),
                ",".join(map(str, line.tokens_alerts)),
            )
        return args

    @staticmethod
    def _refusal(reply: Any, lines: list[Line]) -> Refusal | None:
        if not isinstance(reply, list):
            return None
        index = int(reply[0]) - 1
        unit = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        line = lines[index]
        if unit == "usd":
            return Refusal(index, unit, line.usd_limit or 0, int(reply[2]), int(reply[3]), line.usd)
        return Refusal(index, unit, line.tokens_limit or 0, int(reply[2]), int(reply[3]), line.tokens)

    @staticmethod
    def _crossings(reply: Any) -> list[Crossing]:
        out: list[Crossing] = []
        for j in range(0, len(reply), 5):
            unit = reply[j + 1].decode() if isinstance(reply[j + 1], bytes) else str(reply[j + 1])
            old, new = int(reply[j + 2]), int(reply[j + 3])
            out.append(Crossing(int(reply[j]) - 1, unit, tuple(range(old, new)), int(reply[j + 4])))
        return out

    @staticmethod
    def _ledger_of(reply: Any) -> Ledger:
        return Ledger(*(max(_int(v), 0) for v in reply))

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except Exception as exc:
            msg = f"redis budget store: {exc}"
            raise BudgetStoreError(msg) from exc

    def reserve(self, rid: str, lines: list[Line], now: float, lease: float) -> Refusal | None:
        """One EVALSHA: purge expired leases, check every line, hold all or none.

        If the reply is lost (see `_keep_release`), a release of *rid* is kept
        for later, as a failed settlement is.
        """
        keys = self._keys(lines)
        try:
            reply = self._run(self._reserve, keys, self._reserve_args(rid, lines, now, lease))
        except BudgetStoreError as exc:
            self._keep_release(rid, keys, lines, exc)
            raise
        if self._pending:
            self._retry_pending()
        return self._refusal(reply, lines)

    def settle(
        self, rid: str, lines: list[Line], now: float, *, count: bool, estimated: bool
    ) -> list[Crossing]:
        """One EVALSHA: release the lease, add the charges, report alert crossings.

        If Redis cannot be reached, the settlement is kept for later (see
        the class docs) and `BudgetStoreError` is raised with ``queued`` set.
        """
        del now  # the server needs no clock to settle
        return self._settle_or_keep(lines, self._settle_args(rid, lines, count=count, estimated=estimated))

    def charge(self, lines: list[Line], now: float, *, count: bool, estimated: bool) -> list[Crossing]:
        """One EVALSHA: add each line's charge, holding no reservation; kept for later, like `settle`, if it fails.

        Under a new id that Redis remembers, so a kept or retried charge is added once.
        """
        del now
        return self._settle_or_keep(
            lines, self._settle_args(self.new_id(), lines, count=count, estimated=estimated, held=False)
        )

    def _settle_or_keep(self, lines: list[Line], args: list[Any]) -> list[Crossing]:
        """Run the settle script for `settle` and `charge`; keep it for later if Redis is away."""
        keys = self._keys(lines)
        try:
            reply = self._run(self._settle, keys, args)
        except BudgetStoreError as exc:
            self._keep(keys, args, lines, exc)
            raise
        if self._pending:
            self._retry_pending()
        return self._crossings(reply)

    def ledger(self, bucket: str, now: float) -> Ledger:
        """One EVALSHA: drop expired leases of *bucket* and read it."""
        h = self._prefix + bucket
        reply = self._run(self._ledger, [h, h + ":r"], [_ms(now)])
        if self._pending:  # back after an outage: apply what was kept, then read what they changed
            self._retry_pending()
            reply = self._run(self._ledger, [h, h + ":r"], [_ms(now)])
        return self._ledger_of(reply)

    # -- settlements kept through an outage ------------------------------------

    @property
    def pending_settlements(self) -> int:
        """How many failed settlements wait for the next successful round trip."""
        return len(self._pending)

    def _keep(self, keys: list[str], args: list[Any], lines: list[Line], exc: BudgetStoreError) -> None:
        """Keep a settlement (or charge) that failed, to apply when Redis answers again."""
        kept = list(args)
        for i in range(len(lines)):  # no alerts from the retry: the next settlement reports them
            kept[4 + 7 * i + 5] = kept[4 + 7 * i + 6] = ""
        if self._queue(keys, kept):
            exc.queued = True

    def _queue(self, keys: list[str], args: list[Any]) -> bool:
        """Append settle-script *args* to the queue (the oldest dropped when full); False when it holds none."""
        if self._pending_max == 0:
            return False
        if len(self._pending) >= self._pending_max:
            with contextlib.suppress(IndexError):
                self._pending.popleft()
                self.dropped_settlements += 1
        self._pending.append((keys, args))
        return True

    def _keep_release(self, rid: str, keys: list[str], lines: list[Line], exc: BudgetStoreError) -> None:
        """A reserve of *rid* failed: keep a release of it if Redis may have made it.

        A reply lost after the request left (a socket timeout, the server
        stopped or the connection dropped after the script ran) leaves the
        caller without a reservation while the server holds one until its
        lease ends. The release kept here is an uncounted settlement of
        *rid* charging nothing: the settle script gives the hold back if the
        lease is there, and does nothing if the reserve never ran or the
        lease was already settled or expired; so the caller's own
        settlement (``fail_open``: a `charge` under another id) is charged
        once. Not kept when the request never left (no connection could be
        made): the reserve surely did not run.
        """
        cause = exc.__cause__
        if not isinstance(cause, Exception) or not _unreachable(cause) or _never_sent(cause):
            return
        args: list[Any] = [rid, 0, 0, 1]
        for line in lines:
            args += (line.usd, line.tokens, 0, 0, "-1", "", "")
        self._queue(keys, args)

    def _take_pending(self, limit: int) -> list[tuple[list[str], list[Any]]]:
        taken: list[tuple[list[str], list[Any]]] = []
        with contextlib.suppress(IndexError):
            while len(taken) < limit:
                taken.append(self._pending.popleft())
        return taken

    def _replay_failed(self, batch: list[tuple[list[str], list[Any]]], n: int, exc: BaseException) -> bool:
        """Entry *n* of a replayed *batch* failed: whether the replay goes on.

        Redis unreachable again (or the replay interrupted): it and the rest
        wait for the next success. Refused by Redis: it would fail every time
        and block the queue, so it is dropped, reported and counted.
        """
        if not isinstance(exc, Exception) or _unreachable(exc):
            self._pending.extendleft(reversed(batch[n:]))
            return False
        keys, args = batch[n]
        self.dropped_settlements += 1
        _events.emit(
            _events.BUDGET_STORE_ERROR,
            level="error",
            stage="replay",
            buckets=",".join(k[len(self._prefix) :] for k in keys[::2]),
            error=f"redis budget store: {exc}",
            lost_usd=int(args[6]) / PICO,
            lost_tokens=int(args[7]),
            dropped=True,
        )
        return True

    def _retry_pending(self) -> None:
        """Apply kept settlements (up to `_RETRY_BATCH`) now that a round trip succeeded."""
        if not self._retrying.acquire(blocking=False):
            return  # another thread is at it
        try:
            batch = self._take_pending(_RETRY_BATCH)
            for n, (keys, args) in enumerate(batch):
                try:
                    self._settle(keys=keys, args=args)
                except BaseException as exc:
                    if not self._replay_failed(batch, n, exc):
                        if isinstance(exc, Exception):
                            return
                        raise
        finally:
            self._retrying.release()

    # -- async ---------------------------------------------------------------

    def _async_scripts(self) -> tuple[Any, ...] | None:
        if self._url is None:
            return None
        loop = asyncio.get_running_loop()
        scripts = self._async.get(loop)
        if scripts is None:
            client = self._pooled(self._url, asynchronous=True)
            scripts = (
                client,
                client.register_script(_RESERVE),
                client.register_script(_SETTLE),
                client.register_script(_LEDGER),
            )
            self._async[loop] = scripts
        return scripts

    async def _arun(self, index: int, keys: list[str], args: list[Any]) -> Any:
        try:
            scripts = self._async_scripts()
            if scripts is None:
                reply = (self._reserve, self._settle, self._ledger)[index - 1](keys=keys, args=args)
            else:
                reply = await scripts[index](keys=keys, args=args)
        except Exception as exc:
            msg = f"redis budget store: {exc}"
            raise BudgetStoreError(msg) from exc
        if self._pending:
            await self._aretry_pending(scripts)
        return reply

    async def _aretry_pending(self, scripts: tuple[Any, ...] | None) -> None:
        """`_retry_pending` on the loop's async client (with a client you passed: the sync one)."""
        if scripts is None:
            self._retry_pending()
            return
        if not self._retrying.acquire(blocking=False):
            return
        try:
            batch = self._take_pending(_RETRY_BATCH)
        finally:
            self._retrying.release()
        for n, (keys, args) in enumerate(batch):
            try:
                await scripts[2](keys=keys, args=args)
            except BaseException as exc:  # cancelled: kept again (settling twice charges once)
                if not self._replay_failed(batch, n, exc):
                    if isinstance(exc, Exception):
                        return
                    raise

    async def areserve(
        self, rid: str, lines: list[Line], now: float, lease: float
    ) -> Refusal | None:
        """`reserve` on the loop's async client (a lost reply: a release kept, as by `reserve`)."""
        keys = self._keys(lines)
        try:
            reply = await self._arun(1, keys, self._reserve_args(rid, lines, now, lease))
        except BudgetStoreError as exc:
            self._keep_release(rid, keys, lines, exc)
            raise
        return self._refusal(reply, lines)

    async def asettle(
        self, rid: str, lines: list[Line], now: float, *, count: bool, estimated: bool
    ) -> list[Crossing]:
        """`settle` on the loop's async client (kept for later if Redis cannot be reached)."""
        del now
        keys, args = self._keys(lines), self._settle_args(rid, lines, count=count, estimated=estimated)
        try:
            reply = await self._arun(2, keys, args)
        except BudgetStoreError as exc:
            self._keep(keys, args, lines, exc)
            raise
        return self._crossings(reply)

    async def aledger(self, bucket: str, now: float) -> Ledger:
        """`ledger` on the loop's async client."""
        h = self._prefix + bucket
        return self._ledger_of(await self._arun(3, [h, h + ":r"], [_ms(now)]))
