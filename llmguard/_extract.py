"""Where a structured answer is in what an LLM call returned: `validate`'s extraction.

`extract(result)` looks, in this order, and says which step found it:

1. ``parsed``: output an SDK already parsed (openai ``.parse()``'s
   ``message.parsed`` / Responses ``output_parsed``, anthropic
   ``messages.parse()``'s ``parsed_output``, google-genai ``.parsed``);
2. ``tool``: the input of an anthropic ``tool_use`` block, the arguments of
   an openai chat ``tool_calls`` entry or of a Responses ``function_call``;
3. ``text``: the answer's text (a ``str`` result, the text blocks of a
   message, a chat message's content, a Responses ``output_text``, a read
   stream's text), as JSON by `json_candidates`: the whole text, else a
   fenced code block, else the first JSON value inside prose, trailing
   commentary ignored;
4. ``value``: anything else (a dict, a list, a number) is the value itself.

Reading an object never raises: SDK objects are read by attribute, dicts of
the same shapes by key, and anything malformed is skipped.
"""

from __future__ import annotations

import json
import re

from collections.abc import Iterator, Mapping
from typing import Any, Final, NamedTuple


class Extracted(NamedTuple):
    """What `extract` found: *value* from *step*; *text* is the answer as text (fed back on a re-ask)."""

    step: str  # "parsed", "tool", "text" or "value"
    value: Any  # the parsed object, the tool's input (a dict, or a JSON string), the text, the value
    text: str  # the answer as text: what a re-ask shows the model it said
    tried: tuple[str, ...]  # the steps tried before it, and what each found


_FENCE: Final = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)
_STARTS: Final = re.compile(r"[\[{]")
_MAX_STARTS: Final = 64  # JSON starts tried inside prose: bounded, so adversarial text stays linear-ish
_DECODER: Final = json.JSONDecoder()


def _get(obj: Any, name: str) -> Any:
    """*obj*'s attribute or key *name*, or None; never raises."""
    try:
        if isinstance(obj, Mapping):
            return obj.get(name)
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a property of a malformed object: nothing there
        return None


def _items(obj: Any) -> list[Any]:
    """*obj* as a list if it is a list or tuple, else empty."""
    return list(obj) if isinstance(obj, (list, tuple)) else []


def _is_sdk_shaped(result: Any) -> bool:
    if isinstance(result, Mapping):
        # A dict answer is the value itself unless it is shaped like an SDK response.
        if isinstance(result.get("choices"), list):
            return True
        if isinstance(result.get("content"), list) and result.get("role") == "assistant":
            return True
        return isinstance(result.get("output"), list) and result.get("object") == "response"
    module = type(result).__module__.partition(".")[0]
    return module in ("anthropic", "openai", "google")


def _parsed(result: Any) -> Any:
    for choice in _items(_get(result, "choices"))[:1]:
        parsed = _get(_get(choice, "message"), "parsed")
        if parsed is not None:
            return parsed
    for name in ("output_parsed", "parsed_output", "parsed"):
        parsed = _get(result, name)
        if parsed is not None:
            return parsed
    return None


def _tool(result: Any) -> Any:
    for block in _items(_get(result, "content")):
        if _get(block, "type") == "tool_use":
            return _get(block, "input")
    for choice in _items(_get(result, "choices"))[:1]:
        for call in _items(_get(_get(choice, "message"), "tool_calls")):
            function = _get(call, "function")
            if function is not None:
                return _get(function, "arguments")
    for item in _items(_get(result, "output")):
        if _get(item, "type") == "function_call":
            return _get(item, "arguments")
    return None


def _text(result: Any) -> str | None:
    if isinstance(result, str):
        return result
    blocks = _items(_get(result, "content"))
    if blocks:
        texts = [t for b in blocks if _get(b, "type") == "text" and isinstance(t := _get(b, "text"), str)]
        if texts:
            return "".join(texts)
    for choice in _items(_get(result, "choices"))[:1]:
        content = _get(_get(choice, "message"), "content")
        if isinstance(content, str):
            return content
    for name in ("output_text", "text"):
        text = _get(result, name)
        if isinstance(text, str):
            return text
    texts = []
    for item in _items(_get(result, "output")):
        if _get(item, "type") == "message":
            texts.extend(t for c in _items(_get(item, "content")) if isinstance(t := _get(c, "text"), str))
    return "".join(texts) if texts else None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    dump = getattr(value, "model_dump_json", None)
    try:
        if callable(dump):
            return str(dump())
        return json.dumps(value, default=str)
    except Exception:  # noqa: BLE001 - shown to the model only: any text will do
        return repr(value)


class StreamedTool:
    """The first tool call's arguments in a stream's chunks, fed one by one (never raises).

    anthropic: a ``tool_use`` block's ``input_json_delta`` pieces; openai
    chat: ``delta.tool_calls[0].function.arguments`` pieces; Responses:
    ``response.function_call_arguments.delta`` events.
    """

    __slots__ = ("block", "parts", "seen")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.seen = False
        self.block: Any = None  # the anthropic block index of the first tool_use

    def feed(self, chunk: Any) -> None:
        kind = _get(chunk, "type")
        if kind == "content_block_start":
            if not self.seen and _get(_get(chunk, "content_block"), "type") == "tool_use":
                self.seen, self.block = True, _get(chunk, "index")
        elif kind == "content_block_delta":
            delta = _get(chunk, "delta")
            if self.seen and _get(chunk, "index") == self.block and _get(delta, "type") == "input_json_delta":
                self._add(_get(delta, "partial_json"))
        elif kind == "response.function_call_arguments.delta":
            self.seen = True
            if _get(chunk, "output_index") in (None, 0) or len(self.parts) > 0:
                self._add(_get(chunk, "delta"))
        else:
            for choice in _items(_get(chunk, "choices"))[:1]:
                for call in _items(_get(_get(choice, "delta"), "tool_calls")):
                    if _get(call, "index") in (None, 0):
                        self.seen = True
                        self._add(_get(_get(call, "function"), "arguments"))

    def _add(self, piece: Any) -> None:
        if isinstance(piece, str):
            self.parts.append(piece)

    @property
    def arguments(self) -> str | None:
        """The tool call's arguments as JSON text, or None when the stream had no tool call."""
        return "".join(self.parts) if self.seen else None


def extract(result: Any, *, text: str | None = None, tool: str | None = None) -> Extracted:
    """Where the answer is in *result* (see the module docs); *text* / *tool* are a read stream's. Never raises."""
    if tool is not None:
        return Extracted("tool", tool, tool, ("parsed: a stream",))
    if text is not None:
        return Extracted("text", text, text, ("parsed: a stream", "tool call: none in the stream"))
    if isinstance(result, str):
        return Extracted("text", result, result, ())
    if not _is_sdk_shaped(result):
        return Extracted("value", result, _as_text(result), ())
    parsed = _parsed(result)
    if parsed is not None:
        return Extracted("parsed", parsed, _as_text(parsed), ())
    tool = _tool(result)
    if tool is not None:
        return Extracted("tool", tool, _as_text(tool), ("parsed: none",))
    found = _text(result)
    tried = ("parsed: none", "tool call: none")
    if found is None:
        return Extracted("text", "", "", (*tried, "text: none"))
    return Extracted("text", found, found, tried)


def json_candidates(text: str) -> Iterator[tuple[str, str]]:
    """The JSON texts inside *text*, best first, each with where it was found.

    The whole text (stripped) is *not* among them: the caller tries it first,
    as the fast path. Then each fenced code block's body, then the first
    JSON object or array that decodes inside the prose (what follows it, a
    trailing commentary, is ignored). Never raises.
    """
    for match in _FENCE.finditer(text):
        body = match.group(2).strip()
        if body:
            yield body, "a code fence"
    for n, start in enumerate(_STARTS.finditer(text)):
        if n == _MAX_STARTS:
            return
        try:
            _, end = _DECODER.raw_decode(text, start.start())
        except (ValueError, RecursionError):
            continue
        yield text[start.start() : end], "JSON inside the text"
        return
