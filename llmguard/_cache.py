"""`cache`: identical requests are answered once, and never with the wrong answer.

The key is the SHA-256 of a canonical form of the **whole** request, because
caches keyed too narrowly serve wrong answers (LiteLLM #42400 left provider
params out, instructor #2524 the hoisted system prompt, GPTCache #526/#527
everything but the last user message and the model):

* a key-schema version, the function's module and qualified name, and a
  fingerprint of its code (so editing a prompt hard-coded in the body, then
  redeploying, does not serve the old prompt's answers from Redis) and of the
  values its closure captured (so two closures made by one factory, say one
  per system prompt, never serve each other's answers from a shared store).
  Captured values are read once, when the function is decorated (a list
  mutated afterwards is keyed as it was then), and those with no canonical
  form (SDK clients, locks, other functions, modules) are skipped: a closure
  that differs only by such a value needs ``key=`` or its own store. Default
  values are keyed through the arguments they bind to;
* every argument bound to its parameter name, defaults applied, ``**kwargs``
  flattened in (so ``timeout=`` is found wherever it is passed);
* values normalised: dicts key-sorted, tuples as lists, pydantic models as
  their class and ``model_dump(mode="json")``, pydantic *classes* (a
  ``response_format=``) as their class and JSON schema, the SDKs' ``NOT_GIVEN``
  / ``omit`` sentinels dropped as if not passed, SDK clients dropped, bytes,
  sets, enums, dataclasses, dates and non-str dict keys tagged so that no two
  different requests share a form. Anything else is a `TypeError` naming the
  parameter, never a silent ``repr()``;
* transport-only arguments left out (`TRANSPORT`: ``timeout``,
  ``extra_headers``, ``extra_query``, ``stream_options``, API keys, clients,
  ``max_retries``...), and for methods the instance (``self``, whatever it
  is named; see `_binder`) too, unless ``include=`` names them (a
  classmethod's class is keyed by name unless excluded); ``exclude=``
  leaves out more; ``key=`` replaces the arguments with what it returns.

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

from . import _check, _clock, _events, prices
from ._cache_key import NO_INSTANCE, TRANSPORT, Keys
from ._context import remaining
from ._flight import Flight, Flights, alock_shared, lock_shared, own_copy, shared_error, unlock
from ._record import Outcome
from ._semantic import Query, Semantic, split, unit
from ._wrap import (
    ASYNC,
    ASYNCGEN,
    GEN,
    AsyncGuardedStream,
    GuardedStream,
    Layer,
    _StreamBase,
    layers_of,
)
from .errors import GuardTimeout
from .stores import is_redis_target, redis_client
from .stores.cache import (
    CacheEntry,
    CacheStore,
    Candidate,
    MemoryCacheStore,
    RedisCacheStore,
    Unstorable,
)


if TYPE_CHECKING:
    from ._binder import Binder
    from ._record import CallRecord, Usage
    from ._wrap import Call


__all__ = ["TRANSPORT", "CacheInfo", "CacheLayer", "cache", "cache_clear", "cache_info"]

P = ParamSpec("P")
R = TypeVar("R")

_DEFAULT_TTL: Final = 3600.0
_DEFAULT_MAXSIZE: Final = 1024


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


class CacheLayer(Layer):
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
        include_set, exclude_set = _check_options(
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
        self._shared_store = _store_from(store)
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

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> Layer:
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

    # -- hits ----------------------------------------------------------------

    def _counted_hit(self, entry: CacheEntry) -> float | None:
        """Count a hit on *entry*; what it saved (None: unpriced)."""
        usage = entry.usage
        saved = None if usage is None else prices.cost_of(usage, entry.model, entry.provider)
        with self._lock:
            self.hits += 1
            if saved is None:
                self.unpriced_hits += 1
            else:
                self.saved_usd += saved
        return saved

    def _hit(self, call: Call, entry: CacheEntry, similarity: float | None = None) -> Any:
        saved = self._counted_hit(entry)
        usage = entry.usage
        if not call.recorded and not _events.listening() and entry.chunks is None:
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

    def _refusal(self, record: CallRecord, result: Any) -> str | None:
        """Why *result* must not be stored, or None."""
        if record.fallback_target is not None:
            return "a fallback answered"
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

    async def _astore(self, record: CallRecord, key: str, entry: CacheEntry, sem: Query | None) -> None:
        try:
            await self.store.aset(key, entry)
            if sem is not None:
                await self.store.aadd_candidate(
                    sem.namespace, Candidate(key, sem.vector, sem.text), self.ttl, self.maxsize
                )
        except Unstorable as exc:
            self._skipped(record, f"unstorable: {exc}")
        except Exception as exc:  # noqa: BLE001 - a store outage must not fail the call
            self._failed(record, "store", exc)

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
            if (why := self._refusal(record, kept)) is not None:
                self._skipped(record, why)
                return
            entry = self._entry_for(record, None, kept)
            if is_async and self.store.blocking:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    loop = None
                if loop is not None:
                    task = loop.create_task(self._astore(record, key, entry, sem))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    return
            self._store(record, key, entry, sem)

        stream.on_finish(finished)
        return stream

    # -- flights -------------------------------------------------------------

    def _waited(self, call: Call, flight: Flight) -> Any:
        """What a waiter does once *flight* has landed: a hit, a raise, or _AGAIN."""
        if flight.entry is not None:
            call.record.extra["cache_coalesced"] = True
            return self._hit(call, flight.entry)
        error = flight.error
        if error is not None:
            mine = own_copy(error)
            if mine is error:
                raise error
            raise mine from error  # the leader's traceback, then this waiter's
        return _AGAIN

    def _deadline_passed(self, waited: float) -> GuardTimeout:
        msg = (
            f"cache: the deadline passed after {waited:.3g}s waiting for an identical call "
            f"of {self._fn_label}() already in flight"
        )
        return GuardTimeout(msg, limit="total", seconds=waited)

    def _key_of(self, call: Call) -> tuple[str, dict[str, Any] | None] | None:
        """The call's key, and its canonical request in semantic mode (see `Keys.of`)."""
        return self._keys.of(call.instance, call.args, call.kwargs)  # type: ignore[union-attr]

    def around(self, call: Call) -> Any:
        """Answer from the cache, or make the call once and keep its answer."""
        made = self._key_of(call)
        if made is None:
            return call.proceed()
        key, request = made
        try:
            entry = self.store.get(key)
        except Exception as exc:  # noqa: BLE001 - fail open: the call goes through uncached
            return self._bypass(call, exc)
        if entry is not None:
            return self._hit(call, entry)
        sem = None
        if request is not None:  # semantic mode
            sem = self._semantic_query(call.record, request)
            if sem is not None:
                found = self._semantic_find(call.record, sem)
                if found is not None:
                    return self._hit(call, *found)
        if self._shape == GEN or self._streams_seen:
            return self._call(call, key, sem)
        flight, got = self._follow(call, key)
        if flight is None:
            return self._call(call, key, sem) if got is _AGAIN else got
        return self._lead(call, key, sem, flight)

    def _follow(self, call: Call, key: str) -> tuple[Flight | None, Any]:
        """Lead the flight for *key* (``(flight, _AGAIN)``) or wait for its leader.

        A waiter gets ``(None, answer)``; ``(None, _AGAIN)`` means make the
        call without a flight (this thread is already making it).
        """
        owner = threading.get_ident()
        while True:
            flight, leading = self._flights.join(key, owner)
            if leading:
                return flight, _AGAIN
            if flight.owner == owner:  # never wait for a call this thread is making
                return None, _AGAIN
            started = _clock.now()
            if not self._flights.wait(flight, remaining()):
                raise self._deadline_passed(_clock.now() - started)
            got = self._waited(call, flight)
            if got is not _AGAIN:
                return None, got

    def _semantic_find(self, record: CallRecord, sem: Query) -> tuple[CacheEntry, float] | None:
        try:
            candidates = self.store.candidates(sem.namespace)
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
            return None
        ranked = self.semantic.matches(sem, candidates)  # type: ignore[union-attr]  # verify= is the user's: its errors are theirs
        try:
            for candidate, score in ranked:
                entry = self.store.get(candidate.key)
                if entry is not None:
                    return entry, score
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
        return None

    def _lead(self, call: Call, key: str, sem: Query | None, flight: Flight) -> Any:
        """Make the call for everyone waiting on *flight*; land it whatever happens."""
        token = None
        try:
            try:
                entry = self.store.get(key)  # a flight may have landed between our miss and our join
            except Exception:  # noqa: BLE001 - the first get worked; a second outage is the call's to survive
                entry = None
            if entry is not None:
                self._flights.land(key, flight, entry=entry)
                return self._hit(call, entry)
            if self.store.shared:
                token, entry = lock_shared(self.store, key)
                if entry is not None:
                    self._flights.land(key, flight, entry=entry)
                    return self._hit(call, entry)
            self._missed(call.record, sem)
            try:
                result = call.proceed()
            except Exception as exc:
                self._flights.land(key, flight, error=shared_error(exc))
                raise
            return self._landed(call, key, sem, flight, result)
        finally:
            if not flight.done:  # cancelled, interrupted, or a bug: the waiters try again
                self._flights.land(key, flight)
            # Unlocked only once a plain answer is stored: a process that sees
            # the lock gone must find the entry (see `_lock_shared`).
            if token is not None:
                unlock(self.store, key, token)

    def _landed(self, call: Call, key: str, sem: Query | None, flight: Flight, result: Any) -> Any:
        """Keep the leader's *result* and hand it to its waiters."""
        if isinstance(result, _StreamBase):
            self._streams_seen = True
            self._flights.land(key, flight)  # a stream is its caller's to read: waiters call themselves
            return self._keep_stream(call, key, result, sem)
        if (why := self._refusal(call.record, result)) is not None:
            self._skipped(call.record, why)
            self._flights.land(key, flight)  # not kept: not an answer to share either
            return result
        entry = self._entry_for(call.record, result, None)
        self._store(call.record, key, entry, sem)
        self._flights.land(key, flight, entry=entry)
        return result

    def _call(self, call: Call, key: str, sem: Query | None) -> Any:
        """A miss without single flight (streams, re-entrant calls)."""
        self._missed(call.record, sem)
        result = call.proceed()
        if isinstance(result, _StreamBase):
            return self._keep_stream(call, key, result, sem)
        if (why := self._refusal(call.record, result)) is None:
            self._store(call.record, key, self._entry_for(call.record, result, None), sem)
        else:
            self._skipped(call.record, why)
        return result

    def _bypass(self, call: Call, exc: Exception) -> Any:
        call.record.cache = "bypass"
        self._failed(call.record, "store", exc)
        return call.proceed()

    # -- async ---------------------------------------------------------------

    async def around_async(self, call: Call) -> Any:
        """`around` for async functions and async generators."""
        made = self._key_of(call)
        if made is None:
            return await call.proceed_async()
        key, request = made
        store = self.store
        try:
            entry = await store.aget(key) if store.blocking else store.get(key)
        except Exception as exc:  # noqa: BLE001 - fail open: the call goes through uncached
            call.record.cache = "bypass"
            self._failed(call.record, "store", exc)
            return await call.proceed_async()
        if entry is not None:
            return self._hit(call, entry)
        sem = None
        if request is not None:  # semantic mode
            sem = await self._asemantic_query(call.record, request)
            if sem is not None:
                found = await self._asemantic_find(call.record, sem)
                if found is not None:
                    return self._hit(call, *found)
        if self._shape == ASYNCGEN or self._streams_seen:
            return await self._acall(call, key, sem)
        flight, got = await self._afollow(call, key)
        if flight is None:
            return await self._acall(call, key, sem) if got is _AGAIN else got
        return await self._alead(call, key, sem, flight)

    async def _afollow(self, call: Call, key: str) -> tuple[Flight | None, Any]:
        """`_follow` for tasks: waiters await a future on their own loop."""
        owner = asyncio.current_task()
        if owner is None:
            return None, _AGAIN
        while True:
            flight, leading = self._flights.join(key, owner)
            if leading:
                return flight, _AGAIN
            if flight.owner is owner:  # never wait for a call this task is making
                return None, _AGAIN
            started = _clock.now()
            if not await self._flights.await_landed(flight, remaining()):
                raise self._deadline_passed(_clock.now() - started)
            got = self._waited(call, flight)
            if got is not _AGAIN:
                return None, got

    async def _asemantic_find(self, record: CallRecord, sem: Query) -> tuple[CacheEntry, float] | None:
        store = self.store
        try:
            candidates = await store.acandidates(sem.namespace)
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
            return None
        ranked = self.semantic.matches(sem, candidates)  # type: ignore[union-attr]  # verify= is the user's: its errors are theirs
        try:
            for candidate, score in ranked:
                entry = await store.aget(candidate.key)
                if entry is not None:
                    return entry, score
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
        return None

    async def _alead(self, call: Call, key: str, sem: Query | None, flight: Flight) -> Any:
        """`_lead` for tasks."""
        store = self.store
        token = None
        try:
            try:  # a flight may have landed between our miss and our join
                entry = await store.aget(key) if store.blocking else store.get(key)
            except Exception:  # noqa: BLE001 - the first get worked; a second outage is the call's to survive
                entry = None
            if entry is not None:
                self._flights.land(key, flight, entry=entry)
                return self._hit(call, entry)
            if store.shared:
                token, entry = await alock_shared(store, key)
                if entry is not None:
                    self._flights.land(key, flight, entry=entry)
                    return self._hit(call, entry)
            self._missed(call.record, sem)
            try:
                result = await call.proceed_async()
            except Exception as exc:
                self._flights.land(key, flight, error=shared_error(exc))
                raise
            if isinstance(result, _StreamBase) or not store.blocking:
                return self._landed(call, key, sem, flight, result)
            if (why := self._refusal(call.record, result)) is not None:
                self._skipped(call.record, why)
                self._flights.land(key, flight)  # not kept: not an answer to share either
                return result
            entry = self._entry_for(call.record, result, None)
            await self._astore(call.record, key, entry, sem)
            self._flights.land(key, flight, entry=entry)
            return result
        finally:
            # Landed first: a cancel arriving while the unlock is awaited must
            # not strand this process's waiters.
            if not flight.done:  # cancelled, interrupted, or a bug: the waiters try again
                self._flights.land(key, flight)
            if token is not None:  # once a plain answer is stored (see `_lock_shared`)
                await asyncio.to_thread(unlock, store, key, token)

    async def _acall(self, call: Call, key: str, sem: Query | None) -> Any:
        self._missed(call.record, sem)
        result = await call.proceed_async()
        if isinstance(result, _StreamBase):
            return self._keep_stream(call, key, result, sem)
        if (why := self._refusal(call.record, result)) is None:
            await self._astore(call.record, key, self._entry_for(call.record, result, None), sem)
        else:
            self._skipped(call.record, why)
        return result

    # -- semantic ------------------------------------------------------------

    def _semantic_namespace(self, request: dict[str, Any]) -> tuple[str, str] | None:
        parts = split(request, self._sem_param)
        if parts is None:
            return None
        text, rest = parts
        return text, self._prefix + "sem:" + self._keys.digest(rest)  # type: ignore[union-attr]

    def _semantic_query(self, record: CallRecord, request: dict[str, Any]) -> Query | None:
        found = self._semantic_namespace(request)
        if found is None:
            return None
        text, namespace = found
        try:
            vector = unit(self.semantic.embed(text))  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - an embedder outage leaves the exact cache working
            self._failed(record, "embed", exc)
            return None
        return Query(namespace, text, vector)

    async def _asemantic_query(self, record: CallRecord, request: dict[str, Any]) -> Query | None:
        found = self._semantic_namespace(request)
        if found is None:
            return None
        text, namespace = found
        semantic = self.semantic
        assert semantic is not None  # noqa: S101 - checked by the caller
        try:
            if semantic.is_async:
                raw = await semantic.embed(text)
            else:  # an embedding model is CPU work: keep it off the event loop
                raw = await asyncio.to_thread(semantic.embed, text)
            vector = unit(raw)
        except Exception as exc:  # noqa: BLE001 - an embedder outage leaves the exact cache working
            self._failed(record, "embed", exc)
            return None
        return Query(namespace, text, vector)

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


_AGAIN: Final = object()


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


def _check_options(
    ttl: object,
    maxsize: object,
    key: object,
    include: Iterable[str],
    exclude: Iterable[str],
    semantic: object,
    cache_streams: object,
    cache_if: object,
) -> tuple[frozenset[str], frozenset[str]]:
    """Validate `cache`'s options at decoration time, naming the bad one."""
    _check.number("cache", "ttl", ttl, kind="None or seconds", optional=True)
    _check.number("cache", "maxsize", maxsize, integer=True, minimum=1, exclusive=False)
    if key is not None and not callable(key):
        msg = f"cache(key=...) must be a callable of the call's arguments, got {key!r}"
        raise TypeError(msg)
    include_set = _names("include", include)
    exclude_set = _names("exclude", exclude)
    if both := include_set & exclude_set:
        msg = f"cache(include=..., exclude=...) both name {sorted(both)}"
        raise ValueError(msg)
    if key is not None and (include_set or exclude_set):
        msg = "cache(key=...) replaces the arguments in the key; drop include=/exclude= or key="
        raise ValueError(msg)
    if semantic is not None and not isinstance(semantic, Semantic):
        msg = f"cache(semantic=...) must be an llmguard.Semantic(embed=..., threshold=...), got {semantic!r}"
        raise TypeError(msg)
    if semantic is not None and key is not None:
        msg = "cache(semantic=...) compares the request's messages; it cannot be combined with key=..."
        raise ValueError(msg)
    if not isinstance(cache_streams, bool):
        msg = f"cache(cache_streams=...) must be True or False, got {cache_streams!r}"
        raise TypeError(msg)
    if cache_if is not None and not callable(cache_if):
        msg = f"cache(cache_if=...) must be a callable result -> bool, got {cache_if!r}"
        raise TypeError(msg)
    return include_set, exclude_set


def _names(option: str, names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, str):
        msg = f"cache({option}=...) takes a list of argument names, got the string {names!r}"
        raise TypeError(msg)
    out = frozenset(names)
    if bad := [n for n in out if not isinstance(n, str) or not n]:
        msg = f"cache({option}=...) takes argument names, got {bad!r}"
        raise TypeError(msg)
    return out


def _store_from(store: Any) -> CacheStore | None:
    if store is None or isinstance(store, CacheStore):
        return store
    if is_redis_target(store):
        return RedisCacheStore(store if isinstance(store, str) else redis_client(store))
    msg = "cache(store=...) takes a redis:// URL, a redis-py client or a CacheStore, got "
    if isinstance(store, str):
        raise ValueError(msg + repr(store))  # noqa: TRY004 - a string of the wrong kind is a bad value, as in budget
    raise TypeError(msg + type(store).__name__)


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
