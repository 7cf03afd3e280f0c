"""`describe`: the guards on a function, outermost first, with their settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._order import warn_surprises
from ._runner import layers_of


@dataclass(frozen=True, slots=True)
class GuardInfo:
    """One guard on a function: its name and its configuration."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)


def describe(fn: object) -> list[GuardInfo]:
    """List the llmguard guards on *fn*, outermost first.

    A function with no guards gives an empty list. Guards stacked in an
    order known to surprise (cache above trace: hits leave no span; budget
    above cache: hits reserve money...) each raise an `OrderWarning` saying
    what the canonical order would do instead.
    """
    layers = layers_of(fn)
    warn_surprises([layer.name for layer in layers])
    return [GuardInfo(layer.name, layer.settings()) for layer in layers]
