"""`ratelimit`: wait your turn for requests and tokens per minute, instead of being refused.

::

    @lg.ratelimit(rpm=50, tpm=40_000, key=lambda user, **_: user, max_wait=30)
    def ask(q: str, user: str, model: str = "claude-sonnet-4-6", max_tokens: int = 1024): ...

    with lg.ratelimit(rpm=10):          # every ratelimit-guarded call inside
        agent.run()

The algorithm: GCRA
===================
Each limit of each key is one number, its *theoretical arrival time* (TAT:
see `llmguard.stores.ratelimit`). A caller is given its turn when it asks,
``max(now, TAT)``, and the TAT moves on by what it costs: ``60 / rpm``
seconds for the request, ``tokens * 60 / tpm`` for its tokens. That is the
generic cell rate algorithm (GCRA), chosen over a token bucket because:

- the turn is known *before* anyone sleeps, so a wait over ``max_wait`` is
  refused at once, saying the wait it would have needed, and nothing is sent;
- the turn is given at arrival, so callers are served in the order they
  asked (FIFO), threads and asyncio tasks alike, and each one sleeps exactly
  until its turn: no polling loop, no lock held while sleeping, nobody woken
  to find it is not their turn yet (aiolimiter#73);
- the state is one number per limit and key: one small Redis value, updated
  by one atomic script on the server's clock, O(1) whatever the limit
  (a moving-window log is O(limit): alisaifee/limits#268);
- there is no burst: calls are spaced evenly, so no 60-second window ever
  admits more than ``rpm`` requests (plus the one at its closed edge), nor
  more than ``tpm`` tokens plus one request's. A bucket's "burst" is the
  usual surprise of rate limiters (aiolimiter#298).

Tokens
======
A ``tpm`` limit reserves each request's estimate when it is admitted: its
input (llmguard's one estimate, `llmguard._estimate`, as a `budget` reserves
it: UTF-8 bytes / 3) plus its output cap (``max_tokens``-like arguments,
else ``max_output=``, or ``estimate=``). After the call the reservation is
corrected to the usage the provider reported: a stream keeps its whole
reservation until it ends (LiteLLM never counted streams: litellm#41610),
and since a reservation is made atomically as the turn is given, concurrent
callers cannot all slip through a check before any of them is counted
(litellm#18730: 663 tokens through a 100 TPM limit). A call that reported
no usage keeps its estimate; a request refused with a 429 gives its tokens
back. Tokens given back go to the callers that ask after it; callers already
waiting keep the turn they were given.

The provider's word
===================
A 429 seen on the call (``ErrorKind.RATE_LIMITED``) holds the limit's key for
the provider's ``retry-after`` (1 s when it gives none) and halves the local
rate of that key for 60 s; a successful result that carries the
provider's rate-limit headers (``anthropic-ratelimit-*``,
``x-ratelimit-*``, a raw response or any object with ``.headers``) holds it
until the reset of a limit whose remaining count is 0, so a fleet backs off
before the 429s. ``backoff=False`` turns both off.

Scopes and keys
===============
``key=`` is a string or a callable of the call's arguments by name giving the
key (user, tenant): each key has its own limits. ``with lg.ratelimit(...)``
(or ``async with``) applies its limits to every ratelimit-guarded call made
inside it, in this thread or task and the tasks it starts (a bare
``@lg.ratelimit`` adds no limit of its own: the function just obeys the
active scopes). Reaching SDK requests made inside a scope by functions that
carry no ``@lg.ratelimit`` is the wire layer's work, not done here yet. One
`RateLimit` object is one limit, shared by every function it decorates.

Stores
======
In memory by default (one per `RateLimit`, on llmguard's clock: a fake clock
drives it in tests); ``store="redis://..."`` (or a redis-py client, or a
`RedisRateLimitStore`) shares the limits between processes and machines,
one Lua script per decision on the Redis server's clock. Give a shared limit
a ``name=`` that is the same everywhere (a decorator's default is the first
decorated function's module and qualified name).
"""

from __future__ import annotations

import math

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, ClassVar, Final, Literal, NamedTuple, ParamSpec, TypeVar, cast, overload

from . import _check, _clock, _events, providers
from ._budget_estimate import Estimator, signature_mismatch
from ._call import Call
from ._context import _DEADLINE, enter_scope, exit_scope, remaining
from ._record import ErrorKind, Usage
from ._runner import Guard
from ._stream import _StreamBase
from .errors import RateLimited
from .providers._headers import headers_of, lower_headers, retry_after_lower
from .stores import resolve_store
from .stores.ratelimit import Grant, MemoryRateLimitStore, RateLimitStore, RedisRateLimitStore


__all__ = ["RateLimit", "ratelimit"]

P = ParamSpec("P")
R = TypeVar("R")

_SLOW_FOR: Final = 60.0  # seconds a key's rate stays halved after a 429
_SLOW_FACTOR: Final = 2.0
_PAUSE_429: Final = 1.0  # seconds a 429 without retry advice holds the key
_HOLDS_KEPT: Final = 4096  # keys whose cells a limit remembers (then it starts again)

# The `with lg.ratelimit(...)` scopes active in this context, outermost first.
SCOPES: ContextVar[tuple[RateLimit, ...]] = ContextVar("llmguard_ratelimit_scopes", default=())


class _Hold(NamedTuple):
    """One limiter's reservation for one call: its cells and costs, and how a token was priced."""

    limiter: RateLimit
    key: str | None
    cells: list[tuple[str, float]]  # (cell, seconds reserved)
    per_token: float  # seconds one token cost (0: no tpm cell); the tpm cell is the last


class _Ticket:
    """A call's reservations in every limiter that applies, until they are corrected (once)."""

    __slots__ = ("holds", "local", "n0", "open", "tokens")

    def __init__(self, holds: list[_Hold], tokens: int, n0: int, local: bool) -> None:
        self.holds = holds
        self.tokens = tokens  # tokens reserved (0 without a tpm limit)
        self.n0 = n0  # the call's attempts before this one
        self.local = local  # every store is in memory: async callers use the sync methods
        self.open = True


_OPEN = Grant(True, 0.0, -1)  # a call let through while its store cannot be reached (fail_open)


def _store_error(call: Call, stage: str, error: Exception, **fields: Any) -> None:
    _events.emit(_events.RATELIMIT_STORE_ERROR, call.record, level="warning", stage=stage, error=repr(error), **fields)


_CARRIES: dict[type, bool] = {}


def _may_carry_headers(cls: type) -> bool:
    """Whether results of *cls* may carry response headers: its class has ``headers`` or ``response`` (a raw response, an SDK stream)."""
    found = _CARRIES.get(cls)
    if found is None:
        found = hasattr(cls, "headers") or hasattr(cls, "response")
        if len(_CARRIES) < _HOLDS_KEPT:
            _CARRIES[cls] = found
    return found


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace(":", "%3A")


def _resolve_store(store: Any) -> RateLimitStore | None:
    return resolve_store("ratelimit", store, RateLimitStore, RedisRateLimitStore)


class RateLimit(Guard):
    """Requests and tokens per minute: a decorator and a context manager.

    Build it with `ratelimit`; see the module documentation for what it does.
    """

    name: ClassVar[str] = "ratelimit"
    model: ClassVar[None] = None  # read by the token estimate (`Estimator`), which prices nothing here

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        key: str | Callable[..., Any] | None = None,
        max_wait: float | None = 60.0,
        store: Any = None,
        max_output: int | None = None,
        estimate: Callable[..., Any] | None = None,
        backoff: bool = True,
        name: str | None = None,
        on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
    ) -> None:
        _check.number("ratelimit", "rpm", rpm, optional=True)
        _check.number("ratelimit", "tpm", tpm, optional=True)
        _check.number("ratelimit", "max_wait", max_wait, optional=True, exclusive=False, kind="a number of seconds")
        _check.number("ratelimit", "max_output", max_output, optional=True, integer=True)
        for option, value, strings in (("key", key, True), ("estimate", estimate, False)):
            if value is not None and not callable(value) and not (strings and isinstance(value, str)):
                what = "a string or a callable of the call's arguments" if strings else "a callable of the call's arguments"
                msg = f"ratelimit({option}=...) must be {what}, got {value!r}"
                raise TypeError(msg)
        if not isinstance(cast("object", backoff), bool):
            msg = f"ratelimit(backoff=...) must be True or False, got {backoff!r}"
            raise TypeError(msg)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            msg = f"ratelimit(name=...) must be a non-empty string, got {name!r}"
            raise ValueError(msg)
        if on_store_error not in ("fail_closed", "fail_open"):
            msg = f"ratelimit(on_store_error=...) must be 'fail_closed' or 'fail_open', got {on_store_error!r}"
            raise ValueError(msg)
        self.has_limits = rpm is not None or tpm is not None
        if not self.has_limits:
            given = [n for n, v in (("key", key), ("store", store), ("name", name), ("max_output", max_output), ("estimate", estimate)) if v is not None]
            if given:
                msg = f"ratelimit({given[0]}=...) needs a limit: pass rpm=... and/or tpm=..."
                raise ValueError(msg)
        self.rpm = rpm
        self.tpm = tpm
        self.key = key
        self.max_wait = max_wait
        self.max_output = max_output
        self.estimate = estimate
        self.backoff = backoff
        self.on_store_error = on_store_error
        self.label = name
        self._store = _resolve_store(store) or MemoryRateLimitStore()
        self._per_request = 0.0 if rpm is None else 60.0 / rpm
        self._per_token = 0.0 if tpm is None else 60.0 / tpm
        self._wait_limit = _clock.MAX_WAIT if max_wait is None else float(max_wait)
        self._slow: dict[str | None, float] = {}  # key -> until when its rate is halved (after a 429)
        self._fixed: dict[str | None, _Hold] = {}  # key -> its hold, for a limit with no tpm (the same every call)
        self._local = self._store.sync_ok

    @property
    def store(self) -> RateLimitStore:
        """Where this limit's state is kept."""
        return self._store

    def settings(self) -> dict[str, Any]:
        """The limit's configuration, for `describe`."""
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "key": self.key,
            "max_wait": self.max_wait,
            "store": type(self._store).__name__,
            "backoff": self.backoff,
            "on_store_error": self.on_store_error,
        }

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Any) -> Guard:  # noqa: ARG002
        """The guard of this limit on *fn* (its token estimate); names the limit after *fn* if it has no name yet."""
        if self.label is None:
            self.label = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
        return _FunctionRateLimit(self, fn, binder)

    # -- the cells --------------------------------------------------------------

    def _cell(self, key: str | None, which: str) -> str:
        if self.label is None:
            self.label = f"scope-{id(self):x}"  # a scope that never decorated anything
        return f"{_escape(self.label)}:{'' if key is None else _escape(key)}:{which}"

    def _hold(self, key: str | None, tokens: int) -> _Hold:
        """What a call of *tokens* costs this limit's cells for *key* (slower after a 429)."""
        slow = bool(self._slow) and self._slow.get(key, 0.0) > _clock.now()
        if self.tpm is None and not slow:
            hold = self._fixed.get(key)
            if hold is None:  # a key seen for the first time
                if len(self._fixed) >= _HOLDS_KEPT:
                    self._fixed.clear()
                hold = self._fixed[key] = _Hold(self, key, [(self._cell(key, "rpm"), self._per_request)], 0.0)
            return hold
        factor = _SLOW_FACTOR if slow else 1.0
        cells: list[tuple[str, float]] = []
        if self.rpm is not None:
            cells.append((self._cell(key, "rpm"), self._per_request * factor))
        per_token = self._per_token * factor
        if self.tpm is not None:
            cells.append((self._cell(key, "tpm"), tokens * per_token))
        return _Hold(self, key, cells, per_token)

    def _key_of(self, call: Call) -> str | None:
        key = self.key
        if key is None or isinstance(key, str):
            return key or None
        try:
            value = key(**call.arguments())
        except TypeError as exc:
            msg = f"ratelimit(key=...) cannot take the arguments of {call.function_name}: {exc}"
            raise TypeError(msg) from exc
        return None if value is None or value == "" else str(value)

    def wait_for(self, key: str | None = None) -> float:
        """Seconds a call of *key* asking now would wait for its turn (the longest of its limits)."""
        if isinstance(self.key, str) and key is None:
            key = self.key
        names = [self._cell(key, w) for w, v in (("rpm", self.rpm), ("tpm", self.tpm)) if v is not None]
        return max((self._store.ahead(n) for n in names), default=0.0)

    # -- the context manager --------------------------------------------------

    def __enter__(self) -> RateLimit:
        if not self.has_limits:
            msg = "a `with lg.ratelimit(...)` scope needs rpm=... or tpm=..."
            raise ValueError(msg)
        if self.label is None and isinstance(self._store, RedisRateLimitStore):
            msg = "ratelimit(name=...) is required for a `with` scope on a shared (Redis) store, so every process finds the same limit"
            raise ValueError(msg)
        enter_scope(SCOPES, self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        exit_scope(SCOPES, self)

    async def __aenter__(self) -> RateLimit:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


class _FunctionRateLimit(Guard):
    """A `RateLimit` on one function: its token estimate, and the per-call flow."""

    name: ClassVar[str] = "ratelimit"

    def __init__(self, limiter: RateLimit, fn: Callable[..., Any], binder: Any) -> None:
        self.limiter = limiter
        self._own = (limiter,) if limiter.has_limits else ()
        self._own_tpm = limiter.tpm is not None
        self._own_local = limiter._local
        # The one estimate a budget reserves from (it reads estimate=, max_output= and model of its owner).
        self.estimator = Estimator(cast("Any", limiter), binder)
        where = getattr(fn, "__qualname__", repr(fn))
        if (
            limiter.tpm is not None
            and not self.estimator.caps
            and limiter.max_output is None
            and limiter.estimate is None
            and not self.estimator.var_kw
        ):
            msg = (
                f"ratelimit(tpm=...) cannot estimate the tokens of {where}: it has no max_tokens-like argument; "
                "pass max_output= (the output cap the function uses) or estimate="
            )
            raise ValueError(msg)
        params = list(binder.signature.parameters.values()) if binder.signature else []
        for option in ("key", "estimate"):
            f = getattr(limiter, option)
            if params and f is not None and not isinstance(f, str):
                reason = signature_mismatch(f, params, binder.first)
                if reason is not None:
                    msg = f"ratelimit({option}=...) cannot take the arguments of {where}: it is called with the call's arguments by name, and {reason}"
                    raise TypeError(msg)

    def settings(self) -> dict[str, Any]:
        """The limit's configuration, for `describe`."""
        return self.limiter.settings()

    # -- the decision -----------------------------------------------------------

    def _plan(self, call: Call) -> _Ticket | None:
        scopes = SCOPES.get()
        limiters: tuple[RateLimit, ...] | list[RateLimit]
        if scopes:
            limiters = list(self._own)
            limiters.extend(s for s in scopes if s not in limiters)
            tpm = any(lim.tpm is not None for lim in limiters)
            local = all(lim._local for lim in limiters)
        else:
            limiters, tpm, local = self._own, self._own_tpm, self._own_local
            if not limiters:
                return None
        tokens = n0 = 0
        if tpm:
            input_tokens, cap, *_ = self.estimator.estimate(call, ())
            tokens = input_tokens + (cap or 0)
            n0 = call.attempt_count()  # the attempts whose usage corrects the reservation start here
        if len(limiters) == 1:
            lim = limiters[0]
            return _Ticket([lim._hold(lim._key_of(call), tokens)], tokens, n0, local)
        return _Ticket([lim._hold(lim._key_of(call), tokens) for lim in limiters], tokens, n0, local)

    def _limit(self, hold: _Hold) -> float:
        """The longest wait *hold* may be given: its ``max_wait``, or less when a deadline is nearer."""
        if _DEADLINE.get() is None:
            return hold.limiter._wait_limit
        return min(hold.limiter._wait_limit, remaining() or 0.0)

    def _refused(self, call: Call, ticket: _Ticket, i: int, grant: Grant, limit: float) -> RateLimited:
        """The refusal of *ticket*'s *i*-th hold (the holds before it are given back by the caller)."""
        hold = ticket.holds[i]
        lim = hold.limiter
        which = "tpm" if lim.tpm is not None and grant.which == len(hold.cells) - 1 else "rpm"
        record = call.record
        record.extra["ratelimit_wait"] = grant.wait
        _events.emit(
            _events.RATELIMIT_REJECTED, record, level="warning",
            limiter=lim.label, key=hold.key, limit=which, wait=grant.wait, max_wait=limit,
        )
        return RateLimited(
            f"ratelimit {lim.label!r}{'' if hold.key is None else f' (key {hold.key!r})'}: refused before sending; "
            f"its turn is {grant.wait:.3f}s away ({which} limit), more than the {limit:g}s it may wait",
            limiter=lim.label or "", key=hold.key, limit=which, wait=grant.wait, max_wait=limit,
        )

    def _waited(self, call: Call, ticket: _Ticket, wait: float) -> None:
        record = call.record
        record.extra["ratelimit_wait"] = wait
        _events.emit(_events.RATELIMIT_WAITED, record, limiter=ticket.holds[0].limiter.label, key=ticket.holds[0].key, wait=wait)

    @staticmethod
    def _give_back(call: Call, holds: list[_Hold]) -> None:
        """Give back the turns of *holds* (a refusal, a cancelled wait); a store that cannot be reached keeps them (a report, no error)."""
        for h in holds:
            if h.cells:
                try:
                    h.limiter._store.adjust([(n, -cost) for n, cost in h.cells])
                except Exception as error:  # noqa: BLE001 - the refusal or the cancellation is what the caller gets
                    _store_error(call, "give_back", error)

    def _unreachable(self, call: Call, ticket: _Ticket, i: int, exc: Exception) -> Grant:
        """The store of *ticket*'s *i*-th limit failed: refuse (``fail_closed``), or let the call through unlimited."""
        hold = ticket.holds[i]
        lim = hold.limiter
        _store_error(call, "acquire", exc, limiter=lim.label, on_store_error=lim.on_store_error)
        if lim.on_store_error == "fail_open":
            ticket.holds[i] = hold._replace(cells=[], per_token=0.0)  # nothing held there: nothing to correct
            return _OPEN
        self._give_back(call, ticket.holds[:i])
        msg = f"ratelimit {lim.label!r}: refused before sending; its store cannot be reached ({type(exc).__name__}: {exc}); on_store_error='fail_closed'"
        raise RateLimited(msg, limiter=lim.label or "", key=hold.key, limit="store", wait=math.inf, max_wait=self._limit(hold)) from exc

    # -- after the call -----------------------------------------------------------

    def _used(self, call: Call, ticket: _Ticket, exc: BaseException | None) -> int | None:
        """Tokens the call's attempt(s) used, or None to keep the estimate (no usage reported)."""
        plain = call.plain_usage(ticket.n0)
        usages: list[Usage | None] = (
            [u for u, _, _ in plain] if plain is not None else [a.usage for a in call.record.attempts[ticket.n0 :]]
        )
        if not usages:
            return 0  # nothing was sent
        if any(u is None for u in usages):
            if exc is not None and providers.classify(exc).kind is ErrorKind.RATE_LIMITED:
                return 0  # refused by the provider: no tokens
            return None
        return sum(u.total_tokens for u in usages if u is not None)

    def _corrections(self, call: Call, ticket: _Ticket, exc: BaseException | None) -> list[tuple[RateLimitStore, list[tuple[str, float]]]]:
        """The TAT moves that replace *ticket*'s token reservation with the real usage (once)."""
        if not ticket.open:
            return []
        ticket.open = False
        if not ticket.tokens and not any(h.per_token for h in ticket.holds):
            return []
        used = self._used(call, ticket, exc)
        if used is None or used == ticket.tokens:
            return []
        delta = used - ticket.tokens
        return [(h.limiter._store, [(h.cells[-1][0], delta * h.per_token)]) for h in ticket.holds if h.per_token]

    def _pauses(self, ticket: _Ticket, result: Any, exc: BaseException | None) -> list[tuple[RateLimitStore, list[str], float]]:
        """What the provider said: a 429's pause (and a slower rate), or an exhausted limit's reset read from *result*."""
        pause: float | None = None
        if exc is not None:
            info = providers.classify(exc)
            if info.kind is not ErrorKind.RATE_LIMITED:
                return []
            pause = _PAUSE_429 if info.retry_after is None else info.retry_after
            until = _clock.now() + _SLOW_FOR
            for h in ticket.holds:
                if h.limiter.backoff:
                    h.limiter._slow[h.key] = until
        else:
            if not isinstance(result, _StreamBase) and not _may_carry_headers(type(result)):
                return []  # (a guarded SDK stream passes on `.response`, the HTTP response it came in)
            h_ = lower_headers(headers_of(result))
            if not h_:
                return []
            pause = retry_after_lower(h_, _clock.wall())
        if not pause:
            return []
        return [(h.limiter._store, [n for n, _ in h.cells], pause) for h in ticket.holds if h.limiter.backoff]

    def _finish(self, call: Call, ticket: _Ticket, result: Any, exc: BaseException | None) -> None:
        if not ticket.tokens and exc is None and not _may_carry_headers(type(result)):
            return  # nothing to correct, nothing the provider said: the success path of an rpm limit
        for store, cells in self._corrections(call, ticket, exc):
            try:
                store.adjust(cells)
            except Exception as error:  # noqa: BLE001 - the call is done: a store outage must not lose its result
                _store_error(call, "correct", error)
        for store, names, pause in self._pauses(ticket, result, exc):
            try:
                store.push(names, pause)
            except Exception as error:  # noqa: BLE001 - as above
                _store_error(call, "backoff", error)

    async def _afinish(self, call: Call, ticket: _Ticket, result: Any, exc: BaseException | None) -> None:
        for store, cells in self._corrections(call, ticket, exc):
            try:
                await store.aadjust(cells)
            except Exception as error:  # noqa: BLE001 - the call is done: a store outage must not lose its result
                _store_error(call, "correct", error)
        for store, names, pause in self._pauses(ticket, result, exc):
            try:
                await store.apush(names, pause)
            except Exception as error:  # noqa: BLE001 - as above
                _store_error(call, "backoff", error)

    def _watch(self, call: Call, ticket: _Ticket, result: _StreamBase) -> _StreamBase:
        """A stream keeps its reservation until it ends, however it ends."""
        finish = self._finish

        def hook(outcome: Any, exc: BaseException | None) -> None:  # noqa: ARG001
            finish(call, ticket, None, exc if isinstance(exc, Exception) else None)

        result.on_finish(hook)
        for store, names, pause in self._pauses(ticket, result, None):  # its headers came before its chunks
            try:
                store.push(names, pause)
            except Exception as error:  # noqa: BLE001 - the stream is the caller's: a store outage must not lose it
                _store_error(call, "backoff", error)
        return result

    # -- the hooks (`a...`: the same, awaiting the store and the sleep) ------------

    def _take(self, call: Call, ticket: _Ticket) -> float:
        """Take *ticket*'s turn in every limit (or refuse, giving back what was taken): the wait."""
        wait = 0.0
        no_deadline = _DEADLINE.get() is None
        for i, hold in enumerate(ticket.holds):
            limit = hold.limiter._wait_limit if no_deadline else self._limit(hold)
            try:
                grant = hold.limiter._store.acquire(hold.cells, limit)
            except Exception as exc:  # noqa: BLE001 - any store failure: on_store_error decides
                grant = self._unreachable(call, ticket, i, exc)
            if not grant[0]:  # `Grant.admitted`
                self._give_back(call, ticket.holds[:i])
                raise self._refused(call, ticket, i, grant, limit)
            if grant[1] > wait:  # noqa: PLR1730 - a comparison costs less than a call of max()
                wait = grant[1]
        return wait

    async def _atake(self, call: Call, ticket: _Ticket) -> float:
        """`_take` awaiting the stores."""
        wait = 0.0
        for i, hold in enumerate(ticket.holds):
            limit = self._limit(hold)
            try:
                grant = await hold.limiter._store.aacquire(hold.cells, limit)
            except Exception as exc:  # noqa: BLE001 - any store failure: on_store_error decides
                grant = self._unreachable(call, ticket, i, exc)
            if not grant[0]:  # `Grant.admitted`
                self._give_back(call, ticket.holds[:i])
                raise self._refused(call, ticket, i, grant, limit)
            if grant[1] > wait:  # noqa: PLR1730 - a comparison costs less than a call of max()
                wait = grant[1]
        return wait

    def enter(self, call: Call) -> _Ticket | None:
        """Take the call's turn in every limit that applies and sleep until it (or refuse at once)."""
        ticket = self._plan(call)
        if ticket is None:
            return None
        wait = self._take(call, ticket)
        if wait > 0:
            try:
                _clock.get_clock().sleep(wait)
            except BaseException:
                self._give_back(call, ticket.holds)
                raise
            self._waited(call, ticket, wait)
        return ticket

    async def aenter(self, call: Call) -> _Ticket | None:
        """`enter` for a call on an event loop."""
        ticket = self._plan(call)
        if ticket is None:
            return None
        wait = self._take(call, ticket) if ticket.local else await self._atake(call, ticket)
        if wait > 0:
            try:
                await _clock.get_clock().asleep(wait)
            except BaseException:
                self._give_back(call, ticket.holds)  # sync: a cancelled task may not await again
                raise
            self._waited(call, ticket, wait)
        return ticket

    def leave(self, call: Call, ticket: _Ticket | None, result: Any) -> Any:
        """Correct the token reservation with the real usage (a stream: when it ends); read the provider's headers."""
        if ticket is None:
            return result
        if isinstance(result, _StreamBase):
            return self._watch(call, ticket, result)
        self._finish(call, ticket, result, None)
        return result

    async def aleave(self, call: Call, ticket: _Ticket | None, result: Any) -> Any:
        """`leave` for a call on an event loop."""
        if ticket is None:
            return result
        if isinstance(result, _StreamBase):
            return self._watch(call, ticket, result)
        if ticket.local:
            self._finish(call, ticket, result, None)
        else:
            await self._afinish(call, ticket, result, None)
        return result

    def fail(self, call: Call, ticket: _Ticket | None, exc: BaseException) -> None:
        """Correct the reservation with what the failed attempt used; a 429 holds the key and slows it."""
        if ticket is not None:
            self._finish(call, ticket, None, exc if isinstance(exc, Exception) else None)

    async def afail(self, call: Call, ticket: _Ticket | None, exc: BaseException) -> None:
        """`fail` for a call on an event loop."""
        if ticket is not None and ticket.local:
            self._finish(call, ticket, None, exc if isinstance(exc, Exception) else None)
        elif ticket is not None:
            await self._afinish(call, ticket, None, exc if isinstance(exc, Exception) else None)


@overload
def ratelimit(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def ratelimit(
    *,
    rpm: float | None = None,
    tpm: float | None = None,
    key: str | Callable[..., Any] | None = None,
    max_wait: float | None = 60.0,
    store: Any = None,
    max_output: int | None = None,
    estimate: Callable[..., Any] | None = None,
    backoff: bool = True,
    name: str | None = None,
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
) -> RateLimit: ...


def ratelimit(
    fn: Callable[P, R] | None = None,
    /,
    *,
    rpm: float | None = None,
    tpm: float | None = None,
    key: str | Callable[..., Any] | None = None,
    max_wait: float | None = 60.0,
    store: Any = None,
    max_output: int | None = None,
    estimate: Callable[..., Any] | None = None,
    backoff: bool = True,
    name: str | None = None,
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
) -> Callable[P, R] | RateLimit:
    """Requests (*rpm*) and tokens (*tpm*) per minute, as a decorator or a ``with`` scope.

    Callers past the rate wait their turn, in the order they came; one whose
    turn is more than *max_wait* seconds away (``None``: no limit; ``0``:
    never wait) is refused at once with `RateLimited`, nothing sent. *key*:
    a string or a callable of the call's arguments by name, one limit per
    key. *store*: a `RateLimitStore`, a ``redis://`` URL or a redis-py
    client (default: in memory). *max_output*, *estimate*: the output cap of
    a function without a ``max_tokens``-like argument, or the whole token
    estimate (``(input_tokens, max_output_tokens)``), for *tpm*. *backoff*:
    slow down on the provider's 429s and exhausted-limit headers. *name*:
    the limit's name (the same in every process sharing a store).
    *on_store_error*: when the store cannot be reached, ``"fail_closed"``
    refuses the call with `RateLimited` (the store's error its cause),
    ``"fail_open"`` lets it through unlimited. See the module documentation.

    ``@lg.ratelimit`` bare adds no limit: the function obeys the active
    ``with lg.ratelimit(...)`` scopes.
    """
    limiter = RateLimit(
        rpm=rpm, tpm=tpm, key=key, max_wait=max_wait, store=store,
        max_output=max_output, estimate=estimate, backoff=backoff, name=name, on_store_error=on_store_error,
    )
    if fn is None:
        return limiter
    return limiter(fn)

