"""llmguard's documented token estimates, computed here independently of its code.

Tests compare what llmguard records with these figures, so a change to an
estimator shows up as a failing test, not as a silently different number.
"""

from __future__ import annotations

from typing import Any


def estimate_tokens(text: str) -> int:
    """`llmguard.providers.estimate_tokens` as documented: ``ceil(len(text) / 3.5)``."""
    return -(-len(text) * 2 // 7)


def estimated_input(*arguments: Any) -> int:
    """`Call.estimated_input_tokens` as documented: the estimate of the arguments' ``str()`` joined."""
    return estimate_tokens("".join(str(a) for a in arguments))
