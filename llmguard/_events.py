"""The one place guards emit events through.

Every event has a stable name (``llmguard.<guard>.<what happened>``) and a
flat dict of fields. It goes to three sinks, each only when someone listens:

* the call's OTel span (``record.span``, set by `trace`, which scrubs
  credentials from what it records) as a span event;
* structlog, as one event on the ``llmguard`` logger, when the application
  has configured structlog (an unconfigured structlog would print to stdout,
  which a library must not do on its own);
* in-process listeners, such as `llmguard.testing.capture_events`.

String and exception fields are scrubbed of anything that looks like a
credential, and fields named like one redacted unless they are numbers
(`llmguard._secrets.scrub_named`), before structlog or a listener sees them.

With none of them, `emit` returns after three cheap checks.
"""

from __future__ import annotations

import threading

from typing import TYPE_CHECKING, Any, Final

import structlog

from ._secrets import scrub_fields


if TYPE_CHECKING:
    from collections.abc import Callable

    from ._record import CallRecord


# Stable event names. Later guards add theirs here, never inline.
RETRY_SCHEDULED: Final = "llmguard.retry.scheduled"
RETRY_EXHAUSTED: Final = "llmguard.retry.exhausted"
TIMEOUT_EXPIRED: Final = "llmguard.timeout.expired"
BUDGET_ALERT: Final = "llmguard.budget.alert"
BUDGET_EXCEEDED: Final = "llmguard.budget.exceeded"
BUDGET_STORE_ERROR: Final = "llmguard.budget.store_error"
BUDGET_UNPRICED: Final = "llmguard.budget.unpriced"
CACHE_HIT: Final = "llmguard.cache.hit"
CACHE_MISS: Final = "llmguard.cache.miss"
CACHE_SKIPPED: Final = "llmguard.cache.skipped"  # a result not stored (cache_if, a fallback, a cut stream...)
CACHE_FAILED: Final = "llmguard.cache.failed"  # the store or the embedder failed; the call went on
FALLBACK_USED: Final = "llmguard.fallback.used"
BREAKER_OPENED: Final = "llmguard.breaker.opened"
BREAKER_HALF_OPENED: Final = "llmguard.breaker.half_opened"
BREAKER_CLOSED: Final = "llmguard.breaker.closed"
RATELIMIT_WAITED: Final = "llmguard.ratelimit.waited"
RATELIMIT_REJECTED: Final = "llmguard.ratelimit.rejected"
VALIDATE_FAILED: Final = "llmguard.validate.failed"
STREAM_ABANDONED: Final = "llmguard.stream.abandoned"
CALL: Final = "llmguard.call"

_listeners: list[Callable[[str, dict[str, Any]], None]] = []
_listeners_lock = threading.Lock()
_logger = structlog.get_logger("llmguard")

_LEVELS: Final = frozenset({"debug", "info", "warning", "error"})


def add_listener(listener: Callable[[str, dict[str, Any]], None]) -> None:
    """Call *listener(name, fields)* for every event from now on."""
    with _listeners_lock:
        _listeners.append(listener)


def remove_listener(listener: Callable[[str, dict[str, Any]], None]) -> None:
    """Stop calling *listener*; unknown listeners are ignored."""
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def listening(record: CallRecord | None = None) -> bool:
    """Whether an event emitted now would reach anyone (to skip building it)."""
    return bool(
        _listeners
        or (record is not None and record.span is not None)
        or structlog.is_configured()
    )


def emit(
    name: str,
    record: CallRecord | None = None,
    *,
    level: str = "info",
    **fields: Any,
) -> None:
    """Send event *name* with *fields* to every sink that listens."""
    span = record.span if record is not None else None
    if not _listeners and span is None and not structlog.is_configured():
        return
    if record is not None:
        fields.setdefault("function", record.function)
    if span is not None:  # trace's span scrubs what it is given
        span.add_event(name, attributes=_span_attributes(fields))
    if not _listeners and not structlog.is_configured():
        return
    # A field may quote an exception or a header: no credential leaves here.
    clean = scrub_fields(fields)
    if structlog.is_configured():
        getattr(_logger, level if level in _LEVELS else "info")(name, **clean)
    for listener in tuple(_listeners):
        listener(name, clean)


def _span_attributes(fields: dict[str, Any]) -> dict[str, Any]:
    # OTel attributes take str/bool/int/float (and sequences of them) only.
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            out[f"llmguard.{key}"] = value
        elif isinstance(value, BaseException):
            out[f"llmguard.{key}"] = type(value).__qualname__
        else:
            out[f"llmguard.{key}"] = str(value)
    return out
