"""Recipe: send simple requests to a cheap model, and measure what it saves.

Copy this file. With ANTHROPIC_API_KEY set it calls the real API; without it,
it runs against llmguard's fake provider (the replies are scripted, as long
for each request in both runs, so the difference is the price of the model):

    python recipes/route_cheap.py

It sends one mixed workload twice: every request to Claude Sonnet, then
through ``@lg.route``, whose default scorer sends the simple ones to Claude
Haiku. Everything printed is measured: the model each answer came from, its
usage as the provider reported it, its cost priced by genai-prices
(`lg.cost_of`).
"""

from __future__ import annotations

import contextlib
import os
import sys

from collections import Counter
from typing import Any

import anthropic

import llmguard as lg


SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5"

# (question, words in the scripted reply when offline): mostly simple traffic, a quarter hard,
# the share of "strong" requests RouteLLM's calibrations work with.
WORKLOAD = [
    ("Hi! What is the capital of Australia?", 60),
    ("Translate 'good morning, see you tomorrow' into Spanish and French.", 40),
    ("Thanks, that helped. Who is the author of Dune?", 80),
    ("Define idempotent in a short paragraph.", 120),
    ("Summarize: the meeting moved to Thursday at 3pm, bring the Q3 numbers.", 50),
    ("What is the boiling point of water at the top of Everest?", 90),
    ("Spell 'necessary' backwards.", 10),
    ("When did the Berlin Wall fall, and what happened next?", 150),
    ("Who is the current president of Finland?", 40),
    ("What is a haiku? Give me one about autumn.", 70),
    ("Translate 'thank you for your patience' into German.", 20),
    ("Hello! Suggest three names for a grey cat.", 60),
    (
        (
            "Write a Python function that merges overlapping intervals, explain why the algorithm "
            "is O(n log n), and add unit tests."
        ),
        420,
    ),
    (
        (
            "Our API's p99 latency doubles under load. The service writes to a Postgres database and "
            "a Kafka queue. Analyze the likely causes step by step and compare two fixes, with trade-offs."
        ),
        380,
    ),
    ("Prove that the square root of 2 is irrational.", 260),
    (
        (
            "Design a distributed rate limiter for 50 processes sharing one Redis; explain the consistency "
            "trade-offs of GCRA against a sliding window."
        ),
        450,
    ),
]


def build(client: anthropic.Anthropic) -> tuple[Any, Any]:
    """The same function twice: plain (always Sonnet) and routed."""

    def ask(question: str, model: str = SONNET) -> anthropic.types.Message:
        return client.messages.create(model=model, max_tokens=1024, messages=[{"role": "user", "content": question}])

    # Cheapest tier first; the default scorer cuts at 0.15 for two tiers.
    routed = lg.route({"simple": HAIKU, "complex": SONNET})(ask)
    return ask, routed


def measure(ask: Any, script: Any) -> tuple[float, Counter[str]]:
    """Send the workload through *ask*: its measured cost (USD) and the requests each model answered."""
    cost = 0.0
    models: Counter[str] = Counter()
    for question, words in WORKLOAD:
        script(words)
        message = ask(question)
        usage = lg.usage_from(message)
        priced = lg.cost_of(usage, message.model) if usage is not None else None
        if priced is None:
            msg = f"no price for {message.model}"
            raise RuntimeError(msg)
        cost += priced
        models[message.model] += 1
    return cost, models


def main() -> int:
    """Run the workload plain and routed, and print the measured difference."""
    stop = contextlib.ExitStack()
    base_url = None
    script: Any = lambda _words: None  # noqa: E731 - the real API writes its own replies
    if not os.environ.get("ANTHROPIC_API_KEY"):
        from llmguard.testing import FakeProvider, Step  # noqa: PLC0415

        fake = FakeProvider()
        fake.start()
        stop.callback(fake.stop)
        base_url = fake.anthropic_base_url
        os.environ["ANTHROPIC_API_KEY"] = "offline-demo"

        def script(words: int) -> None:
            fake.script(Step(reply=" ".join(["word"] * words)))

    with stop:
        client = anthropic.Anthropic(base_url=base_url, max_retries=0) if base_url else anthropic.Anthropic(max_retries=0)
        plain, routed = build(client)
        plain_cost, plain_models = measure(plain, script)
        routed_cost, routed_models = measure(routed, script)
    n = len(WORKLOAD)
    print(f"{n} requests, every one to {SONNET}: ${plain_cost:.6f} ({dict(plain_models)})")
    print(f"{n} requests through @lg.route: ${routed_cost:.6f}")
    for model, count in routed_models.most_common():
        print(f"  {count:2d} answered by {model}")
    saved = plain_cost - routed_cost
    print(f"saved ${saved:.6f}, {saved / plain_cost:.0%} of the cost (prices: genai-prices)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
