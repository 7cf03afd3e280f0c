"""What the wire costs: observing a response (JSON, per SSE event), and a sync timeout without a thread.

Observation: a real ``httpx2`` (or ``httpx``) client on a `MockTransport` handing back an
anthropic-shaped JSON body, or an SSE stream of many text events, read as the SDK reads it
(``response.read()`` / ``iter_bytes()``). The same request outside a guarded call (the wire
reads one context variable and steps aside: the anchor) and inside one (the body observed and
its usage put on the attempt), batches taken turn about; the figure is the median of the
paired differences. The anchor beside each: ``json.loads`` of the same body (JSON), of one
event's data (SSE): what the SDK itself does with the bytes.

Sync timeout: a ``def`` returning a constant under ``@lg.timeout(5, mode="wire")`` (no thread;
its SDK requests carry the deadline) beside the same under ``@lg.timeout(5)`` (a worker thread
per call, the anchor) and under a guard that does nothing (the runner's share).
"""

from __future__ import annotations

import json
import statistics

from typing import Any

from _harness import PassThrough, interleaved_samples, paired_difference, row

import llmguard as lg

from llmguard import _facts, _wire


EVENTS = 200


def _library() -> Any:
    import importlib

    for name in _wire.LIBRARIES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    msg = "neither httpx2 nor httpx is installed"
    raise ImportError(msg)


def _json_body() -> bytes:
    return json.dumps(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [{"type": "text", "text": "Hello! " * 60}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1200, "output_tokens": 80, "cache_read_input_tokens": 0},
        }
    ).encode()


def _sse_body() -> bytes:
    def event(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    start = {"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
             "model": "claude-sonnet-4-6", "content": [], "stop_reason": None,
             "usage": {"input_tokens": 1200, "output_tokens": 1}}}
    parts = [event("message_start", start)]
    parts += [
        event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}})
        for _ in range(EVENTS - 3)
    ]
    parts.append(event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 80}}))
    parts.append(event("message_stop", {"type": "message_stop"}))
    return b"".join(parts)


class _Chunks:
    """A response body handed over in network-sized pieces (a stream, not bytes read already)."""

    def __init__(self, body: bytes, size: int = 1024) -> None:
        self.pieces = [body[i : i + size] for i in range(0, len(body), size)]

    def __iter__(self) -> Any:
        return iter(self.pieces)


def _client(body: bytes, content_type: str) -> Any:
    lib = _library()
    chunks = _Chunks(body)

    def handler(request: Any) -> Any:
        return lib.Response(200, headers={"content-type": content_type}, stream=_Stream(lib, chunks))

    return lib.Client(transport=lib.MockTransport(handler), base_url="http://bench.test")


def _Stream(lib: Any, chunks: _Chunks) -> Any:  # noqa: N802 - a class per library
    class Stream(lib.SyncByteStream):  # type: ignore[misc, name-defined]
        def __iter__(self) -> Any:
            return iter(chunks.pieces)

    return Stream()


def _observed(fn: Any) -> Any:
    """*fn* as if inside a guarded call's attempt (what the wire looks for), without a guard's own cost."""

    class _Call:
        _record = None

    slot: list[Any] = [0.0, None, None, None, None, None, None]

    def inside() -> Any:
        slot[6] = None
        token = _facts._CURRENT.set((_Call(), slot))  # type: ignore[arg-type]
        try:
            return fn()
        finally:
            _facts._CURRENT.reset(token)

    return inside


def run() -> dict[str, float]:
    out: dict[str, float] = {}
    print("wire: what observing one response costs (median of paired batch differences)")
    body = _json_body()
    client = _client(body, "application/json")

    def plain_json() -> Any:
        return client.post("/v1/messages", content=b"{}").read()

    sse = _sse_body()
    sclient = _client(sse, "text/event-stream")

    def plain_sse() -> Any:
        with sclient.stream("POST", "/v1/messages", content=b"{}") as r:
            for _ in r.iter_bytes():
                pass

    bare = {"json": plain_json, "sse": plain_sse}
    watched = {"json": _observed(plain_json), "sse": _observed(plain_sse)}
    # The same thunk with a no-op context-variable write, so the difference is the observation.
    unwatched = {"json": _unobserved(plain_json), "sse": _unobserved(plain_sse)}
    s = interleaved_samples(
        {"json bare": unwatched["json"], "json observed": watched["json"]}, number=300
    )
    json_cost = paired_difference(s, "json observed", "json bare")
    loads = interleaved_samples({"loads": lambda: json.loads(body), "nothing": lambda: None}, number=2_000)
    json_anchor = paired_difference(loads, "loads", "nothing")
    print(row(f"JSON body ({len(body)} B): observed - unobserved", json_cost, json_anchor, "json.loads of the body"))
    print(row("  (the unobserved request itself, MockTransport)", statistics.median(s["json bare"])))
    s2 = interleaved_samples({"sse bare": unwatched["sse"], "sse observed": watched["sse"]}, number=40)
    per_event = paired_difference(s2, "sse observed", "sse bare") / EVENTS
    one = json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}})
    ev = interleaved_samples({"loads": lambda: json.loads(one), "nothing": lambda: None}, number=5_000)
    event_anchor = paired_difference(ev, "loads", "nothing")
    print(row(f"SSE stream ({EVENTS} events), per event", per_event, event_anchor, "json.loads of one event"))
    outside = interleaved_samples({"bare": bare["json"], "wire outside": unwatched["json"]}, number=300)
    print(row("outside a guarded call: what the patch adds", paired_difference(outside, "wire outside", "bare")))
    out.update(json=json_cost, sse_event=per_event)

    print("wire: sync timeout on the success path (median of paired batch differences)")

    def target(q: str) -> str:
        return q

    wire_timed: Any = lg.timeout(5, mode="wire")(target)
    thread_timed: Any = lg.timeout(5)(target)
    passed: Any = PassThrough()(target)
    t = interleaved_samples(
        {
            "bare": lambda: target("q"),
            "guard": lambda: passed("q"),
            "wire": lambda: wire_timed("q"),
            "thread": lambda: thread_timed("q"),
        },
        number=2_000,
    )
    wire_cost = paired_difference(t, "wire", "bare")
    thread_cost = paired_difference(t, "thread", "bare")
    print(row('@lg.timeout(5, mode="wire") adds', wire_cost, thread_cost, '@lg.timeout(5) (mode="thread")'))
    print(row("  of which the runner (a guard doing nothing)", paired_difference(t, "guard", "bare")))
    print(row('@lg.timeout(5) (mode="thread") adds', thread_cost))
    out.update(sync_timeout_wire=wire_cost, sync_timeout_thread=thread_cost)
    return out


def _unobserved(fn: Any) -> Any:
    """*fn* with the same context-variable set and reset as `_observed`, but nothing running: the wire steps aside."""

    def inside() -> Any:
        token = _facts._CURRENT.set(None)
        try:
            return fn()
        finally:
            _facts._CURRENT.reset(token)

    return inside


if __name__ == "__main__":
    run()
