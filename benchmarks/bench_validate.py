"""@lg.validate: validating a valid 1 KB JSON answer beside Model.model_validate_json alone; re-ask request sizes."""

from __future__ import annotations

import contextlib
import json

from typing import Any

from _harness import PassThrough, interleaved, row
from pydantic import BaseModel

import llmguard as lg


class Line(BaseModel):
    """One line of an order."""

    sku: str
    quantity: int
    price: float


class Order(BaseModel):
    """A structured answer of about 1 KB."""

    id: str
    customer: str
    email: str
    notes: str
    lines: list[Line]


def _answer() -> str:
    lines = [{"sku": f"SKU-{i:05d}", "quantity": i % 7 + 1, "price": 9.99 + i} for i in range(15)]
    order = {"id": "ord_0001", "customer": "Ada Lovelace", "email": "ada@example.com", "notes": "leave at the door", "lines": lines}
    return json.dumps(order)


def _reask_sizes() -> list[int]:
    """The JSON body sizes of the first request and of re-asks 1-3 (every answer invalid)."""
    import anthropic

    from llmguard.testing import FakeProvider, Step

    answer = json.loads(_answer())
    answer["lines"][3]["quantity"] = "three"  # one bad field: an answer of the same size each time
    bad = json.dumps(answer)
    messages: Any = [{"role": "user", "content": "Extract the order from this email: " + "lorem ipsum " * 40}]
    with FakeProvider() as fake:
        client = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)

        @lg.validate(Order, reask=3)
        def ask(messages: Any) -> Any:
            return client.messages.create(model="claude-sonnet-4-6", max_tokens=1000, messages=messages)

        fake.script(*(Step(reply=bad) for _ in range(4)))
        with contextlib.suppress(lg.ValidationFailed):
            ask(messages)
        return [len(json.dumps(r.body)) for r in fake.requests]


def run() -> dict[str, float]:
    text = _answer()
    print(f"validate: a valid {len(text)} B JSON answer, validated (median per call, batches interleaved)")
    guarded = lg.validate(Order)(lambda: text)
    passing = PassThrough()(lambda: text)  # the runner any one guard runs on, then the same validation
    times = interleaved(
        {
            "pydantic": lambda: Order.model_validate_json(text),
            "runner": lambda: Order.model_validate_json(passing()),
            "validate": guarded,
        },
        number=5_000,
        repeats=15,
    )
    print(row("Order.model_validate_json(text)", times["pydantic"]))
    print(row("a pass-through guard's call, then model_validate_json", times["runner"], times["pydantic"], "of model_validate_json"))
    print(row("@lg.validate(Order) on a def returning text", times["validate"], times["pydantic"], "of model_validate_json (target <= 1.2x)"))
    messages: Any = [{"role": "user", "content": "Please extract the order from this email. " * 48}]  # ~2 KB
    checked = lg.validate(Order, input=["injection", "invisible"], max_input_chars=100_000)(lambda messages: text)
    unchecked = lg.validate(Order)(lambda messages: text)
    checks = interleaved({"unchecked": lambda: unchecked(messages), "checked": lambda: checked(messages)}, number=5_000, repeats=15)
    print(row("input checks (injection, invisible, chars) of a 2 KB message", checks["checked"] - checks["unchecked"]))
    sizes = _reask_sizes()
    print("  request body sizes, B (each re-ask replaces the failed exchange before it):")
    print(f"    first request {sizes[0]:>7}")
    for n, b in enumerate(sizes[1:], 1):
        print(f"    re-ask {n}      {b:>7}  (+{b - sizes[0]} over the first, +{b - sizes[n - 1]} over the one before)")
    return {"validate_ratio": times["validate"] / times["pydantic"], "input_checks_s": checks["checked"] - checks["unchecked"], **{f"reask_{n}_bytes": float(b) for n, b in enumerate(sizes)}}
