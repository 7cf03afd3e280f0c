"""The one input and output token estimate: what is counted, and how it becomes tokens.

Every estimate llmguard makes goes through here: a budget's worst-case
reservation, the charge of an attempt that reported no usage (a stream ended
early, a cancelled or abandoned attempt), the output of a stream that ended
without usage, and `llmguard.providers.estimate_tokens`. docs/estimates.md
explains it and gives the measured error.

**What is counted.** The call's *input arguments*: those named in
`INPUT_NAMES` (``messages``, ``system``, ``prompt``, ``input``,
``instructions``, ``contents``, ``tools``; the union of what the Anthropic,
OpenAI and Google SDKs call their input) that are given and not None; a
function with none of them counts every argument it was given. Each value
is measured by `size`, in UTF-8 bytes: a string itself; a chat message
``{"role": ..., "content": "<text>"}`` (those two keys exactly) its text
plus `MESSAGE_BYTES` for the role and framing; a list the sum of its items
(one level: a list inside it counts its ``str()``); anything else (content
blocks, tool schemas, objects) its ``str()``.

**How bytes become tokens.** One count, two readings:

- `tokens` is the best guess, ``ceil(bytes / 4)`` (`BYTES_PER_TOKEN`): what
  an estimated *charge* uses, since a charge should be neither high nor low.
- `reserve_tokens` is the worst case, ``ceil(bytes / 3)``
  (`RESERVE_BYTES_PER_TOKEN`, a safety factor of 4/3 over the best guess):
  what a budget *reserves*, since a reservation may over-estimate but
  should not under-estimate.

Bytes, not characters: a CJK character is 3 UTF-8 bytes and about one token,
a Latin letter 1 byte and about a quarter of one, so bytes track tokens
across scripts where a characters ratio is off by 2x or more.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final


# The input argument names of the SDKs (Anthropic: system, messages, tools;
# OpenAI: messages, input, instructions, prompt, tools; Google: contents).
INPUT_NAMES: Final = ("messages", "system", "prompt", "input", "instructions", "contents", "tools")
MESSAGE_BYTES: Final = 40  # what a chat message's role and framing count, beside its text
BYTES_PER_TOKEN: Final = 4  # the best guess (a charge)
RESERVE_BYTES_PER_TOKEN: Final = 3  # the worst case (a reservation): 4/3 of the best guess


class Parts(list[Any]):
    """Several input arguments, sized together (see `size`)."""


def _str_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def size(value: Any) -> int:
    """The estimate's count of *value*, in UTF-8 bytes (see the module docs).

    Lists are summed item by item because ``str()`` of a long conversation
    copies and escapes every character (microseconds per kilobyte) where
    this reads lengths.
    """
    cls = value.__class__
    if cls is str:
        return _str_size(value)
    if cls is Parts:
        return sum(map(size, value))
    if cls is not list:
        return _str_size(str(value))
    total = 0
    for item in value:
        if item.__class__ is dict and len(item) == 2 and "role" in item:
            text = item.get("content")
            if text.__class__ is str:  # `_str_size`, inlined: once per message of every call
                total += (len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))) + MESSAGE_BYTES
                continue
        total += _str_size(item if item.__class__ is str else str(item))
    return total


def arguments_size(args: Iterable[Any], kwargs: dict[str, Any]) -> int:
    """The count of a call with none of `INPUT_NAMES`: every argument it was given."""
    return sum(map(size, args)) + sum(map(size, kwargs.values()))


def tokens(count: int) -> int:
    """The best-guess tokens of *count* bytes: ``ceil(count / 4)``."""
    return -(-count // BYTES_PER_TOKEN)


def reserve_tokens(count: int) -> int:
    """The worst-case tokens of *count* bytes: ``ceil(count / 3)``."""
    return -(-count // RESERVE_BYTES_PER_TOKEN)


def text_tokens(text: str) -> int:
    """The best-guess tokens of *text* (`llmguard.providers.estimate_tokens`)."""
    return -(-_str_size(text) // BYTES_PER_TOKEN)
