"""Demo section: the cache guard answering repeats, stampedes and streams once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic

from .._cache import cache, cache_info
from .._call import Call
from .._record import CallRecord
from .._runner import Guard
from ..testing import FakeProvider, Step


ORDER = 50
TITLE = "cache: identical requests answered once, with the money each hit saved"


class _Last(Guard):
    """Keeps the record of the latest call, to print what the cache wrote on it."""

    name = "last"

    def __init__(self) -> None:
        self.record: CallRecord | None = None

    def enter(self, call: Call) -> None:
        self.record = call.record


def run(fake: FakeProvider) -> None:
    """A repeat, a stampede of 20 threads and a replayed stream, against real SDK calls."""
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)
    last = _Last()

    @last
    @cache(ttl=600)
    def ask(question: str, model: str = "claude-sonnet-4-6") -> Any:
        return claude.messages.create(
            model=model, max_tokens=256, messages=[{"role": "user", "content": question}]
        )

    @cache(ttl=600)
    def stream(question: str) -> Any:
        return claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=256,
            messages=[{"role": "user", "content": question}],
            stream=True,
        )

    fake.script(Step(usage={"input_tokens": 3000, "output_tokens": 400}, delay=0.05))
    for label in ("first ask", "same again", "other model"):
        model = "claude-haiku-4-5" if label == "other model" else "claude-sonnet-4-6"
        ask("Summarise our retry policy.", model=model)
        rec = last.record
        assert rec is not None  # noqa: S101 - set by the call just made
        saved = f"saved ${rec.saved_usd:.4f}" if rec.saved_usd else "paid for"
        print(f"  {label:<12} cache={rec.cache:<5} attempts={rec.attempt_count} {saved}")

    fake.script(Step(delay=0.2))
    before = len(fake.requests)
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda _: ask("What changed in v2?"), range(20)))
    print(f"  20 threads asking one new question at once -> {len(fake.requests) - before} request to the provider")

    fake.script(Step(reply="backoff with full jitter"))
    first = list(stream("Retry advice in four words?"))
    second = list(stream("Retry advice in four words?"))
    same = all(a is b for a, b in zip(first, second, strict=True))
    print(f"  a completed stream replayed: {len(second)} events, the same objects: {same}")

    info = cache_info(ask)
    print(
        f"  cache_info(ask): hits={info.hits} misses={info.misses} size={info.currsize} "
        f"saved=${info.saved_usd:.4f}"
    )
    claude.close()
