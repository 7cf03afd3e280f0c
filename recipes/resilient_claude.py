"""Recipe: a Claude call that survives 429s, 529s and stalled streams.

Copy this file. With ANTHROPIC_API_KEY set it calls the real API; without it,
it runs against llmguard's fake provider with a scripted 429 and a stall, so
you can see what happens offline:

    python recipes/resilient_claude.py
"""

from __future__ import annotations

import contextlib
import os
import sys

from collections.abc import Iterator

import anthropic

import llmguard as lg


def make_client(base_url: str | None = None) -> anthropic.Anthropic:
    """The SDK's own retries off: llmguard does the retrying, once."""
    return anthropic.Anthropic(base_url=base_url, max_retries=0) if base_url else anthropic.Anthropic(max_retries=0)


def build(client: anthropic.Anthropic, idle: float = 15) -> tuple[object, object]:
    """A plain call and a streaming call, both guarded."""

    @lg.retry(attempts=4, max_elapsed=60)
    @lg.timeout(30)
    def ask(question: str, model: str = "claude-sonnet-4-6") -> str:
        # lg.remaining(): the SDK's own HTTP timeout ends with llmguard's deadline.
        message = client.messages.create(
            model=model,
            max_tokens=512,
            messages=[{"role": "user", "content": question}],
            timeout=lg.remaining(),
        )
        return "".join(block.text for block in message.content if block.type == "text")

    @lg.retry(attempts=3)
    @lg.timeout(120, first_token=10, idle=idle)
    def stream(question: str, model: str = "claude-sonnet-4-6") -> Iterator[str]:
        with client.messages.stream(
            model=model, max_tokens=1024, messages=[{"role": "user", "content": question}]
        ) as events:
            yield from events.text_stream

    return ask, stream


def main() -> int:
    """Ask once and stream once, printing what happened."""
    stop = contextlib.ExitStack()
    base_url = None
    if not os.environ.get("ANTHROPIC_API_KEY"):
        from llmguard.testing import FakeProvider, Step  # noqa: PLC0415

        fake = FakeProvider()
        fake.start()
        stop.callback(fake.stop)
        base_url = fake.anthropic_base_url
        os.environ["ANTHROPIC_API_KEY"] = "offline-demo"
        fake.script(
            Step(status=429, headers={"retry-after": "1"}),
            Step(reply="Jittered backoff spreads retries out."),
            # Stalls after three chunks: chunks already shown are never replayed.
            Step(reply="A stream that stalls mid-way is cut by idle=", stall_after=3, stall=30),
        )
    with stop:
        ask, stream = build(make_client(base_url), idle=1 if base_url else 15)
        print("ask:", ask("Why jitter retries?"))  # type: ignore[operator]
        try:
            print("stream:", "".join(stream("Tell me about stalls.")))  # type: ignore[operator]
        except lg.StreamInterrupted as exc:
            print(f"stream: interrupted after {exc.text!r} ({exc.__cause__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
