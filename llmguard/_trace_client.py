"""Where a traced call's request goes: ``server.address`` / ``server.port``, and whether its SDK traces itself.

`_ClientFinder` finds the SDK client a function calls (in its closure, the
module globals its code names, its arguments, ``self``) without calling
anything; `_sdk_span_provider` reads the client's public switch for its own
GenAI spans. An address known only at the end comes from the error's request
(`_address_of_url`) or the stream's HTTP response (`_stream_address`).
"""

from __future__ import annotations

import types

from collections.abc import Callable
from typing import Any, Final

from . import providers
from ._stream import _StreamBase


_UNSET: Any = object()

_CLIENT_TYPES: dict[type, bool] = {}
_CLIENT_ROOTS: Final = ("anthropic", "openai", "google")


def _is_client(obj: object) -> bool:
    cls = type(obj)
    known = _CLIENT_TYPES.get(cls)
    if known is None:
        root = (getattr(cls, "__module__", "") or "").partition(".")[0]
        known = root in _CLIENT_ROOTS and hasattr(cls, "base_url") and not isinstance(obj, type)
        if len(_CLIENT_TYPES) > 1024:
            _CLIENT_TYPES.clear()
        _CLIENT_TYPES[cls] = known
    return known


def _may_hold_client(value: Any) -> bool:
    """Whether a variable holding *value* now may hold an SDK client (now or later)."""
    if value is _UNSET or value is None:
        return True  # not bound yet
    if isinstance(value, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
        return False
    return _is_client(value) or not isinstance(value, (str, bytes, int, float, bool, tuple, list, dict))


def _unwrap(fn: Any) -> Any:
    """The user's function under llmguard's (and functools') wrappers."""
    for _ in range(16):
        if isinstance(fn, (staticmethod, classmethod)):
            fn = fn.__func__
        inner = getattr(fn, "__wrapped__", None)
        if inner is None or inner is fn:
            break
        fn = inner
    return fn


def _address_of_url(url: Any) -> tuple[str, int] | None:
    """(host, port) of an httpx/httpx2 URL or a URL string; None if it has none."""
    if url is None:
        return None
    try:
        if isinstance(url, str):
            from urllib.parse import urlsplit  # noqa: PLC0415

            parts = urlsplit(url)
            host, port, scheme = parts.hostname, parts.port, parts.scheme
        else:
            host, port, scheme = url.host, url.port, url.scheme
    except Exception:  # noqa: BLE001 - an odd URL object just has no address
        return None
    if not host:
        return None
    if port is None:
        port = 443 if scheme == "https" else 80
    return str(host), int(port)


# (server address, llmguard's name for the client's SDK, `_sdk_span_provider` of the client)
_Endpoint = tuple["tuple[str, int] | None", "str | None", Any]
_NOWHERE: _Endpoint = (None, None, None)
_GLOBAL_PROVIDER: Final = object()  # an SDK span from the global tracer provider


def _sdk_span_provider(client: Any) -> Any:
    """Where *client*'s own GenAI span of each request goes, or None when it opens none.

    anthropic ≥ 2 opens a CLIENT span per API call (every SDK retry and the
    stream's reading included), with ``gen_ai.usage.*``, unless its tracing
    is off (``ANTHROPIC_OPEN_TELEMETRY=false`` or ``open_telemetry=False``,
    resolved when the client is built and public as ``client.open_telemetry``).
    The answer is its tracer provider (`_GLOBAL_PROVIDER` for the global one,
    read at the end of each call: it may be set later); whether that provider
    records is asked then. openai and google-genai trace nothing themselves.
    """
    try:
        options = client.open_telemetry
        if not options["traces"]["enabled"]:
            return None
        return options.get("tracer_provider") or _GLOBAL_PROVIDER
    except Exception:  # noqa: BLE001 - an SDK without self-tracing (or an odd option) opens no span
        return None


class _ClientFinder:
    """Finds the SDK client a function calls, to say which server it talks to.

    Looked for, cheaply, on each call (a client may be rebound): in the
    function's closure, in the module globals its code names, in its
    arguments, and on ``self``.
    """

    __slots__ = ("_cells", "_globals", "_instance_attr", "_last", "_names")

    def __init__(self, fn: Callable[..., Any]) -> None:
        cells: list[Any] = []
        names: list[str] = []
        self._globals: dict[str, Any] = {}
        self._collect(_unwrap(fn), cells, names, depth=0, seen=set())
        self._cells = tuple(cells)
        self._names = tuple(names)
        self._instance_attr: dict[type, str | None] = {}
        self._last: tuple[Any, _Endpoint] = (None, _NOWHERE)

    def _collect(self, target: Any, cells: list[Any], names: list[str], depth: int, seen: set[int]) -> None:
        """Where a client may be found: *target*'s cells and globals, and its helpers' (two levels)."""
        if id(target) in seen or len(cells) + len(names) >= 16:
            return
        seen.add(id(target))
        code = getattr(target, "__code__", None)
        g: dict[str, Any] = getattr(target, "__globals__", None) or {}
        if not self._globals:
            self._globals = g
        helpers: list[Any] = []
        for cell in getattr(target, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # empty now, may be filled later
                cells.append(cell)
                continue
            if isinstance(value, types.FunctionType):
                helpers.append(value)
            elif _may_hold_client(value):
                cells.append(cell)
        for name in code.co_names if code is not None else ():
            value = g.get(name, _UNSET)
            if isinstance(value, types.FunctionType):
                helpers.append(value)
            elif g is self._globals and _may_hold_client(value) and name not in names:
                names.append(name)
        # A function that calls a helper holding the client (``ask`` calling
        # ``create`` which uses ``client``): look one or two levels down.
        # Only the user's own helpers (same module): a library function's
        # globals are never where the user's client lives.
        if depth < 2:
            module = getattr(target, "__module__", None)
            for helper in map(_unwrap, helpers):
                if getattr(helper, "__module__", None) == module:
                    self._collect(helper, cells, names, depth + 1, seen)

    def _address(self, client: Any) -> _Endpoint:
        last = self._last
        if last[0] is client:
            return last[1]
        address = _address_of_url(getattr(client, "base_url", None))
        sdk = providers.provider_of(client)
        found = (address, sdk, _sdk_span_provider(client))
        self._last = (client, found)
        return found

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any], instance: Any) -> _Endpoint:
        """(server address, llmguard provider name, SDK span provider) of the client the call will use."""
        for cell in self._cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if _is_client(value):
                return self._address(value)
        g = self._globals
        for name in self._names:
            value = g.get(name)
            if value is not None and _is_client(value):
                return self._address(value)
        # Arguments: a type seen before is one dict lookup (`_is_client`, inlined).
        known_types = _CLIENT_TYPES
        for value in args[:4]:
            known = known_types.get(type(value))
            if known or (known is None and _is_client(value)):
                return self._address(value)
        for value in kwargs.values():
            known = known_types.get(type(value))
            if known or (known is None and _is_client(value)):
                return self._address(value)
        return self._on_instance(instance) if instance is not None else _NOWHERE

    def _on_instance(self, instance: Any) -> _Endpoint:
        cls = type(instance)
        try:
            attr = self._instance_attr[cls]
        except KeyError:
            attr = None
            for key, value in list(getattr(instance, "__dict__", {}).items()):
                if _is_client(value):
                    attr = key
                    break
            self._instance_attr[cls] = attr
        if attr is None:
            return _NOWHERE
        value = getattr(instance, attr, None)
        return self._address(value) if value is not None and _is_client(value) else _NOWHERE



def _stream_address(stream: _StreamBase) -> tuple[str, int] | None:
    """(host, port) of the HTTP response an SDK stream reads, if it has one."""
    source = stream._innermost()._source
    if source is None or isinstance(source, _StreamBase):
        return None
    try:
        response = getattr(source, "response", None)
        return _address_of_url(getattr(response, "url", None)) if response is not None else None
    except Exception:  # noqa: BLE001 - a stream helper without a response is fine
        return None

