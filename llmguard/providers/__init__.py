"""Read provider objects without depending on the providers' SDKs.

Guards need a handful of facts from whatever the wrapped function returned
or raised: the model, the token usage, the response id, why generation
stopped, the text (for estimates), and for errors what *kind* of failure it
was and how long the server asked us to wait. This package extracts them
from the anthropic, openai and google-genai SDK objects, from dicts of the
same shapes (a ``json.loads`` of a raw HTTP body) and, as far as sensible,
from duck-typed look-alikes.

Design constraints, because this runs on every guarded call and chunk:

* **No SDK import.** Importing ``llmguard.providers`` imports no SDK, and
  recognising an object never imports one either: classes are recognised
  by name, module and MRO. An SDK that is not installed costs nothing.
* **Type-dispatch caches.** `observe_result`, `StreamAccumulator.feed`,
  `classify` and `provider_of` look ``type(obj)`` up in a dict of
  type -> handler, filled on first sight (unrecognised types are cached as
  None), so the common case is one dict lookup plus the attribute reads.
* **Never raise.** These functions observe; a malformed or unexpected object
  yields None / UNKNOWN instead of breaking the user's call.

Usage convention (see `llmguard._record.Usage`): ``input_tokens`` is the
*total* input, cache reads and writes included, as genai-prices counts it.
"""

from __future__ import annotations

import types

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from .. import _estimate
from .._record import ErrorKind, Usage
from ..errors import LLMGuardError
from . import _anthropic, _google, _openai
from ._generic import (
    DictView,
    ErrorInfo,
    ResultFacts,
    classify_generic_status,
    declares,
    duck_usage,
    httpx_classifier,
    message_of,
    mro_names,
    observe_dict,
    resolve_duck_result,
    simple,
)
from ._headers import retry_after, should_retry_header


__all__ = [
    "ErrorInfo",
    "ResultFacts",
    "StreamAccumulator",
    "classify",
    "estimate_tokens",
    "observe_result",
    "observe_usage",
    "provider_of",
    "retry_after",
    "should_retry_header",
    "usage_extractor",
    "usage_from",
]

_MISS: Any = object()
# Caches are keyed by type; a process sees a bounded set of types, but
# dynamically created classes could grow them, so they are reset past this.
_CACHE_LIMIT = 4096

# Types that are never provider objects: answered without any MRO walk.
_PLAIN: frozenset[type] = frozenset(
    {str, bytes, bytearray, int, float, bool, complex, type(None), list, tuple, set, frozenset}
)


def _sdk_of(cls: type) -> str | None:
    """Which SDK package (or http client) defines *cls* or its nearest SDK base."""
    for klass in cls.__mro__:
        module = getattr(klass, "__module__", None) or ""
        root = module.split(".", 1)[0]
        if root in ("anthropic", "openai", "httpx", "httpx2"):
            return root
        if module.startswith(("google.genai", "google.generativeai")):
            return "google"
    return None


# ------------------------------------------------------------------ provider_of

_PROVIDER_CACHE: dict[type, str | None] = {}


def provider_of(obj: object) -> str | None:
    """``"anthropic"``, ``"openai"``, ``"google"`` or None, from *obj*'s module.

    Works for SDK results, exceptions, clients, classes and bound methods
    (``client.messages.create``) and partials of them.
    """
    for _ in range(4):  # unwrap bound methods / partials (bounded)
        if isinstance(obj, types.MethodType):
            obj = obj.__self__
        elif isinstance(obj, partial):
            obj = obj.func
        else:
            break
    cls = obj if isinstance(obj, type) else type(obj)
    found = _PROVIDER_CACHE.get(cls, _MISS)
    if found is _MISS:
        found = _resolved(_PROVIDER_CACHE, cls, _known_sdk)
    return found  # type: ignore[no-any-return]


def _known_sdk(cls: type) -> str | None:
    sdk = _sdk_of(cls)
    return sdk if sdk in ("anthropic", "openai", "google") else None


# ---------------------------------------------------------------- observe_result

_Extractor = Callable[[Any], "ResultFacts | None"]
_RESULT_CACHE: dict[type, _Extractor | None] = {}


def _observe_mapping(d: Any) -> ResultFacts | None:
    return observe_dict(d)


def _resolve_result(cls: type) -> _Extractor | None:
    if cls in _PLAIN or issubclass(cls, BaseException):
        return None
    if issubclass(cls, Mapping):
        return _observe_mapping
    sdk = _sdk_of(cls)
    if sdk == "anthropic":
        return _anthropic.resolve_result(cls)
    if sdk == "openai":
        return _openai.resolve_result(cls)
    if sdk == "google":
        return _google.resolve_result(cls)
    return resolve_duck_result(cls)


def _resolved(cache: dict[type, Any], cls: type, resolve: Callable[[type], Any], fallback: Any = None) -> Any:
    """``resolve(cls)``, kept in *cache* (bounded); *fallback* if it raises (an odd class is just not one we know)."""
    try:
        found = resolve(cls)
    except Exception:  # noqa: BLE001 - see the docstring
        found = fallback
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    cache[cls] = found
    return found


def _result_extractor(cls: type) -> _Extractor | None:
    extractor = _RESULT_CACHE.get(cls, _MISS)
    if extractor is _MISS:
        extractor = _resolved(_RESULT_CACHE, cls, _resolve_result)
    return extractor  # type: ignore[no-any-return]


def observe_result(result: object) -> ResultFacts | None:
    """The facts in a provider result, or None when *result* is not one.

    Recognises anthropic ``Message``/``BetaMessage``/``ParsedMessage``,
    openai ``ChatCompletion`` (+ parsed), Responses ``Response`` (+ parsed),
    ``CreateEmbeddingResponse``, google ``GenerateContentResponse``, sync
    ``with_raw_response`` wrappers whose body is already read, dicts of those
    shapes, and foreign objects declaring a ``usage`` field. Never raises.
    """
    cls = type(result)
    extractor = _RESULT_CACHE.get(cls, _MISS)
    if extractor is _MISS:
        extractor = _result_extractor(cls)
    if extractor is None:
        return None
    try:
        return extractor(result)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - a malformed result has no facts, it is not an error
        # A field the usage does not depend on (text, id, finish reason) may
        # be what failed: keep what `observe_usage` can still read, never a
        # silent zero.
        found = observe_usage(result)
        return None if found is None else ResultFacts(found[2], found[1], found[0], None, (), None)


# ----------------------------------------------------------------- observe_usage

_UsageFacts = tuple[Usage, "str | None", "str | None"]
_UsageExtractor = Callable[[Any], "_UsageFacts | None"]
_USAGE_CACHE: dict[type, _UsageExtractor | None] = {}

# `observe_result` extractors that have a usage-only twin: the same fields,
# read by the same functions, without the text, id and finish reasons.
_USAGE_ONLY: dict[Any, _UsageExtractor] = {
    _anthropic.observe_message: _anthropic.observe_message_usage,
    _openai.observe_chat: _openai.observe_chat_usage,
    _openai.observe_response: _openai.observe_response_usage,
    _google.observe: _google.observe_usage,
}


def _usage_of_facts(extractor: _Extractor, result: Any) -> _UsageFacts | None:
    facts = extractor(result)
    if facts is None or facts.usage is None:
        return None
    return facts.usage, facts.model, facts.provider


def _resolve_usage(cls: type) -> _UsageExtractor | None:
    extractor = _result_extractor(cls)
    if extractor is None:
        return None
    return _USAGE_ONLY.get(extractor) or partial(_usage_of_facts, extractor)


def usage_extractor(cls: type) -> _UsageExtractor | None:
    """What `observe_usage` applies to results of class *cls* (cached); None when they have no usage.

    For code that reads many results of one class: look the reader up once
    per class, and call it inside ``try`` (a malformed result may raise).
    """
    extractor = _USAGE_CACHE.get(cls, _MISS)
    if extractor is _MISS:
        extractor = _resolved(_USAGE_CACHE, cls, _resolve_usage)
    return extractor  # type: ignore[no-any-return]


def observe_usage(result: object) -> tuple[Usage, str | None, str | None] | None:
    """``(usage, model, provider)`` of a provider result, or None when it has no usage.

    What `observe_result` says of those three (None where its facts or
    their usage are None), read without the rest (text, id, finish
    reasons): what a budget needs of every response. Never raises.
    """
    extractor = _USAGE_CACHE.get(type(result), _MISS)  # `usage_extractor`, inlined: every budgeted call
    if extractor is _MISS:
        extractor = usage_extractor(type(result))
    if extractor is None:
        return None
    try:
        return extractor(result)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - a malformed result has no usage, it is not an error
        return None


def usage_from(obj: object) -> Usage | None:
    """The normalised `Usage` of a provider result (or of a bare usage object/dict)."""
    facts = observe_result(obj)
    if facts is not None:
        return facts.usage
    try:
        if isinstance(obj, Mapping):
            return duck_usage(DictView(obj))
        if type(obj) not in _PLAIN and declares(
            type(obj), "input_tokens", "prompt_tokens", "prompt_token_count"
        ):
            return duck_usage(obj)
    except Exception:  # noqa: BLE001 - observational helper: never raises
        return None
    return None


# -------------------------------------------------------------- StreamAccumulator

_Feeder = Callable[["StreamAccumulator", Any], None]
_FEED_CACHE: dict[type, _Feeder | None] = {}


def _feed_str(acc: StreamAccumulator, chunk: Any) -> None:
    if chunk:
        acc._parts.append(chunk)


def _feed_typed_event(acc: StreamAccumulator, ev: Any) -> None:
    """An event object of unknown origin with a ``type``: route by the type string."""
    kind = ev.type
    if kind in _anthropic.EVENT_TYPES:
        _anthropic.feed_event(acc, ev)
    elif kind in _openai.EVENT_TYPES:
        _openai.feed_event(acc, ev)


def _feed_dict(acc: StreamAccumulator, d: Any) -> None:
    kind = d.get("type")
    if isinstance(kind, str):
        if kind in _anthropic.EVENT_TYPES:
            _anthropic.feed_event(acc, DictView(d))
        elif kind in _openai.EVENT_TYPES:
            _openai.feed_event(acc, DictView(d))
        return
    if d.get("object") == "chat.completion.chunk" or "choices" in d:
        _openai.feed_chat_chunk(acc, DictView(d))
    elif "candidates" in d or "usageMetadata" in d or "usage_metadata" in d:
        _google.feed_chunk(acc, DictView(d))


def _resolve_feeder(cls: type) -> _Feeder | None:
    if cls is str:
        return _feed_str
    if cls in _PLAIN:
        return None
    if issubclass(cls, Mapping):
        return _feed_dict
    if issubclass(cls, str):
        return _feed_str
    sdk = _sdk_of(cls)
    if sdk == "anthropic":
        return _anthropic.resolve_chunk(cls)
    if sdk == "openai":
        return _openai.resolve_chunk(cls)
    if sdk == "google":
        return _google.resolve_chunk(cls)
    if declares(cls, "choices"):
        return _openai.feed_chat_chunk
    if declares(cls, "candidates", "usage_metadata"):
        return _google.feed_chunk
    if declares(cls, "type"):
        return _feed_typed_event
    return None


class StreamAccumulator:
    """Collects the facts of a stream, one chunk at a time.

    Feed it every item the stream yields: anthropic raw events or
    ``MessageStream`` events, openai ``ChatCompletionChunk``s (usage arrives
    on the last one with ``include_usage``), ``ChatCompletionStream`` events,
    Responses stream events, google ``GenerateContentResponse`` chunks, plain
    ``str`` chunks, or dicts of those shapes. Unknown chunks are ignored and
    a malformed one never raises. Then call `finish_from` with the stream
    object for SDK stream helpers that accumulate themselves.
    """

    __slots__ = (
        "_anthropic_usage",
        "_parts",
        "_pending",
        "chunks",
        "failure",
        "finish_reasons",
        "model",
        "provider",
        "response_id",
        "usage",
    )

    def __init__(self) -> None:
        self.provider: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None
        self.response_id: str | None = None
        self.finish_reasons: tuple[str, ...] = ()
        # What the provider said in the stream about its failure (an OpenAI
        # Responses ``error`` / ``response.failed`` event), else None.
        self.failure: str | None = None
        self.chunks = 0
        self._parts: list[str] = []
        # Text of the last anthropic text_delta: MessageStream echoes it as a
        # `text` event, which must not be counted twice.
        self._pending: str | None = None
        # Anthropic raw counts [input, output, cache_read, cache_write, thinking],
        # so a message_delta can override just the fields it carries.
        self._anthropic_usage: list[int] | None = None

    @property
    def text(self) -> str:
        """All text seen so far, concatenated."""
        parts = self._parts
        if not parts:
            return ""
        if len(parts) > 1:
            parts[:] = ["".join(parts)]  # compact, so repeated reads stay cheap
        return parts[0]

    def feed(self, chunk: object) -> None:
        """Fold one stream item into the facts."""
        self.chunks += 1
        cls = type(chunk)
        feeder = _FEED_CACHE.get(cls, _MISS)
        if feeder is _MISS:
            feeder = _resolved(_FEED_CACHE, cls, _resolve_feeder)
        if feeder is not None:
            # try/except, not contextlib.suppress: free when nothing is raised.
            try:  # noqa: SIM105
                feeder(self, chunk)
            except Exception:  # noqa: BLE001, S110 - observing must never break the caller's stream
                pass

    def finish_from(self, source: object) -> None:
        """Fill what `feed` did not see from a stream helper's own snapshot.

        *source* may be an anthropic ``MessageStream`` (its
        ``current_message_snapshot``), an openai ``ChatCompletionStream``
        (``current_completion_snapshot``) or ``ResponseStream`` (its completed
        response), a stream manager wrapping one, or a final result object.
        Only missing facts are filled; never consumes the stream; never raises.
        """
        try:
            facts = _facts_of_source(source, 0)
        except Exception:  # noqa: BLE001 - finishing must never break the caller
            return
        if facts is not None:
            self._fill(facts)

    def _fill(self, facts: ResultFacts) -> None:
        if self.provider is None:
            self.provider = facts.provider
        if self.model is None:
            self.model = facts.model
        if self.usage is None:
            self.usage = facts.usage
        if self.response_id is None:
            self.response_id = facts.response_id
        if not self.finish_reasons:
            self.finish_reasons = facts.finish_reasons
        if not self._parts and facts.text:
            self._parts.append(facts.text)

    def __repr__(self) -> str:
        return (
            f"StreamAccumulator(provider={self.provider!r}, model={self.model!r}, usage={self.usage!r}, "
            f"response_id={self.response_id!r}, finish_reasons={self.finish_reasons!r}, chunks={self.chunks})"
        )


# Where stream helpers keep what they accumulated: (attribute path, call it?).
_SNAPSHOTS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("_current_snapshot_or_none",), True),  # anthropic MessageStream
    (("current_message_snapshot",), False),  # anthropic (asserts when empty)
    (("current_completion_snapshot",), False),  # openai ChatCompletionStream
    (("_state", "_completed_response"), False),  # openai ResponseStream (private)
    (("_state", "_ResponseStreamState__current_snapshot"), False),  # ResponseStream, unfinished
)


def _snapshot(source: Any, path: tuple[str, ...], call: bool) -> Any:
    """The object at *path* under *source*, or None (missing, or the SDK's empty-assert)."""
    obj = source
    try:
        for name in path:
            obj = getattr(obj, name)
        return obj() if call else obj
    except Exception:  # noqa: BLE001 - AttributeError, or AssertionError for "no snapshot yet"
        return None


def _facts_of_source(source: Any, depth: int) -> ResultFacts | None:
    facts = observe_result(source)
    if facts is not None:
        return facts
    for path, call in _SNAPSHOTS:
        snapshot = _snapshot(source, path, call)
        if snapshot is not None:
            facts = observe_result(snapshot)
            if facts is not None:
                return facts
    if depth == 0:
        # A stream manager (MessageStreamManager...) keeps the stream it
        # opened in a private, name-mangled attribute.
        for key, value in list(getattr(source, "__dict__", {}).items()):
            if key.endswith("__stream") and value is not None:
                return _facts_of_source(value, 1)
    return None


# ---------------------------------------------------------------------- classify

_Classifier = Callable[[BaseException, "float | None"], ErrorInfo]
_CLASSIFY_CACHE: dict[type, _Classifier] = {}


def _resolve_classifier(cls: type) -> _Classifier:
    if issubclass(cls, LLMGuardError):
        return simple(ErrorKind.GUARD)
    sdk = _sdk_of(cls)
    if sdk == "anthropic":
        return _anthropic.classifier_for(cls)
    if sdk == "openai":
        return _openai.classifier_for(cls)
    if sdk == "google":
        return _google.classifier_for(cls)
    if sdk in ("httpx", "httpx2"):
        return httpx_classifier(cls)
    if issubclass(cls, TimeoutError):  # also asyncio.TimeoutError, socket.timeout
        return simple(ErrorKind.TIMEOUT)
    if issubclass(cls, ConnectionError):
        return simple(ErrorKind.CONNECTION)
    return classify_generic_status  # anything carrying an HTTP status, else UNKNOWN


def classify(exc: BaseException, now: float | None = None) -> ErrorInfo:
    """What kind of failure *exc* is, with the server's retry advice.

    *now* (wall-clock epoch seconds, default `time.time()`) is the reference
    for HTTP-date / RFC 3339 retry headers. Never raises.

    An exception that says nothing about itself (kind UNKNOWN: a
    ``RuntimeError``, instructor's ``InstructorRetryException``, tenacity's
    ``RetryError``...) is classified by the error underneath it, so a
    provider's 429 wrapped by another library is still a retryable rate
    limit. The kind, status, retry advice and provider come from underneath;
    the message stays the outer error's. The rule:

    * Follow the explicit causes, ``__cause__`` (``raise ... from err``, as
      instructor and tenacity raise their wrappers). An implicit
      ``__context__`` does not count: an error raised inside an ``except``
      block without ``from`` happened *while* handling the provider error,
      not because of it -- user code turning a 429 into its own error, or a
      bug in the handler -- and retrying would re-send a request the code
      gave up on (tenacity's and stamina's ``on=`` read the raised error
      only).
    * Stop at the first error with a known kind, GUARD included: an llmguard
      refusal wrapped in a user's error stays a refusal. An error with a kind
      of its own (llmguard's errors, a ``TimeoutError``, anything carrying an
      HTTP status) is never reclassified, and neither is a cancellation or
      exit (a ``BaseException`` that is not an ``Exception``).
    * An exception group (``asyncio.TaskGroup``, anyio) is its members' kind
      when they all agree (with the first member's advice), else unknown.
    * At most `_CHAIN_LIMIT` links and members are read, each error once, so
      a cycle ends the walk.
    """
    found = _classify_one(exc, now)
    if found.kind is not ErrorKind.UNKNOWN or not isinstance(exc, Exception):
        return found
    under = _underneath(exc, now)
    if under is None:
        return found
    # The classification is the underlying error's; the message stays the
    # one the caller sees.
    return ErrorInfo(
        under.kind, under.status, under.retry_after, under.should_retry, under.provider, found.message, under.exhausted
    )


# How many links of a chain (and members of a group) `classify` reads underneath an error.
_CHAIN_LIMIT = 8


def _underneath(exc: BaseException, now: float | None) -> ErrorInfo | None:
    """The classification of the first known error under *exc* (`classify`'s rule), or None."""
    try:
        return _known_below(exc, now, {id(exc)}, [_CHAIN_LIMIT])
    except Exception:  # noqa: BLE001 - classify never raises
        return None


def _known_below(
    exc: BaseException, now: float | None, seen: set[int], budget: list[int]
) -> ErrorInfo | None:
    """The first known classification under *exc* (*exc* itself excluded)."""
    current = exc
    while budget[0] > 0:
        if isinstance(current, BaseExceptionGroup):
            found = _group_kind(current, now, seen, budget)
            if found is not None:
                return found
        nxt = current.__cause__  # explicit causes only: see `classify`
        if nxt is None or id(nxt) in seen or not isinstance(nxt, Exception):
            return None
        seen.add(id(nxt))
        budget[0] -= 1
        found = _classify_one(nxt, now)
        if found.kind is not ErrorKind.UNKNOWN:
            return found
        current = nxt
    return None


def _group_kind(
    group: BaseExceptionGroup[Any], now: float | None, seen: set[int], budget: list[int]
) -> ErrorInfo | None:
    """The kind all members of *group* agree on (the first's advice), else None."""
    first: ErrorInfo | None = None
    for member in group.exceptions:
        if budget[0] <= 0 or id(member) in seen or not isinstance(member, Exception):
            return None
        seen.add(id(member))
        budget[0] -= 1
        found = _classify_one(member, now)
        if found.kind is ErrorKind.UNKNOWN:
            below = _known_below(member, now, seen, budget)
            if below is None:
                return None
            found = below
        if first is None:
            first = found
        elif found.kind is not first.kind:
            return None
    return first


def _classify_one(exc: BaseException, now: float | None) -> ErrorInfo:
    """What *exc* itself says (no chain). Never raises."""
    cls = type(exc)
    classifier = _CLASSIFY_CACHE.get(cls)
    if classifier is None:  # classify never raises: an odd class is unknown
        classifier = _resolved(_CLASSIFY_CACHE, cls, _resolve_classifier, simple(ErrorKind.UNKNOWN))
    try:
        return classifier(exc, now)
    except Exception:  # noqa: BLE001 - classify never raises
        try:
            message = message_of(exc)
        except Exception:  # noqa: BLE001 # pragma: no cover - message_of already guards str()
            message = cls.__name__
        return ErrorInfo(ErrorKind.UNKNOWN, None, None, None, None, message)


def response_timed_out(exc: BaseException | None) -> bool:
    """Whether *exc* is, or wraps, an HTTP *read* timeout (``httpx``/``httpx2`` ``ReadTimeout``).

    The request was sent and the wait for its response ran out (an SDK's
    ``APITimeoutError`` raised from one, say): the provider may have served
    and billed it, unlike a request whose connection or send timed out.
    """
    seen: set[int] = set()
    err = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if "ReadTimeout" in mro_names(type(err), ("httpx", "httpx2")):
            return True
        err = err.__cause__ or err.__context__
    return False


# ------------------------------------------------------------------ estimates


def estimate_tokens(text: str) -> int:
    """An offline best-guess token count of *text*: ``ceil(UTF-8 bytes / 4)``.

    llmguard's one estimate (docs/estimates.md): what an estimated charge
    uses. Measured against o200k and cl100k it is within about -25%/+20%
    (per-sample medians) on English prose, code and Latin-script and CJK
    text; it over-counts Cyrillic and Indic scripts on o200k, under-counts
    dense JSON. A budget reserves ``ceil(UTF-8 bytes / 3)`` of the same
    count, 4/3 of this. Reconcile with the usage the provider reports.
    """
    return _estimate.text_tokens(text)
