"""Prompts and outputs on a traced call's span (opt-in), in the GenAI spec's JSON shapes.

Recorded only with ``capture_content=True`` (or the spec's environment
switch): each text goes through the user's ``redact=`` hook, then `scrub`,
and the span's content stops at a size cap (`_ContentBudget`).
"""

from __future__ import annotations

import json
import warnings

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from . import _semconv, providers
from ._secrets import SECRET_KEY_NAMES, scrub


if TYPE_CHECKING:
    from ._call import Call
    from ._stream import _StreamBase


_INPUT_PARAMS: Final = ("messages", "input", "prompt", "contents")
_SYSTEM_PARAMS: Final = ("system", "instructions")
# String arguments that are request settings, not prompt text.
_NOT_PROMPT: Final = frozenset({"model", "provider", "user", "service_tier", "stop", "reasoning_effort"})


class _ContentBudget:
    """Redaction, scrubbing and the size cap, shared by one span's content."""

    __slots__ = ("left", "redact")

    def __init__(self, redact: Callable[[str], str] | None, limit: int) -> None:
        self.redact = redact
        self.left = limit

    def clean(self, text: str) -> str:
        if self.redact is not None:
            redacted: object = self.redact(text)
            if not isinstance(redacted, str):
                msg = f"trace(redact=...) must return a str, got {type(redacted).__name__}"
                raise TypeError(msg)
            text = redacted
        text = scrub(text)
        if len(text) > self.left:
            cut = len(text) - self.left
            text = f"{text[: self.left]}…[truncated {cut} chars]"
            self.left = 0
        else:
            self.left -= len(text)
        return text


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _parts(content: Any, budget: _ContentBudget) -> list[dict[str, Any]]:
    """GenAI message parts from a message's content (a str, or provider blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": budget.clean(content)}]
    if not isinstance(content, Sequence):
        return [{"type": "text", "content": budget.clean(str(content))}]
    out: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            out.append({"type": "text", "content": budget.clean(block)})
            continue
        kind = _get(block, "type")
        if kind in ("text", "input_text", "output_text"):
            out.append({"type": "text", "content": budget.clean(str(_get(block, "text") or ""))})
        elif kind == "tool_use":
            arguments = budget.clean(json.dumps(_get(block, "input"), default=str))
            out.append({"type": "tool_call", "id": _get(block, "id"), "name": _get(block, "name"), "arguments": arguments})
        elif kind == "tool_result":
            result = _parts(_get(block, "content"), budget)
            out.append({"type": "tool_call_response", "id": _get(block, "tool_use_id"), "result": result})
        else:
            out.append({"type": str(kind or "unknown")})  # images, files...: their kind only
    return out


def _message(m: Any, budget: _ContentBudget) -> dict[str, Any]:
    if isinstance(m, Mapping) or hasattr(m, "role"):
        return {"role": str(_get(m, "role") or "user"), "parts": _parts(_get(m, "content"), budget)}
    return {"role": "user", "parts": _parts(m, budget)}


def _input_content(call: Call, budget: _ContentBudget) -> tuple[list[Any] | None, list[Any] | None]:
    """(system instructions, input messages) in the spec's JSON shapes."""
    system: list[Any] | None = None
    for name in _SYSTEM_PARAMS:
        value = call.param(name)
        if value:
            system = _parts(value, budget)
            break
    for name in _INPUT_PARAMS:
        value = call.param(name)
        if value is None:
            continue
        if isinstance(value, str):
            return system, [{"role": "user", "parts": _parts(value, budget)}]
        if isinstance(value, Sequence):
            return system, [_message(m, budget) for m in value]
        return system, None
    # A function like ``ask(q)`` builds the request itself: its text
    # arguments are the closest thing to the prompt that llmguard sees.
    texts = [
        v
        for k, v in call.bound_arguments().items()
        if isinstance(v, str) and k not in _NOT_PROMPT and not SECRET_KEY_NAMES.search(k)
    ]
    if not texts:
        return system, None
    return system, [{"role": "user", "parts": [{"type": "text", "content": budget.clean(t)} for t in texts]}]


def _content_attributes(
    attrs: dict[str, Any],
    n: _semconv.Semconv,
    budget: _ContentBudget,
    call: Call,
    stream: _StreamBase | None,
    result: Any,
    finish_reasons: tuple[str, ...],
) -> None:
    """Put the call's system instructions, input and output messages on *attrs*.

    A redactor that fails (or returns something else than a str) drops the
    content, never leaks it: a warning says so.
    """
    try:
        system, messages = _input_content(call, budget)
        if system:
            attrs[n.system_instructions] = json.dumps(system, ensure_ascii=False, default=str)
        if messages:
            attrs[n.input_messages] = json.dumps(messages, ensure_ascii=False, default=str)
        text = None
        if stream is not None:
            text = stream.text
        elif result is not None:
            observed = providers.observe_result(result)
            text = observed.text if observed is not None else (result if isinstance(result, str) else None)
        if text:
            reason = finish_reasons[0] if finish_reasons else "unknown"
            part = {"type": "text", "content": budget.clean(text)}
            out = [{"role": "assistant", "parts": [part], "finish_reason": reason}]
            attrs[n.output_messages] = json.dumps(out, ensure_ascii=False)
    except Exception as exc:  # noqa: BLE001 - a redactor's bug drops the content, never leaks it
        for key in (n.system_instructions, n.input_messages, n.output_messages):
            attrs.pop(key, None)
        warnings.warn(
            f"llmguard.trace: content not recorded ({type(exc).__name__} in the redactor or content)",
            RuntimeWarning,
            stacklevel=3,
        )
