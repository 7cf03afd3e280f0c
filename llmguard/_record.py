"""The call record: one object per guarded call that carries the facts.

Guards *write* what they know (the attempt number, the usage the provider
reported, the cache status, the fallback target) and later guards *read*
it (trace puts it on the span, budget settles with it), so no guard
re-derives what another already learnt.

A `CallRecord` holds one `Attempt` per real call of the wrapped function
(retries and fallbacks add attempts); usage and cost of the call are the sums
over its attempts.
"""

from __future__ import annotations

import enum
import warnings

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ErrorKind(enum.StrEnum):
    """What kind of failure an exception is, as far as guards care."""

    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER = "server"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    CONTEXT_TOO_LONG = "context_too_long"
    CONTENT_FILTERED = "content_filtered"
    CONFLICT = "conflict"
    GUARD = "guard"  # one of llmguard's own errors (BudgetExceeded, CircuitOpen...)
    UNKNOWN = "unknown"

    @property
    def transient(self) -> bool:
        """Whether a later identical request may well succeed."""
        return self in _TRANSIENT


_TRANSIENT = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.CONFLICT,
    }
)


class Outcome(enum.StrEnum):
    """How a call (or a stream) ended."""

    PENDING = "pending"
    OK = "ok"
    ERROR = "error"
    CLOSED = "closed"  # the caller stopped reading a stream (break, close())
    CANCELLED = "cancelled"  # the task was cancelled
    ABANDONED = "abandoned"  # the stream was garbage-collected unfinished


@dataclass(slots=True)
class Usage:
    """Token counts of one response, normalised across providers.

    ``input_tokens`` is the *total* input, cache reads and writes included
    (OpenAI's ``prompt_tokens``; Anthropic's ``input_tokens`` +
    ``cache_read_input_tokens`` + ``cache_creation_input_tokens``), as the
    OTel GenAI conventions and genai-prices count it.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False  # True when llmguard guessed, not the provider

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.estimated or other.estimated,
        )


class Attempt:
    """One real call of the wrapped function."""

    # Not a dataclass, and no __slots__: one is built on every call, and
    # class-level defaults with a three-line __init__ build fastest (the
    # instance stores only what a call actually sets).
    model: str | None  # the model asked for
    response_model: str | None = None
    provider: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None  # None: not priced (unknown model or price)
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    outcome: Outcome = Outcome.PENDING
    error_kind: ErrorKind | None = None
    error: BaseException | None = None  # one `retry` went past keeps no traceback (`release_frames`)
    ended_at: float | None = None
    first_chunk_at: float | None = None  # streams only
    chunks: int = 0
    text: str = ""  # streams: the text seen so far (for estimates, partials)
    # The request reached the provider even if no chunk was read (an SDK
    # stream object exists, or its manager was entered): it may be billed.
    sent: bool = False
    # The wire (`llmguard._wire`): how many of the SDKs' HTTP responses this
    # attempt's code received, the last one's request id and rate-limit headers.
    wire: int = 0
    wire_usage: Usage | None = None  # the usage those responses measured, summed
    request_id: str | None = None
    rate_limits: dict[str, str] | None = None

    def __init__(self, number: int, model: str | None = None, started_at: float = 0.0) -> None:
        self.number = number
        self.model = model
        self.started_at = started_at

    def __repr__(self) -> str:
        return (
            f"Attempt(number={self.number}, model={self.model!r}, usage={self.usage!r}, "
            f"cost_usd={self.cost_usd!r}, outcome={self.outcome.value!r}, "
            f"error_kind={self.error_kind.value if self.error_kind else None!r})"
        )


class CallRecord:
    """The facts of one guarded call, shared by every guard on it."""

    # Built on every call: class-level defaults, as for `Attempt`.
    provider: str | None = None
    operation: str = "chat"
    request_model: str | None = None
    stream: bool = False
    deadline: float | None = None  # monotonic seconds
    cache: str | None = None  # "hit" | "miss" | "bypass"; None: no cache guard
    cache_similarity: float | None = None
    saved_usd: float | None = None  # what a cache hit did not spend
    fallback_target: str | None = None
    route: str | None = None
    budget_decision: str | None = None
    outcome: Outcome = Outcome.PENDING
    error_kind: ErrorKind | None = None
    ended_at: float | None = None
    span: Any = None  # the OTel span `trace` opened for this call, if any
    # Hooks run when an attempt the caller stopped waiting for (a sync worker
    # its timeout abandoned) ends in the background; see `on_background_end`.
    _background: list[Callable[[], None]] | None = None

    def __init__(
        self, function: str, parent: CallRecord | None = None, started_at: float = 0.0
    ) -> None:
        self.function = function  # qualified name of the wrapped function
        self.parent = parent
        self.started_at = started_at
        self.attempts: list[Attempt] = []
        self._request: dict[str, Any] | None = None
        self._extra: dict[str, Any] | None = None

    @property
    def request(self) -> dict[str, Any]:
        """Request parameters worth reporting (max_tokens, temperature...)."""
        if self._request is None:
            self._request = {}
        return self._request

    @property
    def extra(self) -> dict[str, Any]:
        """Guards' own facts, by guard-chosen keys."""
        if self._extra is None:
            self._extra = {}
        return self._extra

    def __repr__(self) -> str:
        return (
            f"CallRecord(function={self.function!r}, model={self.model!r}, "
            f"attempts={self.attempt_count}, usage={self.usage!r}, cost_usd={self.cost_usd!r}, "
            f"outcome={self.outcome.value!r})"
        )

    def on_background_end(self, hook: Callable[[], None]) -> None:
        """Call *hook()* each time an attempt abandoned by a sync `timeout` ends in the background.

        By then the attempt is settled (its usage recorded, a stream it
        returned closed). `budget` uses it to charge what such an attempt
        really used once it is known.
        """
        if self._background is None:
            self._background = [hook]
        else:
            self._background.append(hook)

    def background_ended(self) -> None:
        """An abandoned attempt of this call ended: run the `on_background_end` hooks (errors are warned)."""
        for hook in list(self._background or ()):
            try:
                hook()
            except Exception as exc:  # noqa: BLE001 - a background thread: nobody to raise to
                warnings.warn(f"llmguard: a background-end hook failed: {exc!r}", RuntimeWarning, stacklevel=2)

    @property
    def attempt(self) -> Attempt | None:
        """The latest attempt, or None before the first."""
        return self.attempts[-1] if self.attempts else None

    @property
    def attempt_count(self) -> int:
        """How many real calls were made."""
        return len(self.attempts)

    @property
    def response_model(self) -> str | None:
        """The model the provider said answered (latest attempt that says)."""
        for att in reversed(self.attempts):
            if att.response_model:
                return att.response_model
        return None

    @property
    def model(self) -> str | None:
        """The best-known model: the response model, else the requested one."""
        return self.response_model or (self.attempt.model if self.attempt else None) or self.request_model

    @property
    def usage(self) -> Usage | None:
        """Usage summed over attempts; None when no attempt reported any."""
        total: Usage | None = None
        for att in self.attempts:
            if att.usage is not None:
                total = att.usage if total is None else total + att.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        """Cost summed over attempts.

        None when no attempt reported usage (nothing is known to have been
        spent) or when an attempt with usage could not be priced: never a
        silent zero.
        """
        total = 0.0
        priced = False
        for att in self.attempts:
            if att.usage is None:
                continue
            if att.cost_usd is None:
                return None
            total += att.cost_usd
            priced = True
        return total if priced else None

    @property
    def usage_estimated(self) -> bool:
        """Whether any part of the usage was estimated rather than reported."""
        return any(att.usage is not None and att.usage.estimated for att in self.attempts)

    @property
    def time_to_first_chunk(self) -> float | None:
        """Seconds from the start of the call to the first chunk (streams)."""
        att = self.attempt
        if att is None or att.first_chunk_at is None:
            return None
        return att.first_chunk_at - self.started_at

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, once ended."""
        return None if self.ended_at is None else self.ended_at - self.started_at
