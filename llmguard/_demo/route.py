"""Demo section: the route guard sending simple requests to a cheap model, and what it saved."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anthropic

from .. import prices, providers
from .._route import route
from ..testing import FakeProvider, Step


ORDER = 55
TITLE = "route: simple requests to a cheap model, and the money it saved"

SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5"
# (question, words in the scripted reply)
WORKLOAD = [
    ("Hi! What is the capital of Australia?", 60),
    ("Translate 'good morning' into Spanish and French.", 40),
    ("Thanks! Who is the author of Dune?", 80),
    ("What is the boiling point of water on Everest?", 90),
    ("Prove that the square root of 2 is irrational.", 260),
    ("Write a Python function that merges intervals; explain why the algorithm is O(n log n).", 420),
]


def run(fake: FakeProvider) -> None:
    """The same questions sent to Sonnet, then routed: the model each reached and the cost of each run."""
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)

    def ask(question: str, model: str = SONNET) -> Any:
        return claude.messages.create(model=model, max_tokens=1024, messages=[{"role": "user", "content": question}])

    routed = route({"simple": HAIKU, "complex": SONNET})(ask)
    totals = {}
    for label, fn in (("all to Sonnet", ask), ("routed", routed)):
        cost = 0.0
        models: Counter[str] = Counter()
        for question, words in WORKLOAD:
            fake.script(Step(reply=" ".join(["word"] * words)))
            message = fn(question)
            usage = providers.usage_from(message)
            cost += (prices.cost_of(usage, message.model) or 0.0) if usage is not None else 0.0
            models[message.model] += 1
            if fn is routed:
                print(f"  {question[:52]:<52} -> {message.model}")
        totals[label] = cost
        print(f"  {label}: ${cost:.6f} ({', '.join(f'{n} to {m}' for m, n in models.items())})")
    saved = totals["all to Sonnet"] - totals["routed"]
    print(f"  routing saved ${saved:.6f}, {saved / totals['all to Sonnet']:.0%} (measured usage, genai-prices)")
    claude.close()
