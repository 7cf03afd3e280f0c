"""`cache`: identical requests are answered once, and never with the wrong answer.

The key is the SHA-256 of a canonical form of the **whole** request, because
caches keyed too narrowly serve wrong answers (LiteLLM #42400 left provider
params out, instructor #2524 the hoisted system prompt, GPTCache #526/#527
everything but the last user message and the model):

every argument bound to its name, normalised, with the function's identity and
code; transport-only arguments (`TRANSPORT`) and a method's instance left out
unless ``include=`` names them; ``exclude=`` leaves out more; ``key=``
replaces the arguments with what it returns. `llmguard._cache_key` says
exactly what goes in.

Single flight: concurrent identical misses make one upstream call. Threads
wait on an `threading.Event`, asyncio tasks on a future of their own loop
(cachetools can do neither for coroutines: #92, #137; nor did it stop a
stampede before 6.0: #294). No lock is held while user code runs. The
waiters get the leader's value, or the provider's exception (which is not
cached; each waiter raises its own copy, caused by the leader's, so tracebacks
of different threads never mix). What belongs to the leader's own context rather than to the
request lets them try again: its cancellation, its deadline (a
`TimeoutError`, `GuardTimeout`), any other llmguard error (its budget, its
rate limit...), and a result that is not stored (``cache_if=`` refused it,
or a fallback produced it). A caller never waits for a
call its own thread or task is making (that would deadlock). Streams are not
single-flighted: a waiter would get its first chunk only when the whole leader
stream had been read, at the pace of another caller. With a Redis store the
first process to miss also takes a short lock (see `llmguard.stores.cache`).

Hits make no attempt: the record says ``cache="hit"``, nothing is spent, and
``record.saved_usd`` is what the stored usage costs at today's prices (also
added to `cache_info`); the stored usage is ``record.extra["cached_usage"]``.
Errors, results ``cache_if=`` refuses, results a ``fallback`` produced, and
streams that did not complete are never stored. A store that fails (Redis
down) or an embedder that fails costs the cache, never the call: the call
goes through (``cache="bypass"``) and ``llmguard.cache.failed`` says why.

Counts and clearing are `cache_info(fn)` and `cache_clear(fn)`, functions
rather than ``fn.cache_info()``: the decorated function is a wrapt proxy,
which forwards attribute writes to the function it wraps (so two caches on
one function would share the attribute), and per-call state never lives on
the function object anyway.
"""

from __future__ import annotations

import asyncio
import copy
import threading

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, overload

from . import _clock, _events, prices
from ._cache_key import NO_INSTANCE, TRANSPORT, Keys, check_options
from ._context import remaining
from ._facts import ASYNC, ASYNCGEN, GEN
from ._flight import (
    Flight,
    Flights,
    Steps,
    adrive,
    drive,
    io,
    lock_shared,
    own_copy,
    shared_error,
    unlock,
)
from ._record import Outcome
from ._runner import Answer, Guard, layers_of
from ._semantic import Query, Semantic, split, unit
from ._stream import AsyncGuardedStream, GuardedStream, _StreamBase
from .errors import GuardTimeout
from .stores.cache import (
    CacheEntry,
    CacheStore,
    Candidate,
    MemoryCacheStore,
    Unstorable,
    store_from,
)


if TYPE_CHECKING:
    from ._binder import Binder
    from ._call import Call
    from ._record import CallRecord, Usage


__all__ = ["TRANSPORT", "CacheInfo", "CacheLayer", "cache", "cache_clear", "cache_info"]

P = ParamSpec("P")
R = TypeVar("R")

_DEFAULT_TTL: Final = 3600.0
_DEFAULT_MAXSIZE: Final = 1024
_STREAM_SHAPES: Final = frozenset({GEN, ASYNCGEN})


# -- the guard ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """What one cached function's cache has done (this process's counts)."""

    hits: int
    misses: int
    maxsize: int | None  # None: bounded by the store (Redis maxmemory)
    currsize: int  # live entries of this function
    saved_usd: float  # what the hits did not spend, at the prices of each hit
    unpriced_hits: int  # hits whose saving could not be priced (unknown model/usage)


class CacheLayer(Guard):
    """The `cache` guard; see the module documentation."""

    name = "cache"

    def __init__(
        self,
        *,
        ttl: float | None = _DEFAULT_TTL,
        maxsize: int = _DEFAULT_MAXSIZE,
        key: Callable[..., Any] | None = None,
        store: Any = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        semantic: Semantic | None = None,
        cache_streams: bool = True,
        cache_if: Callable[[Any], bool] | None = None,
    ) -> None:
        include_set, exclude_set = check_options(
            ttl, maxsize, key, include, exclude, semantic, cache_streams, cache_if
        )
        # A ttl past what a store can count in milliseconds is ~31 years (`_clock.MAX_SECONDS`).
        self.ttl = None if ttl is None else min(float(ttl), _clock.MAX_SECONDS)
        self.maxsize = maxsize
        self.key = key
        self.include = include_set
        self.exclude = exclude_set
        self.semantic = semantic
        self.cache_streams = cache_streams
        self.cache_if = cache_if
        self._shared_store = store_from(store)
        # Per function (set by `for_function`):
        self.store: CacheStore = self._shared_store or MemoryCacheStore(maxsize)
        self._keys: Keys | None = None
        self._fn_label = ""
        self._prefix = ""
        self._sem_param = ""
        self._shape = ""
        self._streams_seen = False
        self._lock = threading.Lock()  # the counters
        self._flights = Flights()
        self._tasks: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0
        self.saved_usd = 0.0
        self.unpriced_hits = 0

    def settings(self) -> dict[str, Any]:
        """The guard's configuration, for `llmguard.describe`."""
        out: dict[str, Any] = {
            "ttl": self.ttl,
            "maxsize": self.maxsize,
            "store": self.store.describe(),
            "cache_streams": self.cache_streams,
        }
        if self.key is not None:
            out["key"] = getattr(self.key, "__qualname__", repr(self.key))
        if self.include:
            out["include"] = sorted(self.include)
        if self.exclude:
            out["exclude"] = sorted(self.exclude)
        if self.semantic is not None:
            out["semantic_threshold"] = self.semantic.threshold
        if self.cache_if is not None:
            out["cache_if"] = getattr(self.cache_if, "__qualname__", repr(self.cache_if))
        return out

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> Guard:
        """A copy with this function's key maker, store, flights and counters."""
        layer = copy.copy(self)
        layer.store = self._shared_store or MemoryCacheStore(self.maxsize)
        layer._lock = threading.Lock()
        layer._flights = Flights()
        layer._tasks = set()
        layer._shape = shape
        keys = layer._keys = Keys(
            fn,
            binder,
            key=self.key,
            include=self.include,
            exclude=self.exclude,
            requests=self.semantic is not None,
        )
        layer._fn_label = keys.label
        layer._prefix = keys.prefix
        if self.semantic is not None:
            if self.semantic.is_async and shape not in (ASYNC, ASYNCGEN):
                msg = f"cache(semantic=Semantic(embed=<async>)) needs an async function; {layer._fn_label}() is not"
                raise TypeError(msg)
            layer._sem_param = self.semantic.param_for(fn, keys.names, keys.takes_any_keyword)
        layer.hits = layer.misses = layer.unpriced_hits = 0
        layer.saved_usd = 0.0
        return layer

    # -- the hooks: one decision core, its I/O blocking or awaited -------------
    #
    # `_look` answers a hit from a store in memory in place; everything with
    # I/O (a store that blocks, semantic lookups, waiting for a leader, the
    # cross-process lock, storing) is `Steps`, which `drive` runs in a thread
    # and `adrive` awaits. The state between the hooks is a `_Miss`, or None
    # when the call goes through uncached.

    def enter(self, call: Call) -> Any:
        """Answer from the cache, or note the miss (leading its flight, or waiting for it)."""
        looked = self._look(call)
        return looked if looked is None or isinstance(looked, Answer) else drive(looked)

    async def aenter(self, call: Call) -> Any:
        """`enter` for calls on an event loop."""
        looked = self._look(call)
        return looked if looked is None or isinstance(looked, Answer) else await adrive(looked)

    def leave(self, call: Call, state: _Miss | None, result: Any) -> Any:
        """Keep the answer (and hand it to the flight's waiters)."""
        return result if state is None else drive(self._keep(call, state, result))

    async def aleave(self, call: Call, state: _Miss | None, result: Any) -> Any:
        """`leave` for calls on an event loop."""
        return result if state is None else await adrive(self._keep(call, state, result))

    def fail(self, call: Call, state: _Miss | None, exc: BaseException) -> None:  # noqa: ARG002
        """The call raised: land the flight (its waiters get the provider's error, or try again)."""
        if state is not None and state.flight is not None:
            drive(self._give_up(state, exc))

    async def afail(self, call: Call, state: _Miss | None, exc: BaseException) -> None:  # noqa: ARG002
        """`fail` for calls on an event loop."""
        if state is not None and state.flight is not None:
            await adrive(self._give_up(state, exc))

    def _look(self, call: Call) -> Answer | Steps | None:
        """The call's key, and from a store in memory its answer; else the steps that look further."""
        made = self._keys.of(call.instance, call.args, call.kwargs)  # type: ignore[union-attr]
        if made is None:  # the arguments do not bind: the function raises its own TypeError
            return None
        store = self.store
        if store.blocking:
            return self._miss(call, made, looked=False)
        try:
            entry = store.get(made[0])
        except Exception as exc:  # noqa: BLE001 - fail open: the call goes through uncached
            self._bypass(call, exc)
            return None
        if entry is not None:
            return Answer(self._hit(call, entry))
        return self._miss(call, made, looked=True)

    def _miss(self, call: Call, made: tuple[str, dict[str, Any] | None], *, looked: bool) -> Steps:
        """Look further (the store if not *looked* yet, semantic candidates), then lead or wait."""
        key, request = made
        store = self.store
        if not looked:
            try:
                entry = yield io(store.get, store.aget, key)
            except Exception as exc:  # noqa: BLE001 - fail open: the call goes through uncached
                self._bypass(call, exc)
                return None
            if entry is not None:
                return Answer(self._hit(call, entry))
        sem = None
        if request is not None:  # semantic mode
            sem = yield from self._semantic_query(call.record, request)
            if sem is not None:
                found = yield from self._semantic_find(call.record, sem)
                if found is not None:
                    return Answer(self._hit(call, *found))
        miss = _Miss(key, sem)
        if self._shape not in _STREAM_SHAPES and not self._streams_seen:
            got = yield from self._follow(call, miss)
            if got is not None:
                return got  # the leader's answer, or one found on looking again
        try:
            self._missed(call.record, sem)
        except BaseException:
            if miss.flight is not None:  # never strand the waiters
                self._flights.land(key, miss.flight)
            raise
        return miss

    def _follow(self, call: Call, miss: _Miss) -> Steps:
        """Lead the flight for the key (None, *miss* holds it), or wait and return its leader's `Answer`.

        None without a flight: make the call alone (this thread or task is
        already making it, or there is no task to tell).
        """
        owner = asyncio.current_task() if call.is_async else threading.get_ident()
        if owner is None:
            return None
        key, flights = miss.key, self._flights
        while True:
            flight, leading = flights.join(key, owner)
            if leading:
                return (yield from self._lead(call, miss, flight))
            if flight.owner == owner:  # never wait for a call this thread or task is making
                return None
            started = _clock.now()
            if not (yield io(flights.wait, flights.await_landed, flight, remaining())):
                raise self._deadline_passed(_clock.now() - started)
            if flight.entry is not None:
                call.record.extra["cache_coalesced"] = True
                return Answer(self._hit(call, flight.entry))
            error = flight.error
            if error is not None:
                mine = own_copy(error)
                if mine is error:
                    raise error
                raise mine from error  # the leader's traceback, then this waiter's
            # The leader gave up (its own deadline, a result not kept...): again.

    def _lead(self, call: Call, miss: _Miss, flight: Flight) -> Steps:
        """Take *flight*: look once more (the store, the other processes' lock) before calling."""
        store, key = self.store, miss.key
        miss.flight = flight
        try:
            try:  # a flight may have landed between our miss and our join
                entry = (yield io(store.get, store.aget, key)) if store.blocking else store.get(key)
            except Exception:  # noqa: BLE001 - the first get worked; a second outage is the call's to survive
                entry = None
            if entry is None and store.shared:
                miss.token, entry = yield from lock_shared(store, key)
        except BaseException:  # cancelled, interrupted: the waiters try again
            self._flights.land(key, flight)
            raise
        if entry is not None:
            self._flights.land(key, flight, entry=entry)
            return Answer(self._hit(call, entry))
        return None

    def _keep(self, call: Call, miss: _Miss, result: Any) -> Steps:
        """Store *result* (a stream once it completes) and land the flight with it."""
        flight, key = miss.flight, miss.key
        entry = None
        try:
            if isinstance(result, _StreamBase):
                if flight is not None:
                    self._streams_seen = True  # a stream is its caller's to read: waiters call themselves
                return self._keep_stream(call, key, result, miss.sem)
            if (why := self._refusal(call, result)) is not None:
                self._skipped(call.record, why)  # not kept: not an answer to share either
                return result
            entry = self._entry_for(call.record, result, None)
            yield self._put(call.record, key, entry, miss.sem)
            return result
        finally:
            # Landed first: a cancel arriving while the unlock is awaited must
            # not strand this process's waiters. Unlocked only once a plain
            # answer is stored: a process that sees the lock gone must find it.
            if flight is not None:
                self._flights.land(key, flight, entry=entry)
            if miss.token is not None:
                yield from unlock(self.store, key, miss.token)

    def _give_up(self, miss: _Miss, exc: BaseException) -> Steps:
        """Land the flight with the provider's *exc* for the waiters (or none: they try again); unlock."""
        error = shared_error(exc) if isinstance(exc, Exception) else None
        self._flights.land(miss.key, miss.flight, error=error)  # type: ignore[arg-type]
        if miss.token is not None:
            yield from unlock(self.store, miss.key, miss.token)

    def _bypass(self, call: Call, exc: Exception) -> None:
        call.record.cache = "bypass"
        self._failed(call.record, "store", exc)

    def _deadline_passed(self, waited: float) -> GuardTimeout:
        msg = (
            f"cache: the deadline passed after {waited:.3g}s waiting for an identical call "
            f"of {self._fn_label}() already in flight"
        )
        return GuardTimeout(msg, limit="total", seconds=waited)

    # -- semantic ------------------------------------------------------------

    def _semantic_query(self, record: CallRecord, request: dict[str, Any]) -> Steps:
        """The semantic side of a miss (a `Query`): its namespace and the embedded user message."""
        semantic = self.semantic
        assert semantic is not None  # noqa: S101 - checked by the caller
        parts = split(request, self._sem_param)
        if parts is None:
            return None
        text, rest = parts
        try:
            vector = unit((yield io(semantic.embed, semantic.aembed, text)))
        except Exception as exc:  # noqa: BLE001 - an embedder outage leaves the exact cache working
            self._failed(record, "embed", exc)
            return None
        return Query(self._prefix + "sem:" + self._keys.digest(rest), text, vector)  # type: ignore[union-attr]

    def _semantic_find(self, record: CallRecord, sem: Query) -> Steps:
        """The best stored answer for *sem* and its score, or None."""
        store = self.store
        try:
            candidates = yield io(store.candidates, store.acandidates, sem.namespace)
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
            return None
        ranked = self.semantic.matches(sem, candidates)  # type: ignore[union-attr] # verify= is the user's: its errors are theirs
        try:
            for candidate, score in ranked:
                entry = yield io(store.get, store.aget, candidate.key)
                if entry is not None:
                    return entry, score
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
        return None

    # -- hits ----------------------------------------------------------------

    def _hit(self, call: Call, entry: CacheEntry, similarity: float | None = None) -> Any:
        """Answer *call* with *entry*: counted, with what it saved, on the record."""
        usage = entry.usage
        saved = None if usage is None else prices.cost_of(usage, entry.model, entry.provider)
        with self._lock:
            self.hits += 1
            if saved is None:
                self.unpriced_hits += 1
            else:
                self.saved_usd += saved
        if entry.chunks is None and not call.recorded and not _events.listening():
            # Nobody reads the record yet: note the facts for when someone does.
            call.note(cache="hit", saved_usd=saved, extra={"cached_usage": usage})
            if entry.provider:
                call.note(provider=entry.provider)
            if similarity is not None:
                call.note(cache_similarity=similarity)
            return entry.value
        record = call.record
        record.cache = "hit"
        record.saved_usd = saved
        record.extra["cached_usage"] = usage
        if entry.provider and record.provider is None:
            record.provider = entry.provider
        if similarity is not None:
            record.cache_similarity = similarity
            if record.span is not None:
                record.span.set_attribute("llmguard.cache.similarity", similarity)
        if _events.listening(record):
            _events.emit(
                _events.CACHE_HIT,
                record,
                saved_usd=saved,
                similarity=similarity,
                model=entry.model,
                stream=entry.chunks is not None,
            )
        chunks = entry.chunks
        if chunks is None:
            return entry.value
        if self._shape in (ASYNC, ASYNCGEN):
            return AsyncGuardedStream(source=_Replay(chunks), record=record)
        return GuardedStream(source=iter(chunks), record=record)

    def _missed(self, record: CallRecord, sem: Query | None) -> None:
        record.cache = "miss"
        similarity = sem.best if sem is not None else None
        if similarity is not None:
            record.cache_similarity = similarity  # the best that fell short
        with self._lock:
            self.misses += 1
        if _events.listening(record):
            _events.emit(_events.CACHE_MISS, record, similarity=similarity)

    def _failed(self, record: CallRecord, stage: str, exc: BaseException) -> None:
        _events.emit(
            _events.CACHE_FAILED, record, level="warning", stage=stage, error=exc, detail=str(exc)
        )

    # -- storing -------------------------------------------------------------

    def _entry_for(self, record: CallRecord, value: Any, chunks: tuple[Any, ...] | None) -> CacheEntry:
        att = record.attempt
        usage: Usage | None = None
        model = provider = None
        if att is not None:
            usage, model, provider = att.usage, att.response_model or att.model, att.provider
        else:  # an inner cache answered
            usage = record.extra.get("cached_usage")
        return CacheEntry(
            value=value,
            chunks=chunks,
            usage=usage,
            model=model or record.request_model,
            provider=provider,
            created_at=_clock.get_clock().time(),
            ttl=self.ttl,
        )

    def _refusal(self, call: Call, result: Any) -> str | None:
        """Why *result* must not be stored, or None."""
        record = call.record
        if record.fallback_target is not None:
            return "a fallback answered"
        if (why := call.rejected(result, self)) is not None:  # validate above will not take it
            return why
        if self.cache_if is not None:
            try:
                keep = self.cache_if(result)
            except Exception as exc:  # noqa: BLE001 - the answer was paid for: return it, unkept
                self._failed(record, "cache_if", exc)
                return "cache_if raised"
            if not keep:
                return "cache_if refused it"
        return None

    def _skipped(self, record: CallRecord, reason: str) -> None:
        if _events.listening(record):
            _events.emit(_events.CACHE_SKIPPED, record, reason=reason)

    def _store(self, record: CallRecord, key: str, entry: CacheEntry, sem: Query | None) -> None:
        try:
            self.store.set(key, entry)
            if sem is not None:
                self.store.add_candidate(
                    sem.namespace, Candidate(key, sem.vector, sem.text), self.ttl, self.maxsize
                )
        except Unstorable as exc:
            self._skipped(record, f"unstorable: {exc}")
        except Exception as exc:  # noqa: BLE001 - a store outage must not fail the call
            self._failed(record, "store", exc)

    async def _store_off_loop(self, record: CallRecord, key: str, entry: CacheEntry, sem: Query | None) -> None:
        """`_store` from an event loop, in a worker thread (the store blocks)."""
        await asyncio.to_thread(self._store, record, key, entry, sem)

    def _put(self, record: CallRecord, key: str, entry: CacheEntry, sem: Query | None) -> Any:
        """`_store` as a step: in a worker thread when awaited and the store blocks."""
        off_loop = self._store_off_loop if self.store.blocking else None
        return io(self._store, off_loop, record, key, entry, sem)

    def _keep_stream(self, call: Call, key: str, stream: _StreamBase, sem: Query | None) -> Any:
        """Record *stream*'s chunks as they pass; store them if it completes."""
        record = call.record
        if not self.cache_streams:
            self._skipped(record, "cache_streams=False")
            return stream
        if stream._innermost()._is_managed:
            # A stream manager is read through helpers we don't see
            # (text_stream, get_final_message) and cannot be replayed as one.
            self._skipped(record, "a stream manager is not cached")
            return stream
        chunks: list[Any] = []
        stream.on_chunk(chunks.append)
        is_async = isinstance(stream, AsyncGuardedStream)

        def finished(outcome: Outcome, _exc: BaseException | None) -> None:
            if outcome is not Outcome.OK:
                self._skipped(record, f"the stream ended {outcome.value}")
                return
            kept = tuple(chunks)
            if (why := self._refusal(call, kept)) is not None:
                self._skipped(record, why)
                return
            entry = self._entry_for(record, None, kept)
            if is_async and self.store.blocking:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None:
                    task = loop.create_task(self._store_off_loop(record, key, entry, sem))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    return
            self._store(record, key, entry, sem)

        stream.on_finish(finished)
        return stream

    # -- info ----------------------------------------------------------------

    def key_for(self, *args: Any, **kwargs: Any) -> str | None:
        """The key a call with these arguments would have (None: it would not bind).

        For methods pass the arguments after ``self``; the instance is not
        part of the key unless ``include=["self"]`` (then pass ``_instance=``).
        """
        keys = self._keys
        if keys is None:
            return None
        instance = kwargs.pop("_instance", None)
        if instance is None and keys.is_method:
            instance = NO_INSTANCE  # a method's arguments, after its (unkeyed) instance
        made = keys.of(instance, args, kwargs)
        return None if made is None else made[0]

    def info(self) -> CacheInfo:
        """Hits, misses, size and savings of this function's cache."""
        try:
            size = self.store.size(self._prefix)
        except Exception:  # noqa: BLE001 - the counts are still worth having
            size = -1
        with self._lock:
            return CacheInfo(
                hits=self.hits,
                misses=self.misses,
                maxsize=self.store.maxsize if isinstance(self.store, MemoryCacheStore) else None,
                currsize=size,
                saved_usd=self.saved_usd,
                unpriced_hits=self.unpriced_hits,
            )

    def clear(self) -> None:
        """Forget this function's entries and reset its counters."""
        self.store.clear(self._prefix)
        with self._lock:
            self.hits = self.misses = self.unpriced_hits = 0
            self.saved_usd = 0.0


class _Miss:
    """A call the cache could not answer: what `leave` / `fail` need to keep or share its outcome."""

    __slots__ = ("flight", "key", "sem", "token")

    def __init__(self, key: str, sem: Query | None) -> None:
        self.key = key
        self.sem = sem
        self.flight: Flight | None = None  # led by this call: its waiters get the outcome
        self.token: str | None = None  # the cross-process lock this call holds


class _Replay:
    """An async iterator over stored chunks (a cached async stream)."""

    __slots__ = ("_it",)

    def __init__(self, chunks: tuple[Any, ...]) -> None:
        self._it = iter(chunks)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


# -- public API --------------------------------------------------------------


@overload
def cache(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def cache(
    *,
    ttl: float | None = ...,
    maxsize: int = ...,
    key: Callable[..., Any] | None = ...,
    store: Any = ...,
    include: Iterable[str] = ...,
    exclude: Iterable[str] = ...,
    semantic: Semantic | None = ...,
    cache_streams: bool = ...,
    cache_if: Callable[[Any], bool] | None = ...,
) -> CacheLayer: ...


def cache(
    fn: Callable[P, R] | None = None,
    /,
    *,
    ttl: float | None = _DEFAULT_TTL,
    maxsize: int = _DEFAULT_MAXSIZE,
    key: Callable[..., Any] | None = None,
    store: Any = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    semantic: Semantic | None = None,
    cache_streams: bool = True,
    cache_if: Callable[[Any], bool] | None = None,
) -> Callable[P, R] | CacheLayer:
    """Answer identical requests from a cache; see the module documentation.

    ``@lg.cache`` or ``@lg.cache(ttl=600, store="redis://...")``.

    *ttl* seconds an entry lives (None: until evicted); *maxsize* entries
    kept in memory per function (LRU; a ``store=`` given bounds itself, and
    *maxsize* then only caps the semantic candidates); *key* a callable of the call's
    arguments whose result replaces them in the key; *store* a ``redis://``
    URL, a redis-py client or a `llmguard.stores.cache.CacheStore`;
    *include* argument names to key on although they are normally left out
    (`TRANSPORT`, ``self``); *exclude* more argument names to leave out;
    *semantic* a `Semantic` for paraphrase matching; *cache_streams* False
    to pass streams through uncached; *cache_if* a predicate of the result
    (of the tuple of chunks, for a stream) that must be true to store it.
    """
    layer = CacheLayer(
        ttl=ttl,
        maxsize=maxsize,
        key=key,
        store=store,
        include=include,
        exclude=exclude,
        semantic=semantic,
        cache_streams=cache_streams,
        cache_if=cache_if,
    )
    if fn is not None:
        return layer(fn)
    return layer


def _layer_of(fn: object) -> CacheLayer:
    for layer in layers_of(fn):
        if isinstance(layer, CacheLayer):
            return layer
    label = getattr(fn, "__qualname__", None) or repr(fn)
    msg = f"{label} has no llmguard.cache guard"
    raise TypeError(msg)


def cache_info(fn: object) -> CacheInfo:
    """Hits, misses, size and money saved of the cache on *fn* (a guarded function)."""
    return _layer_of(fn).info()


def cache_clear(fn: object) -> None:
    """Forget every entry the cache on *fn* holds, and reset its counts."""
    _layer_of(fn).clear()
