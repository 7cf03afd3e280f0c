"""llmguard's documented token estimates (docs/estimates.md), computed here independently of its code.

Tests compare what llmguard records with these figures, so a change to an
estimator shows up as a failing test, not as a silently different number.

One count, in UTF-8 bytes, of the call's input arguments (a text chat
message counts its text plus 40; a list its items; anything else its
``str()``), read two ways: the best guess ``ceil(bytes / 4)`` (what an
estimated charge uses) and the worst case ``ceil(bytes / 3)`` (what a
budget reserves).
"""

from __future__ import annotations

import math

from typing import Any


def count(value: Any) -> int:
    """The documented count of one argument, in UTF-8 bytes."""
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if type(value) is list:
        total = 0
        for item in value:
            if type(item) is dict and set(item) == {"role", "content"} and isinstance(item["content"], str):
                total += len(item["content"].encode("utf-8")) + 40
            else:
                total += len((item if isinstance(item, str) else str(item)).encode("utf-8"))
        return total
    return len(str(value).encode("utf-8"))


def estimate_tokens(text: str) -> int:
    """`llmguard.providers.estimate_tokens` as documented: the best guess, ``ceil(UTF-8 bytes / 4)``."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def estimated_input(*arguments: Any) -> int:
    """The best-guess input tokens of a call whose input arguments are *arguments* (an estimated charge)."""
    return math.ceil(sum(count(a) for a in arguments) / 4)


def reserved_input(*arguments: Any) -> int:
    """The worst-case input tokens a budget reserves for a call whose input arguments are *arguments*."""
    return math.ceil(sum(count(a) for a in arguments) / 3)
