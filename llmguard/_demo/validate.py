"""Demo section: an invalid answer re-asked with its errors, and the validated object."""

from __future__ import annotations

from typing import Any

import anthropic

from pydantic import BaseModel

import llmguard as lg

from ..testing import FakeProvider, Step, capture_events


ORDER = 45
TITLE = "validate: an answer that does not validate is re-asked with its errors; the caller gets the object"


class Contact(BaseModel):
    """The structured answer asked for."""

    name: str
    age: int


def run(fake: FakeProvider) -> None:
    """One call: a bad answer, a re-ask replacing it, the validated `Contact`."""
    claude = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)

    @lg.validate(Contact, reask=2)
    def extract(messages: list[Any]) -> anthropic.types.Message:
        return claude.messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=messages)

    fake.script(
        Step(reply='Sure! {"name": "Ada Lovelace", "age": "thirty-six"} Anything else?'),
        Step(reply='{"name": "Ada Lovelace", "age": 36}'),
    )
    with capture_events("llmguard.validate.") as events:
        contact = extract([{"role": "user", "content": "Ada Lovelace, 36. The contact as JSON, please."}])
    for event in events:
        print(f"  event {event.name}: answer {event['attempt']} ({event['step']}): {event['error']}")
    second = fake.requests[1].body["messages"]
    print(f"  re-ask: {len(second)} messages (the question, the bad answer, its errors once)")
    print(f"  -> {contact!r}, {len(fake.requests)} requests")
