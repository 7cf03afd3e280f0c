"""Success-path overhead of @lg.retry and @lg.timeout beside tenacity, stamina and backoff."""

from __future__ import annotations

import asyncio
import warnings

from typing import Any

from _harness import overhead, per_call, per_call_async, row

import llmguard as lg


def target(q: str, n: int = 1) -> str:
    return q


async def atarget(q: str, n: int = 1) -> str:
    return q


def run() -> dict[str, float]:
    import backoff
    import stamina
    import tenacity

    warnings.simplefilter("ignore")
    print("retry / timeout: success-path overhead per call (guarded minus bare)")
    bare = per_call(lambda: target("q", n=2))
    ours = overhead(per_call(lambda f=lg.retry(target): f("q", n=2)), bare)
    ten = overhead(per_call(lambda f=tenacity.retry(stop=tenacity.stop_after_attempt(4))(target): f("q", n=2)), bare)
    sta = overhead(per_call(lambda f=stamina.retry(on=Exception, attempts=4)(target): f("q", n=2)), bare)
    bac = overhead(per_call(lambda f=backoff.on_exception(backoff.expo, Exception, max_tries=4)(target): f("q", n=2)), bare)
    print(row("sync  tenacity.retry", ten))
    print(row("sync  stamina.retry", sta, ten, "of tenacity"))
    print(row("sync  backoff.on_exception", bac, ten, "of tenacity"))
    print(row("sync  @lg.retry", ours, ten, "of tenacity (target <= 0.10x)"))

    abare = per_call_async(lambda: atarget("q", n=2))
    aours = overhead(per_call_async(lambda f=lg.retry(atarget): f("q", n=2)), abare)
    aten = overhead(per_call_async(lambda f=tenacity.retry(stop=tenacity.stop_after_attempt(4))(atarget): f("q", n=2)), abare)
    asta = overhead(per_call_async(lambda f=stamina.retry(on=Exception, attempts=4)(atarget): f("q", n=2)), abare)
    abac = overhead(per_call_async(lambda f=backoff.on_exception(backoff.expo, Exception, max_tries=4)(atarget): f("q", n=2)), abare)
    print(row("async tenacity.retry", aten))
    print(row("async stamina.retry", asta, aten, "of tenacity"))
    print(row("async backoff.on_exception", abac, aten, "of tenacity"))
    print(row("async @lg.retry", aours, aten, "of tenacity (target <= 0.10x)"))

    atime = overhead(per_call_async(lambda f=lg.timeout(30)(atarget): f("q", n=2)), abare)

    async def with_asyncio_timeout() -> str:
        async with asyncio.timeout(30):
            return await atarget("q", n=2)

    aio = overhead(per_call_async(with_asyncio_timeout), abare)
    print(row("async asyncio.timeout(30) around the call", aio))
    print(row("async @lg.timeout(30)", atime, aio, "of asyncio.timeout (target <= 2 µs)"))
    chunk, chunk_aio = _stream_chunks()
    print(row("async stream chunk, asyncio.timeout(idle) around each pull", chunk_aio))
    print(row("async stream chunk, @lg.timeout(30, idle=10) (report)", chunk, chunk_aio, "of asyncio.timeout"))
    return {
        "retry_sync": ours,
        "tenacity_sync": ten,
        "retry_sync_ratio": ours / ten,
        "retry_async": aours,
        "tenacity_async": aten,
        "retry_async_ratio": aours / aten,
        "timeout_async": atime,
        "asyncio_timeout": aio,
        "timeout_async_us": atime * 1e6,
    }


CHUNKS = 1_000


async def _ticks() -> Any:
    for i in range(CHUNKS):
        yield i


def _stream_chunks() -> tuple[float, float]:
    """Per chunk of an async generator, over reading it bare: @lg.timeout(idle=), and asyncio.timeout per pull.

    The guarded side includes the guarded stream's own bookkeeping (chunk
    count, finish hook), which a hand-written loop does not have.
    """
    timed = lg.timeout(30, idle=10)(_ticks)

    async def bare() -> None:
        async for _ in _ticks():
            pass

    async def ours() -> None:
        async for _ in timed():
            pass

    async def by_hand() -> None:
        it = _ticks().__aiter__()
        while True:
            try:
                async with asyncio.timeout(10):
                    await it.__anext__()
            except StopAsyncIteration:
                return

    base = per_call_async(bare, number=20)
    return (
        overhead(per_call_async(ours, number=20), base) / CHUNKS,
        overhead(per_call_async(by_hand, number=20), base) / CHUNKS,
    )


if __name__ == "__main__":
    run()
