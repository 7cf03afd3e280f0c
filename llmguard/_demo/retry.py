"""Demo section: a retried 429 (Retry-After honoured) and a stalled stream timed out."""

from __future__ import annotations

import time

from typing import Any

import anthropic

import llmguard as lg

from ..testing import FakeProvider, Step, capture_events
from .core import print_record, show


ORDER = 10
TITLE = "retry and timeout: a 429 with Retry-After retried, a stalled stream stopped by idle="


def run(fake: FakeProvider) -> None:
    """Two calls: one rate limited then fine, one that stalls mid-stream."""
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)

    @show
    @lg.retry(attempts=4)
    def ask(q: str) -> Any:
        return claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=256, messages=[{"role": "user", "content": q}]
        )

    fake.script(Step(status=429, headers={"retry-after": "1"}), Step(reply="Patience pays."))
    start = time.monotonic()
    with capture_events() as events:
        answer = ask("Is it my turn yet?")
    for event in events:
        if event.name == "llmguard.retry.scheduled":
            print(f"  event {event.name}: attempt {event['attempt']} failed ({event['error_kind']}), waiting {event['delay']:.2f}s")
    print(f"  -> {answer.content[0].text!r} after {time.monotonic() - start:.1f}s, 2 requests")

    @lg.retry
    @lg.timeout(idle=0.5)
    def tell(q: str) -> Any:
        return claude.messages.create(
            model="claude-haiku-4-5", max_tokens=256, messages=[{"role": "user", "content": q}], stream=True
        )

    fake.script(Step(reply="Once upon a time there was a stall", stall_after=3, stall=10.0))
    got: list[str] = []
    stream = tell("Tell me a story.")
    try:
        got.extend(e.delta.text for e in stream if e.type == "content_block_delta")
    except lg.StreamInterrupted as exc:
        print(f"  -> after {''.join(got)!r} the stream went silent: {type(exc.__cause__).__name__}: {exc.__cause__}")
        print(f"     StreamInterrupted keeps the partial text {exc.text!r}; nothing was replayed")
    print_record(stream.record)
    claude.close()
