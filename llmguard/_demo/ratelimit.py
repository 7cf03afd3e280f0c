"""Demo section: 200 callers queue through a rate limit, in order, with a live count; the impatient are told at once."""

from __future__ import annotations

import asyncio
import time

from typing import Any

import anthropic

from .._ratelimit import ratelimit
from ..errors import RateLimited
from ..testing import FakeProvider


ORDER = 45
TITLE = "ratelimit: 200 callers wait their turn (FIFO, no polling); a caller that cannot wait is told at once"

MODEL = "claude-sonnet-4-6"
CALLERS = 200
RPM = 6000  # 100 a second: the 200 take 2 s


def run(fake: FakeProvider) -> None:
    """200 asyncio tasks through ``rpm=6000``: a count every 0.5 s, then one that may wait 0.1 s at most."""
    asyncio.run(_run(fake))


async def _run(fake: FakeProvider) -> None:
    claude = anthropic.AsyncAnthropic(base_url=fake.anthropic_base_url, api_key="demo", max_retries=0)
    order: list[int] = []
    limit = ratelimit(rpm=RPM, name="demo")

    @limit
    async def ask(i: int) -> Any:
        order.append(i)
        return await claude.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": f"caller {i}"}])

    started = time.monotonic()
    tasks = [asyncio.create_task(ask(i)) for i in range(CALLERS)]  # they ask in this order as the loop starts them
    print(f"  {CALLERS} callers asked at once through rpm={RPM} (one every {60 / RPM * 1000:.0f} ms):")
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.5)
        print(f"    {time.monotonic() - started:4.1f} s: {len(order):3d} sent, {CALLERS - len(order):3d} waiting")
    await asyncio.gather(*tasks)
    print(f"  all {len(order)} answered ({len(fake.requests)} requests), in the order they asked: {order == sorted(order)}")

    impatient = ratelimit(rpm=60, max_wait=0.1, name="impatient")

    @impatient
    async def quick() -> Any:
        return await claude.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "now"}])

    await quick()
    sent = len(fake.requests)
    try:
        await quick()
    except RateLimited as exc:
        print(f"  a caller with max_wait=0.1 s: refused at once ({len(fake.requests) - sent} requests sent), its turn was {exc.wait:.1f} s away")
    await claude.close()
