"""Demo section: a per-user budget that refuses before sending, alerts, a scope, and a stampede."""

from __future__ import annotations

import json
import threading

from typing import Any

import anthropic

from .._budget import BudgetAlert, budget, budget_spend
from ..errors import BudgetExceeded
from ..testing import FakeProvider


ORDER = 40
TITLE = "budget: a per-user budget refuses before sending; alerts; nested scopes; 100 threads"

MODEL = "claude-sonnet-4-6"


def run(fake: FakeProvider) -> None:
    """Alice spends her daily budget and is refused without a request; Bob is not."""
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)

    def alert(a: BudgetAlert) -> None:
        print(f"  alert: {a.key} crossed {a.threshold:.0%} of ${a.limit} ({a.unit}); spent ${a.spent:.4f}")

    report = "Revenue grew in every region this quarter. " * 100  # ~4,300 characters
    # The fake provider bills what a real one would for this prompt: ~1,100
    # tokens in (the guard's estimate, 1,434, is on the safe side), 200 out.
    bill = {"x-fake-script": json.dumps({"usage": {"input_tokens": 1100, "output_tokens": 200}})}

    @budget(usd=0.02, per="day", key=lambda user, **_: user, alert_at=(0.5, 0.8), on_alert=alert, name="ask")
    def ask(text: str, user: str, model: str = MODEL, max_tokens: int = 300) -> Any:
        return claude.messages.create(
            model=model,
            max_tokens=max_tokens,
            messages=[{"role": "user", "content": f"Summarise: {text}"}],
            metadata={"user_id": user},
            extra_headers=bill,
        )

    for n in range(1, 4):
        sent = len(fake.requests)
        try:
            ask(report, user="alice")
            print(f"  alice call {n}: ok, spent ${budget_spend(ask, key='alice').usd:.4f} of $0.02")
        except BudgetExceeded as exc:
            print(f"  alice call {n}: refused, {len(fake.requests) - sent} requests sent:")
            print(f"    {exc}")
    ask(report, user="bob")
    print(f"  bob: ok, his own ledger: ${budget_spend(ask, key='bob').usd:.4f}")

    @budget
    def step(q: str, model: str = MODEL, max_tokens: int = 100) -> Any:
        return claude.messages.create(model=model, max_tokens=max_tokens, messages=[{"role": "user", "content": q}])

    print("  nested scopes, both charged:")
    with budget(usd=0.05, name="task") as task, budget(usd=0.002, name="subtask") as sub:
        step("plan the work")
        print(f"    task spent ${task.spent:.6f}, subtask spent ${sub.spent:.6f}, subtask remaining ${sub.remaining:.6f}")
        try:
            step("now write the whole report", max_tokens=1000)
        except BudgetExceeded as exc:
            print(f"    a 1000-token answer does not fit: refused by {exc.scope!r} (needs ${exc.requested:.4f})")

    # 100 threads on a budget that fits 10 worst cases: never more than 10 go out.
    stampede = budget(usd=10 * (20 * 3.75 + 100 * 15) / 1e6, estimate=lambda **_: (20, 100))

    @stampede
    def burst(model: str = MODEL) -> Any:
        return claude.messages.create(
            model=model,
            max_tokens=100,
            messages=[{"role": "user", "content": "go"}],
            extra_headers={"x-fake-script": '{"usage": {"input_tokens": 20, "output_tokens": 100}, "delay": 0.05}'},
        )

    refused: list[int] = []

    def caller() -> None:
        try:
            burst()
        except BudgetExceeded:
            refused.append(1)

    before = len(fake.requests)
    threads = [threading.Thread(target=caller) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spend = stampede.spend()
    print(
        f"  100 threads, room for 10: {len(fake.requests) - before} sent, {len(refused)} refused, "
        f"spent ${spend.usd:.6f} of ${stampede.usd:.6f}"
    )
    claude.close()
