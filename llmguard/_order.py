"""The canonical order of the guards, and the stacks known to surprise.

Outermost first: ``trace → validate → cache → route → fallback → retry →
breaker → budget → ratelimit → timeout → your function``. Any order works as
written; `SURPRISES` lists the pairs where the order written does something
users rarely mean, each with what the canonical order does instead.
`lg.describe` warns about them, and so does decorating a function into one.
"""

from __future__ import annotations

from typing import Final

from ._warn import warn


CANONICAL: Final = (
    "trace",
    "validate",
    "cache",
    "route",
    "fallback",
    "retry",
    "breaker",
    "budget",
    "ratelimit",
    "timeout",
)

class OrderWarning(UserWarning):
    """Guards stacked in an order known to surprise (see `lg.describe`)."""


# (outer, inner, what happens; what the canonical order does instead)
SURPRISES: Final[tuple[tuple[str, str, str], ...]] = (
    ("cache", "trace", ("a cache hit returns before trace runs, so hits leave no span; "
     "with trace outermost every call, hit or miss, has one")),
    ("budget", "cache", "every cache hit reserves money first; with budget below cache, hits cost nothing"),
    ("ratelimit", "cache", ("every cache hit waits for rate-limit capacity; with ratelimit below cache, "
     "hits pass at once")),
    ("fallback", "validate", ("an answer that fails validation switches provider; with validate above "
     "fallback, a bad answer is re-asked of the provider that gave it")),
    ("retry", "fallback", ("each retry starts again from the primary; with fallback above retry, each "
     "target is retried before the next is tried")),
    ("breaker", "retry", ("the breaker sees one outcome after all the retries, so a failing provider is "
     "retried before it counts; with breaker below retry, each attempt counts")),
    ("ratelimit", "retry", ("retries are sent without waiting their turn; with ratelimit below retry, "
     "each attempt waits for capacity")),
    ("fallback", "route", ("route picks the model again for every alternate, overriding the fallback's "
     "model; with route above fallback, route picks the first model and the alternates stay as written")),
)


def surprises(names: list[str] | tuple[str, ...], *, about: int | None = None) -> list[str]:
    """What is surprising in guards *names* (outermost first), one sentence each.

    With *about*, only the pairs that involve the guard at that index.
    """
    found = []
    for outer, inner, why in SURPRISES:
        if outer not in names or inner not in names:
            continue
        o, i = names.index(outer), names.index(inner)
        if o < i and (about is None or about in (o, i)):
            found.append(f"{outer} above {inner}: {why}")
    return found


def warn_surprises(names: list[str] | tuple[str, ...], *, about: int | None = None) -> None:
    """Warn (`OrderWarning`, at the user's line) about each of `surprises`."""
    for text in surprises(names, about=about):
        warn(f"llmguard: {text}", OrderWarning)
