"""Exceptions raised by llmguard.

Every exception llmguard raises itself derives from `LLMGuardError`; errors
raised by the function you wrap (``anthropic.RateLimitError`` and friends)
pass through unchanged, so the ``except`` clauses you already have keep
working.

::

    LLMGuardError
    ├── BudgetExceeded
    ├── GuardTimeout (also a TimeoutError)
    ├── RateLimited
    ├── CircuitOpen
    ├── AllFailed (also an ExceptionGroup)
    ├── AnswerRejected (in an AllFailed: an answer fallback's reject= refused)
    ├── ValidationFailed
    ├── InputRejected
    ├── StreamInterrupted
    └── StreamFailed (recorded, never raised)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._record import Usage


class LLMGuardError(Exception):
    """Base class of every exception llmguard raises itself."""


class BudgetExceeded(LLMGuardError):
    """A call would not fit in a budget; it was refused before it was sent."""

    def __init__(
        self,
        message: str,
        *,
        scope: str = "",
        limit: float = 0.0,
        spent: float = 0.0,
        reserved: float = 0.0,
        requested: float = 0.0,
        unit: str = "usd",
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.unit = unit


class GuardTimeout(LLMGuardError, TimeoutError):
    """A deadline passed: ``total``, ``first_token`` or ``idle`` (see `limit`)."""

    def __init__(self, message: str, *, limit: str = "total", seconds: float = 0.0) -> None:
        super().__init__(message)
        self.limit = limit
        self.seconds = seconds


class RateLimited(LLMGuardError):
    """A local rate limit could not admit the call within ``max_wait``; it was refused before it was sent.

    ``wait`` is the wait it would have needed (seconds), ``limit`` the limit
    that set it (``"rpm"`` or ``"tpm"``), ``key`` the limit's key.
    """

    def __init__(
        self, message: str, *, limiter: str = "", key: str | None = None, limit: str = "", wait: float = 0.0, max_wait: float = 0.0
    ) -> None:
        super().__init__(message)
        self.limiter = limiter
        self.key = key
        self.limit = limit
        self.wait = wait
        self.max_wait = max_wait


class CircuitOpen(LLMGuardError):
    """The circuit breaker for a target is open (or half-open with its probes out); the call was not made.

    ``target`` is the circuit's name; ``retry_after`` the seconds until it
    lets a probe through (0 when it is half-open: a probe is deciding).
    """

    def __init__(self, message: str, *, target: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.target = target
        self.retry_after = retry_after


class AllFailed(LLMGuardError, ExceptionGroup[Exception]):
    """Every fallback target failed; holds each target's error in order."""

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> AllFailed:
        """Group *exceptions*, one per fallback target, in the order tried."""
        return super().__new__(cls, message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> AllFailed:  # type: ignore[override] # narrower on purpose
        """Keep the class when ``except*`` splits the group."""
        return AllFailed(self.message, excs)


class AnswerRejected(LLMGuardError):
    """A fallback target answered, and ``reject=`` refused the answer; `answer` is what it returned.

    Found inside `AllFailed` (never raised alone), in the place of the target that gave it.
    """

    def __init__(self, message: str, *, answer: Any = None, target: str = "") -> None:
        super().__init__(message)
        self.answer = answer
        self.target = target


class ValidationFailed(LLMGuardError):
    """The output never validated, even after the re-asks (`llmguard.validate`).

    ``raw`` is the last answer as the function returned it (a read stream:
    its text), ``text`` the same as text, ``parsed`` the last JSON value
    that parsed but did not validate (None if none did), ``errors`` the last
    attempt's errors, ``history`` every attempt's errors in order,
    ``attempts`` the answers validated (1 + the re-asks made), ``usage`` the
    total usage of the call's attempts (None when no attempt reported any),
    and ``step`` where the last answer was found (``parsed``, ``tool``,
    ``text``, ``value``).
    """

    def __init__(
        self,
        message: str,
        *,
        raw: Any = None,
        errors: Any = None,
        attempts: int = 0,
        parsed: Any = None,
        history: Sequence[Sequence[str]] = (),
        usage: Usage | None = None,
        text: str = "",
        step: str = "",
    ) -> None:
        super().__init__(message)
        self.raw = raw
        self.errors = errors
        self.attempts = attempts
        self.parsed = parsed
        self.history = [list(h) for h in history]
        self.usage = usage
        self.text = text
        self.step = step


class InputRejected(LLMGuardError):
    """The input was rejected before any request was sent (too long, a prompt-injection pattern, a custom check).

    ``check`` names the check that refused it (``max_input_chars``,
    ``max_input_tokens``, ``injection``, ``invisible``, or a custom
    check's name) and ``reason`` says why.
    """

    def __init__(self, message: str, *, check: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.check = check
        self.reason = reason


class StreamFailed(LLMGuardError):
    """The provider said, inside a stream that then ended normally, that the response failed.

    An OpenAI Responses stream carries an ``error`` or ``response.failed``
    event and then ends; the SDK hands the event to your code and raises
    nothing. llmguard raises nothing either (your code sees what it always
    saw), but this is the call record's error and the stream's outcome is an
    error: it is not cached, its span is an error, and its usage is charged.
    """


class StreamInterrupted(LLMGuardError):
    """A stream failed after chunks had reached the caller.

    Nothing is replayed: `text` is what the caller already received and
    `usage` what the provider reported (or llmguard estimated) so far. The
    underlying error is ``__cause__``.
    """

    def __init__(self, message: str, *, text: str = "", usage: Usage | None = None) -> None:
        super().__init__(message)
        self.text = text
        self.usage = usage


class StreamTimedOut(StreamInterrupted, GuardTimeout):
    """A stream stalled after chunks had reached the caller (an ``idle`` or ``total`` limit).

    Both a `StreamInterrupted` (``text`` and ``usage`` so far) and a
    `GuardTimeout` (``limit``, ``seconds``): ``except lg.StreamInterrupted``
    catches every failure of a started stream, whatever the guards and their
    order, and ``except lg.GuardTimeout`` every deadline.
    """

    def __init__(
        self, message: str, *, text: str = "", usage: Usage | None = None, limit: str = "idle", seconds: float = 0.0
    ) -> None:
        StreamInterrupted.__init__(self, message, text=text, usage=usage)
        self.limit = limit
        self.seconds = seconds
