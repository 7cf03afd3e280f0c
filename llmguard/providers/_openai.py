"""OpenAI: ChatCompletion / Responses / embeddings facts, stream chunks, exception kinds.

Like `_anthropic`, this never imports ``openai``; classes are recognised by
name and module once per type.

Facts relied on (openai 3.54):

* ``prompt_tokens`` / Responses ``input_tokens`` already *include* cached
  tokens (``*_tokens_details.cached_tokens``).
* Chat streams carry usage only with ``stream_options.include_usage``, on a
  final chunk whose ``choices`` is empty. ``ChatCompletionStream`` yields a
  ``chunk`` event (holding the raw chunk) before the derived
  ``content.delta``; only the former is read so text is not doubled.
* Responses streams report usage in ``response.completed`` (or
  ``response.incomplete`` / ``response.failed``).
* ``e.body`` of an ``APIStatusError`` is the *inner* error object
  (``e.code``, ``e.type``); an error inside a stream is raised as a bare
  ``APIError`` (no status) with the same body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._record import ErrorKind, Usage
from ._generic import (
    ErrorInfo,
    ResultFacts,
    info,
    kind_for_status,
    message_of,
    mro_names,
    observe_chat_completion,
    observe_embeddings,
    observe_responses,
    openai_chat_usage,
    openai_responses_usage,
    reason,
    refine_bad_request,
    resolve_duck_result,
    responses_reasons,
    s,
    simple,
)


if TYPE_CHECKING:
    from . import StreamAccumulator

__all__ = [
    "classifier_for",
    "feed_chat_chunk",
    "feed_event",
    "observe_chat",
    "observe_chat_usage",
    "observe_response",
    "observe_response_usage",
    "resolve_result",
]

PROVIDER = "openai"

# code / type of an OpenAI error body -> kind (for in-stream APIErrors that
# have no status, and to sharpen 400s).
_BODY_KIND: dict[str, ErrorKind] = {
    "context_length_exceeded": ErrorKind.CONTEXT_TOO_LONG,
    "string_above_max_length": ErrorKind.CONTEXT_TOO_LONG,
    "content_filter": ErrorKind.CONTENT_FILTERED,
    "content_policy_violation": ErrorKind.CONTENT_FILTERED,
    "rate_limit_exceeded": ErrorKind.RATE_LIMITED,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "insufficient_quota": ErrorKind.RATE_LIMITED,
    "tokens": ErrorKind.RATE_LIMITED,
    "requests": ErrorKind.RATE_LIMITED,
    "server_error": ErrorKind.SERVER,
    "internal_error": ErrorKind.SERVER,
    "api_error": ErrorKind.SERVER,
    "service_unavailable": ErrorKind.SERVER,
    "overloaded": ErrorKind.OVERLOADED,
    "overloaded_error": ErrorKind.OVERLOADED,
    "timeout": ErrorKind.TIMEOUT,
    "invalid_request_error": ErrorKind.BAD_REQUEST,
    "invalid_api_key": ErrorKind.AUTH,
    "authentication_error": ErrorKind.AUTH,
    "model_not_found": ErrorKind.NOT_FOUND,
}


# ------------------------------------------------------------------ results


def observe_chat(c: Any) -> ResultFacts:
    """Facts of a ChatCompletion / legacy Completion."""
    return observe_chat_completion(c, PROVIDER)


def observe_chat_usage(c: Any) -> tuple[Usage, str | None, str] | None:
    """`observe_chat`'s usage, model and provider alone (None without usage)."""
    usage = openai_chat_usage(c.usage)
    return None if usage is None else (usage, s(c.model), PROVIDER)


def observe_response(r: Any) -> ResultFacts:
    """Facts of a Responses ``Response``."""
    # The SDK's output_text property already joins the output_text parts.
    text = getattr(r, "output_text", None)
    return observe_responses(r, PROVIDER, text if isinstance(text, str) else None)


def observe_response_usage(r: Any) -> tuple[Usage, str | None, str] | None:
    """`observe_response`'s usage, model and provider alone (None without usage)."""
    usage = openai_responses_usage(r.usage)
    return None if usage is None else (usage, s(r.model), PROVIDER)


def _observe_embeddings(e: Any) -> ResultFacts:
    return observe_embeddings(e, PROVIDER)


def resolve_result(cls: type) -> Callable[[Any], ResultFacts | None] | None:
    """The extractor for results of class *cls* from the openai package."""
    from ._anthropic import observe_raw_response  # noqa: PLC0415 - same Stainless response shape

    names = mro_names(cls, ("openai",))
    if names & {"ChatCompletion", "Completion"}:
        return observe_chat
    if "Response" in names and any(
        k.__name__ == "Response" and k.__module__.startswith("openai.types.responses")
        for k in cls.__mro__
    ):
        return observe_response
    if "CreateEmbeddingResponse" in names:
        return _observe_embeddings
    if names & {"AsyncAPIResponse", "AsyncBinaryAPIResponse"}:
        return None  # parse() is a coroutine
    if names & {"LegacyAPIResponse", "APIResponse"}:
        return observe_raw_response
    return resolve_duck_result(cls)


# ------------------------------------------------------------------ streams


def feed_chat_chunk(acc: StreamAccumulator, chunk: Any) -> None:
    """Fold one ChatCompletionChunk (object or DictView)."""
    if not acc.model:  # Azure's first chunk (prompt filter results) may have model ""
        acc.provider = acc.provider or PROVIDER
        acc.model = s(chunk.model) or None
        acc.response_id = acc.response_id or s(chunk.id) or None
    for choice in chunk.choices or ():
        if choice.index == 0 or choice.index is None:
            delta = choice.delta
            if delta is not None:
                text = delta.content
                if text:
                    acc._parts.append(text)
        if choice.finish_reason is not None:
            acc.finish_reasons = (*acc.finish_reasons, reason(choice.finish_reason))  # type: ignore[arg-type]
    usage = chunk.usage
    if usage is not None:
        acc.usage = openai_chat_usage(usage)


def _chunk_event(acc: StreamAccumulator, ev: Any) -> None:
    # ChatCompletionStream's ChunkEvent wraps the raw chunk (its
    # content.delta twin is ignored so text is counted once).
    chunk = ev.chunk
    if chunk is not None:
        feed_chat_chunk(acc, chunk)


def _text_delta(acc: StreamAccumulator, ev: Any) -> None:
    text = ev.delta
    if text and isinstance(text, str):
        acc._parts.append(text)


def _response_started(acc: StreamAccumulator, ev: Any) -> None:
    r = ev.response
    if r is not None:
        acc.model = acc.model or s(r.model)
        acc.response_id = acc.response_id or s(r.id)


def _response_finished(acc: StreamAccumulator, ev: Any) -> None:
    r = ev.response
    if r is None:
        return
    acc.model = s(r.model) or acc.model
    acc.response_id = s(r.id) or acc.response_id
    if r.usage is not None:
        acc.usage = openai_responses_usage(r.usage)
    acc.finish_reasons = responses_reasons(r)


def _stream_error(acc: StreamAccumulator, ev: Any) -> None:
    # A Responses ``error`` event: the SDK yields it and ends the stream
    # without raising, so the stream must not pass for a success.
    acc.failure = s(getattr(ev, "message", None)) or s(getattr(ev, "code", None)) or "error event"


def _response_failed(acc: StreamAccumulator, ev: Any) -> None:
    _response_finished(acc, ev)
    error = getattr(ev.response, "error", None)
    acc.failure = s(getattr(error, "message", None)) or s(getattr(error, "code", None)) or "response.failed"


_EVENTS: dict[str, Callable[[StreamAccumulator, Any], None]] = {
    "chunk": _chunk_event,
    "response.output_text.delta": _text_delta,
    "response.created": _response_started,
    "response.in_progress": _response_started,
    "response.queued": _response_started,
    "response.completed": _response_finished,
    "response.incomplete": _response_finished,
    "response.failed": _response_failed,
    "error": _stream_error,
}
EVENT_TYPES = frozenset(_EVENTS)


def feed_event(acc: StreamAccumulator, ev: Any) -> None:
    """Fold one Responses stream event or ChatCompletionStream event."""
    handler = _EVENTS.get(ev.type)
    if handler is not None:
        if acc.provider is None:
            acc.provider = PROVIDER
        handler(acc, ev)


def resolve_chunk(cls: type) -> Callable[[StreamAccumulator, Any], None] | None:
    """The feeder for stream items of class *cls* from the openai package."""
    names = mro_names(cls, ("openai",))
    if "ChatCompletionChunk" in names:
        return feed_chat_chunk
    fields = getattr(cls, "model_fields", None) or {}
    if "type" in fields:
        return feed_event
    if "choices" in fields:
        return feed_chat_chunk
    return None


# ----------------------------------------------------------------- errors


def _body_fields(exc: Any) -> tuple[str | None, str | None, str]:
    """(code, type, text to search) of an OpenAI error."""
    body = getattr(exc, "body", None)
    code = s(getattr(exc, "code", None))
    etype = s(getattr(exc, "type", None))
    msg = ""
    if isinstance(body, Mapping):
        nested = body.get("error")
        inner: Mapping[str, Any] = nested if isinstance(nested, Mapping) else body
        code = code or s(inner.get("code"))
        etype = etype or s(inner.get("type"))
        msg = s(inner.get("message")) or ""
    return code, etype, msg


def _classify_status(exc: BaseException, now: float | None) -> ErrorInfo:
    e: Any = exc
    status = getattr(e, "status_code", None)
    code, _, body_msg = _body_fields(e)
    message = message_of(exc)
    kind = kind_for_status(status)
    if kind is ErrorKind.BAD_REQUEST:
        by_code = _BODY_KIND.get(code or "")
        if by_code in (ErrorKind.CONTEXT_TOO_LONG, ErrorKind.CONTENT_FILTERED):
            kind = by_code
        else:
            kind = refine_bad_request(kind, f"{body_msg} {message}")
    exhausted = kind is ErrorKind.RATE_LIMITED and code == "insufficient_quota"
    if exhausted:
        # Still a 429, but the account is out of credit: waiting won't help.
        message = f"quota exhausted (insufficient_quota): {message}"
    return info(kind, exc, status, PROVIDER, now, message, exhausted=exhausted or status == 402)


def _classify_stream_error(exc: BaseException, now: float | None) -> ErrorInfo:  # noqa: ARG001
    """A bare ``APIError``: raised for an error *inside* a stream (no status)."""
    code, etype, body_msg = _body_fields(exc)
    kind = _BODY_KIND.get(code or "") or _BODY_KIND.get(etype or "") or ErrorKind.UNKNOWN
    message = message_of(exc)
    if kind is ErrorKind.UNKNOWN or kind is ErrorKind.BAD_REQUEST:
        text = f"{body_msg} {message}".lower()
        if "overloaded" in text:
            kind = ErrorKind.OVERLOADED
        elif "rate limit" in text:
            kind = ErrorKind.RATE_LIMITED
        elif kind is ErrorKind.BAD_REQUEST:
            kind = refine_bad_request(kind, f"{body_msg} {message}")
    return ErrorInfo(kind, None, None, None, PROVIDER, message)


def classifier_for(cls: type) -> Callable[[BaseException, float | None], ErrorInfo]:
    """Classifier for an exception class from the openai package."""
    names = mro_names(cls, ("openai",))
    if "APITimeoutError" in names:
        return simple(ErrorKind.TIMEOUT, PROVIDER)
    if "APIConnectionError" in names:
        return simple(ErrorKind.CONNECTION, PROVIDER)
    if "ContentFilterFinishReasonError" in names:
        return simple(ErrorKind.CONTENT_FILTERED, PROVIDER)
    if "APIStatusError" in names:
        return _classify_status
    if "APIResponseValidationError" in names:
        return simple(ErrorKind.UNKNOWN, PROVIDER)
    if "APIError" in names:
        return _classify_stream_error
    return simple(ErrorKind.UNKNOWN, PROVIDER)
