"""The wire: usage, model and rate limits read from the SDKs' own HTTP exchange.

anthropic, openai and google-genai all send their requests through one HTTP
client library (``httpx2`` in their newest releases, ``httpx`` in older
ones). llmguard patches that library's clients once, when it is imported,
at the one method every request of a client goes through,
``Client._send_single_request`` (and ``AsyncClient``'s): one request, one
response, after the client applied its timeout, auth and redirects.

Outside a guarded call the patched method reads one context variable and
calls the original: nothing is recorded, nothing is changed. Inside one,
the response's byte stream is wrapped as it is handed to the SDK, so the
body passes through unchanged, chunk by chunk, as the SDK reads it:

- a JSON body is kept (its chunks, not a copy) and parsed once it ended;
- an SSE stream (``text/event-stream``) is never buffered: each event is
  looked at as it passes, and only the events that can carry usage or a
  failure (their data mentions ``usage`` or ``error``) are parsed.

What is read is given to `llmguard.providers` (``observe_result`` for a
body, ``StreamAccumulator`` for events: one parser for a result object,
its dict, and the wire), and the usage, model, provider, response id,
request id and rate-limit headers go on the attempt running now
(`_facts.wire_report`). Measured wire usage wins over the function's
returned object, and several requests in one attempt add up.

Turn it off with ``LLMGUARD_WIRE=0`` in the environment (read at import)
or `uninstall()`; `install()` puts it back. Both are idempotent.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os

from typing import Any

from . import _clock, _wire_budget, providers
from ._budget_scope import SCOPES
from ._context import _DEADLINE, _WORKER_DEADLINE, DeadlinePassed
from ._facts import _CURRENT, sane_usage, wire_report
from .providers._headers import lower_headers


__all__ = ["install", "installed", "uninstall"]

# The libraries patched, newest first.
LIBRARIES = ("httpx2", "httpx")

# (class, original method) for every method replaced, so `uninstall` restores them.
_PATCHED: list[tuple[type, str, Any]] = []

_REQUEST_ID_HEADERS = (b"request-id", b"x-request-id", b"x-goog-request-id")
_RATE_PREFIXES = ("anthropic-ratelimit-", "x-ratelimit-")


def installed() -> bool:
    """Whether the wire is observing (the transports are patched)."""
    return bool(_PATCHED)


def install() -> None:
    """Patch the HTTP client libraries that are installed (once; calling again does nothing)."""
    if _PATCHED:
        return
    for name in LIBRARIES:
        if importlib.util.find_spec(name) is None:
            continue
        lib = importlib.import_module(name)
        client = getattr(lib, "Client", None)
        aclient = getattr(lib, "AsyncClient", None)
        sync = getattr(client, "_send_single_request", None)
        asend = getattr(aclient, "_send_single_request", None)
        if client is None or aclient is None or sync is None or asend is None:
            continue  # a layout this module does not know: left alone
        # The library checks a response's stream is its own kind: the observers subclass it.
        observed = type("_SyncObserved", (_SyncObserved, lib.SyncByteStream), {})
        aobserved = type("_AsyncObserved", (_AsyncObserved, lib.AsyncByteStream), {})
        _PATCHED.append((client, "_send_single_request", sync))
        _PATCHED.append((aclient, "_send_single_request", asend))
        client._send_single_request = _sync_sender(sync, lib, observed)
        aclient._send_single_request = _async_sender(asend, lib, aobserved)


def uninstall() -> None:
    """Restore the libraries' own methods (the off switch)."""
    while _PATCHED:
        cls, name, original = _PATCHED.pop()
        setattr(cls, name, original)


def _sync_sender(original: Any, lib: Any, observed: type[_SyncObserved]) -> Any:
    timeout_error = lib.TimeoutException

    def _send_single_request(self: Any, request: Any) -> Any:
        running = _CURRENT.get()
        deadline = _DEADLINE.get()
        scopes = SCOPES.get()
        if running is None and deadline is None and not scopes:
            return original(self, request)
        if deadline is not None:
            deadline = _bound(request, deadline)
        scoped = _scoped(request, running) if scopes else None
        try:
            response = original(self, request)
        except BaseException as exc:
            if scoped is not None:
                _wire_budget.settle(scoped, exc)
            if deadline is not None and isinstance(exc, timeout_error):
                _passed(deadline, exc)
            raise
        _follow(request, response, running, scoped, deadline, lib, observed)
        return response

    _send_single_request.__llmguard_wire__ = True  # type: ignore[attr-defined]
    return _send_single_request


def _async_sender(original: Any, lib: Any, observed: type[_AsyncObserved]) -> Any:
    timeout_error = lib.TimeoutException

    async def _send_single_request(self: Any, request: Any) -> Any:
        running = _CURRENT.get()
        deadline = _DEADLINE.get()
        scopes = SCOPES.get()
        if running is None and deadline is None and not scopes:
            return await original(self, request)
        if deadline is not None:
            deadline = _bound(request, deadline)
        scoped = _scoped(request, running) if scopes else None
        try:
            response = await original(self, request)
        except BaseException as exc:
            if scoped is not None:
                _wire_budget.settle(scoped, exc)
            if deadline is not None and isinstance(exc, timeout_error):
                _passed(deadline, exc)
            raise
        _follow(request, response, running, scoped, deadline, lib, observed)
        return response

    _send_single_request.__llmguard_wire__ = True  # type: ignore[attr-defined]
    return _send_single_request


def _scoped(request: Any, running: Any) -> Any:
    """A budget scope's reservation for *request* when no budget guard covers it (`_wire_budget`), else None."""
    if _wire_budget.covered(running):
        return None
    return _wire_budget.reserve(request)


def _follow(
    request: Any,
    response: Any,
    running: Any,
    scoped: Any,
    deadline: float | None,
    lib: Any,
    observed: type[_SyncObserved | _AsyncObserved],
) -> None:
    """Watch *response* for the running attempt and a scope's reservation; bound its body by *deadline*."""
    runnings = [r for r in (running, None if scoped is None else (scoped[0], scoped[1])) if r is not None]
    after = None if scoped is None else functools.partial(_wire_budget.settle, scoped)
    watch = _Watch.of(request, response, runnings, lib, after) if runnings else None
    if watch is None and after is not None:
        after()  # nothing to read: the scopes are charged an estimate now
    if watch is not None or deadline is not None:
        _attach(response, watch, observed, deadline, lib.TimeoutException)


# -- deadlines ------------------------------------------------------------------------

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")


def _bound(request: Any, deadline: float) -> float | None:
    """Give *request* the time left before *deadline* as its own timeout (each phase: the smaller); the deadline bounding it.

    None when a sync `timeout`'s worker thread runs the request under that
    very deadline: the timeout enforces it by giving up on the worker, which
    runs on and is charged what it used (`_context._WORKER_DEADLINE`).
    """
    if _WORKER_DEADLINE.get() == deadline:
        return None
    left = deadline - _clock.now()
    if left <= 0:
        msg = "the deadline passed before the request was sent"
        raise DeadlinePassed(msg)
    extensions = request.extensions
    given = extensions.get("timeout") or {}
    bounded = {}
    for key in _TIMEOUT_KEYS:
        value = given.get(key)
        bounded[key] = left if value is None or value > left else value
    extensions["timeout"] = bounded
    return deadline


def _passed(deadline: float, exc: BaseException) -> None:
    """The HTTP library timed out: if the deadline is what ran out, say so past the SDK's retries."""
    if _clock.now() >= deadline - _SLACK:
        msg = "the deadline passed while the request was on the wire"
        raise DeadlinePassed(msg) from exc


def _late() -> None:
    msg = "the deadline passed while the response was read"
    raise DeadlinePassed(msg)


# A library timeout this close to the deadline is the deadline's (timers fire a little early or late).
_SLACK = 0.005


def _attach(
    response: Any,
    watch: _Watch | None,
    observed: type[_SyncObserved | _AsyncObserved],
    deadline: float | None,
    timeout_error: type[BaseException],
) -> None:
    """Have *watch* read *response*'s body as the SDK reads it (or now, if a transport handed it over read).

    With a *deadline*, reading the body past it raises `DeadlinePassed`.
    """
    content = getattr(response, "_content", None)
    if isinstance(content, bytes):  # already read (and decoded): a transport that built it from bytes
        if watch is not None:
            watch.decoded()
            watch.feed(content)
            watch.end(complete=True)
    else:
        response.stream = observed(response.stream, watch, deadline, timeout_error)


# -- reading one response ---------------------------------------------------------


def _provider_of_path(path: str) -> str | None:
    if path.endswith(("/messages", "/messages/batches", "/complete")):
        return "anthropic"
    if path.endswith(("/chat/completions", "/responses", "/completions", "/embeddings")):
        return "openai"
    if ":generateContent" in path or ":streamGenerateContent" in path or ":embedContent" in path:
        return "google"
    return None


class _Watch:
    """What one response tells, read as its bytes pass; delivered to the attempt once, at its end."""

    __slots__ = ("_acc", "_after", "_body", "_data", "_decoder", "_done", "_final", "_line", "_running", "facts", "sse")

    def __init__(self, running: list[Any], sse: bool, decoder: Any, facts: dict[str, Any], after: Any = None) -> None:
        self._running = running
        self._after = after
        self.sse = sse
        self._decoder = decoder
        self.facts = facts
        self._done = False
        self._final = False
        self._body: list[bytes] = []
        self._line = b""  # an SSE line not ended yet
        self._data: list[bytes] = []  # the data lines of the SSE event being read
        self._acc: providers.StreamAccumulator | None = providers.StreamAccumulator() if sse else None

    @classmethod
    def of(cls, request: Any, response: Any, running: list[Any], lib: Any, after: Any = None) -> _Watch | None:
        """A watch for *response*, or None when its body is neither JSON nor SSE (or cannot be decoded)."""
        try:
            headers = response.headers
            ctype = headers.get("content-type", "")
            sse = "text/event-stream" in ctype
            if not sse and "json" not in ctype:
                return None
            decoder = None
            encoding = headers.get("content-encoding", "").strip().lower()
            if encoding and encoding != "identity":
                make = getattr(getattr(lib, "_decoders", None), "SUPPORTED_DECODERS", {}).get(encoding)
                if make is None:
                    return None  # an encoding we cannot read: not observed (estimated, flagged)
                decoder = make()
            facts: dict[str, Any] = {
                "status": response.status_code,
                "provider": _provider_of_path(request.url.path),
                "rate_limits": {k: v for k, v in lower_headers(headers).items() if k.startswith(_RATE_PREFIXES)},
            }
            raw = getattr(headers, "raw", ())
            for key, value in raw:
                if key.lower() in _REQUEST_ID_HEADERS:
                    facts["request_id"] = value.decode("latin-1")
                    break
        except Exception:  # noqa: BLE001 - observing never breaks the request
            return None
        return cls(running, sse, decoder, facts, after)

    def decoded(self) -> None:
        """The body will be fed decoded already."""
        self._decoder = None

    def feed(self, chunk: bytes) -> None:
        """One chunk of the body, as it passes to the SDK."""
        try:
            if self._decoder is not None:
                chunk = _joined(self._decoder.decode(chunk))
            if self.sse:
                self._sse(chunk)
            else:
                self._body.append(chunk)
        except Exception:  # noqa: BLE001 - a body we cannot read is not observed; the SDK reads it
            self._decoder = None
            self.sse = False
            self._body = []
            self._done = True  # nothing more is read; `end` delivers "seen, nothing measured"
            self._deliver(None, complete=False)

    def _sse(self, chunk: bytes) -> None:
        lines = (self._line + chunk).split(b"\n")
        self._line = lines.pop()
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]  # noqa: PLW2901
            if not line:
                if data:
                    self._event(b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]" or b'"message_stop"' in data:
            self._final = True  # the stream's last word: the SDK may close it now without reading on
            return
        # Only events that can carry usage or a failure are parsed; text deltas pass by.
        if b"usage" not in data and b"Usage" not in data and b"error" not in data:
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if isinstance(event, dict):
            acc = self._acc
            assert acc is not None  # noqa: S101 - an SSE watch has one
            acc.feed(event)

    def end(self, *, complete: bool) -> None:
        """The body ended (*complete*: read to its end; else closed or failed before)."""
        if self._done:
            return
        self._done = True
        try:
            if self._decoder is not None:
                tail = _joined(self._decoder.flush())
                self._decoder = None
                if tail:
                    self.feed(tail)
            if self.sse:
                if self._line or self._data:
                    self._sse(b"\n\n")  # an event the stream ended inside
                acc = self._acc
                assert acc is not None  # noqa: S101
                if acc.failure is not None:
                    self.facts["failure"] = acc.failure
                complete = (complete or self._final) and acc.failure is None
                self._deliver((acc.usage, acc.model, acc.provider, acc.response_id), complete=complete)
                return
            body = b"".join(self._body)
            self._body = []
            found = None
            if complete and body:
                parsed = json.loads(body)
                facts = providers.observe_result(parsed) if isinstance(parsed, dict) else None
                if facts is not None:
                    found = (facts.usage, facts.model, facts.provider, facts.response_id)
            self._deliver(found, complete=complete)
        except Exception:  # noqa: BLE001 - garbage on the wire: seen, nothing measured
            self._deliver(None, complete=False)

    def _deliver(self, found: tuple[Any, ...] | None, *, complete: bool) -> None:
        usage = model = provider = response_id = None
        if found is not None:
            usage, model, provider, response_id = found
        facts = self.facts
        facts["model"] = model
        facts["response_id"] = response_id
        facts["provider"] = provider or facts["provider"]
        # Only a body read to its end measures: a stream cut or closed early is estimated where it was read.
        facts["usage"] = usage if complete and sane_usage(usage) else None
        if usage is not None and facts["usage"] is None and complete:
            facts["absurd"] = repr(usage)
        for running in self._running:
            try:  # noqa: SIM105 - free when nothing is raised
                wire_report(running, facts)
            except Exception:  # noqa: BLE001, S110 - never break the caller's request
                pass
        after, self._after = self._after, None
        if after is not None:
            after()  # a scope's charge: BudgetStoreError and the like are the caller's to see


def _joined(decoded: Any) -> bytes:
    """A decoder's output: bytes (httpx) or an iterator of bytes (httpx2)."""
    return decoded if isinstance(decoded, bytes) else b"".join(decoded)


class _Observed:
    """The response's byte stream, each chunk fed to a `_Watch` as it passes (nothing held back).

    With a deadline, a chunk arriving past it, or the library's read timeout
    at it, ends the body with `DeadlinePassed`. What happens per chunk, on a
    failure and at the end is here once; `_SyncObserved` and `_AsyncObserved`
    only iterate and close.
    """

    def __init__(self, inner: Any, watch: _Watch | None, deadline: float | None, timeout_error: type[BaseException]) -> None:
        self._inner = inner
        self._watch = watch
        self._deadline = deadline
        self._timeout_error = timeout_error

    def _seen(self, chunk: Any) -> None:
        """A chunk arrived: past the deadline it ends the body; else the watch reads it."""
        if self._deadline is not None and _clock.now() > self._deadline + _SLACK:
            _late()
        if self._watch is not None:
            self._watch.feed(chunk)

    def _failed(self, exc: BaseException) -> None:
        """Reading raised *exc*: the body is cut; the library's timeout at our deadline is `DeadlinePassed`."""
        if self._watch is not None:
            self._watch.end(complete=False)
        if self._deadline is not None and isinstance(exc, self._timeout_error):
            _passed(self._deadline, exc)

    def _ended(self, *, complete: bool) -> None:
        if self._watch is not None:
            self._watch.end(complete=complete)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _SyncObserved(_Observed):
    """`_Observed` over a sync byte stream."""

    def __iter__(self) -> Any:
        try:
            for chunk in self._inner:
                self._seen(chunk)
                yield chunk
        except BaseException as exc:
            self._failed(exc)
            raise
        self._ended(complete=True)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._ended(complete=False)


class _AsyncObserved(_Observed):
    """`_Observed` over an async byte stream."""

    async def __aiter__(self) -> Any:
        try:
            async for chunk in self._inner:
                self._seen(chunk)
                yield chunk
        except BaseException as exc:
            self._failed(exc)
            raise
        self._ended(complete=True)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._ended(complete=False)


def _enabled_by_environment() -> bool:
    return os.environ.get("LLMGUARD_WIRE", "1").strip().lower() not in ("0", "false", "off", "no")
