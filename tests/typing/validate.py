"""Checked by ``mypy --strict``: a function `validate` decorates returns the model's type.

Not run by pytest; every ``assert_type`` here fails the type check if
`lg.validate` kept the function's own return type (or erased its parameters).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Literal, assert_type

from pydantic import BaseModel

import llmguard as lg


class Contact(BaseModel):
    """A structured answer."""

    name: str


@lg.validate(Contact, reask=2)
def extract(text: str) -> str:
    return text


@lg.validate(Contact)
async def aextract(text: str) -> str:
    return text


@lg.validate(list[Contact])
def many(text: str) -> str:
    return text


def positive(raw: object) -> int:  # (raw: Any) would make the result Any: mypy's rule for Any among overloads
    return int(str(raw))


@lg.validate(positive)
def number(text: str) -> str:
    return text


@lg.validate(Literal["yes", "no"])
def answer(text: str) -> str:
    return text


assert_type(extract("x"), Contact)
coro = aextract("x")
same = assert_type(coro, Coroutine[Any, Any, Contact])
same.close()
assert_type(many("x"), list[Contact])
assert_type(number("x"), int)
assert_type(answer("x"), Any)
extract(1)  # type: ignore[arg-type]
fb = lg.feedback()
assert_type(fb, lg.Feedback | None)

