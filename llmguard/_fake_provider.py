"""A fake LLM provider: a real HTTP server that speaks the providers' wire formats.

Guards are only as trustworthy as the faults they were tested against, and mocks of
SDK internals drift from what the SDKs really do. So `FakeProvider` serves the
Anthropic Messages API, the OpenAI Chat Completions and Responses APIs and
google-genai's ``generateContent`` over real HTTP on 127.0.0.1, and the real SDKs
are pointed at it with ``base_url=``. Their own parsing, retry and exception code
then runs exactly as it would against the real service.

Each request consumes one scripted `Step` (FIFO; the default `Step()` when the
queue is empty) that decides what goes wrong: an error status with a
provider-shaped body and headers, a slow first byte, a dropped connection, a
mid-stream stall, in-stream error or cut, or a raw (malformed) body. A request
can also carry its own script in an ``x-fake-script`` header. Every request is
recorded as a `RecordedRequest`.

Usage numbers are deterministic: input is the number of whitespace-separated
words in the request's text and output the number of words in the reply, unless
a step overrides them.

The module uses only the standard library, so users can ship it in their tests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import sys
import threading
import time

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal, Self, cast
from urllib.parse import urlsplit


__all__ = ["FakeProvider", "RecordedRequest", "Step"]

Api = Literal["anthropic", "openai.chat", "openai.responses", "google", "other"]

DEFAULT_REPLY: Final = "Hello from the fake provider."
SCRIPT_HEADER: Final = "x-fake-script"

_USAGE_KEYS: Final = frozenset(
    {"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"}
)
_GOOGLE_PATH: Final = re.compile(
    r"^/v1[a-z0-9]*/(?P<model>.+):(?P<method>generateContent|streamGenerateContent)$"
)
# One chunk per word, each keeping the whitespace that follows it, so that the
# chunks concatenate back to the reply exactly.
_WORD_CHUNK: Final = re.compile(r"\s*\S+\s*")


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Step:
    """What the fake provider does with one request.

    Every field has a default, so ``Step()`` is a plain successful reply and a
    fault is one keyword away: ``Step(status=429, headers={"retry-after": "2"})``.
    Stream faults count *content chunks* (text deltas): ``error_after=2`` sends
    two deltas, then the error.
    """

    status: int = 200
    """HTTP status; a non-2xx status gets an error body shaped like the called API's."""
    error_type: str | None = None
    """Overrides the error's type: anthropic and openai ``error.type``, google ``error.status``."""
    error_message: str | None = None
    """Overrides the error's message."""
    error_code: str | None = None
    """Overrides the error's code: openai ``error.code``, anthropic ``error.details.error_code``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra response headers; they replace generated headers of the same name."""
    delay: float = 0.0
    """Seconds to wait before the status line (a slow first byte)."""
    reply: str | None = None
    """The assistant's text; `DEFAULT_REPLY` when None."""
    model: str | None = None
    """The model reported in the response; the request's model when None."""
    usage: Mapping[str, int] | None = None
    """Token counts: ``input_tokens`` (total, including cache reads and writes),
    ``output_tokens`` (total, including reasoning), ``cache_read_tokens``,
    ``cache_write_tokens``, ``reasoning_tokens``; missing keys keep their defaults."""
    omit_usage: bool = False
    """Send no usage at all, so clients have to estimate.

    Anthropic always sends usage, so its SDK is not ready for this: a raw stream
    yields events whose ``usage`` is None, but ``messages.stream()`` raises
    AttributeError when it folds in the usage-less ``message_delta``."""
    stream_delay: float = 0.0
    """Seconds to wait before each content chunk of a stream."""
    stall_after: int | None = None
    """After this many content chunks, go silent for `stall` seconds, then go on."""
    stall: float = 30.0
    """Length of the stall started by `stall_after`."""
    error_after: int | None = None
    """After this many content chunks, send an in-stream error event and end the stream."""
    drop: bool = False
    """Close the connection without sending any response."""
    drop_after: int | None = None
    """After this many content chunks, cut the connection mid-body."""
    raw_body: str | None = None
    """Send exactly this body (``application/json``, with `status`) instead of a generated one."""
    tool_input: Mapping[str, Any] | None = None
    """Answer with a tool call taking these arguments instead of text: an anthropic ``tool_use``
    block, an openai chat ``tool_calls`` entry, a Responses ``function_call`` item. Streamed
    (anthropic and openai chat), the arguments' JSON arrives in pieces, the way `reply`'s words do."""
    tool_name: str = "answer"
    """The name of the tool `tool_input` calls."""

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        """Say what is wrong with the fields, naming the parameter; None when all is well."""
        if not 100 <= self.status <= 599:
            return f"Step(status=...) must be an HTTP status from 100 to 599, got {self.status!r}"
        for name in ("delay", "stream_delay", "stall"):
            value = getattr(self, name)
            if value < 0:
                return f"Step({name}=...) must be >= 0 seconds, got {value!r}"
        for name in ("stall_after", "error_after", "drop_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                return f"Step({name}=...) must be None or a chunk count >= 0, got {value!r}"
        if self.tool_input is not None and not isinstance(cast("object", self.tool_input), Mapping):
            return f"Step(tool_input=...) must be a mapping of the tool's arguments, got {self.tool_input!r}"
        if self.usage is not None:
            unknown = sorted(set(self.usage) - _USAGE_KEYS)
            if unknown:
                return f"Step(usage=...) has unknown keys {unknown}; use {sorted(_USAGE_KEYS)}"
            negative = {k: v for k, v in self.usage.items() if v < 0}
            if negative:
                return f"Step(usage=...) token counts must be >= 0, got {negative}"
        return None

    @classmethod
    def from_json(cls, text: str) -> Step:
        """Build a step from a JSON object of its fields (the ``x-fake-script`` header's format)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            msg = f"a step must be a JSON object of Step fields, got {text!r}"
            raise TypeError(msg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"unknown Step fields {unknown}; use some of {sorted(known)}"
            raise ValueError(msg)
        return cls(**data)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake provider received it, for assertions in tests."""

    method: str
    path: str
    """The URL path, without the query string."""
    headers: dict[str, str]
    """Request headers with lower-cased names (repeated headers joined with ``", "``)."""
    body: Any
    """The decoded JSON body, or None when there was none or it was not JSON."""
    time: float
    """`time.monotonic()` when the request arrived."""

    @property
    def api(self) -> Api:
        """Which provider API the request was addressed to."""
        return _api_of(self.path)

    @property
    def stream(self) -> bool:
        """Whether the request asked for a streamed (SSE) response."""
        if self.api == "google":
            return self.path.endswith(":streamGenerateContent")
        return isinstance(self.body, dict) and self.body.get("stream") is True


class FakeProvider:
    """A fake provider server on 127.0.0.1 with a FIFO script of `Step` s.

    Use it as a context manager, or call `start()` and `stop()`. Scripted steps and
    recorded requests live on this object, so they survive a restart and
    `reset()` clears them. ``stop()`` returns promptly even while a response is
    delayed or stalled, because every wait on the server side wakes up on stop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Step] = deque()
        self._requests: list[RecordedRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> Self:
        """Start serving on a random free port; returns self."""
        if self._server is not None:
            raise RuntimeError("FakeProvider is already running; call stop() before start()")
        server = _Server(self)
        thread = threading.Thread(
            target=server.serve_forever,
            # A short poll interval keeps stop() quick: shutdown() waits for one poll.
            kwargs={"poll_interval": 0.05},
            name=f"llmguard-fake-provider-{server.server_address[1]}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and close open connections; safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=2.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses

    @property
    def url(self) -> str:
        """The server's base URL, ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError(
                "FakeProvider is not running; call start() or use it in a `with` block"
            )
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def anthropic_base_url(self) -> str:
        """``base_url`` for `anthropic.Anthropic` (the SDK appends ``/v1/messages``)."""
        return self.url

    @property
    def openai_base_url(self) -> str:
        """``base_url`` for `openai.OpenAI` (the SDK appends ``/chat/completions``)."""
        return self.url + "/v1"

    @property
    def google_base_url(self) -> str:
        """``base_url`` for google-genai's ``HttpOptions``."""
        return self.url

    # -- scripting and inspection

    def script(self, *steps: Step) -> None:
        """Queue steps; each later API request consumes the oldest one."""
        with self._lock:
            self._queue.extend(steps)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, in arrival order."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget queued steps and recorded requests."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_step(self) -> Step:
        with self._lock:
            return self._queue.popleft() if self._queue else Step()


# --------------------------------------------------------------------------- wire formats


def _api_of(path: str) -> Api:
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path == "/v1/chat/completions":
        return "openai.chat"
    if path == "/v1/responses":
        return "openai.responses"
    if _GOOGLE_PATH.match(path):
        return "google"
    return "other"


def _texts(value: object) -> Iterator[str]:
    """Every piece of prompt text in a request fragment, across the APIs' message shapes."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key in ("text", "content", "parts"):
            if key in value:
                yield from _texts(value[key])


def _prompt_words(api: Api, body: Mapping[str, Any]) -> int:
    keys = {
        "anthropic": ("system", "messages"),
        "openai.chat": ("messages",),
        "openai.responses": ("instructions", "input"),
        "google": ("systemInstruction", "system_instruction", "contents"),
        "other": (),
    }[api]
    return sum(len(text.split()) for key in keys for text in _texts(body.get(key)))


@dataclass(frozen=True)
class _Usage:
    """Token counts in provider-neutral terms, rendered in each API's field names."""

    input: int  # total, including cache reads and writes
    output: int  # total, including reasoning
    cache_read: int
    cache_write: int
    reasoning: int

    @property
    def uncached_input(self) -> int:
        # Anthropic's input_tokens excludes both cache reads and cache writes.
        return max(self.input - self.cache_read - self.cache_write, 0)

    def anthropic(self, *, output_tokens: int | None = None) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": self.uncached_input,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": self.output if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }
        if self.reasoning:
            usage["output_tokens_details"] = {"thinking_tokens": self.reasoning}
        return usage

    def anthropic_delta(self) -> dict[str, Any]:
        # Like the real API, message_delta repeats the cumulative input counts.
        return {
            "input_tokens": self.uncached_input,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": self.output,
        }

    def openai_chat(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
            "prompt_tokens_details": {
                "cached_tokens": self.cache_read,
                "cache_write_tokens": self.cache_write,
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def openai_responses(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input,
            "input_tokens_details": {
                "cached_tokens": self.cache_read,
                "cache_write_tokens": self.cache_write,
            },
            "output_tokens": self.output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": self.input + self.output,
        }

    def google(self) -> dict[str, Any]:
        # Gemini counts thoughts apart from candidates; both make up the output.
        usage: dict[str, Any] = {
            "promptTokenCount": self.input,
            "candidatesTokenCount": max(self.output - self.reasoning, 0),
            "totalTokenCount": self.input + self.output,
        }
        # The real API leaves zero counts out.
        if self.cache_read:
            usage["cachedContentTokenCount"] = self.cache_read
        if self.reasoning:
            usage["thoughtsTokenCount"] = self.reasoning
        return usage


_ANTHROPIC_ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_ERRORS: Final[Mapping[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_GOOGLE_STATUSES: Final[Mapping[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ERROR_MESSAGES: Final[Mapping[int, str]] = {
    400: "Invalid request.",
    401: "Invalid API key.",
    403: "Permission denied.",
    404: "Not found.",
    408: "Request timed out.",
    409: "Conflict.",
    413: "Request too large.",
    422: "Unprocessable entity.",
    429: "Rate limit exceeded.",
    500: "Internal server error.",
    502: "Bad gateway.",
    503: "Service unavailable.",
    504: "Gateway timeout.",
    529: "Overloaded",
}


def _error_message(status: int, step: Step) -> str:
    if step.error_message is not None:
        return step.error_message
    return f"{_ERROR_MESSAGES.get(status, f'Error {status}.')} (fake provider)"


def _error_body(api: Api, status: int, step: Step, request_id: str) -> dict[str, Any]:
    message = _error_message(status, step)
    if api == "anthropic":
        default_type = _ANTHROPIC_ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        error: dict[str, Any] = {"type": step.error_type or default_type, "message": message}
        if step.error_code is not None:
            # The SDK picks code-specific exception subclasses from details.error_code.
            error["details"] = {"error_code": step.error_code}
        return {"type": "error", "error": error, "request_id": request_id}
    if api == "google":
        status_name = step.error_type or _GOOGLE_STATUSES.get(
            status, "INTERNAL" if status >= 500 else "UNKNOWN"
        )
        return {"error": {"code": status, "message": message, "status": status_name}}
    default_type, default_code = _OPENAI_ERRORS.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    return {
        "error": {
            "message": message,
            "type": step.error_type or default_type,
            "param": None,
            "code": step.error_code if step.error_code is not None else default_code,
        }
    }


def _rate_limit_headers(api: Api) -> dict[str, str]:
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    if api == "anthropic":
        return {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": reset,
        }
    if api in ("openai.chat", "openai.responses"):
        return {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "1s",
        }
    return {}


def _sse(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event is not None else ""
    return f"{head}data: {payload}\n\n".encode()


@dataclass(frozen=True)
class _StreamPlan:
    """A stream as events: the fault points (`Step.*_after`) sit between the deltas."""

    preamble: list[bytes]
    deltas: list[bytes]
    epilogue: list[bytes]
    error_event: Callable[[int], bytes]  # takes the number of deltas sent so far


@dataclass(frozen=True)
class _Call:
    """Everything needed to render one successful response."""

    api: Api
    body: Mapping[str, Any]
    step: Step
    model: str
    reply: str
    usage: _Usage
    ident: int

    @property
    def chunks(self) -> list[str]:
        return _WORD_CHUNK.findall(self.reply) or ([self.reply] if self.reply else [])


# --------------------------------------------------------------------------- per-API renderers


def _anthropic_message(call: _Call) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": f"msg_fake_{call.ident:06d}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": [{"type": "text", "text": call.reply}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    tool = call.step.tool_input
    if tool is not None:
        message["content"] = [
            {"type": "tool_use", "id": f"toolu_fake_{call.ident:06d}", "name": call.step.tool_name, "input": dict(tool)}
        ]
        message["stop_reason"] = "tool_use"
    if not call.step.omit_usage:
        message["usage"] = call.usage.anthropic()
    return message


def _anthropic_stream(call: _Call) -> _StreamPlan:
    start = _anthropic_message(call) | {"content": [], "stop_reason": None}
    if not call.step.omit_usage:
        # The real API reports a placeholder output count here; the real one comes in message_delta.
        start["usage"] = call.usage.anthropic(output_tokens=1)
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    if not call.step.omit_usage:
        delta["usage"] = call.usage.anthropic_delta()
    error = {
        "type": "error",
        "error": {
            "type": call.step.error_type or "overloaded_error",
            "message": call.step.error_message or "Overloaded",
        },
    }
    tool = call.step.tool_input is not None
    block: dict[str, Any] = {"type": "text", "text": ""}
    if tool:  # the tool's arguments arrive as JSON pieces, the reply being that JSON
        start["content"] = []
        block = {"type": "tool_use", "id": f"toolu_fake_{call.ident:06d}", "name": call.step.tool_name, "input": {}}
        delta["delta"]["stop_reason"] = "tool_use"
    return _StreamPlan(
        preamble=[
            _sse({"type": "message_start", "message": start}, "message_start"),
            _sse({"type": "content_block_start", "index": 0, "content_block": block}, "content_block_start"),
            _sse({"type": "ping"}, "ping"),
        ],
        deltas=[
            _sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": chunk}
                    if tool
                    else {"type": "text_delta", "text": chunk},
                },
                "content_block_delta",
            )
            for chunk in call.chunks
        ],
        epilogue=[
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(delta, "message_delta"),
            _sse({"type": "message_stop"}, "message_stop"),
        ],
        error_event=lambda _: _sse(error, "error"),
    )


def _chat_completion(call: _Call) -> dict[str, Any]:
    completion: dict[str, Any] = {
        "id": f"chatcmpl-fake{call.ident:06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": call.reply,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    tool = call.step.tool_input
    if tool is not None:
        choice = completion["choices"][0]
        choice["message"]["content"] = None
        choice["message"]["tool_calls"] = [
            {
                "id": f"call_fake{call.ident:06d}",
                "type": "function",
                "function": {"name": call.step.tool_name, "arguments": json.dumps(dict(tool))},
            }
        ]
        choice["finish_reason"] = "tool_calls"
    if not call.step.omit_usage:
        completion["usage"] = call.usage.openai_chat()
    return completion


def _in_stream_openai_error(step: Step) -> dict[str, Any]:
    return {
        "message": step.error_message
        or "The server had an error while processing your request. (fake provider)",
        "type": step.error_type or "server_error",
        "param": None,
        "code": step.error_code,
    }


def _chat_stream(call: _Call) -> _StreamPlan:
    options = call.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": f"chatcmpl-fake{call.ident:06d}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": call.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": choices,
        }
        # With include_usage the real API sends `"usage": null` on every chunk but the last.
        if include_usage:
            data["usage"] = usage
        return _sse(data)

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    tool = call.step.tool_input is not None
    first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
    if tool:
        opening = {"index": 0, "id": f"call_fake{call.ident:06d}", "type": "function"}
        first = {"role": "assistant", "content": None, "tool_calls": [opening | {"function": {"name": call.step.tool_name, "arguments": ""}}]}
    epilogue = [chunk([choice({}, "tool_calls" if tool else "stop")])]
    if include_usage and not call.step.omit_usage:
        epilogue.append(chunk([], call.usage.openai_chat()))
    epilogue.append(_sse("[DONE]"))
    error = {"error": _in_stream_openai_error(call.step)}
    return _StreamPlan(
        preamble=[chunk([choice(first)])],
        deltas=[
            chunk([choice({"tool_calls": [{"index": 0, "function": {"arguments": text}}]} if tool else {"content": text})])
            for text in call.chunks
        ],
        epilogue=epilogue,
        error_event=lambda _: _sse(error),
    )


def _responses_message(call: _Call, *, done: bool) -> dict[str, Any]:
    content = (
        [{"type": "output_text", "text": call.reply, "annotations": [], "logprobs": []}]
        if done
        else []
    )
    return {
        "type": "message",
        "id": f"msg_fake{call.ident:06d}",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": content,
    }


def _responses_output(call: _Call) -> dict[str, Any]:
    tool = call.step.tool_input
    if tool is None:
        return _responses_message(call, done=True)
    return {
        "type": "function_call",
        "id": f"fc_fake{call.ident:06d}",
        "call_id": f"call_fake{call.ident:06d}",
        "name": call.step.tool_name,
        "arguments": json.dumps(dict(tool)),
        "status": "completed",
    }


def _response(call: _Call, *, done: bool, created_at: float) -> dict[str, Any]:
    instructions = call.body.get("instructions")
    response: dict[str, Any] = {
        "id": f"resp_fake{call.ident:06d}",
        "object": "response",
        "created_at": created_at,
        "status": "completed" if done else "in_progress",
        "completed_at": time.time() if done else None,
        "error": None,
        "incomplete_details": None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": call.body.get("max_output_tokens"),
        "metadata": {},
        "model": call.model,
        "output": ([_responses_output(call)] if done else []),
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "user": None,
    }
    if done and not call.step.omit_usage:
        response["usage"] = call.usage.openai_responses()
    return response


def _responses_stream(call: _Call) -> _StreamPlan:
    created_at = time.time()
    item_id = f"msg_fake{call.ident:06d}"
    seq = itertools.count()
    in_progress = _response(call, done=False, created_at=created_at)
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    full_part = empty_part | {"text": call.reply}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}

    def event(kind: str, **data: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(seq), **data}, kind)

    preamble = [
        event("response.created", response=in_progress),
        event("response.in_progress", response=in_progress),
        event(
            "response.output_item.added", output_index=0, item=_responses_message(call, done=False)
        ),
        event("response.content_part.added", part=empty_part, **where),
    ]
    deltas = [
        event("response.output_text.delta", delta=text, logprobs=[], **where)
        for text in call.chunks
    ]
    epilogue = [
        event("response.output_text.done", text=call.reply, logprobs=[], **where),
        event("response.content_part.done", part=full_part, **where),
        event(
            "response.output_item.done", output_index=0, item=_responses_message(call, done=True)
        ),
        event("response.completed", response=_response(call, done=True, created_at=created_at)),
    ]
    # The Responses API's error event carries code/message/param at the top level.
    failure = _in_stream_openai_error(call.step)
    error = {
        "code": call.step.error_code or "server_error",
        "message": failure["message"],
        "param": None,
    }

    def error_event(sent: int) -> bytes:
        # Sequence numbers were handed out up front; the error takes the slot of the next delta.
        number = len(preamble) + min(sent, len(deltas))
        return _sse({"type": "error", "sequence_number": number, **error}, "error")

    return _StreamPlan(preamble=preamble, deltas=deltas, epilogue=epilogue, error_event=error_event)


def _google_response(call: _Call, text: str, *, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    }
    response: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": call.model,
        "responseId": f"fake{call.ident:06d}",
    }
    if last:
        candidate["finishReason"] = "STOP"
        if not call.step.omit_usage:
            response["usageMetadata"] = call.usage.google()
    return response


def _google_stream(call: _Call) -> _StreamPlan:
    chunks = call.chunks or [""]
    error = {
        "error": {
            "code": 500,
            "message": call.step.error_message or "Internal error encountered. (fake provider)",
            "status": call.step.error_type or "INTERNAL",
        }
    }
    return _StreamPlan(
        preamble=[],
        # Like Gemini, the last content chunk carries finishReason and the usage.
        deltas=[
            _sse(_google_response(call, text, last=i == len(chunks) - 1))
            for i, text in enumerate(chunks)
        ],
        epilogue=[],
        error_event=lambda _: _sse(error),
    )


# --------------------------------------------------------------------------- the HTTP server


class _Server(ThreadingHTTPServer):
    """The threading HTTP server, plus what stop() needs to end every in-flight response."""

    daemon_threads = True
    # socketserver's default backlog of 5 refuses bursts of new connections
    # (50 concurrent clients in a test); a real API endpoint takes them all.
    request_queue_size = 1024
    # Never join handler threads on close: stop() ends them by closing their sockets.
    block_on_close = False

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider
        self.stopping = threading.Event()
        self.ids = itertools.count(1)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        # Idle keep-alive handlers block reading the next request; shutting the
        # socket down wakes them so their threads end.
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, closed streams) are routine here, not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _AbortedError(Exception):
    """The response was cut off on purpose (drop, drop_after, or the server stopping)."""


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection: records each request, picks its `Step`, and renders the response."""

    protocol_version = "HTTP/1.1"
    server_version = "llmguard-fake-provider"
    sys_version = ""

    @property
    def _fake(self) -> _Server:
        return cast("_Server", self.server)

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate sends: without TCP_NODELAY, Nagle holds the
        # body until the client's delayed ACK, and every request takes ~40 ms on loopback.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._fake.track(self.connection)

    def finish(self) -> None:
        self._fake.untrack(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Stay quiet: test output should not fill with access logs."""

    # -- entry points

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_health":
            self._send_json(200, {"status": "ok"}, {})
            return
        self._handle(path, None)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self._handle(path, body)

    def _handle(self, path: str, body: Any) -> None:
        arrived = time.monotonic()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = RecordedRequest(
            method=self.command, path=path, headers=headers, body=body, time=arrived
        )
        self._fake.provider._record(request)
        api = request.api
        ident = next(self._fake.ids)
        request_id = f"req_fake_{ident:06d}"
        try:
            if api == "other" or self.command != "POST":
                # What the real OpenAI API answers for a path it does not serve.
                error = {
                    "message": f"Invalid URL ({self.command} {path})",
                    "type": "invalid_request_error",
                }
                self._send_json(
                    404,
                    {"error": error | {"param": None, "code": None}},
                    {"x-request-id": request_id},
                )
                return
            try:
                script = headers.get(SCRIPT_HEADER)
                step = (
                    Step.from_json(script)
                    if script is not None
                    else self._fake.provider._next_step()
                )
            except (TypeError, ValueError) as exc:
                self._send_error(
                    api, 400, Step(status=400, error_message=f"{SCRIPT_HEADER}: {exc}"), request_id
                )
                return
            self._respond(
                api, path, body=body if isinstance(body, dict) else {}, step=step, ident=ident
            )
        except _AbortedError:
            self._abort()
        except OSError:
            # The client went away (e.g. its timeout fired); nothing left to send.
            self.close_connection = True

    # -- responses

    def _respond(
        self, api: Api, path: str, *, body: Mapping[str, Any], step: Step, ident: int
    ) -> None:
        request_id = f"req_fake_{ident:06d}"
        if step.delay:
            self._wait(step.delay)
        if step.drop:
            raise _AbortedError
        headers = _merge(_request_id_header(api, request_id), step.headers)
        if step.raw_body is not None:
            self._send_raw(step.status, step.raw_body.encode(), headers)
            return
        if not 200 <= step.status < 300:
            self._send_error(api, step.status, step, request_id)
            return

        google = _GOOGLE_PATH.match(path)
        model = step.model or (google.group("model").removeprefix("models/") if google else None)
        model = model or str(body.get("model") or "fake-model")
        reply = DEFAULT_REPLY if step.reply is None else step.reply
        if step.tool_input is not None and step.reply is None:
            reply = json.dumps(dict(step.tool_input))  # what the usage counts
        given = step.usage or {}
        usage = _Usage(
            input=given.get("input_tokens", _prompt_words(api, body)),
            output=given.get("output_tokens", len(reply.split())),
            cache_read=given.get("cache_read_tokens", 0),
            cache_write=given.get("cache_write_tokens", 0),
            reasoning=given.get("reasoning_tokens", 0),
        )
        call = _Call(
            api=api, body=body, step=step, model=model, reply=reply, usage=usage, ident=ident
        )

        if path == "/v1/messages/count_tokens":
            self._send_json(step.status, {"input_tokens": usage.input}, headers)
        elif google:
            if google.group("method") == "streamGenerateContent":
                self._stream(step, _google_stream(call), headers)
            else:
                self._send_json(step.status, _google_response(call, reply, last=True), headers)
        elif body.get("stream") is True:
            plan = {"anthropic": _anthropic_stream, "openai.chat": _chat_stream}.get(
                api, _responses_stream
            )
            self._stream(step, plan(call), headers)
        else:
            render = {"anthropic": _anthropic_message, "openai.chat": _chat_completion}.get(
                api, lambda c: _response(c, done=True, created_at=time.time())
            )
            self._send_json(step.status, render(call), headers)

    def _send_error(self, api: Api, status: int, step: Step, request_id: str) -> None:
        headers = _request_id_header(api, request_id)
        if status == 429:
            headers |= _rate_limit_headers(api)
        self._send_json(
            status, _error_body(api, status, step, request_id), _merge(headers, step.headers)
        )

    def _send_json(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str]
    ) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, step: Step, plan: _StreamPlan, headers: Mapping[str, str]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        for event in plan.preamble:
            self._send_chunk(event)
        # Fault points sit before delta i, for i = 0 .. len(deltas) (the last one after all deltas).
        for sent in range(len(plan.deltas) + 1):
            if step.stall_after == sent:
                self._wait(step.stall)
            if step.drop_after == sent:
                raise _AbortedError
            if step.error_after == sent:
                self._send_chunk(plan.error_event(sent))
                self._end_chunks()
                return
            if sent == len(plan.deltas):
                break
            if step.stream_delay:
                self._wait(step.stream_delay)
            self._send_chunk(plan.deltas[sent])
        for event in plan.epilogue:
            self._send_chunk(event)
        self._end_chunks()

    def _send_chunk(self, data: bytes) -> None:
        # wfile is unbuffered (wbufsize = 0), so every event leaves immediately.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _wait(self, seconds: float) -> None:
        """Sleep, but give up (and cut the response) as soon as the server stops."""
        if self._fake.stopping.wait(seconds):
            raise _AbortedError

    def _abort(self) -> None:
        """Close the connection mid-whatever, without a terminating chunk."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _request_id_header(api: Api, request_id: str) -> dict[str, str]:
    if api == "anthropic":
        return {"request-id": request_id}
    if api == "google":
        return {}
    return {"x-request-id": request_id}


def _merge(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """Update `base` with `extra`, comparing header names case-insensitively."""
    merged = {name.lower(): value for name, value in base.items()}
    merged.update((name.lower(), value) for name, value in extra.items())
    return merged
