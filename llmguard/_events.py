"""The one place guards emit events through.

Every event has a stable name (``llmguard.<guard>.<what happened>``) and a
flat dict of fields. It goes to three sinks, each only when someone listens:

* the call's OTel span (``record.span``, set by `trace`, which scrubs
  credentials from what it records) as a span event;
* a log: structlog, as one event on the ``llmguard`` logger, when the
  application has configured structlog (an unconfigured structlog would
  print to stdout, which a library must not do on its own); otherwise the
  standard library's ``llmguard`` logger, when it is enabled for the
  event's level (`logging.Logger.isEnabledFor`: so a plain
  ``logging.basicConfig()`` shows retries, and ``level=logging.INFO`` one
  line per traced call). Never both. The stdlib record's message is the
  event name and its fields as ``key=value``; the fields are also on the
  record as ``llmguard.<key>`` attributes (``extra=``), the event name as
  ``llmguard.event``. The logger has a `logging.NullHandler`, as libraries
  should, so an application that configured no logging sees nothing;
* in-process listeners, such as `llmguard.testing.capture_events`.

String and exception fields are scrubbed of anything that looks like a
credential, and fields named like one redacted unless they are numbers
(`llmguard._secrets.scrub_named`), before a log or a listener sees them.

With none of them, `emit` returns after four cheap checks.
"""

from __future__ import annotations

import logging
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
BREAKER_STORE_ERROR: Final = "llmguard.breaker.store_error"  # Redis out of reach: the call went on, uncounted
ROUTE_CHOSEN: Final = "llmguard.route.chosen"  # the tier and model route chose, and why
RATELIMIT_WAITED: Final = "llmguard.ratelimit.waited"
RATELIMIT_REJECTED: Final = "llmguard.ratelimit.rejected"
RATELIMIT_STORE_ERROR: Final = "llmguard.ratelimit.store_error"
VALIDATE_FAILED: Final = "llmguard.validate.failed"
STREAM_ABANDONED: Final = "llmguard.stream.abandoned"
USAGE_ESTIMATED: Final = "llmguard.usage.estimated"  # nothing measured: usage estimated from the arguments and result
CALL: Final = "llmguard.call"

_listeners: list[Callable[[str, dict[str, Any]], None]] = []
_listeners_lock = threading.Lock()
_logger = structlog.get_logger("llmguard")
# The standard library's logger, for applications that did not configure structlog.
_stdlib = logging.getLogger("llmguard")
_stdlib.addHandler(logging.NullHandler())
_stdlib_enabled = _stdlib.isEnabledFor  # bound once: `listening` runs on every traced call
_INFO: Final = logging.INFO

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


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
    """Whether an info event emitted now would reach anyone (to skip building it).

    Info, the level of the events callers build ahead (the call line, cache
    hits): the stdlib logger counts only when enabled for info, so the
    default configuration (warnings) costs traced calls nothing.
    """
    return bool(
        _listeners
        or (record is not None and record.span is not None)
        or structlog.is_configured()
        or _stdlib_enabled(_INFO)
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
    levelno = _LEVELS.get(level, logging.INFO)
    configured = structlog.is_configured()
    stdlib = not configured and _stdlib_enabled(levelno)
    if not _listeners and span is None and not configured and not stdlib:
        return
    if record is not None:
        fields.setdefault("function", record.function)
    if span is not None:  # trace's span scrubs what it is given
        span.add_event(name, attributes=_span_attributes(fields))
    if not _listeners and not configured and not stdlib:
        return
    # A field may quote an exception or a header: no credential leaves here.
    clean = scrub_fields(fields)
    if configured:
        getattr(_logger, level if level in _LEVELS else "info")(name, **clean)
    elif stdlib:
        _log_stdlib(levelno, name, clean)
    for listener in tuple(_listeners):
        listener(name, clean)


class _Line:
    """An event's ``key=value`` text, rendered only if a handler formats the record."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.fields = fields

    def __str__(self) -> str:
        parts = [self.name]
        for key, value in self.fields.items():
            # Quoted when it would not read as one token.
            quote = isinstance(value, str) and (not value or any(c.isspace() for c in value))
            parts.append(f"{key}={value!r}" if quote else f"{key}={value}")
        return " ".join(parts)


def _log_stdlib(levelno: int, name: str, clean: dict[str, Any]) -> None:
    extra = {f"llmguard.{key}": value for key, value in clean.items()}
    extra["llmguard.event"] = name
    _stdlib.log(levelno, "%s", _Line(name, clean), extra=extra)


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
