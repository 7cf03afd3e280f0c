"""llmguard: production hardening for code that calls LLM APIs.

Composable decorators and context managers that wrap any function you already
have; see the README for what each promises.
"""

from . import _wire
from ._breaker import breaker
from ._budget import BudgetAlert, BudgetSpend, budget, budget_spend
from ._cache import CacheInfo, cache, cache_clear, cache_info
from ._call import current_call
from ._context import remaining
from ._describe import GuardInfo, describe
from ._facts import report_usage
from ._fallback import fallback
from ._guard import guard
from ._order import OrderWarning
from ._ratelimit import ratelimit
from ._record import Attempt, CallRecord, ErrorKind, Outcome, Usage
from ._retry import RetryAttempt, retry
from ._route import RouteDecision, RouteRequest, RouteRule, RouteScore, RouteScorer, route
from ._semantic import Semantic
from ._stream import AsyncGuardedStream, GuardedStream
from ._telemetry import Telemetry, configure_telemetry
from ._timeout import timeout
from ._trace import trace
from ._validate import Feedback, feedback, validate
from .errors import (
    AllFailed,
    AnswerRejected,
    BudgetExceeded,
    CircuitOpen,
    GuardTimeout,
    InputRejected,
    LLMGuardError,
    RateLimited,
    StreamFailed,
    StreamInterrupted,
    StreamTimedOut,
    ValidationFailed,
)
from .prices import Price, cost_of, set_price
from .providers import classify, usage_from


# The wire (docs/wire.md): the SDKs' HTTP exchange is observed inside guarded calls and scopes.
if _wire._enabled_by_environment():
    _wire.install()


__all__ = [
    "AllFailed",
    "AnswerRejected",
    "AsyncGuardedStream",
    "Attempt",
    "BudgetAlert",
    "BudgetExceeded",
    "BudgetSpend",
    "CacheInfo",
    "CallRecord",
    "CircuitOpen",
    "ErrorKind",
    "Feedback",
    "GuardInfo",
    "GuardTimeout",
    "GuardedStream",
    "InputRejected",
    "LLMGuardError",
    "OrderWarning",
    "Outcome",
    "Price",
    "RateLimited",
    "RetryAttempt",
    "RouteDecision",
    "RouteRequest",
    "RouteRule",
    "RouteScore",
    "RouteScorer",
    "Semantic",
    "StreamFailed",
    "StreamInterrupted",
    "StreamTimedOut",
    "Telemetry",
    "Usage",
    "ValidationFailed",
    "__version__",
    "breaker",
    "budget",
    "budget_spend",
    "cache",
    "cache_clear",
    "cache_info",
    "classify",
    "configure_telemetry",
    "cost_of",
    "current_call",
    "describe",
    "fallback",
    "feedback",
    "guard",
    "ratelimit",
    "remaining",
    "report_usage",
    "retry",
    "route",
    "set_price",
    "timeout",
    "trace",
    "usage_from",
    "validate",
]


def __getattr__(name: str) -> str:
    # Read lazily, like stamina: importing llmguard must not parse metadata.
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("llmguard")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
