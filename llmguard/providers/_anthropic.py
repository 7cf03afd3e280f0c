"""Anthropic: Message facts, stream events, exception kinds.

Nothing here imports ``anthropic``: every decision is made from the class
(its name, module and MRO, checked once per type and cached by the caller)
and from attributes of the instance. An exception or object of an SDK that
is not installed simply cannot reach this code, and one that is installed is
never imported just to be recognised.

Facts relied on (anthropic 2.12):

* ``Message.usage.input_tokens`` *excludes* cache reads/writes; we report the
  total. ``message_delta.usage`` is cumulative and only overrides the fields
  it sets (as the SDK's own accumulator does).
* ``MessageStream`` yields both the raw ``content_block_delta`` and a derived
  ``text`` event for the same text, so text events that merely repeat the
  previous delta are skipped.
* 529 has its own ``OverloadedError``; an error event inside a stream becomes
  an ``APIStatusError`` with ``status_code == 200`` and the error type in the
  body; spend limits are 429s with an ``error_code`` like
  ``enforced_spend_limit_reached``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._record import ErrorKind, Usage
from ._generic import (
    ErrorInfo,
    ResultFacts,
    anthropic_usage,
    info,
    kind_for_status,
    message_of,
    mro_names,
    n,
    observe_anthropic_message,
    reason,
    refine_bad_request,
    resolve_duck_result,
    s,
    simple,
    wrap,
)


if TYPE_CHECKING:
    from . import StreamAccumulator

__all__ = ["classifier_for", "feed_event", "observe_message", "observe_message_usage", "resolve_result"]

PROVIDER = "anthropic"

# error.type in an Anthropic error body -> kind (used for in-stream errors,
# which arrive with HTTP status 200, and to sharpen ambiguous statuses).
_BODY_KIND: dict[str, ErrorKind] = {
    "invalid_request_error": ErrorKind.BAD_REQUEST,
    "authentication_error": ErrorKind.AUTH,
    "billing_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "not_found_error": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.CONTEXT_TOO_LONG,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "timeout_error": ErrorKind.TIMEOUT,
    "api_error": ErrorKind.SERVER,
    "overloaded_error": ErrorKind.OVERLOADED,
}


# ------------------------------------------------------------------ results


def observe_message(m: Any) -> ResultFacts:
    """Facts of a Message / BetaMessage / ParsedMessage."""
    return observe_anthropic_message(m, PROVIDER)


def observe_message_usage(m: Any) -> tuple[Usage, str | None, str] | None:
    """`observe_message`'s usage, model and provider alone (None without usage)."""
    usage = anthropic_usage(m.usage)
    if usage is None:
        return None
    model = m.model
    return usage, model if type(model) is str else s(model), PROVIDER


def observe_raw_response(resp: Any) -> ResultFacts | None:
    """Facts of a sync ``APIResponse`` (``with_raw_response``) whose body is already read.

    ``parse()`` is only called when it cannot block or consume anything: not
    an SSE stream, and the HTTP body already read (``with_raw_response``
    reads it; ``with_streaming_response`` does not). The SDK caches the
    parsed object, so the caller's own ``parse()`` gets the same one.
    """
    from . import observe_result  # noqa: PLC0415 - the package imports this module first

    if getattr(resp, "_is_sse_stream", False) or getattr(resp, "_stream", False):
        return None
    http = getattr(resp, "http_response", None)
    if http is None or not http.is_closed:
        return None
    return observe_result(resp.parse())


def resolve_result(cls: type) -> Callable[[Any], ResultFacts | None] | None:
    """The extractor for results of class *cls* from the anthropic package."""
    names = mro_names(cls, ("anthropic",))
    if names & {"Message", "BetaMessage"} or (
        cls.__name__.endswith("Message") and "usage" in (getattr(cls, "model_fields", None) or {})
    ):
        return observe_message
    if names & {"AsyncAPIResponse", "AsyncBinaryAPIResponse"}:
        return None  # parse() is a coroutine: nothing we can read synchronously
    if names & {"APIResponse", "LegacyAPIResponse"}:
        return observe_raw_response
    if names & {"MessageTokensCount", "BetaMessageTokensCount"}:
        return None  # count_tokens is free: not usage of a call
    return resolve_duck_result(cls)


# ------------------------------------------------------------------ streams


def _set_usage(acc: StreamAccumulator, u: Any, *, override: bool) -> None:
    """Fold an Anthropic (delta) usage into *acc*; delta fields only when set."""
    raw = acc._anthropic_usage
    if raw is None or not override:
        raw = acc._anthropic_usage = [0, 0, 0, 0, 0]
    for i, name in enumerate(
        ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    ):
        value = getattr(u, name, None)
        if value is not None:
            raw[i] = n(value)
    details = wrap(getattr(u, "output_tokens_details", None))  # a dict on older SDKs
    if details is not None:
        raw[4] = n(getattr(details, "thinking_tokens", 0))
    acc.usage = Usage(raw[0] + raw[2] + raw[3], raw[1], raw[2], raw[3], raw[4])


def _message_start(acc: StreamAccumulator, ev: Any) -> None:
    msg = ev.message
    if msg is None:
        return
    acc.model = s(msg.model) or acc.model
    acc.response_id = s(msg.id) or acc.response_id
    if msg.usage is not None:
        _set_usage(acc, msg.usage, override=False)


def _content_block_delta(acc: StreamAccumulator, ev: Any) -> None:
    delta = ev.delta
    if delta is not None and delta.type == "text_delta":
        text = delta.text
        if text:
            acc._parts.append(text)
            acc._pending = text  # a MessageStream repeats it as a `text` event next


def _text(acc: StreamAccumulator, ev: Any) -> None:
    text = ev.text
    if not text:
        return
    if acc._pending is not None and acc._pending == text:
        acc._pending = None  # the echo of the delta just counted
        return
    acc._parts.append(text)


def _message_delta(acc: StreamAccumulator, ev: Any) -> None:
    delta = ev.delta
    if delta is not None:
        stop = reason(delta.stop_reason)
        if stop is not None:
            acc.finish_reasons = (stop,)
    if ev.usage is not None:
        _set_usage(acc, ev.usage, override=True)


def _message_stop(acc: StreamAccumulator, ev: Any) -> None:
    # MessageStream's stop event carries the accumulated message: use it for
    # whatever the raw events did not provide.
    msg = getattr(ev, "message", None)
    if msg is not None:
        acc._fill(observe_anthropic_message(msg, PROVIDER))


_EVENTS: dict[str, Callable[[StreamAccumulator, Any], None]] = {
    "message_start": _message_start,
    "content_block_delta": _content_block_delta,
    "text": _text,
    "message_delta": _message_delta,
    "message_stop": _message_stop,
}
EVENT_TYPES = frozenset(_EVENTS)


def feed_event(acc: StreamAccumulator, ev: Any) -> None:
    """Fold one Anthropic stream event (raw or MessageStream, object or DictView)."""
    handler = _EVENTS.get(ev.type)
    if handler is not None:
        if acc.provider is None:
            acc.provider = PROVIDER
        handler(acc, ev)


def resolve_chunk(cls: type) -> Callable[[StreamAccumulator, Any], None] | None:
    """The feeder for stream items of class *cls* from the anthropic package."""
    if "type" in (getattr(cls, "model_fields", None) or {}):
        return feed_event
    return None


# ----------------------------------------------------------------- errors


def _classify_status(exc: BaseException, now: float | None) -> ErrorInfo:
    e: Any = exc
    status: int | None = getattr(e, "status_code", None)
    body = getattr(e, "body", None)
    err = body.get("error") if isinstance(body, Mapping) else None
    etype = s(getattr(e, "type", None)) or (
        s(err.get("type")) if isinstance(err, Mapping) else None
    )
    details = err.get("details") if isinstance(err, Mapping) else None
    code = s(getattr(e, "error_code", None)) or (  # anthropic < 2 has no .error_code
        s(details.get("error_code")) if isinstance(details, Mapping) else None
    )
    api_message = s(getattr(e, "api_message", None)) or (
        s(err.get("message")) if isinstance(err, Mapping) else None
    )
    message = message_of(exc)

    if etype == "overloaded_error":
        kind = ErrorKind.OVERLOADED
    elif status is None or status < 400:
        # An error event inside a 200 stream: only the body says what it was.
        kind = _BODY_KIND.get(etype or "", ErrorKind.UNKNOWN)
    elif status == 413:
        kind = ErrorKind.CONTEXT_TOO_LONG  # request_too_large: the request must shrink
    else:
        kind = kind_for_status(status)
        if etype == "rate_limit_error":
            kind = ErrorKind.RATE_LIMITED
        kind = refine_bad_request(kind, f"{api_message or ''} {code or ''} {message}")
        if kind is ErrorKind.BAD_REQUEST and "refusal" in (code or ""):
            kind = ErrorKind.CONTENT_FILTERED
    spent = kind is ErrorKind.RATE_LIMITED and bool(code) and "spend_limit" in (code or "")
    if spent:
        # Still a 429, but waiting a few seconds will not lift a spend limit.
        message = f"spend limit reached ({code}): {message}"
    exhausted = spent or etype == "billing_error" or status == 402
    return info(kind, exc, status, PROVIDER, now, message, exhausted=exhausted)


def classifier_for(cls: type) -> Callable[[BaseException, float | None], ErrorInfo]:
    """Classifier for an exception class from the anthropic package."""
    names = mro_names(cls, ("anthropic",))
    if "APITimeoutError" in names:
        return simple(ErrorKind.TIMEOUT, PROVIDER)
    if "APIConnectionError" in names:
        return simple(ErrorKind.CONNECTION, PROVIDER)
    if "APIStatusError" in names:
        return _classify_status
    return simple(ErrorKind.UNKNOWN, PROVIDER)
