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
cached). What belongs to the leader's own context rather than to the
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
import base64
import contextlib
import copy
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import inspect
import json
import json.encoder
import pathlib
import sys
import threading
import uuid

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, overload

from . import _check, _clock, _events, prices
from ._binder import Binder, Binding
from ._context import remaining
from ._record import Outcome
from ._semantic import Semantic, rank, split, unit
from ._wrap import (
    _F_ARGS,
    _F_INFO,
    _F_KWARGS,
    ASYNC,
    ASYNCGEN,
    GEN,
    GENERAL,
    SYNC,
    Answer,
    AsyncGuardedStream,
    GuardedStream,
    Lane,
    Layer,
    _realize,
    _StreamBase,
    layers_of,
)
from .errors import GuardTimeout, LLMGuardError
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
    from ._record import CallRecord, Usage
    from ._wrap import Call


__all__ = ["TRANSPORT", "CacheInfo", "CacheLayer", "cache", "cache_clear", "cache_info"]

P = ParamSpec("P")
R = TypeVar("R")

# Bump when the canonical form changes: old entries then simply stop matching.
KEY_VERSION: Final = 1

TRANSPORT: Final = frozenset(
    {
        "timeout",
        "request_timeout",
        "extra_headers",
        "extra_query",
        "stream_options",
        "api_key",
        "api_base",
        "base_url",
        "organization",
        "client",
        "http_client",
        "max_retries",
    }
)
"""Arguments that change how a request travels, not what it asks: not keyed."""

_DEFAULT_TTL: Final = 3600.0
_DEFAULT_MAXSIZE: Final = 1024


# -- the canonical form ------------------------------------------------------

_LEAVES: Final = frozenset({str, int, float, bool, type(None)})
_DROP: Final = object()  # a value normalised away (NOT_GIVEN, a client)
_TAG: Final = "\x00"  # tags start with NUL; user dict keys that do are escaped
_ENCODE: Callable[[Any], str] = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
).encode
# The C accelerators (absent on some interpreters: then the class above).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode_basestring = getattr(json.encoder, "c_encode_basestring", None)
if _c_make_encoder is not None and _c_encode_basestring is not None:
    # The same encoder without JSONEncoder.encode's per-call set-up (~0.5 µs
    # of a 4 µs encode): only ever fed normalised values, so no ``default``.
    _C_ENCODER = _c_make_encoder(None, None, _c_encode_basestring, None, ":", ",", True, False, True)

    def _encode_fast(value: Any) -> str:
        return "".join(_C_ENCODER(value, 0))

    _ENCODE = _encode_fast

_SDK_ROOTS: Final = frozenset({"anthropic", "openai", "google", "httpx", "httpx2"})
_SENTINELS: Final = frozenset({"NotGiven", "Omit", "NotGivenOr"})
_CLIENT_BASES: Final = frozenset(
    {"BaseClient", "SyncAPIClient", "AsyncAPIClient", "Client", "AsyncClient", "BaseApiClient"}
)


class _Uncanonical(Exception):
    """A value with no canonical form (internal; becomes a TypeError)."""


def _norm(v: Any) -> Any:
    """*v* in canonical form: *v* itself when it already is, else a new value."""
    tp = v.__class__
    if tp in _LEAVES:
        return v
    if tp is dict:
        return _norm_dict(v)
    if tp is list or tp is tuple:
        return _norm_seq(v)
    handler = _HANDLERS.get(tp)
    if handler is None:
        handler = _handler_for(tp)
    return handler(v)


def _plain_keys(d: dict[Any, Any]) -> bool:
    """Whether every key of *d* is a str JSON carries exactly and no tag starts with.

    Keys seen to be safe are remembered by name, so the usual check is one
    C-level subset test (``{"role", "content"} <= known``).
    """
    if d.keys() <= _SAFE_KEYS:
        return True
    for k in d:
        if k.__class__ is not str or not k or k[0] == _TAG:
            return False
    if len(_SAFE_KEYS) > 100_000:  # arbitrary-key dicts must not grow it forever
        _SAFE_KEYS.clear()
    _SAFE_KEYS.update(d)
    return True


_SAFE_KEYS: set[str] = set()


def _norm_dict(d: dict[Any, Any]) -> Any:
    if not _plain_keys(d):
        return _tagged_dict(d)
    out: dict[str, Any] | None = None
    for k, v in d.items():
        if v.__class__ in _LEAVES:
            continue
        n = _norm(v)
        if n is not v:
            if out is None:
                out = dict(d)
            if n is _DROP:
                del out[k]
            else:
                out[k] = n
    return d if out is None else out


def _norm_seq(s: Sequence[Any]) -> Any:
    out: list[Any] | None = None
    for i, v in enumerate(s):
        tv = v.__class__
        if tv in _LEAVES:
            continue
        if tv is dict and v.keys() <= _SAFE_KEYS:
            # Inline the common case, a message of plain values.
            for x in v.values():
                if x.__class__ not in _LEAVES:
                    break
            else:
                continue
        n = _norm(v)
        if n is not v:
            if out is None:
                out = list(s)
            out[i] = {_TAG + "notgiven": True} if n is _DROP else n
    return s if out is None else out  # a tuple encodes as a list: the same JSON array


def _tagged_dict(d: Mapping[Any, Any]) -> Any:
    """A dict whose keys JSON cannot carry exactly, as sorted [key, value] pairs."""
    pairs = []
    for k, v in d.items():
        n = _norm(v)
        if n is not _DROP:
            pairs.append([_ENCODE(_norm(k)), n])
    pairs.sort(key=lambda p: p[0])
    return {_TAG + "dict": pairs}


def _tag(name: str, value: Any) -> dict[str, Any]:
    return {_TAG + name: value}


def _qualified(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


_SCHEMAS: dict[type, Any] = {}


def _norm_class(cls: Any) -> Any:
    """A class (``response_format=Answer``): its name, and its JSON schema if pydantic."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        schema = _SCHEMAS.get(cls)
        if schema is None:
            schema = _SCHEMAS[cls] = _norm(cls.model_json_schema())  # type: ignore[attr-defined]
        return {_TAG + "class": _qualified(cls), "schema": schema}
    return _tag("class", _qualified(cls))


def _handler_for(tp: type) -> Callable[[Any], Any]:  # noqa: C901, PLR0912 - one branch per kind
    """How to normalise values of type *tp*; remembered per type."""
    handler: Callable[[Any], Any]
    root = tp.__module__.partition(".")[0]
    pydantic = sys.modules.get("pydantic")
    if root in _SDK_ROOTS and (
        tp.__name__ in _SENTINELS
        or any(b.__name__ in _CLIENT_BASES for b in tp.__mro__ if b is not object)
    ):
        handler = _drop
    elif issubclass(tp, type):
        handler = _norm_class
    elif pydantic is not None and issubclass(tp, pydantic.BaseModel):
        name = _qualified(tp)

        def handler(v: Any) -> Any:
            return {_TAG + "model": name, "data": _norm(v.model_dump(mode="json"))}

    elif issubclass(tp, enum.Enum):
        if issubclass(tp, (str, int, float)):  # StrEnum / IntEnum: their value, as sent
            def handler(v: Any) -> Any:
                return _norm(v.value)
        else:
            def handler(v: Any) -> Any:
                return _tag("enum", f"{_qualified(type(v))}.{v.name}")
    elif issubclass(tp, str):
        handler = str.__str__
    elif issubclass(tp, int):
        handler = int.__index__
    elif issubclass(tp, float):
        handler = float
    elif issubclass(tp, dict) or issubclass(tp, Mapping):
        def handler(v: Any) -> Any:
            return _norm_dict(dict(v))
    elif issubclass(tp, (bytes, bytearray, memoryview)):
        def handler(v: Any) -> Any:
            return _tag("bytes", base64.b64encode(bytes(v)).decode("ascii"))
    elif issubclass(tp, (set, frozenset)):
        def handler(v: Any) -> Any:
            return _tag("set", sorted(_ENCODE(_norm(x)) for x in v))
    elif issubclass(tp, (dt.datetime, dt.date, dt.time)):
        def handler(v: Any) -> Any:
            return _tag(type(v).__name__, v.isoformat())
    elif issubclass(tp, (decimal.Decimal, uuid.UUID, pathlib.PurePath)):
        def handler(v: Any) -> Any:
            return _tag(type(v).__name__, str(v))
    elif dataclasses.is_dataclass(tp):
        name = _qualified(tp)
        names = [f.name for f in dataclasses.fields(tp)]

        def handler(v: Any) -> Any:
            return {_TAG + "dataclass": name, "fields": _norm({n: getattr(v, n) for n in names})}

    elif issubclass(tp, (list, tuple)) or (
        issubclass(tp, Sequence) and not issubclass(tp, (str, bytes))
    ):
        def handler(v: Any) -> Any:
            return _norm_seq(list(v))
    else:
        what = f"a {_qualified(tp)}"

        def handler(_v: Any) -> Any:
            raise _Uncanonical(what)

    if len(_HANDLERS) > 4096:  # dynamically made classes must not grow it forever
        _HANDLERS.clear()
    _HANDLERS[tp] = handler
    return handler


def _drop(_v: Any) -> Any:
    return _DROP


_HANDLERS: dict[type, Callable[[Any], Any]] = {}


def canonical(value: Any) -> str:
    """The canonical JSON text of *value* (what the key hashes); TypeError if it has none."""
    try:
        n = _norm(value)
    except _Uncanonical as exc:
        msg = f"{exc.args[0]} cannot be part of a cache key"
        raise TypeError(msg) from None
    except RecursionError:
        msg = "a value nested too deep (or containing itself) cannot be part of a cache key"
        raise TypeError(msg) from None
    return _ENCODE(None if n is _DROP else n)


def _code_fingerprint(fn: Callable[..., Any]) -> str:
    """Bytecode, constants and names of *fn*: stable across processes and paths."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return ""
    parts: list[str] = []

    def walk(c: Any) -> None:
        parts.append(c.co_code.hex())
        parts.append(repr(c.co_names))
        for const in c.co_consts:
            if inspect.iscode(const):
                walk(const)
            elif isinstance(const, frozenset):  # iteration order varies with hash seeds
                parts.append(repr(sorted(repr(x) for x in const)))
            else:
                parts.append(repr(const))

    walk(code)
    parts.extend(_closure_parts(inspect.unwrap(fn)))
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _closure_parts(fn: Any) -> list[str]:
    """The canonical form of each value *fn*'s closure captured, by name.

    Read once, at decoration time. Cells that are still empty, or whose value
    has no canonical form (an SDK client is dropped as usual; a lock, a
    function or a module is skipped), add nothing: a function without a
    closure keeps the fingerprint it always had.
    """
    cells = getattr(fn, "__closure__", None)
    code = getattr(fn, "__code__", None)
    if not cells or code is None:
        return []
    parts: list[str] = []
    for name, cell in zip(code.co_freevars, cells, strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet
            continue
        try:
            form = canonical(value)
        except TypeError:
            continue
        parts.append(f"closure:{name}={form}")
    return parts


# `CacheLayer.key_for` of a method called without ``_instance=``.
_NO_INSTANCE: Final = object()


class _Flight:
    """One in-flight miss that identical calls wait for."""

    __slots__ = ("again", "done", "entry", "error", "event", "owner", "waiters")

    def __init__(self, owner: object) -> None:
        self.owner = owner  # the thread id or task making the call
        self.event: threading.Event | None = None  # made when a thread first waits
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.done = False
        self.entry: CacheEntry | None = None
        self.error: BaseException | None = None
        self.again = False  # the leader gave up: try again


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


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
        self._key_sig: inspect.Signature | None = None
        if key is not None:
            with contextlib.suppress(TypeError, ValueError):
                self._key_sig = inspect.signature(key)
        self.include = include_set
        self.exclude = exclude_set
        self.semantic = semantic
        self.cache_streams = cache_streams
        self.cache_if = cache_if
        self._shared_store = _store_from(store)
        # Per function (set by `for_function`):
        self.store: CacheStore = self._shared_store or MemoryCacheStore(maxsize)
        self._fn_label = ""
        self._prefix = ""
        self._hasher: Any = None
        self._binder: Binding | None = None
        self._excluded: frozenset[str] = frozenset()
        self._excluded_from = -1
        self._first_excluded = False
        self._self_in_key = False
        self._class_in_key = False
        self._sem_param = ""
        self._shape = ""
        self._streams_seen = False
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
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
        layer._flights = {}
        layer._tasks = set()
        layer._shape = shape
        label = f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', None) or repr(fn)}"
        layer._fn_label = getattr(fn, "__qualname__", None) or repr(fn)
        ident = hashlib.blake2b(label.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
        layer._prefix = ident + ":"
        layer._hasher = hashlib.sha256(
            f"llmguard.cache/{KEY_VERSION}\x00{label}\x00{_code_fingerprint(fn)}\x00".encode(
                "utf-8", "surrogatepass"
            )
        )
        sig = binder.signature
        names = list(sig.parameters) if sig else []
        has_var_kw = bool(sig) and any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()  # type: ignore[union-attr]
        )
        for option, chosen in (("include", self.include), ("exclude", self.exclude)):
            unknown = sorted(n for n in chosen if n not in names and n != "self")
            if unknown and not has_var_kw:
                msg = f"cache({option}=...) names {unknown}, which {layer._fn_label}() has no parameter for"
                raise ValueError(msg)
        # A method's instance (the binder's rule, whatever its parameter is
        # called) is never an argument: it is keyed only when included (an
        # instance usually holds a client, not the request), a classmethod's
        # class (by name) unless excluded.
        first = binder.first
        excluded = (TRANSPORT - self.include) | self.exclude
        layer._excluded = frozenset(excluded)
        layer._self_in_key = first is not None and bool({"self", first} & self.include)
        layer._class_in_key = first is not None and first not in layer._excluded
        layer._binder = binder.binding(layer._excluded) if sig is not None else None
        # From which positional argument on an excluded parameter may be passed
        # positionally (self/cls, the instance, is handled by the binder).
        positions = layer._binder.pos_after_first if layer._binder else ()
        layer._excluded_from = min(
            (i for i, n in enumerate(positions) if n in layer._excluded), default=1 << 30
        )
        if layer._binder is None:
            layer._excluded_from = -1  # always look
        # A method called unbound (no instance) has self among its arguments.
        layer._first_excluded = first is not None and first in layer._excluded
        if self.semantic is not None:
            if self.semantic.is_async and shape not in (ASYNC, ASYNCGEN):
                msg = f"cache(semantic=Semantic(embed=<async>)) needs an async function; {layer._fn_label}() is not"
                raise TypeError(msg)
            layer._sem_param = self.semantic.param_for(fn, names, has_var_kw)
        layer.hits = layer.misses = layer.unpriced_hits = 0
        layer.saved_usd = 0.0
        return layer

    # -- the key -------------------------------------------------------------

    def _key_of(self, call: Call) -> tuple[str, dict[str, Any] | None] | None:
        """The call's key (see `_key_from`)."""
        return self._key_from(call.instance, call.args, call.kwargs)

    def _key_from(  # noqa: PLR0912 - the hit path, kept in one frame
        self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, Any] | None] | None:
        """The key of a call with these arguments (and its canonical request, for semantic mode).

        None when the arguments do not bind to the signature: the call then
        goes through uncached and the function raises its own TypeError.
        """
        if self.key is not None:
            return self._custom_key(args, kwargs)
        binder = self._binder
        if binder is None:
            bound: dict[str, Any] = {"*args": list(args), **kwargs}
        else:
            got = binder.bind(instance, args, kwargs)
            if got is None:
                return None
            bound = got
            if instance is not None and binder.first and (
                self._class_in_key if isinstance(instance, type) else self._self_in_key
            ) and instance is not _NO_INSTANCE:
                bound[binder.first] = instance
        # Excluded parameters have no defaults in the binder: they are here
        # only if passed, by keyword or far enough along positionally.
        excluded = self._excluded
        if (
            (kwargs and not excluded.isdisjoint(kwargs))
            or len(args) > self._excluded_from
            or (self._first_excluded and instance is None)
        ):
            for name in excluded.intersection(bound):
                del bound[name]
        dropped = None
        for name, v in bound.items():
            tv = v.__class__
            if tv in _LEAVES:
                continue
            try:
                n = _norm_seq(v) if tv is list else _norm(v)
            except _Uncanonical as exc:
                raise self._uncanonical(name, exc.args[0]) from None
            except RecursionError:
                raise self._uncanonical(name, "nested too deep (or contains itself)") from None
            if n is not v:
                if n is _DROP:
                    dropped = [name] if dropped is None else [*dropped, name]
                else:
                    bound[name] = n  # values only: the dict's size is unchanged
        if dropped:
            for name in dropped:
                del bound[name]
        h = self._hasher.copy()
        h.update(_ENCODE(bound).encode("utf-8", "surrogatepass"))
        return self._prefix + h.hexdigest(), bound if self.semantic is not None else None

    def _uncanonical(self, name: str, what: str) -> TypeError:
        return TypeError(
            f"cache: argument {name!r} of {self._fn_label}() is {what}, which cannot be part "
            f"of a cache key; leave it out with cache(exclude=[{name!r}]) or key the call "
            f"yourself with cache(key=...)"
        )

    def _custom_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, None] | None:
        key = self.key
        assert key is not None  # noqa: S101 - checked by the caller
        try:
            custom = key(*args, **kwargs)
        except TypeError:
            # Only arguments that do not bind mean "no key" (the call goes
            # through and the function raises its own TypeError); a TypeError
            # raised by the key function's body is the caller's bug.
            if self._key_sig is None:
                return None  # no signature to tell the two apart
            try:
                self._key_sig.bind(*args, **kwargs)
            except TypeError:
                return None
            raise
        try:
            doc = {"key": _norm(custom)}
        except (_Uncanonical, RecursionError) as exc:
            what = exc.args[0] if isinstance(exc, _Uncanonical) else "nested too deep"
            msg = f"cache(key=...) for {self._fn_label}() returned {what}, which cannot be hashed canonically"
            raise TypeError(msg) from None
        return self._prefix + self._digest(doc), None

    def _digest(self, doc: Any) -> str:
        h = self._hasher.copy()
        h.update(_ENCODE(doc).encode("utf-8", "surrogatepass"))
        return str(h.hexdigest())

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

    def _missed(self, record: CallRecord, sem: _SemQuery | None) -> None:
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

    def _store(self, record: CallRecord, key: str, entry: CacheEntry, sem: _SemQuery | None) -> None:
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

    async def _astore(self, record: CallRecord, key: str, entry: CacheEntry, sem: _SemQuery | None) -> None:
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

    def _keep_stream(self, call: Call, key: str, stream: _StreamBase, sem: _SemQuery | None) -> Any:
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

    def _join(self, key: str, owner: object) -> tuple[_Flight, bool]:
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = _Flight(owner)
            return flight, True

    def _land(
        self,
        key: str,
        flight: _Flight,
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
            flight.again = entry is None and error is None
            flight.done = True
            waiters, flight.waiters = flight.waiters, []
            event = flight.event
        if event is not None:
            event.set()
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: its waiter is gone
                loop.call_soon_threadsafe(_wake, fut)

    def _waited(self, call: Call, flight: _Flight) -> Any:
        """What a waiter does once *flight* has landed: a hit, a raise, or _AGAIN."""
        if flight.entry is not None:
            call.record.extra["cache_coalesced"] = True
            return self._hit(call, flight.entry)
        if flight.error is not None:
            raise flight.error
        return _AGAIN

    def _deadline_passed(self, waited: float) -> GuardTimeout:
        msg = (
            f"cache: the deadline passed after {waited:.3g}s waiting for an identical call "
            f"of {self._fn_label}() already in flight"
        )
        return GuardTimeout(msg, limit="total", seconds=waited)

    # -- sync ----------------------------------------------------------------

    # -- the fast lane (this cache alone on a def / async def) ---------------

    def lane(self, shape: str) -> Lane | None:
        """Hits answered on the lane: from the frame, without a `Call` when nothing needs one.

        A stream replay, or event listeners, need the record: a `Call` is
        then built for the hit, as the general path's `_hit` would.

        Misses, and lookups the store failed, go to the general path with the
        key already made and what the lookup found (`_made`). Not for an
        async function whose store blocks (its lookups are awaited there).
        """
        if shape == ASYNC and self.store.blocking:
            return None
        resume = self.resume if shape == SYNC else self.resume_async
        return Lane(self._lane_enter, None, resume, needs_call=False, answers=True)

    def _lane_enter(self, frame: list[Any]) -> Any:
        instance, args = frame[_F_INFO].binder.split(frame[_F_ARGS])
        made = self._key_from(instance, args, frame[_F_KWARGS])
        if made is not None:
            try:
                entry = self.store.get(made[0])
            except Exception as exc:  # noqa: BLE001 - fail open: the general path bypasses the store
                _realize(frame).entered = (made, exc)
                return GENERAL
            if entry is not None:
                if entry.chunks is None and not _events.listening():
                    # Nobody can read this call's record: count the hit, answer it.
                    self._counted_hit(entry)
                    return Answer(entry.value)
                return Answer(self._hit(_realize(frame), entry))
            # A miss: the general path goes on from the key, without a second look.
            _realize(frame).entered = (made, None)
        return GENERAL

    def _made(self, call: Call) -> tuple[tuple[str, dict[str, Any] | None] | None, Any]:
        """The call's key and request (see `_key_from`), and what its lane's lookup found.

        That is `_UNLOOKED` when no lane looked, None when it found no entry,
        or the exception the store raised.
        """
        handed: tuple[tuple[str, dict[str, Any] | None], Exception | None] | None = call.entered
        if handed is not None:
            call.entered = None
            return handed
        return self._key_of(call), _UNLOOKED

    def around(self, call: Call) -> Any:
        """Answer from the cache, or make the call once and keep its answer."""
        made, looked = self._made(call)
        if made is None:
            return call.proceed()
        key, request = made
        if looked is not None and looked is not _UNLOOKED:
            return self._bypass(call, looked)
        if looked is _UNLOOKED:
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

    def _follow(self, call: Call, key: str) -> tuple[_Flight | None, Any]:
        """Lead the flight for *key* (``(flight, _AGAIN)``) or wait for its leader.

        A waiter gets ``(None, answer)``; ``(None, _AGAIN)`` means make the
        call without a flight (this thread is already making it).
        """
        owner = threading.get_ident()
        while True:
            flight, leading = self._join(key, owner)
            if leading:
                return flight, _AGAIN
            if flight.owner == owner:  # never wait for a call this thread is making
                return None, _AGAIN
            started = _clock.now()
            with self._lock:
                event = flight.event
                if event is None and not flight.done:
                    event = flight.event = threading.Event()
            if event is not None and not event.wait(remaining()):
                raise self._deadline_passed(_clock.now() - started)
            got = self._waited(call, flight)
            if got is not _AGAIN:
                return None, got

    def _semantic_find(self, record: CallRecord, sem: _SemQuery) -> tuple[CacheEntry, float] | None:
        try:
            candidates = self.store.candidates(sem.namespace)
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
            return None
        ranked = self._ranked(sem, candidates)  # verify= is the user's: its errors are theirs
        try:
            for candidate, score in ranked:
                entry = self.store.get(candidate.key)
                if entry is not None:
                    return entry, score
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
        return None

    def _lead(self, call: Call, key: str, sem: _SemQuery | None, flight: _Flight) -> Any:
        """Make the call for everyone waiting on *flight*; land it whatever happens."""
        token = None
        try:
            try:
                entry = self.store.get(key)  # a flight may have landed between our miss and our join
            except Exception:  # noqa: BLE001 - the first get worked; a second outage is the call's to survive
                entry = None
            if entry is not None:
                self._land(key, flight, entry=entry)
                return self._hit(call, entry)
            if self.store.shared:
                token, entry = self._lock_shared(key)
                if entry is not None:
                    self._land(key, flight, entry=entry)
                    return self._hit(call, entry)
            self._missed(call.record, sem)
            try:
                result = call.proceed()
            except Exception as exc:
                self._land(key, flight, error=_shared_error(exc))
                raise
            return self._landed(call, key, sem, flight, result)
        finally:
            if not flight.done:  # cancelled, interrupted, or a bug: the waiters try again
                self._land(key, flight)
            # Unlocked only once a plain answer is stored: a process that sees
            # the lock gone must find the entry (see `_lock_shared`).
            if token is not None:
                self._unlock(key, token)

    def _landed(self, call: Call, key: str, sem: _SemQuery | None, flight: _Flight, result: Any) -> Any:
        """Keep the leader's *result* and hand it to its waiters."""
        if isinstance(result, _StreamBase):
            self._streams_seen = True
            self._land(key, flight)  # a stream is its caller's to read: waiters call themselves
            return self._keep_stream(call, key, result, sem)
        if (why := self._refusal(call.record, result)) is not None:
            self._skipped(call.record, why)
            self._land(key, flight)  # not kept: not an answer to share either
            return result
        entry = self._entry_for(call.record, result, None)
        self._store(call.record, key, entry, sem)
        self._land(key, flight, entry=entry)
        return result

    def _lock_shared(self, key: str) -> tuple[str | None, CacheEntry | None]:
        """Take the cross-process lock, or wait for the process that holds it.

        ``(token, None)``: lead (token None if the store failed: lead unlocked);
        ``(None, entry)``: the other process's answer arrived. Once locked
        it looks once more: the answer may have been stored (and the lock
        released) since the caller's last look.
        """
        store = self.store
        try:
            token = store.lock(key, store.lock_ttl)  # type: ignore[attr-defined]
            if token is None:
                entry = self._wait_other_process(key)
                if entry is not None:
                    return None, entry
                token = store.lock(key, store.lock_ttl)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - without the lock we still make the call
            _events.emit(_events.CACHE_FAILED, None, level="warning", stage="lock", error=exc)
            return None, None
        if token is None:
            return None, None
        try:
            entry = store.get(key)
        except Exception:  # noqa: BLE001 - the look again is a nicety: lead, holding the lock
            return token, None
        if entry is not None:
            self._unlock(key, token)
            return None, entry
        return token, None

    def _call(self, call: Call, key: str, sem: _SemQuery | None) -> Any:
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

    def _unlock(self, key: str, token: str) -> None:
        try:
            self.store.unlock(key, token)
        except Exception as exc:  # noqa: BLE001 - the lock expires by itself
            _events.emit(_events.CACHE_FAILED, None, level="warning", stage="unlock", error=exc)

    def _wait_other_process(self, key: str) -> CacheEntry | None:
        """Poll a shared store while another process makes this call."""
        clock = _clock.get_clock()
        started = _clock.now()
        limit = float(self.store.lock_ttl)  # type: ignore[attr-defined]
        left = remaining()
        if left is not None:
            limit = min(limit, left)
        delay = 0.005
        while _clock.now() - started < limit:
            clock.sleep(delay)
            delay = min(delay * 2, 0.1)
            entry = self.store.get(key)
            if entry is not None or not self.store.locked(key):
                return entry
        return None

    # -- async ---------------------------------------------------------------

    async def around_async(self, call: Call) -> Any:
        """`around` for async functions and async generators."""
        made, looked = self._made(call)
        if made is None:
            return await call.proceed_async()
        key, request = made
        failed = looked if looked is not None and looked is not _UNLOOKED else None
        if looked is _UNLOOKED:
            store = self.store
            try:
                entry = await store.aget(key) if store.blocking else store.get(key)
            except Exception as exc:  # noqa: BLE001 - fail open: the call goes through uncached
                failed = exc
            else:
                if entry is not None:
                    return self._hit(call, entry)
        if failed is not None:
            call.record.cache = "bypass"
            self._failed(call.record, "store", failed)
            return await call.proceed_async()
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

    async def _afollow(self, call: Call, key: str) -> tuple[_Flight | None, Any]:
        """`_follow` for tasks: waiters await a future on their own loop."""
        owner = asyncio.current_task()
        if owner is None:
            return None, _AGAIN
        while True:
            flight, leading = self._join(key, owner)
            if leading:
                return flight, _AGAIN
            if flight.owner is owner:  # never wait for a call this task is making
                return None, _AGAIN
            started = _clock.now()
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                landed = flight.done
                if not landed:
                    flight.waiters.append((loop, fut))
            if not landed:
                try:
                    await asyncio.wait_for(fut, remaining())
                except TimeoutError:
                    raise self._deadline_passed(_clock.now() - started) from None
            got = self._waited(call, flight)
            if got is not _AGAIN:
                return None, got

    async def _asemantic_find(self, record: CallRecord, sem: _SemQuery) -> tuple[CacheEntry, float] | None:
        store = self.store
        try:
            candidates = await store.acandidates(sem.namespace)
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
            return None
        ranked = self._ranked(sem, candidates)  # verify= is the user's: its errors are theirs
        try:
            for candidate, score in ranked:
                entry = await store.aget(candidate.key)
                if entry is not None:
                    return entry, score
        except Exception as exc:  # noqa: BLE001 - fail open: an exact miss
            self._failed(record, "store", exc)
        return None

    async def _alead(self, call: Call, key: str, sem: _SemQuery | None, flight: _Flight) -> Any:
        """`_lead` for tasks."""
        store = self.store
        token = None
        try:
            try:  # a flight may have landed between our miss and our join
                entry = await store.aget(key) if store.blocking else store.get(key)
            except Exception:  # noqa: BLE001 - the first get worked; a second outage is the call's to survive
                entry = None
            if entry is not None:
                self._land(key, flight, entry=entry)
                return self._hit(call, entry)
            if store.shared:
                token, entry = await self._alock_shared(key)
                if entry is not None:
                    self._land(key, flight, entry=entry)
                    return self._hit(call, entry)
            self._missed(call.record, sem)
            try:
                result = await call.proceed_async()
            except Exception as exc:
                self._land(key, flight, error=_shared_error(exc))
                raise
            if isinstance(result, _StreamBase) or not store.blocking:
                return self._landed(call, key, sem, flight, result)
            if (why := self._refusal(call.record, result)) is not None:
                self._skipped(call.record, why)
                self._land(key, flight)  # not kept: not an answer to share either
                return result
            entry = self._entry_for(call.record, result, None)
            await self._astore(call.record, key, entry, sem)
            self._land(key, flight, entry=entry)
            return result
        finally:
            # Landed first: a cancel arriving while the unlock is awaited must
            # not strand this process's waiters.
            if not flight.done:  # cancelled, interrupted, or a bug: the waiters try again
                self._land(key, flight)
            if token is not None:  # once a plain answer is stored (see `_lock_shared`)
                await asyncio.to_thread(self._unlock, key, token)

    async def _alock_shared(self, key: str) -> tuple[str | None, CacheEntry | None]:
        """`_lock_shared` for tasks."""
        store = self.store
        try:
            token = await asyncio.to_thread(store.lock, key, store.lock_ttl)  # type: ignore[attr-defined]
            if token is None:
                entry = await self._await_other_process(key)
                if entry is not None:
                    return None, entry
                token = await asyncio.to_thread(store.lock, key, store.lock_ttl)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - without the lock we still make the call
            _events.emit(_events.CACHE_FAILED, None, level="warning", stage="lock", error=exc)
            return None, None
        if token is None:
            return None, None
        try:
            entry = await store.aget(key)
        except Exception:  # noqa: BLE001 - the look again is a nicety: lead, holding the lock
            return token, None
        if entry is not None:
            await asyncio.to_thread(self._unlock, key, token)
            return None, entry
        return token, None

    async def _acall(self, call: Call, key: str, sem: _SemQuery | None) -> Any:
        self._missed(call.record, sem)
        result = await call.proceed_async()
        if isinstance(result, _StreamBase):
            return self._keep_stream(call, key, result, sem)
        if (why := self._refusal(call.record, result)) is None:
            await self._astore(call.record, key, self._entry_for(call.record, result, None), sem)
        else:
            self._skipped(call.record, why)
        return result

    async def _await_other_process(self, key: str) -> CacheEntry | None:
        clock = _clock.get_clock()
        started = _clock.now()
        limit = float(self.store.lock_ttl)  # type: ignore[attr-defined]
        left = remaining()
        if left is not None:
            limit = min(limit, left)
        delay = 0.005
        while _clock.now() - started < limit:
            await clock.asleep(delay)
            delay = min(delay * 2, 0.1)
            entry = await self.store.aget(key)
            if entry is not None or not await asyncio.to_thread(self.store.locked, key):
                return entry
        return None

    # -- semantic ------------------------------------------------------------

    def _semantic_namespace(self, request: dict[str, Any]) -> tuple[str, str] | None:
        parts = split(request, self._sem_param)
        if parts is None:
            return None
        text, rest = parts
        return text, self._prefix + "sem:" + self._digest(rest)

    def _semantic_query(self, record: CallRecord, request: dict[str, Any]) -> _SemQuery | None:
        found = self._semantic_namespace(request)
        if found is None:
            return None
        text, namespace = found
        try:
            vector = unit(self.semantic.embed(text))  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - an embedder outage leaves the exact cache working
            self._failed(record, "embed", exc)
            return None
        return _SemQuery(namespace, text, vector)

    async def _asemantic_query(self, record: CallRecord, request: dict[str, Any]) -> _SemQuery | None:
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
        return _SemQuery(namespace, text, vector)

    def _ranked(self, sem: _SemQuery, candidates: list[Candidate]) -> list[tuple[Candidate, float]]:
        """The candidates that may answer, best first (at or above the threshold, verified)."""
        semantic = self.semantic
        assert semantic is not None  # noqa: S101 - checked by the caller
        ranked = rank(sem.vector, [c.vector for c in candidates])
        if ranked:
            sem.best = ranked[0][1]
        out = []
        for i, score in ranked:
            if score < semantic.threshold:
                break
            candidate = candidates[i]
            if semantic.verify is not None and not semantic.verify(sem.text, candidate.text):
                continue
            out.append((candidate, score))
        return out

    # -- info ----------------------------------------------------------------

    def key_for(self, *args: Any, **kwargs: Any) -> str | None:
        """The key a call with these arguments would have (None: it would not bind).

        For methods pass the arguments after ``self``; the instance is not
        part of the key unless ``include=["self"]`` (then pass ``_instance=``).
        """
        instance = kwargs.pop("_instance", None)
        if instance is None and self._binder is not None and self._binder.first:
            instance = _NO_INSTANCE  # a method's arguments, after its (unkeyed) instance
        made = self._key_from(instance, args, kwargs)
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
_UNLOOKED: Final = object()  # `CacheLayer._made`: no lane looked the key up


def _shared_error(exc: Exception) -> Exception | None:
    """*exc* if it is the provider's answer to the request, for the waiters too.

    None (the waiters make the call themselves) for what belongs to the
    leader's own context: its deadline (`TimeoutError`, `GuardTimeout`), and
    every llmguard error (its budget, its rate limit, its circuit...).
    """
    if isinstance(exc, (LLMGuardError, TimeoutError)):
        return None
    return exc


class _SemQuery:
    """The semantic side of one miss: where to look, and what was asked."""

    __slots__ = ("best", "namespace", "text", "vector")

    def __init__(self, namespace: str, text: str, vector: tuple[float, ...]) -> None:
        self.namespace = namespace
        self.text = text
        self.vector = vector
        self.best: float | None = None


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
