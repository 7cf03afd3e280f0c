"""Demo section: anthropic down, openai answers; then anthropic's circuit open, skipped without a call."""

from __future__ import annotations

from typing import Any

import anthropic
import openai

import llmguard as lg

from ..testing import FakeProvider, Step, capture_events
from .core import show


ORDER = 30
TITLE = "fallback: anthropic down (529, then a dropped connection), openai answers; then anthropic skipped"


def run(fake: FakeProvider) -> None:
    """Three calls: the first falls back after anthropic's retries; its circuit then open, the next two go straight to openai."""
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)
    gpt = openai.OpenAI(base_url=fake.openai_base_url, api_key="demo", max_retries=0)

    def ask_openai(q: str, model: str = "gpt-4o-mini") -> Any:
        return gpt.chat.completions.create(model=model, messages=[{"role": "user", "content": q}])

    @show
    @lg.fallback(ask_openai, breaker={"failures": 1, "cooldown": 30})
    @lg.retry(attempts=2)
    def ask(q: str, model: str = "claude-sonnet-4-6") -> Any:
        return claude.messages.create(model=model, max_tokens=256, messages=[{"role": "user", "content": q}])

    fake.script(Step(status=529), Step(drop=True), Step(reply="Anthropic is resting; I'm here."))
    for q in ("Who is answering?", "And now?", "Still you?"):
        with capture_events("llmguard.fallback") as events:
            answer = ask(q)
        used = events[0] if events else None
        why = f"passed over {used['passed_over']}" if used else "the primary answered"
        print(f"  {q!r} -> {answer.choices[0].message.content!r} from {used['target'] if used else 'ask'} ({why})")
    paths = [r.path.rsplit("/", 1)[-1] for r in fake.requests]
    print(f"  requests: {paths} (anthropic's circuit opened after the first call: no more requests to it)")
    claude.close()
    gpt.close()

