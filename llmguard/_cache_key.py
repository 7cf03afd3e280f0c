"""The cache key: the SHA-256 of a canonical form of the whole request.

What goes in (see `llmguard.cache` for why): a key-schema version, the
function's module, qualified name and code fingerprint (bytecode, constants
and the canonical form of the values its closure captured, read once at
decoration), then every argument bound to its parameter name, defaults
applied, ``**kwargs`` flattened in, values normalised (`canonical`), minus
the transport-only arguments (`TRANSPORT`), a method's instance and
``exclude=``, plus ``include=``; or, with ``key=``, what that returns.

`Keys` is one function's key maker, compiled when the function is decorated;
`check_options` checks what ``cache(...)`` was given, naming the bad option.
"""

from __future__ import annotations

import base64
import contextlib
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
import uuid

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from . import _check
from ._semantic import Semantic


if TYPE_CHECKING:
    from ._binder import Binder, Binding


__all__ = ["KEY_VERSION", "TRANSPORT", "Keys", "canonical", "check_options"]

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



# `Keys.of` for a method called without its instance (`CacheLayer.key_for`).
NO_INSTANCE: Final = object()


class Keys:
    """One function's key maker: what is keyed, bound and hashed, decided once."""

    __slots__ = (
        "_binder",
        "_class_in_key",
        "_custom",
        "_custom_sig",
        "_excluded",
        "_excluded_from",
        "_first_excluded",
        "_hasher",
        "_requests",
        "_self_in_key",
        "label",
        "names",
        "prefix",
        "takes_any_keyword",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        binder: Binder,
        *,
        key: Callable[..., Any] | None,
        include: frozenset[str],
        exclude: frozenset[str],
        requests: bool,
    ) -> None:
        """*requests*: `of` also returns the canonical request (semantic mode)."""
        self._custom = key
        self._custom_sig: inspect.Signature | None = None
        if key is not None:
            with contextlib.suppress(TypeError, ValueError):
                self._custom_sig = inspect.signature(key)
        self._requests = requests
        label = f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', None) or repr(fn)}"
        self.label = getattr(fn, "__qualname__", None) or repr(fn)
        ident = hashlib.blake2b(label.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
        self.prefix = ident + ":"
        self._hasher = hashlib.sha256(
            f"llmguard.cache/{KEY_VERSION}\x00{label}\x00{_code_fingerprint(fn)}\x00".encode(
                "utf-8", "surrogatepass"
            )
        )
        sig = binder.signature
        self.names = list(sig.parameters) if sig else []
        self.takes_any_keyword = bool(sig) and any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()  # type: ignore[union-attr]
        )
        for option, chosen in (("include", include), ("exclude", exclude)):
            unknown = sorted(n for n in chosen if n not in self.names and n != "self")
            if unknown and not self.takes_any_keyword:
                msg = f"cache({option}=...) names {unknown}, which {self.label}() has no parameter for"
                raise ValueError(msg)
        # A method's instance (the binder's rule, whatever its parameter is
        # called) is never an argument: it is keyed only when included (an
        # instance usually holds a client, not the request), a classmethod's
        # class (by name) unless excluded.
        first = binder.first
        excluded = frozenset((TRANSPORT - include) | exclude)
        self._excluded = excluded
        self._self_in_key = first is not None and bool({"self", first} & include)
        self._class_in_key = first is not None and first not in excluded
        self._binder: Binding | None = binder.binding(excluded) if sig is not None else None
        # From which positional argument on an excluded parameter may be passed
        # positionally (self/cls, the instance, is handled by the binder).
        positions = self._binder.pos_after_first if self._binder else ()
        self._excluded_from = min((i for i, n in enumerate(positions) if n in excluded), default=1 << 30)
        if self._binder is None:
            self._excluded_from = -1  # always look
        # A method called unbound (no instance) has self among its arguments.
        self._first_excluded = first is not None and first in excluded

    @property
    def is_method(self) -> bool:
        """Whether the function takes an instance (or class) first."""
        return self._binder is not None and bool(self._binder.first)

    def of(  # noqa: PLR0912 - the hit path, kept in one frame
        self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, Any] | None] | None:
        """The key of a call with these arguments (and its canonical request, for semantic mode).

        None when the arguments do not bind to the signature: the call then
        goes through uncached and the function raises its own TypeError.
        """
        if self._custom is not None:
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
            ) and instance is not NO_INSTANCE:
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
        return self.prefix + h.hexdigest(), bound if self._requests else None

    def _uncanonical(self, name: str, what: str) -> TypeError:
        return TypeError(
            f"cache: argument {name!r} of {self.label}() is {what}, which cannot be part "
            f"of a cache key; leave it out with cache(exclude=[{name!r}]) or key the call "
            f"yourself with cache(key=...)"
        )

    def _custom_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, None] | None:
        key = self._custom
        assert key is not None  # noqa: S101 - checked by the caller
        try:
            custom = key(*args, **kwargs)
        except TypeError:
            # Only arguments that do not bind mean "no key" (the call goes
            # through and the function raises its own TypeError); a TypeError
            # raised by the key function's body is the caller's bug.
            if self._custom_sig is None:
                return None  # no signature to tell the two apart
            try:
                self._custom_sig.bind(*args, **kwargs)
            except TypeError:
                return None
            raise
        try:
            doc = {"key": _norm(custom)}
        except (_Uncanonical, RecursionError) as exc:
            what = exc.args[0] if isinstance(exc, _Uncanonical) else "nested too deep"
            msg = f"cache(key=...) for {self.label}() returned {what}, which cannot be hashed canonically"
            raise TypeError(msg) from None
        return self.prefix + self.digest(doc), None

    def digest(self, doc: Any) -> str:
        """The hex SHA-256 of *doc*'s canonical JSON, after this function's identity."""
        h = self._hasher.copy()
        h.update(_ENCODE(doc).encode("utf-8", "surrogatepass"))
        return str(h.hexdigest())


# -- the options (checked when `cache` is configured) ----------------------------


def check_options(
    ttl: object,
    maxsize: object,
    key: object,
    include: Iterable[str],
    exclude: Iterable[str],
    semantic: object,
    cache_streams: object,
    cache_if: object,
) -> tuple[frozenset[str], frozenset[str]]:
    """Validate `cache`'s options at decoration time, naming the bad one; the include/exclude sets."""
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
