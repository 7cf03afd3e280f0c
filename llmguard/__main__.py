"""``python -m llmguard demo``: real SDK calls against the fake provider.

Runs offline: it starts `llmguard.testing.FakeProvider` on 127.0.0.1, points
the real ``anthropic`` and ``openai`` clients at it, and prints what each
call's record says (model, usage, cost, outcome, time to first chunk).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from typing import Any

from ._record import CallRecord
from ._wrap import AsyncGuardedStream, Call, GuardedStream, Layer


class _Show(Layer):
    """Prints each call's record when the call (or its stream) ends."""

    name = "show"

    def _print_at_end(self, call: Call, result: Any) -> Any:
        if isinstance(result, (GuardedStream, AsyncGuardedStream)):
            result.on_finish(lambda outcome, exc: _print_record(call.record))
        else:
            _print_record(call.record)
        return result

    def around(self, call: Call) -> Any:
        try:
            return self._print_at_end(call, call.proceed())
        except Exception:
            _print_record(call.record)
            raise

    async def around_async(self, call: Call) -> Any:
        try:
            return self._print_at_end(call, await call.proceed_async())
        except Exception:
            _print_record(call.record)
            raise


def _print_record(rec: CallRecord) -> None:
    att = rec.attempt
    usage = rec.usage
    cost = rec.cost_usd
    ttft = (att.first_chunk_at - rec.started_at) if att and att.first_chunk_at else None
    error = att.error_kind.value if att and att.error_kind else "-"
    print(
        f"  {rec.function:<22} {att.provider if att else '-':<9} {rec.model or '-':<26} "
        f"{'stream' if rec.stream else 'call':<6} "
        f"in={usage.input_tokens if usage else '-':<4} out={usage.output_tokens if usage else '-':<4}"
        f"{' (est)' if rec.usage_estimated else '      '} "
        f"cost={f'${cost:.6f}' if cost is not None else 'unpriced':<10} "
        f"ttft={f'{ttft * 1000:.0f}ms' if ttft is not None else '-':<6} "
        f"error={error}"
    )


def demo() -> int:
    """Run the demo; returns the process exit code."""
    try:
        import anthropic  # noqa: PLC0415
        import openai  # noqa: PLC0415
    except ImportError:
        print("the demo needs the SDKs: pip install 'llmguard[demo]'", file=sys.stderr)
        return 2
    from .testing import FakeProvider, Step  # noqa: PLC0415

    show = _Show()
    messages: Any = [{"role": "user", "content": "Write a haiku about retries."}]
    with FakeProvider() as fake:
        claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)
        gpt = openai.OpenAI(base_url=fake.openai_base_url, api_key="demo", max_retries=0)
        agpt = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="demo", max_retries=0)

        @show
        def ask_claude(q: str) -> Any:
            return claude.messages.create(
                model="claude-sonnet-4-6", max_tokens=256, messages=[{"role": "user", "content": q}]
            )

        @show
        def stream_claude(q: str) -> Any:
            return claude.messages.create(
                model="claude-haiku-4-5",
                max_tokens=256,
                messages=[{"role": "user", "content": q}],
                stream=True,
            )

        @show
        async def stream_gpt() -> Any:
            return await agpt.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )

        @show
        def ask_gpt() -> Any:
            return gpt.chat.completions.create(model="gpt-4o", messages=messages)

        print("llmguard demo: real anthropic/openai SDKs -> fake provider at", fake.url)
        print("\n1. a Message, with cache reads priced by class")
        fake.script(Step(usage={"input_tokens": 1200, "output_tokens": 80, "cache_read_tokens": 1000}))
        ask_claude("Write a haiku about retries.")

        print("\n2. an anthropic stream: usage settles when the stream ends")
        fake.script(Step(reply="Backoff, then again / the server breathes, answers slow / jitter keeps us kind"))
        for _ in stream_claude("Write a haiku about jitter."):
            pass

        print("\n3. an async openai stream read halfway, then dropped: usage estimated, never zero")

        async def half() -> None:
            stream = await stream_gpt()
            async for chunk in stream:
                if chunk.choices and "two" in (chunk.choices[0].delta.content or ""):
                    break
            await stream.aclose()

        fake.script(Step(reply="one two three four five six seven"))
        asyncio.run(half())

        print("\n4. a 429 from the provider: the SDK's own exception, classified")
        fake.script(Step(status=429, headers={"retry-after": "2"}))
        try:
            ask_gpt()
        except openai.RateLimitError as exc:
            print(f"  -> raised {type(exc).__module__}.{type(exc).__qualname__} (status {exc.status_code})")

        claude.close()
        gpt.close()
    print("\ndone.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``python -m llmguard`` command line."""
    parser = argparse.ArgumentParser(prog="python -m llmguard")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run real SDK calls through llmguard against a local fake provider")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
