"""Single flight for `llmguard.cache`: concurrent identical misses make one call.

The first caller to miss a key *leads*: it makes the call and *lands* the
flight with the entry it stored, the provider's error, or neither (its
waiters then try again). The others wait on the flight: threads on a
`threading.Event`, asyncio tasks on a future of their own loop (so a leader
in another thread or loop wakes them safely). No lock is held while user code
runs, and a caller never waits for a flight its own thread or task leads.

Across processes (a shared store: Redis) the leader also takes a short lock
in the store (`lock_shared`); the other processes poll for the entry until it
appears, the lock goes away, or the lock's expiry passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _clock, _events
from ._context import remaining
from .errors import LLMGuardError


if TYPE_CHECKING:
    from .stores.cache import CacheEntry, CacheStore


__all__ = [
    "Flight",
    "Flights",
    "Steps",
    "adrive",
    "drive",
    "io",
    "lock_shared",
    "own_copy",
    "shared_error",
    "unlock",
]


# -- I/O written once for threads and tasks -------------------------------------
#
# The cache's decisions around its I/O (a store lookup, waiting for a leader,
# the cross-process lock) are generators that yield `io` steps; `drive` runs
# them blocking (``def``) and `adrive` awaiting (``async def``). Only these two
# differ between sync and async.


class _Io(NamedTuple):
    fn: Callable[..., Any]
    afn: Callable[..., Awaitable[Any]] | None
    args: tuple[Any, ...]


Steps = Generator[_Io, Any, Any]


def io(fn: Callable[..., Any], afn: Callable[..., Awaitable[Any]] | None, *args: Any) -> _Io:
    """A step of I/O: ``fn(*args)`` when driven blocking, ``await afn(*args)`` when awaited (``fn`` if None)."""
    return _Io(fn, afn, args)


def sleep(seconds: float) -> _Io:
    """Wait *seconds* on llmguard's clock (a fake clock in tests)."""
    clock = _clock.get_clock()
    return _Io(clock.sleep, clock.asleep, (seconds,))


def drive(steps: Steps) -> Any:
    """Run *steps* in this thread, each blocking; what the generator returns."""
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(send) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        try:
            send, error = step.fn(*step.args), None
        except BaseException as exc:  # noqa: BLE001 - thrown into the steps, which decide
            send, error = None, exc


async def adrive(steps: Steps) -> Any:
    """`drive` in this task: each step awaited."""
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(send) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value
        try:
            send = await step.afn(*step.args) if step.afn is not None else step.fn(*step.args)
            error = None
        except BaseException as exc:  # noqa: BLE001 - thrown into the steps, which decide
            send, error = None, exc


class Flight:
    """One in-flight miss that identical calls wait for."""

    __slots__ = ("done", "entry", "error", "event", "owner", "waiters")

    def __init__(self, owner: object) -> None:
        self.owner = owner  # the thread id or task making the call
        self.event: threading.Event | None = None  # made when a thread first waits
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.done = False
        self.entry: CacheEntry | None = None  # what the leader stored, for its waiters
        self.error: BaseException | None = None  # the provider's error, for its waiters


class Flights:
    """The flights of one cached function, by key."""

    __slots__ = ("_flights", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}

    def join(self, key: str, owner: object) -> tuple[Flight, bool]:
        """The flight for *key*, and whether *owner* leads it (it was not in flight)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight(owner)
            return flight, True

    def land(
        self,
        key: str,
        flight: Flight,
        *,
        entry: CacheEntry | None = None,
        error: BaseException | None = None,
    ) -> None:
        """End *flight*: waiters get *entry*, *error*, or (neither) try again."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.entry = entry
            flight.error = error
            flight.done = True
            waiters, flight.waiters = flight.waiters, []
            event = flight.event
        if event is not None:
            event.set()
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: its waiter is gone
                loop.call_soon_threadsafe(_wake, fut)

    def wait(self, flight: Flight, seconds: float | None) -> bool:
        """Block this thread until *flight* lands; False if *seconds* (None: no limit) passed first."""
        with self._lock:
            event = flight.event
            if event is None and not flight.done:
                event = flight.event = threading.Event()
        return event is None or event.wait(seconds)

    async def await_landed(self, flight: Flight, seconds: float | None) -> bool:
        """`wait` for an asyncio task: it awaits a future of its own loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            landed = flight.done
            if not landed:
                flight.waiters.append((loop, fut))
        if not landed:
            try:
                await asyncio.wait_for(fut, seconds)
            except TimeoutError:
                return False
        return True


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def own_copy(exc: BaseException) -> BaseException:
    """A copy of *exc* for one waiter to raise: same class, arguments and attributes.

    Raising the leader's exception object in several threads or tasks would
    splice their tracebacks into one. The copy is made without calling
    ``__init__`` (SDK errors take keyword-only arguments); an exception that
    cannot be copied so is returned as it is.
    """
    cls = type(exc)
    try:
        twin = cls.__new__(cls, *exc.args)
        twin.__dict__.update(exc.__dict__)
    except Exception:  # noqa: BLE001 - an exotic exception: shared, as before
        return exc
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        twin.__notes__ = list(notes)  # add_note() on one waiter's copy stays its own
    return twin


def shared_error(exc: Exception) -> Exception | None:
    """*exc* if it is the provider's answer to the request, for the waiters too.

    None (the waiters make the call themselves) for what belongs to the
    leader's own context: its deadline (`TimeoutError`, `GuardTimeout`), and
    every llmguard error (its budget, its rate limit, its circuit...).
    """
    if isinstance(exc, (LLMGuardError, TimeoutError)):
        return None
    return exc


# -- across processes (a shared store) ---------------------------------------
#
# Steps (``yield from`` them): their store calls and sleeps block or are awaited.


def lock_shared(store: CacheStore, key: str) -> Steps:
    """Take the cross-process lock, or wait for the process that holds it.

    ``(token, None)``: lead (token None if the store failed: lead unlocked);
    ``(None, entry)``: the other process's answer arrived. Once locked
    it looks once more: the answer may have been stored (and the lock
    released) since the caller's last look.
    """
    ttl = store.lock_ttl  # type: ignore[attr-defined]
    try:
        token = yield io(store.lock, store.alock, key, ttl)
        if token is None:
            entry = yield from _wait_other_process(store, key)
            if entry is not None:
                return None, entry
            token = yield io(store.lock, store.alock, key, ttl)
    except Exception as exc:  # noqa: BLE001 - without the lock we still make the call
        _events.emit(_events.CACHE_FAILED, None, level="warning", stage="lock", error=exc)
        return None, None
    if token is None:
        return None, None
    try:
        entry = yield io(store.get, store.aget, key)
    except Exception:  # noqa: BLE001 - the look again is a nicety: lead, holding the lock
        return token, None
    if entry is not None:
        yield from unlock(store, key, token)
        return None, entry
    return token, None


def unlock(store: CacheStore, key: str, token: str) -> Steps:
    """Release the lock `lock_shared` took (an outage is reported: the lock expires by itself)."""
    try:
        yield io(store.unlock, store.aunlock, key, token)
    except Exception as exc:  # noqa: BLE001 - the lock expires by itself
        _events.emit(_events.CACHE_FAILED, None, level="warning", stage="unlock", error=exc)


def _wait_other_process(store: CacheStore, key: str) -> Steps:
    """Poll a shared store while another process makes this call."""
    started = _clock.now()
    limit = float(store.lock_ttl)  # type: ignore[attr-defined]
    left = remaining()
    if left is not None:
        limit = min(limit, left)
    delay = 0.005
    while _clock.now() - started < limit:
        yield sleep(delay)
        delay = min(delay * 2, 0.1)
        entry: CacheEntry | None = yield io(store.get, store.aget, key)
        if entry is not None or not (yield io(store.locked, store.alocked, key)):
            return entry
    return None
