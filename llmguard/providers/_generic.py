"""Provider-neutral pieces: the fact records, usage normalisation, status codes.

The SDK-specific modules (`_anthropic`, `_openai`, `_google`) build on these;
this module also handles what belongs to no SDK: plain dicts (e.g. the
``json.loads`` of a raw HTTP body), duck-typed objects from other libraries,
``httpx``/``httpx2`` exceptions, builtin timeouts and connection errors, and
any exception that merely carries an HTTP status.

Nothing here imports an SDK. Dicts are read through `DictView`, which makes
``d["usage"]["input_tokens"]`` readable as ``view.usage.input_tokens`` (and
Google's camelCase as snake_case), so one extractor serves both the SDK
objects and their JSON.
"""

from __future__ import annotations

import inspect
import math
import re

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._record import ErrorKind, Usage
from ._headers import headers_of, lower_headers, retry_after_lower, should_retry_lower


__all__ = [
    "DictView",
    "ErrorInfo",
    "ResultFacts",
    "anthropic_usage",
    "duck_usage",
    "google_usage",
    "openai_chat_usage",
    "openai_responses_usage",
]

_MISSING: Any = object()
MESSAGE_LIMIT = 1000  # ErrorInfo.message is for logs and spans; keep it bounded


@dataclass(slots=True)
class ResultFacts:
    """What a (non-streamed) provider result says about the call."""

    provider: str | None
    model: str | None
    usage: Usage | None
    response_id: str | None
    finish_reasons: tuple[str, ...]
    text: str | None


@dataclass(slots=True, frozen=True)
class ErrorInfo:
    """What an exception means for guards: its kind and the server's advice."""

    kind: ErrorKind
    status: int | None
    retry_after: float | None  # seconds, >= 0, from the response headers
    should_retry: bool | None  # the server's x-should-retry verdict
    provider: str | None
    message: str
    # The account is out of quota or credit (a billing error, an exhausted
    # quota, a spend limit): waiting seconds will not help, whatever the kind.
    exhausted: bool = False


# --------------------------------------------------------------------- dicts

_CAMEL: dict[str, str] = {}


def _camel(name: str) -> str:
    camel = _CAMEL.get(name)
    if camel is None:
        head, *rest = name.split("_")
        camel = _CAMEL[name] = head + "".join(p[:1].upper() + p[1:] for p in rest)
    return camel


class DictView:
    """Attribute access to a mapping: missing keys read as None.

    ``view.usage_metadata`` also finds ``usageMetadata``, since Google's wire
    JSON is camelCase while its SDK (and ``model_dump()``) is snake_case.
    """

    __slots__ = ("_d",)

    def __init__(self, d: Mapping[str, Any]) -> None:
        self._d = d

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        d = self._d
        value = d.get(name, _MISSING)
        if value is _MISSING:
            camel = _camel(name)
            value = d.get(camel) if camel != name else None
        return wrap(value)

    def __repr__(self) -> str:
        return f"DictView({self._d!r})"


_SCALARS = frozenset({str, int, float, bool, type(None)})


def wrap(value: Any) -> Any:
    """*value* with mappings (also inside lists) readable by attribute."""
    cls = type(value)
    if cls in _SCALARS:  # most fields of a JSON body: no ABC check (the wire reads every response here)
        return value
    if cls is dict:
        return DictView(value)
    if isinstance(value, Mapping):
        return DictView(value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


# --------------------------------------------------------------------- usage


def n(value: Any) -> int:
    """A token count: ints as they are, None/garbage as 0."""
    if type(value) is int:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(int(value), 0)
    return 0


def s(value: Any) -> str | None:
    """A string field, or None when absent or not a string."""
    return value if isinstance(value, str) else None


def anthropic_usage(u: Any) -> Usage | None:
    """Usage from an Anthropic ``Usage`` (whose input_tokens *exclude* the cache)."""
    if u is None:
        return None
    # Every response passes here: ints (or None for the cache fields) are
    # taken as they are, anything else goes through `n`.
    cache_read = getattr(u, "cache_read_input_tokens", None)
    if type(cache_read) is not int:
        cache_read = 0 if cache_read is None else n(cache_read)
    cache_write = getattr(u, "cache_creation_input_tokens", None)
    if type(cache_write) is not int:
        cache_write = 0 if cache_write is None else n(cache_write)
    # wrap: SDKs older than a field keep it as a plain dict (extra="allow").
    details = getattr(u, "output_tokens_details", None)
    reasoning = 0 if details is None else n(wrap(details).thinking_tokens)  # None: no `wrap` (an ABC check)
    inp = u.input_tokens
    out = u.output_tokens
    return Usage(
        (inp if type(inp) is int else n(inp)) + cache_read + cache_write,
        out if type(out) is int else n(out),
        cache_read,
        cache_write,
        reasoning,
    )


def openai_chat_usage(u: Any) -> Usage | None:
    """Usage from an OpenAI ``CompletionUsage`` (prompt_tokens include the cache)."""
    if u is None:
        return None
    prompt = getattr(u, "prompt_tokens_details", None)
    completion = getattr(u, "completion_tokens_details", None)
    return Usage(
        n(u.prompt_tokens),
        n(getattr(u, "completion_tokens", 0)),
        n(getattr(prompt, "cached_tokens", 0)) if prompt is not None else 0,
        n(getattr(prompt, "cache_write_tokens", 0)) if prompt is not None else 0,
        n(getattr(completion, "reasoning_tokens", 0)) if completion is not None else 0,
    )


def openai_responses_usage(u: Any) -> Usage | None:
    """Usage from an OpenAI ``ResponseUsage`` (input_tokens include the cache)."""
    if u is None:
        return None
    inp = getattr(u, "input_tokens_details", None)
    out = getattr(u, "output_tokens_details", None)
    return Usage(
        n(u.input_tokens),
        n(u.output_tokens),
        n(getattr(inp, "cached_tokens", 0)) if inp is not None else 0,
        n(getattr(inp, "cache_write_tokens", 0)) if inp is not None else 0,
        n(getattr(out, "reasoning_tokens", 0)) if out is not None else 0,
    )


def google_usage(m: Any) -> Usage | None:
    """Usage from Gemini ``usage_metadata``, counted as genai-prices does.

    Input is prompt + tool-use prompt tokens (the prompt count already holds
    the cached tokens); output is candidates + thoughts, as Google bills
    thinking as output.
    """
    if m is None:
        return None
    # Every response passes here: ints and None (an absent count) are read
    # without calling `n`, which handles anything else.
    prompt, tool_use, candidates, cached, thoughts = (
        m.prompt_token_count,
        m.tool_use_prompt_token_count,
        m.candidates_token_count,
        m.cached_content_token_count,
        m.thoughts_token_count,
    )
    prompt = prompt if type(prompt) is int else 0 if prompt is None else n(prompt)
    tool_use = tool_use if type(tool_use) is int else 0 if tool_use is None else n(tool_use)
    candidates = candidates if type(candidates) is int else 0 if candidates is None else n(candidates)
    cached = cached if type(cached) is int else 0 if cached is None else n(cached)
    thoughts = thoughts if type(thoughts) is int else 0 if thoughts is None else n(thoughts)
    return Usage(prompt + tool_use, candidates + thoughts, cached, 0, thoughts)


def duck_usage(u: Any) -> Usage | None:
    """Usage from an object or DictView of any of the known usage shapes."""
    if u is None:
        return None
    if isinstance(u, Usage):
        return u
    if isinstance(u, Mapping):
        u = DictView(u)
    if getattr(u, "prompt_tokens", None) is not None:
        return openai_chat_usage(u)
    if getattr(u, "input_tokens", None) is not None:
        if getattr(u, "input_tokens_details", None) is not None:
            return openai_responses_usage(u)
        if (
            getattr(u, "cache_read_input_tokens", None) is not None
            or getattr(u, "cache_creation_input_tokens", None) is not None
        ):
            return anthropic_usage(u)
        details = getattr(u, "output_tokens_details", None)
        reasoning = getattr(details, "reasoning_tokens", None) if details is not None else None
        if reasoning is None and details is not None:
            reasoning = getattr(details, "thinking_tokens", None)
        return Usage(
            n(u.input_tokens), n(getattr(u, "output_tokens", 0)), reasoning_tokens=n(reasoning)
        )
    if (
        getattr(u, "prompt_token_count", None) is not None
        or getattr(u, "candidates_token_count", None) is not None
    ):
        return google_usage(u)
    return None


# ----------------------------------------------------------- text / reasons


def anthropic_text(content: Any) -> str | None:
    """The text blocks of an Anthropic message, joined."""
    if not content:
        return None
    parts = [b.text for b in content if b.type == "text" and b.text]
    return "".join(parts) if parts else ""


def google_candidate_text(candidate: Any) -> str:
    """The non-thought text parts of a Gemini candidate, joined."""
    content = candidate.content
    parts = content.parts if content is not None else None
    if not parts:
        return ""
    return "".join(p.text for p in parts if p.text and not p.thought)


def reason(value: Any) -> str | None:
    """A finish reason as a string (enum members give their value)."""
    if value is None:
        return None
    if type(value) is str:  # the usual case, a plain string
        return value
    if isinstance(value, str):
        # str-mixin enum members (google's FinishReason) are str, but their
        # str() is "FinishReason.STOP": use the value.
        return (
            str(value.value) if hasattr(value, "value") and isinstance(value.value, str) else value
        )
    inner = getattr(value, "value", None)
    return inner if isinstance(inner, str) else str(value)


# --------------------------------------------------- result extractors (shared)


def observe_anthropic_message(m: Any, provider: str | None = "anthropic") -> ResultFacts:
    """Facts of an Anthropic Message / BetaMessage / ParsedMessage (or its dict)."""
    stop = m.stop_reason
    model = m.model
    ident = m.id
    return ResultFacts(
        provider,
        model if type(model) is str else s(model),
        anthropic_usage(m.usage),
        ident if type(ident) is str else s(ident),
        () if stop is None else (stop,) if type(stop) is str else (reason(stop),),  # type: ignore[arg-type]
        anthropic_text(m.content),
    )


def observe_chat_completion(c: Any, provider: str | None = "openai") -> ResultFacts:
    """Facts of an OpenAI ChatCompletion / legacy Completion (or its dict)."""
    choices = c.choices or ()
    text: str | None = None
    reasons: list[str] = []
    for i, choice in enumerate(choices):
        r = reason(choice.finish_reason)
        if r is not None:
            reasons.append(r)
        if i == 0:
            message = getattr(choice, "message", None)
            text = s(message.content) if message is not None else s(getattr(choice, "text", None))
    return ResultFacts(
        provider, s(c.model), openai_chat_usage(c.usage), s(c.id), tuple(reasons), text
    )


def responses_text(r: Any) -> str | None:
    """The output_text of a Responses ``Response`` computed from its output items."""
    parts: list[str] = []
    for item in r.output or ():
        if item.type == "message":
            parts.extend(c.text for c in item.content or () if c.type == "output_text" and c.text)
    return "".join(parts)


def responses_reasons(r: Any) -> tuple[str, ...]:
    """(incomplete reason or status,) of a Responses ``Response``."""
    incomplete = r.incomplete_details
    why = s(incomplete.reason) if incomplete is not None else None
    status = why or s(r.status)
    return (status,) if status else ()


def observe_responses(
    r: Any, provider: str | None = "openai", text: str | None = None
) -> ResultFacts:
    """Facts of an OpenAI Responses ``Response`` (or its dict)."""
    return ResultFacts(
        provider,
        s(r.model),
        openai_responses_usage(r.usage),
        s(r.id),
        responses_reasons(r),
        responses_text(r) if text is None else text,
    )


def observe_embeddings(e: Any, provider: str | None = "openai") -> ResultFacts:
    """Facts of an OpenAI CreateEmbeddingResponse (or its dict)."""
    u = e.usage
    usage = Usage(n(u.prompt_tokens), 0) if u is not None else None
    return ResultFacts(provider, s(e.model), usage, None, (), None)


def observe_google(g: Any, provider: str | None = "google") -> ResultFacts:
    """Facts of a Gemini GenerateContentResponse (or its dict)."""
    candidates = g.candidates or ()
    reasons: list[str] = []
    for c in candidates:
        r = reason(c.finish_reason)
        if r is not None:
            reasons.append(r)
    if not candidates:
        feedback = g.prompt_feedback
        blocked = reason(feedback.block_reason) if feedback is not None else None
        if blocked:
            reasons.append(blocked)
    text = google_candidate_text(candidates[0]) if candidates else None
    return ResultFacts(
        provider,
        s(g.model_version),
        google_usage(g.usage_metadata),
        s(g.response_id),
        tuple(reasons),
        text,
    )


def observe_dict(d: Mapping[str, Any]) -> ResultFacts | None:
    """Facts of a dict shaped like one of the known results, else None."""
    v = DictView(d)
    kind = d.get("type")
    obj = d.get("object")
    if kind == "message" or (
        "content" in d
        and "stop_reason" in d
        and isinstance(d.get("usage"), Mapping)
        and "input_tokens" in d["usage"]
    ):
        return observe_anthropic_message(v, "anthropic")
    if obj in ("chat.completion", "text_completion") or "choices" in d:
        return observe_chat_completion(v, "openai" if obj else None)
    if obj == "response" or ("output" in d and isinstance(d.get("usage"), Mapping)):
        return observe_responses(v, "openai")
    if obj == "list" and "data" in d and isinstance(d.get("usage"), Mapping):
        return observe_embeddings(v, "openai")
    if "candidates" in d or "usageMetadata" in d or "usage_metadata" in d:
        return observe_google(v, "google")
    if isinstance(d.get("usage"), Mapping):
        usage = duck_usage(d["usage"])
        if usage is not None:
            return ResultFacts(None, s(d.get("model")), usage, s(d.get("id")), (), None)
    return None


def observe_duck(obj: Any) -> ResultFacts | None:
    """Facts of a foreign object with a ``usage`` (or ``usage_metadata``) attribute."""
    from . import provider_of  # noqa: PLC0415 - the package imports this module first

    usage_obj = getattr(obj, "usage", None)
    if usage_obj is None:
        meta = getattr(obj, "usage_metadata", None)
        usage = google_usage(meta) if meta is not None else None
    else:
        usage = duck_usage(usage_obj)
    if usage is None:
        return None
    reasons: list[str] = []
    choices = getattr(obj, "choices", None)
    if isinstance(choices, (list, tuple)):
        for c in choices:
            r = reason(getattr(c, "finish_reason", None))
            if r is not None:
                reasons.append(r)
    stop = reason(getattr(obj, "stop_reason", None))
    if stop is not None:
        reasons.append(stop)
    return ResultFacts(
        provider_of(obj),
        s(getattr(obj, "model", None)) or s(getattr(obj, "model_version", None)),
        usage,
        s(getattr(obj, "id", None)) or s(getattr(obj, "response_id", None)),
        tuple(reasons),
        None,
    )


def declares(cls: type, *names: str) -> bool:
    """Whether *cls* declares any of *names* as a field or class attribute.

    Looked up on the class, never an instance, so the answer can be cached
    per type: pydantic ``model_fields``, dataclass fields, annotations.
    """
    fields = getattr(cls, "model_fields", None)
    if isinstance(fields, Mapping) and any(name in fields for name in names):
        return True
    dc = getattr(cls, "__dataclass_fields__", None)
    if isinstance(dc, Mapping) and any(name in dc for name in names):
        return True
    for klass in cls.__mro__:
        ann = inspect.get_annotations(klass)
        if isinstance(ann, Mapping) and any(name in ann for name in names):
            return True
        if any(name in klass.__dict__ for name in names):
            return True
    return False


def resolve_duck_result(cls: type) -> Callable[[Any], ResultFacts | None] | None:
    """The duck-typed extractor when *cls* declares a usage field, else None."""
    if declares(cls, "usage", "usage_metadata"):
        return observe_duck
    return None


# ------------------------------------------------------------ classification

_STATUS_KIND: dict[int, ErrorKind] = {
    400: ErrorKind.BAD_REQUEST,
    401: ErrorKind.AUTH,
    402: ErrorKind.AUTH,  # billing / payment required: an account problem, not transient
    403: ErrorKind.AUTH,
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.TIMEOUT,
    409: ErrorKind.CONFLICT,
    413: ErrorKind.BAD_REQUEST,
    422: ErrorKind.BAD_REQUEST,
    429: ErrorKind.RATE_LIMITED,
    529: ErrorKind.OVERLOADED,
}

# Phrases providers use when the prompt does not fit the context window.
_CONTEXT_RE = re.compile(
    r"prompt is too long|context_length_exceeded|maximum context length|context length exceeded"
    r"|exceeds the maximum number of tokens|exceeds the context window|input is too long"
    r"|too many input tokens|request_too_large",
    re.IGNORECASE,
)
_FILTER_RE = re.compile(
    r"content_filter|content_policy_violation|content management policy|\bSAFETY\b|PROHIBITED_CONTENT"
    r"|blocked due to safety",
)


def kind_for_status(status: int | None) -> ErrorKind:
    """The error kind an HTTP status alone implies."""
    if status is None:
        return ErrorKind.UNKNOWN
    kind = _STATUS_KIND.get(status)
    if kind is not None:
        return kind
    if status >= 500:
        return ErrorKind.SERVER
    if status >= 400:
        # Other 4xx (412, 431, 499...): resending the same request won't help.
        return ErrorKind.BAD_REQUEST
    return ErrorKind.UNKNOWN


def refine_bad_request(kind: ErrorKind, text: str) -> ErrorKind:
    """Turn a BAD_REQUEST into CONTEXT_TOO_LONG / CONTENT_FILTERED when the text says so."""
    if kind is ErrorKind.BAD_REQUEST and text:
        if _CONTEXT_RE.search(text):
            return ErrorKind.CONTEXT_TOO_LONG
        if _FILTER_RE.search(text):
            return ErrorKind.CONTENT_FILTERED
    return kind


def message_of(exc: BaseException) -> str:
    """``str(exc)`` (or the class name when empty), bounded for logs."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break classify
        text = ""
    if not text:
        text = type(exc).__name__
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def info(
    kind: ErrorKind,
    exc: BaseException,
    status: int | None,
    provider: str | None,
    now: float | None,
    message: str | None = None,
    *,
    exhausted: bool = False,
) -> ErrorInfo:
    """Build an ErrorInfo, reading the retry advice from *exc*'s response headers."""
    h = lower_headers(headers_of(exc))
    return ErrorInfo(
        kind,
        status,
        retry_after_lower(h, now) if h else None,
        should_retry_lower(h) if h else None,
        provider,
        message_of(exc) if message is None else message,
        exhausted,
    )


def simple(
    kind: ErrorKind, provider: str | None = None
) -> Callable[[BaseException, float | None], ErrorInfo]:
    """A classifier that always answers *kind* (no status, no headers)."""

    def classify_fixed(exc: BaseException, now: float | None) -> ErrorInfo:  # noqa: ARG001
        return ErrorInfo(kind, None, None, None, provider, message_of(exc))

    return classify_fixed


def status_int(value: Any) -> int | None:
    """*value* if it is a plausible HTTP status, else None."""
    if type(value) is int and 100 <= value <= 599:
        return value
    return None


def status_of(exc: Any) -> int | None:
    """The HTTP status an arbitrary exception carries, if any."""
    for name in ("status_code", "status", "code", "http_status"):
        st = status_int(getattr(exc, name, None))
        if st is not None:
            return st
    response = getattr(exc, "response", None)
    if response is not None:
        for name in ("status_code", "status"):
            st = status_int(getattr(response, name, None))
            if st is not None:
                return st
    return None


def classify_generic_status(exc: BaseException, now: float | None) -> ErrorInfo:
    """Any exception carrying an HTTP status (``.status_code``, ``.status``, ``.response``)."""
    from . import provider_of  # noqa: PLC0415 - the package imports this module first

    status = status_of(exc)
    if status is None:
        return ErrorInfo(ErrorKind.UNKNOWN, None, None, None, provider_of(exc), message_of(exc))
    message = message_of(exc)
    kind = refine_bad_request(kind_for_status(status), message)
    return info(kind, exc, status, provider_of(exc), now, message, exhausted=status == 402)


def mro_names(cls: type, roots: tuple[str, ...]) -> set[str]:
    """Names of the classes in *cls*'s MRO defined under the *roots* packages."""
    return {k.__name__ for k in cls.__mro__ if k.__module__.split(".", 1)[0] in roots}


def httpx_classifier(cls: type) -> Callable[[BaseException, float | None], ErrorInfo]:
    """Classifier for an ``httpx`` / ``httpx2`` exception class."""
    names = mro_names(cls, ("httpx", "httpx2"))
    if "HTTPStatusError" in names:
        return classify_generic_status
    if "TimeoutException" in names:
        return simple(ErrorKind.TIMEOUT)
    if names & {"NetworkError", "ProtocolError", "ProxyError", "TransportError"}:
        return simple(ErrorKind.CONNECTION)
    return simple(ErrorKind.UNKNOWN)
