"""`validate`'s input checks: what is read of a call's input, and the named checks.

Cheap heuristics run before anything is sent: length limits, a few regular
expressions for the common phrasings of prompt injection (a heuristic, not a
guarantee), invisible Unicode. `validate` raises `InputRejected` on a refusal.
"""

from __future__ import annotations

import re

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final


if TYPE_CHECKING:
    from ._call import Call


# Arguments whose text the input checks read; the developer's own instructions are not checked for injection.
USER_INPUT: Final = ("messages", "prompt", "input", "contents")
ALL_INPUT: Final = ("messages", "system", "prompt", "input", "instructions", "contents")


# Cheap heuristics (regex), not a guarantee: a determined attacker writes around any list of phrases.
_INJECTION: Final = re.compile(
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+|of\s+)*"
    r"(?:previous|prior|above|earlier|preceding|system)\s+(?:instructions?|prompts?|messages?|rules|directions)"
    r"|\b(?:reveal|print|show|repeat|output|leak)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+prompt|hidden\s+prompt|initial\s+instructions|instructions\s+above)"
    r"|\byou\s+are\s+now\s+(?:in\s+)?(?:DAN|developer\s+mode|jailbroken|unrestricted)"
    r"|\bnew\s+system\s+prompt\s*:"
    r"|<\|(?:im_start|im_end|system|endoftext)\|>|\[/?INST\]|<<SYS>>",
    re.IGNORECASE,
)
# Text a reader does not see: Unicode tags (ASCII smuggling), zero-width characters, bidi controls.
_INVISIBLE: Final = re.compile("[\U000e0000-\U000e007f\u200b-\u200f\u2060-\u2064\ufeff\u202a-\u202e\u2066-\u2069]")
NAMED_CHECKS: Final = ("injection", "invisible")


def _strings(value: Any, out: list[str], depth: int = 0) -> None:
    """The strings inside *value* (messages, content blocks), appended to *out*."""
    if isinstance(value, str):
        out.append(value)
    elif depth > 6:
        return
    elif isinstance(value, dict):
        for key in ("content", "text", "parts", "input"):
            if key in value:
                _strings(value[key], out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings(item, out, depth + 1)


def input_text(call: Call, names: Sequence[str]) -> str:
    out: list[str] = []
    found = False
    for name in names:
        value = call.param(name)
        if value is not None:
            found = True
            _strings(value, out)
    if not found:  # a function of its own shape: every string it was given
        _strings(list(call.args) + list(call.kwargs.values()), out)
    return "\n".join(out)


def describe(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def input_checks(given: Any) -> tuple[tuple[str, Callable[[str], Any]], ...]:
    if isinstance(given, (str, bytes)) or callable(given):
        given = (given,)
    if not isinstance(given, Sequence):
        msg = f"validate(input=...) must be a sequence of check names {NAMED_CHECKS} or callables, got {given!r}"
        raise TypeError(msg)
    out: list[tuple[str, Callable[[str], Any]]] = []
    for check in given:
        if isinstance(check, str):
            if check not in NAMED_CHECKS:
                msg = f"validate(input=...) has an unknown check {check!r}; the named checks are {list(NAMED_CHECKS)} (or pass a callable)"
                raise ValueError(msg)
            pattern = _INJECTION if check == "injection" else _INVISIBLE
            out.append((check, _pattern_check(pattern, check)))
        elif callable(check):
            out.append((describe(check), check))
        else:
            msg = f"validate(input=...) must hold check names {NAMED_CHECKS} or callables, got {check!r}"
            raise TypeError(msg)
    return tuple(out)


def _pattern_check(pattern: re.Pattern[str], name: str) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        found = pattern.search(text)
        if found is None:
            return None
        shown = found.group(0).encode("unicode_escape").decode() if name == "invisible" else found.group(0)
        return f"matched {shown!r} at {found.start()}"

    check.__qualname__ = name
    return check
