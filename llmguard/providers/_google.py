"""Google (google-genai): GenerateContentResponse facts, stream chunks, exception kinds.

Never imports ``google.genai``; classes are recognised by name and module.

Facts relied on (google-genai 3.4): the model is in
``model_version``, the id in ``response_id``, usage in ``usage_metadata``
(in a stream the last chunk's is cumulative, so each one seen replaces the
previous). Errors are ``errors.APIError`` with ``.code`` (HTTP status),
``.status`` (``RESOURCE_EXHAUSTED``...), ``.message``, ``.details`` and
``.response`` (an ``httpx2.Response`` with headers); ``ClientError`` for
4xx, ``ServerError`` for 5xx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._record import ErrorKind, Usage
from ._generic import (
    ErrorInfo,
    ResultFacts,
    google_candidate_text,
    google_usage,
    info,
    kind_for_status,
    message_of,
    mro_names,
    observe_google,
    reason,
    refine_bad_request,
    resolve_duck_result,
    s,
    simple,
    status_int,
)


if TYPE_CHECKING:
    from . import StreamAccumulator

__all__ = ["classifier_for", "feed_chunk", "observe", "observe_usage", "resolve_result"]

PROVIDER = "google"

# google.rpc status names -> kind, for errors whose HTTP code is missing.
_RPC_KIND: dict[str, ErrorKind] = {
    "RESOURCE_EXHAUSTED": ErrorKind.RATE_LIMITED,
    "UNAVAILABLE": ErrorKind.SERVER,
    "INTERNAL": ErrorKind.SERVER,
    "DEADLINE_EXCEEDED": ErrorKind.TIMEOUT,
    "INVALID_ARGUMENT": ErrorKind.BAD_REQUEST,
    "FAILED_PRECONDITION": ErrorKind.BAD_REQUEST,
    "UNAUTHENTICATED": ErrorKind.AUTH,
    "PERMISSION_DENIED": ErrorKind.AUTH,
    "NOT_FOUND": ErrorKind.NOT_FOUND,
    "ABORTED": ErrorKind.CONFLICT,
}


def observe(g: Any) -> ResultFacts:
    """Facts of a GenerateContentResponse."""
    return observe_google(g, PROVIDER)


def observe_usage(g: Any) -> tuple[Usage, str | None, str] | None:
    """`observe`'s usage, model and provider alone (None without usage)."""
    usage = google_usage(g.usage_metadata)
    return None if usage is None else (usage, s(g.model_version), PROVIDER)


def resolve_result(cls: type) -> Callable[[Any], ResultFacts | None] | None:
    """The extractor for results of class *cls* from google.genai."""
    if "GenerateContentResponse" in mro_names(cls, ("google",)):
        return observe
    return resolve_duck_result(cls)


def feed_chunk(acc: StreamAccumulator, chunk: Any) -> None:
    """Fold one streamed GenerateContentResponse (object or DictView)."""
    if acc.provider is None:
        acc.provider = PROVIDER
    candidates = chunk.candidates
    if candidates:
        first = candidates[0]
        text = google_candidate_text(first)
        if text:
            acc._parts.append(text)
        finish = reason(first.finish_reason)
        if finish is not None:
            acc.finish_reasons = (finish,)
    meta = chunk.usage_metadata
    if meta is not None:
        acc.usage = google_usage(meta)  # cumulative: the latest wins
    if not acc.model:
        acc.model = s(chunk.model_version) or None
    if not acc.response_id:
        acc.response_id = s(chunk.response_id) or None


def resolve_chunk(cls: type) -> Callable[[StreamAccumulator, Any], None] | None:
    """The feeder for stream items of class *cls* from google.genai."""
    if "GenerateContentResponse" in mro_names(cls, ("google",)):
        return feed_chunk
    return None


def _classify(exc: BaseException, now: float | None) -> ErrorInfo:
    e: Any = exc
    status = status_int(getattr(e, "code", None))
    rpc = s(getattr(e, "status", None))
    message = message_of(exc)
    if status is not None:
        kind = kind_for_status(status)
    else:
        kind = _RPC_KIND.get(rpc or "", ErrorKind.UNKNOWN)
    kind = refine_bad_request(kind, f"{s(getattr(e, 'message', None)) or ''} {message}")
    return info(kind, exc, status, PROVIDER, now, message)


def classifier_for(cls: type) -> Callable[[BaseException, float | None], ErrorInfo]:
    """Classifier for an exception class from google.genai."""
    if "APIError" in mro_names(cls, ("google",)):
        return _classify
    return simple(ErrorKind.UNKNOWN, PROVIDER)
