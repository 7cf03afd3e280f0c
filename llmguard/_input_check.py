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


# Cheap heuristics, not a guarantee: a determined attacker writes around any list of phrases.
# The text is lowercased once; each phrase's regex runs only if one of its words is in the text
# (a substring search at C speed), so a benign 2 KB message costs microseconds, not a regex
# alternation tried at every position (~0.5 ms).
_TOKENS: Final = ("<|im_start|>", "<|im_end|>", "<|system|>", "<|endoftext|>", "[inst]", "[/inst]", "<<sys>>")
_PHRASES: Final = (
    (
        ("ignore", "disregard", "forget", "override"),
        re.compile(
            r"(?:ignore|disregard|forget|override)\s+(?:(?:all|any|the|your|of)\s+)*"
            r"(?:previous|prior|above|earlier|preceding|system)\s+(?:instructions?|prompts?|messages?|rules|directions)"
        ),
    ),
    (
        ("prompt", "instructions"),
        re.compile(
            r"(?:reveal|print|show|repeat|output|leak)\s+(?:me\s+)?(?:your|the)\s+"
            r"(?:system\s+prompt|hidden\s+prompt|initial\s+instructions|instructions\s+above)"
        ),
    ),
    (("now",), re.compile(r"you\s+are\s+now\s+(?:in\s+)?(?:dan\b|developer\s+mode|jailbroken|unrestricted)")),
    (("system",), re.compile(r"new\s+system\s+prompt\s*:")),
)


def _injection(text: str) -> str | None:
    """Why *text* looks like a prompt injection, or None."""
    low = text.lower()
    for token in _TOKENS:
        at = low.find(token)
        if at >= 0:
            return f"matched {text[at : at + len(token)]!r} at {at}"
    for words, pattern in _PHRASES:
        if any(word in low for word in words):
            found = pattern.search(low)
            if found is not None:
                return f"matched {text[found.start() : found.end()]!r} at {found.start()}"
    return None


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
            out.append((check, _injection if check == "injection" else _invisible))
        elif callable(check):
            out.append((describe(check), check))
        else:
            msg = f"validate(input=...) must hold check names {NAMED_CHECKS} or callables, got {check!r}"
            raise TypeError(msg)
    return tuple(out)


def _invisible(text: str) -> str | None:
    """Why *text* holds text a reader does not see, or None."""
    if text.isascii():  # every character it looks for is outside ASCII: a C-speed answer
        return None
    found = _INVISIBLE.search(text)
    if found is None:
        return None
    return f"matched {found.group(0).encode('unicode_escape').decode()!r} at {found.start()}"
