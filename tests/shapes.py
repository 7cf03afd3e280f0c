"""Every call shape a guard must handle, as one builder the guard tests share.

`build(shape, decorate, sync_client, async_client)` makes a function of that
shape calling the real anthropic SDK (pointed at the fake provider), guards it
with *decorate*, and returns a thunk that calls it and returns its text.
"""

from __future__ import annotations

import asyncio

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic


MODEL = "claude-sonnet-4-6"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
SHAPES = ["def", "async def", "def->stream", "async def->stream", "generator", "async generator", "method"]


def text_of_events(events: Any) -> str:
    """The text of anthropic stream events."""
    return "".join(e.delta.text for e in events if e.type == "content_block_delta")


def build(shape: str, decorate: Callable[[Any], Any], sync: anthropic.Anthropic, aclient: anthropic.AsyncAnthropic) -> Callable[[], str]:
    """A guarded function of *shape* and a thunk that calls it and returns its text."""

    def create(**kw: Any) -> Any:
        return sync.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, **kw)

    async def acreate(**kw: Any) -> Any:
        return await aclient.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, **kw)

    if shape == "def":
        f = decorate(create)
        return lambda: f().content[0].text
    if shape == "async def":

        @decorate
        async def af() -> Any:
            return await acreate()

        return lambda: asyncio.run(af()).content[0].text
    if shape == "def->stream":
        g = decorate(lambda: create(stream=True))
        return lambda: text_of_events(list(g()))
    if shape == "async def->stream":

        @decorate
        async def ag() -> Any:
            return await acreate(stream=True)

        async def consume() -> str:
            return text_of_events([e async for e in await ag()])

        return lambda: asyncio.run(consume())
    if shape == "generator":

        @decorate
        def gen() -> Iterator[str]:
            for e in create(stream=True):
                if e.type == "content_block_delta":
                    yield e.delta.text

        return lambda: "".join(gen())
    if shape == "async generator":

        @decorate
        async def agen() -> AsyncIterator[str]:
            async for e in await acreate(stream=True):
                if e.type == "content_block_delta":
                    yield e.delta.text

        async def consume_gen() -> str:
            return "".join([t async for t in agen()])

        return lambda: asyncio.run(consume_gen())

    class Service:
        def __init__(self) -> None:
            self.client = sync

        @decorate
        def ask(self, model: str = MODEL) -> Any:
            return self.client.messages.create(model=model, max_tokens=64, messages=MESSAGES)

    svc = Service()
    return lambda: svc.ask().content[0].text


METHOD_SHAPES = ["def", "async def", "def->stream", "async def->stream", "generator", "async generator"]


def build_method(
    shape: str, decorate: Callable[[Any], Any], sync: anthropic.Anthropic, aclient: anthropic.AsyncAnthropic
) -> tuple[type, Callable[[list[tuple[Any, str, str]]], list[str]]]:
    """A class whose method ``ask`` of *shape* takes ``(this, q, user)``, and a caller.

    The caller takes ``[(instance, q, user), ...]`` and returns their texts,
    made in one event loop for the async shapes.

    Its first parameter is deliberately not named ``self``: what makes it the
    instance is that the function is a method, not its name.
    """

    class Service:
        client = sync
        aclient_ = aclient

        if shape == "def":

            @decorate
            def ask(this, q: str, user: str) -> Any:  # noqa: N805
                return this.client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}])

        elif shape == "async def":

            @decorate
            async def ask(this, q: str, user: str) -> Any:  # noqa: N805
                return await this.aclient_.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}])

        elif shape == "def->stream":

            @decorate
            def ask(this, q: str, user: str) -> Any:  # noqa: N805
                return this.client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}], stream=True)

        elif shape == "async def->stream":

            @decorate
            async def ask(this, q: str, user: str) -> Any:  # noqa: N805
                return await this.aclient_.messages.create(
                    model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}], stream=True
                )

        elif shape == "generator":

            @decorate
            def ask(this, q: str, user: str) -> Iterator[str]:  # noqa: N805
                for e in this.client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}], stream=True):
                    if e.type == "content_block_delta":
                        yield e.delta.text

        else:

            @decorate
            async def ask(this, q: str, user: str) -> AsyncIterator[str]:  # noqa: N805
                stream = await this.aclient_.messages.create(
                    model=MODEL, max_tokens=64, messages=[{"role": "user", "content": q}], stream=True
                )
                async for e in stream:
                    if e.type == "content_block_delta":
                        yield e.delta.text

    def one(svc: Any, q: str, user: str) -> str:
        if shape == "def":
            return str(svc.ask(q, user).content[0].text)
        if shape == "def->stream":
            return text_of_events(list(svc.ask(q, user)))
        return "".join(svc.ask(q, user))

    async def aone(svc: Any, q: str, user: str) -> str:
        if shape == "async def":
            return str((await svc.ask(q, user)).content[0].text)
        if shape == "async def->stream":
            return text_of_events([e async for e in await svc.ask(q, user)])
        return "".join([t async for t in svc.ask(q, user)])

    def call(calls: list[tuple[Any, str, str]]) -> list[str]:
        if not shape.startswith("async"):
            return [one(*c) for c in calls]

        async def all_in_one_loop() -> list[str]:  # an async client lives on one loop
            return [await aone(*c) for c in calls]

        return asyncio.run(all_in_one_loop())

    return Service, call
