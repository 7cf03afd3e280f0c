"""Overhead of @lg.budget per call, and Redis round trips per call.

* memory store: what ``@lg.budget`` adds on top of the wrapping core it
  runs on (target <= 3 µs), including the estimate, the pricing of the worst
  case and of the real usage, the reservation and the settlement. A budget
  alone on a function runs on the core's fast lane, so the reference is a
  pass-through layer on the same lane; the total over the bare call is
  printed too. Two targets: one that reports its usage with
  ``report_usage`` (any client), one that returns a real anthropic
  ``Message`` whose usage the budget reads. Beside it, the anchor: LiteLLM's
  SDK pattern (``litellm.max_budget``, ``BudgetManager``), a check of the
  running total before the call and an add after it, here under a lock. It
  does less (no estimate, no reservation), which is why it overspends under
  concurrency; the ratio shows what the reservation costs.
* Redis store: the time per guarded call against a local redis-server, and
  the round trips per call counted by the server (target: 1 to reserve, 1
  to settle). Skipped when no redis-server can be started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

from typing import Any

from _harness import PassThrough, overhead, per_call, per_call_async, row

from llmguard import prices
from llmguard._budget import budget
from llmguard._record import Usage
from llmguard._wrap import Layer, report_usage, wrap


MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Write a haiku about budgets."}]


def target(messages: Any, model: str = MODEL, max_tokens: int = 256) -> str:
    # A stand-in for an SDK call that reports its usage like a real response.
    report_usage(input_tokens=12, output_tokens=34, model=model, provider="anthropic")
    return "ok"


async def atarget(messages: Any, model: str = MODEL, max_tokens: int = 256) -> str:
    report_usage(input_tokens=12, output_tokens=34, model=model, provider="anthropic")
    return "ok"


def _message() -> Any:
    import anthropic.types as at

    return at.Message.model_validate({
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Ledgers balance"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 34},
    })


MESSAGE = _message()


def sdk_target(messages: Any, model: str = MODEL, max_tokens: int = 256) -> Any:
    # A stand-in for client.messages.create(...): the SDK's own response object.
    return MESSAGE


def check_then_record(fn: Any, limit: float) -> Any:
    """LiteLLM's SDK budget pattern: compare the total before, add the cost after."""
    lock = threading.Lock()
    spent = [0.0]
    usage = Usage(12, 34)

    def inner(messages: Any, model: str = MODEL, max_tokens: int = 256) -> Any:
        with lock:
            if spent[0] > limit:
                raise RuntimeError("budget exceeded")
        result = fn(messages, model=model, max_tokens=max_tokens)
        cost = prices.cost_of(usage, model, "anthropic") or 0.0
        with lock:
            spent[0] += cost
        return result

    return inner


def _redis_url() -> tuple[str | None, subprocess.Popen[bytes] | None]:
    url = os.environ.get("LLMGUARD_REDIS_URL")
    if url:
        return url, None
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(  # noqa: S603 - our own fixed arguments
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return f"redis://127.0.0.1:{port}/0", proc


def _round_trips(client: Any) -> int:
    # commandstats also counts the commands a script runs inside the server;
    # what the client sent is the scripts themselves.
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


def run() -> dict[str, float]:
    print("budget: @lg.budget per call (memory store), beside LiteLLM's check-then-record pattern")
    results = _memory_rows()
    _redis_rows(results, per_call(lambda f=PassThrough()(target): f(MESSAGES)))
    return results


def _memory_rows() -> dict[str, float]:
    results: dict[str, float] = {}
    for label, fn in (("report_usage", target), ("SDK Message", sdk_target)):
        lane = PassThrough()(fn)
        guarded = budget(usd=1_000_000.0)(fn)
        bare = per_call(lambda fn=fn: fn(MESSAGES))
        core = per_call(lambda f=lane: f(MESSAGES))
        ours = per_call(lambda f=guarded: f(MESSAGES))
        print(row(f"sync  {label}: bare call", bare))
        print(row(f"sync  {label}: pass-through layer on the lane", core))
        print(row(f"sync  {label}: @lg.budget", ours))
        print(row(f"sync  {label}: budget's own cost (budget - lane) <= 3 µs", overhead(ours, core)))
        print(row(f"sync  {label}: total over the bare call", overhead(ours, bare)))
        key = "budget_sync_overhead" if fn is target else "budget_sdk_overhead"
        results[key] = overhead(ours, core)
        results[key + "_total"] = overhead(ours, bare)

    general = per_call(lambda f=wrap(Layer(), target): f(MESSAGES))
    print(row("sync  (general path: pass-through layer, record built)", general))
    naive = check_then_record(target, 1_000_000.0)
    anchor = overhead(per_call(lambda: naive(MESSAGES)), per_call(lambda: target(MESSAGES)))
    print(row("sync  check-then-record overhead (anchor - bare)", anchor))
    print(row("sync  budget's own cost vs anchor overhead", results["budget_sync_overhead"], anchor, "of anchor"))
    results["anchor_check_then_record_overhead"] = anchor

    alane = PassThrough()(atarget)
    aguarded = budget(usd=1_000_000.0)(atarget)
    acore = per_call_async(lambda: alane(MESSAGES))
    aours = per_call_async(lambda: aguarded(MESSAGES))
    print(row("async report_usage: pass-through layer on the lane", acore))
    print(row("async report_usage: @lg.budget", aours))
    print(row("async report_usage: budget's own cost (budget - lane)", overhead(aours, acore)))
    results["budget_async_overhead"] = overhead(aours, acore)
    return results


def _redis_rows(results: dict[str, float], core: float) -> None:
    url, proc = _redis_url()
    if url is None:
        print("  (no redis-server: Redis rows skipped)")
        return
    try:
        from llmguard.stores.budget import RedisBudgetStore

        store = RedisBudgetStore(url, namespace=f"bench{os.getpid()}")
        rguarded = budget(usd=1_000_000.0, store=store, name="bench")(target)
        rguarded(MESSAGES)  # load the scripts
        calls = 2000
        before = _round_trips(store.client)
        for _ in range(calls):
            rguarded(MESSAGES)
        trips = (_round_trips(store.client) - before) / calls
        rtime = per_call(lambda: rguarded(MESSAGES), number=2000, repeats=7)
        print(row("sync  @lg.budget, Redis store (local server)", rtime, core, "of the lane"))
        print(f"  {'Redis round trips per call (reserve + settle)':<52} {trips:9.3f}")
        results["budget_redis_per_call"] = rtime
        results["budget_redis_round_trips"] = trips
        store.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=5)


if __name__ == "__main__":
    run()
