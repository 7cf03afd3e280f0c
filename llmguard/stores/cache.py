"""Where `llmguard.cache` keeps its entries: in memory, or in Redis (shared).

Both stores hold `CacheEntry` objects under string keys and, for semantic
mode, lists of `Candidate` vectors under a *namespace* (the hash of
everything in a request but its last user message).

* `MemoryCacheStore` — TTL + LRU with per-entry TTLs (cachetools' TLRU
  policy, so one store can serve functions with different ``ttl=``) on
  llmguard's clock, so tests expire entries on a fake clock.
  Values are kept as the very objects the function returned.
* `RedisCacheStore` — entries shared by every process that points at the
  same server. Values travel as JSON, never pickle: a cache that anyone
  with write access to Redis could poison must not be able to run code
  in the readers. SDK response objects (pydantic models) are stored as
  their class's ``module:qualname`` and ``model_dump(mode="json")``, and
  on load are re-validated only by a pydantic ``BaseModel`` subclass from
  an allow-listed module (``anthropic.``, ``openai.``, ``google.genai.``,
  or what the store was told to ``allow=``); no other name is ever
  imported. A value the codec cannot carry is not stored (the call still
  returns it; the `cache` guard emits ``llmguard.cache.skipped``).

  Redis also gives single flight *across processes*: the process that
  misses first takes a short lock (``SET NX PX``, released by a
  compare-and-delete script, so a lock that expired and was taken by
  another process is never deleted by the first); the others poll for
  the entry until it appears, the lock goes away (they then try to take
  it), or the lock's expiry has passed. A leader that outlives the lock
  only means a second upstream call, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import importlib
import json
import math
import re
import secrets
import sys
import threading

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from cachetools import TLRUCache

from .. import _clock
from .._record import Usage
from . import is_redis_target, redis_client
from . import key as redis_key


if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


__all__ = [
    "CacheEntry",
    "CacheStore",
    "Candidate",
    "MemoryCacheStore",
    "RedisCacheStore",
    "Unstorable",
    "store_from",
]

# Bumped when the stored JSON layout changes; readers skip other versions.
_FORMAT: Final = 1
DEFAULT_ALLOWED: Final = ("anthropic", "openai", "google.genai")


class Unstorable(TypeError):
    """A value the shared store's codec cannot carry safely."""


@dataclass(slots=True)
class CacheEntry:
    """One cached answer: the value (or a stream's chunks) and what it cost."""

    value: Any = None
    chunks: tuple[Any, ...] | None = None  # a completed stream's chunks; None for a value
    usage: Usage | None = None  # what the call that produced it used
    model: str | None = None  # the model that answered (for pricing the saving)
    provider: str | None = None
    created_at: float = 0.0  # wall-clock seconds
    ttl: float | None = None  # seconds this entry lives; None: until evicted

    @property
    def is_stream(self) -> bool:
        """Whether the entry replays a stream."""
        return self.chunks is not None


@dataclass(slots=True)
class Candidate:
    """A semantic-mode entry: the exact key it answers and its query's vector."""

    key: str
    vector: tuple[float, ...]  # unit length
    text: str  # the user message that was embedded (for ``verify=``)


class CacheStore:
    """What the `cache` guard needs from a store; subclass to add one.

    Every method must be safe to call from several threads at once. From
    an event loop the guard awaits the ``a``-methods (``aget``,
    ``acandidates``, ``alock``, ``aunlock``, ``alocked``), which default to
    running the sync ones in a worker thread, and runs ``set`` and
    ``add_candidate`` in a worker thread itself; a store whose operations
    never block says ``blocking = False`` and is called directly.
    """

    name: ClassVar[str] = "store"
    shared: ClassVar[bool] = False  # entries outlive the process / are seen by others
    blocking: ClassVar[bool] = True  # operations do I/O (run them off the event loop)

    def get(self, key: str) -> CacheEntry | None:
        """The live entry under *key*, or None."""
        raise NotImplementedError

    def set(self, key: str, entry: CacheEntry) -> None:
        """Store *entry* under *key* for ``entry.ttl`` seconds."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Forget *key* (no error if absent)."""
        raise NotImplementedError

    def clear(self, prefix: str) -> int:
        """Forget every key starting with *prefix*; returns how many."""
        raise NotImplementedError

    def size(self, prefix: str) -> int:
        """How many live entries have keys starting with *prefix*."""
        raise NotImplementedError

    def candidates(self, namespace: str) -> list[Candidate]:
        """The semantic candidates stored under *namespace*."""
        raise NotImplementedError

    def add_candidate(
        self, namespace: str, candidate: Candidate, ttl: float | None, limit: int
    ) -> None:
        """Add *candidate* to *namespace*, keeping at most *limit* newest."""
        raise NotImplementedError

    # Single flight across processes; a local store has no other process.
    def lock(self, key: str, ttl: float) -> str | None:  # noqa: ARG002
        """Take the miss lock for *key*; a token, or None if another holds it."""
        return "local"

    def unlock(self, key: str, token: str) -> None:
        """Release the miss lock for *key* if *token* still holds it."""

    def locked(self, key: str) -> bool:  # noqa: ARG002
        """Whether another process holds the miss lock for *key*."""
        return False

    async def aget(self, key: str) -> CacheEntry | None:
        """`get` for async code."""
        return await asyncio.to_thread(self.get, key)

    async def acandidates(self, namespace: str) -> list[Candidate]:
        """`candidates` for async code."""
        return await asyncio.to_thread(self.candidates, namespace)

    async def alock(self, key: str, ttl: float) -> str | None:
        """`lock` for async code."""
        return await asyncio.to_thread(self.lock, key, ttl)

    async def aunlock(self, key: str, token: str) -> None:
        """`unlock` for async code."""
        await asyncio.to_thread(self.unlock, key, token)

    async def alocked(self, key: str) -> bool:
        """`locked` for async code."""
        return await asyncio.to_thread(self.locked, key)

    def describe(self) -> str:
        """A short name for `llmguard.describe`."""
        return self.name


# -- memory ------------------------------------------------------------------


def _now() -> float:
    # Read through the module each time: the fake clock swaps `_clock.now`.
    return _clock.now()


def _expires(_key: str, value: Any, now: float) -> float:
    ttl = value.ttl
    return math.inf if ttl is None else now + ttl


class _Entries:
    """LRU-ordered entries, each expiring at its own time: cachetools' TLRU policy, read faster.

    A read (every cache hit, `MemoryCacheStore.get`) is one dict lookup,
    one clock reading and one move to the LRU end. Writing first drops what
    has expired (a heap of expiry times, stale rows skipped), then the least
    recently used beyond *maxsize*. Not thread-safe: the store locks around it.
    """

    __slots__ = ("_heap", "items", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: OrderedDict[str, tuple[CacheEntry, float]] = OrderedDict()
        self._heap: list[tuple[float, str]] = []  # (expires, key) of entries that expire

    def set(self, key: str, entry: CacheEntry, now: float) -> None:
        self.expire(now)
        items = self.items
        expires = _expires(key, entry, now)
        if not now < expires:
            items.pop(key, None)
            return
        items[key] = (entry, expires)
        items.move_to_end(key)
        while len(items) > self.maxsize:
            items.popitem(last=False)
        if expires != math.inf:
            heap = self._heap
            heapq.heappush(heap, (expires, key))
            if len(heap) > 2 * self.maxsize + 64:  # rows of replaced or evicted entries
                self._heap = [(exp, k) for k, (_, exp) in items.items() if exp != math.inf]
                heapq.heapify(self._heap)

    def expire(self, now: float) -> None:
        heap, items = self._heap, self.items
        while heap and not now < heap[0][0]:
            expires, key = heapq.heappop(heap)
            item = items.get(key)
            if item is not None and item[1] == expires:  # still the entry that row was for
                del items[key]


class MemoryCacheStore(CacheStore):
    """Entries in this process: LRU-bounded by *maxsize*, each with its TTL.

    Values are the objects the function returned, not copies: a caller
    that mutates a cached result mutates what later hits get.
    """

    name = "memory"
    shared = False
    blocking = False

    def __init__(self, maxsize: int = 1024) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            msg = f"MemoryCacheStore(maxsize=...) must be an int >= 1, got {maxsize!r}"
            raise ValueError(msg)
        self.maxsize = maxsize
        # TLRU rather than TTL: each entry's TTL is its own, so a store shared
        # by two guards honours both. Entries on the hit path; namespaces in cachetools'.
        self._data = _Entries(maxsize)
        self._items = self._data.items
        self._sem: TLRUCache[str, _Namespace] = TLRUCache(maxsize, ttu=_expires, timer=_now)
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        """The live entry under *key*, or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if not _clock.now() < item[1]:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[0]

    def set(self, key: str, entry: CacheEntry) -> None:
        """Store *entry* under *key* for ``entry.ttl`` seconds."""
        with self._lock:
            self._data.set(key, entry, _clock.now())

    def delete(self, key: str) -> None:
        """Forget *key* (no error if absent)."""
        with self._lock:
            self._data.items.pop(key, None)

    def clear(self, prefix: str) -> int:
        """Forget every key starting with *prefix*; returns how many."""
        with self._lock:
            items = self._data.items
            self._data.expire(_clock.now())
            doomed = [k for k in items if k.startswith(prefix)]
            for k in doomed:
                del items[k]
            for ns in [k for k in self._sem if k.startswith(prefix)]:
                del self._sem[ns]
            return len(doomed)

    def size(self, prefix: str) -> int:
        """How many live entries have keys starting with *prefix*."""
        with self._lock:
            self._data.expire(_clock.now())
            return sum(1 for k in self._data.items if k.startswith(prefix))

    def candidates(self, namespace: str) -> list[Candidate]:
        """The semantic candidates stored under *namespace*."""
        with self._lock:
            ns = self._sem.get(namespace)
            return list(ns.items) if ns is not None else []

    def add_candidate(
        self, namespace: str, candidate: Candidate, ttl: float | None, limit: int
    ) -> None:
        """Add *candidate* to *namespace*, keeping at most *limit* newest."""
        with self._lock:
            ns = self._sem.get(namespace)
            if ns is None:
                ns = _Namespace(ttl)
            items = [c for c in ns.items if c.key != candidate.key]
            items.append(candidate)
            ns.items = items[-limit:]
            ns.ttl = ttl
            self._sem[namespace] = ns  # re-set: the namespace lives as long as its newest entry

    async def aget(self, key: str) -> CacheEntry | None:
        """`get`; memory never blocks, so no thread hop."""
        return self.get(key)

    async def acandidates(self, namespace: str) -> list[Candidate]:
        """`candidates`; memory never blocks, so no thread hop."""
        return self.candidates(namespace)

    def describe(self) -> str:
        """``memory(maxsize=N)``."""
        return f"memory(maxsize={self.maxsize})"


class _Namespace:
    __slots__ = ("items", "ttl")

    def __init__(self, ttl: float | None) -> None:
        self.items: list[Candidate] = []
        self.ttl = ttl


# -- the safe codec (Redis) --------------------------------------------------

_QUALNAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_MODULE: Final = _QUALNAME


class _Codec:
    """JSON with tags for what JSON lacks; pydantic models by allow-listed name.

    Every value that is not a str, int, float, bool or None is a one-key
    object whose key says what it is: ``{"L": [...]}`` a list, ``{"T": [...]}``
    a tuple, ``{"D": {...}}`` a dict with str keys, ``{"B": "base64"}`` bytes,
    ``{"M": "module:Qual.Name", "V": {...}}`` a pydantic model.
    """

    def __init__(self, allow: Iterable[str | type]) -> None:
        prefixes = list(DEFAULT_ALLOWED)
        self._classes: dict[str, type] = {}
        for item in allow:
            if isinstance(item, type):
                self._classes[_class_name(item)] = item
            elif isinstance(item, str) and item.strip(". "):
                prefixes.append(item.strip(". "))
            else:
                msg = f"RedisCacheStore(allow=...) takes module prefixes (str) or classes, got {item!r}"
                raise TypeError(msg)
        self._prefixes = tuple(prefixes)
        self._resolved: dict[str, type] = {}

    # encoding

    def dumps(self, entry: CacheEntry) -> bytes:
        doc: dict[str, Any] = {
            "f": _FORMAT,
            "u": _usage_to_list(entry.usage),
            "m": entry.model,
            "p": entry.provider,
            "c": entry.created_at,
            "t": entry.ttl,
        }
        if entry.chunks is not None:
            doc["s"] = [self._enc(c) for c in entry.chunks]
        else:
            doc["v"] = self._enc(entry.value)
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )

    def _enc(self, obj: Any) -> Any:
        tp = type(obj)
        if obj is None or tp is str or tp is bool or tp is int or tp is float:
            return obj
        if tp is list:
            return {"L": [self._enc(x) for x in obj]}
        if tp is tuple:
            return {"T": [self._enc(x) for x in obj]}
        if tp is dict:
            if not all(type(k) is str for k in obj):
                msg = "a dict with non-str keys"
                raise Unstorable(msg)
            return {"D": {k: self._enc(v) for k, v in obj.items()}}
        if tp is bytes:
            return {"B": base64.b64encode(obj).decode("ascii")}
        pydantic = sys.modules.get("pydantic")
        if pydantic is not None and isinstance(obj, pydantic.BaseModel):
            name = _class_name(tp)
            if self._resolve(name) is not tp:
                msg = f"{name} cannot be found again by name (allow it with RedisCacheStore(allow=...))"
                raise Unstorable(msg)
            return {"M": name, "V": obj.model_dump(mode="json", by_alias=True)}
        msg = f"a {tp.__module__}.{tp.__qualname__} (only JSON values, bytes and pydantic models are stored)"
        raise Unstorable(msg)

    # decoding

    def loads(self, raw: bytes) -> CacheEntry | None:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("f") != _FORMAT:
            return None
        entry = CacheEntry(
            usage=_usage_from_list(doc.get("u")),
            model=_str_or_none(doc.get("m")),
            provider=_str_or_none(doc.get("p")),
            created_at=float(doc.get("c") or 0.0),
            ttl=doc.get("t"),
        )
        if "s" in doc:
            entry.chunks = tuple(self._dec(c) for c in doc["s"])
        else:
            entry.value = self._dec(doc.get("v"))
        return entry

    def _dec(self, obj: Any) -> Any:
        if not isinstance(obj, dict):
            return obj  # str, int, float, bool, None
        if len(obj) == 1:
            (tag, payload), = obj.items()
            if tag == "L":
                return [self._dec(x) for x in payload]
            if tag == "T":
                return tuple(self._dec(x) for x in payload)
            if tag == "D":
                return {k: self._dec(v) for k, v in payload.items()}
            if tag == "B":
                return base64.b64decode(payload)
        if len(obj) == 2 and "M" in obj and "V" in obj:
            cls = self._resolve(obj["M"])
            return cls.model_validate(obj["V"])  # type: ignore[attr-defined]
        msg = f"unknown stored value {obj!r:.80}"
        raise ValueError(msg)

    def _resolve(self, name: Any) -> type:
        """The pydantic class called *name*, if it is allowed; else ValueError.

        Looks only inside allow-listed modules (importing one of those if it
        is not loaded yet), walks only identifier attributes, and accepts
        only ``BaseModel`` subclasses.
        """
        if not isinstance(name, str):
            msg = f"a stored class name must be a str, got {name!r:.80}"
            raise TypeError(msg)
        found = self._classes.get(name) or self._resolved.get(name)
        if found is not None:
            return found
        module, _, qualname = name.partition(":")
        if not (_MODULE.match(module) and _QUALNAME.match(qualname)):
            msg = f"not a resolvable class name: {name!r:.80}"
            raise ValueError(msg)
        if not any(module == p or module.startswith(p + ".") for p in self._prefixes):
            msg = f"{module!r} is not an allowed module for cached values ({', '.join(self._prefixes)})"
            raise ValueError(msg)
        obj: Any = sys.modules.get(module) or importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        pydantic = importlib.import_module("pydantic")
        if not (isinstance(obj, type) and issubclass(obj, pydantic.BaseModel)):
            msg = f"{name!r} is not a pydantic model class"
            raise TypeError(msg)
        self._resolved[name] = obj
        return obj


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _usage_to_list(usage: Usage | None) -> list[Any] | None:
    if usage is None:
        return None
    return [
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        usage.estimated,
    ]


def _usage_from_list(data: Any) -> Usage | None:
    if not isinstance(data, list) or len(data) != 6:
        return None
    counts = data[:5]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return None
    return Usage(counts[0], counts[1], counts[2], counts[3], counts[4], estimated=bool(data[5]))


# -- redis -------------------------------------------------------------------

# Delete the lock only if it is still ours (it may have expired and been
# taken by another process meanwhile).
_UNLOCK: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class RedisCacheStore(CacheStore):
    """Entries in Redis, shared by every process using the same server.

    *target* is a ``redis://`` URL or a redis-py client. *namespace*
    separates caches on one server (a deploy, a tenant). *allow* adds
    module prefixes (``"myapp.models"``) or classes whose pydantic values
    may be stored and re-created; SDK response models are allowed by
    default. *lock_ttl* bounds how long other processes wait for the
    process that missed first. Size is bounded by the server's
    ``maxmemory`` policy, not by ``maxsize``.
    """

    name = "redis"
    shared = True
    blocking = True

    def __init__(
        self,
        target: Any,
        *,
        namespace: str = "default",
        allow: Sequence[str | type] = (),
        lock_ttl: float = 30.0,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or any(c in namespace for c in "*?[]\\ "):
            msg = f"RedisCacheStore(namespace=...) must be a non-empty name without spaces or glob characters, got {namespace!r}"
            raise ValueError(msg)
        if isinstance(lock_ttl, bool) or not isinstance(lock_ttl, (int, float)) or not lock_ttl > 0:
            msg = f"RedisCacheStore(lock_ttl=...) must be > 0 seconds, got {lock_ttl!r}"
            raise ValueError(msg)
        self._redis = redis_client(target)
        self.namespace = namespace
        self.lock_ttl = float(lock_ttl)
        self._codec = _Codec(allow)
        self._prefix = redis_key("cache", namespace) + ":"
        self._unlock = self._redis.register_script(_UNLOCK)

    def _k(self, key: str) -> str:
        return self._prefix + key

    def get(self, key: str) -> CacheEntry | None:
        """The entry under *key*, re-created by the safe codec; None if absent or unreadable."""
        raw = self._redis.get(self._k(key))
        if raw is None:
            return None
        try:
            return self._codec.loads(raw)
        except (ValueError, TypeError, AttributeError, ImportError, KeyError):
            # Unreadable (another version's layout, a disallowed class, a
            # tampered value): a miss, and out of the way of the next set.
            self._redis.delete(self._k(key))
            return None

    def set(self, key: str, entry: CacheEntry) -> None:
        """Store *entry* (raises `Unstorable` for values the codec cannot carry)."""
        data = self._codec.dumps(entry)
        px = None if entry.ttl is None else max(1, int(entry.ttl * 1000))
        self._redis.set(self._k(key), data, px=px)

    def delete(self, key: str) -> None:
        """Forget *key*."""
        self._redis.delete(self._k(key))

    def _scan(self, prefix: str) -> list[Any]:
        return list(self._redis.scan_iter(match=self._prefix + _glob_escape(prefix) + "*", count=500))

    def clear(self, prefix: str) -> int:
        """Delete every entry (and semantic index) whose key starts with *prefix*."""
        keys = self._scan(prefix)
        for i in range(0, len(keys), 500):
            self._redis.delete(*keys[i : i + 500])
        return sum(1 for k in keys if b":sem:" not in k and b":lock:" not in k)

    def size(self, prefix: str) -> int:
        """How many entries have keys starting with *prefix* (a SCAN: O(keys))."""
        return sum(1 for k in self._scan(prefix) if b":sem:" not in k and b":lock:" not in k)

    def candidates(self, namespace: str) -> list[Candidate]:
        """The semantic candidates under *namespace* (vectors as stored)."""
        raw = self._redis.hgetall(self._k(namespace))
        out: list[tuple[float, Candidate]] = []
        for field, value in raw.items():
            try:
                doc = json.loads(value)
                vec = tuple(float(x) for x in doc["v"])
                out.append((float(doc["a"]), Candidate(field.decode(), vec, str(doc["t"]))))
            except (ValueError, TypeError, KeyError):
                continue
        out.sort(key=lambda pair: pair[0])
        return [c for _, c in out]

    def add_candidate(
        self, namespace: str, candidate: Candidate, ttl: float | None, limit: int
    ) -> None:
        """Add *candidate* under *namespace*; the oldest beyond *limit* are dropped."""
        name = self._k(namespace)
        doc = {"v": list(candidate.vector), "t": candidate.text, "a": _clock.get_clock().time()}
        pipe = self._redis.pipeline()
        pipe.hset(name, candidate.key, json.dumps(doc, separators=(",", ":")))
        if ttl is not None:
            pipe.pexpire(name, max(1, int(ttl * 1000)))
        pipe.hlen(name)
        *_, length = pipe.execute()
        if length > limit:
            stale = self.candidates(namespace)[: length - limit]
            if stale:
                self._redis.hdel(name, *(c.key for c in stale))

    def lock(self, key: str, ttl: float) -> str | None:
        """Take the cross-process miss lock for *key* for *ttl* seconds."""
        token = secrets.token_hex(8)
        ok = self._redis.set(self._k("lock:" + key), token, nx=True, px=max(1, int(ttl * 1000)))
        return token if ok else None

    def unlock(self, key: str, token: str) -> None:
        """Release the miss lock for *key* if *token* still holds it."""
        self._unlock(keys=[self._k("lock:" + key)], args=[token])

    def locked(self, key: str) -> bool:
        """Whether some process holds the miss lock for *key*."""
        return bool(self._redis.exists(self._k("lock:" + key)))

    def describe(self) -> str:
        """``redis(namespace=...)``."""
        return f"redis(namespace={self.namespace!r})"


def store_from(store: Any) -> CacheStore | None:
    """The store ``cache(store=...)`` names: a `CacheStore`, a ``redis://`` URL or a redis-py client."""
    if store is None or isinstance(store, CacheStore):
        return store
    if is_redis_target(store):
        return RedisCacheStore(store if isinstance(store, str) else redis_client(store))
    msg = "cache(store=...) takes a redis:// URL, a redis-py client or a CacheStore, got "
    if isinstance(store, str):
        raise ValueError(msg + repr(store))  # noqa: TRY004 - a string of the wrong kind is a bad value, as in budget
    raise TypeError(msg + type(store).__name__)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
