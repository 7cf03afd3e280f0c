"""`budget` on Redis across real processes: 4 x 50 callers on one budget, and a holder that dies.

The workers are this file run as a script (``python test_budget_redis_processes.py
worker ...``): separate interpreters, each with its own threads, its own
RedisBudgetStore and its own HTTP client, sharing the test's fake provider and
redis-server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

from pathlib import Path
from typing import Any

import pytest

from llmguard._budget import budget
from llmguard.stores.budget import PICO, RedisBudgetStore


PROCESSES = 4
CALLERS = 50
FITS = 50
GPT = "gpt-4o"


def _worst() -> float:
    import llmguard as lg  # noqa: PLC0415 - the worker imports it too

    cost = lg.cost_of(lg.Usage(100, 50), GPT)
    assert cost is not None
    return cost


def _shared_budget(redis_url: str, namespace: str, **kw: Any) -> Any:
    return budget(
        usd=_worst() * FITS,
        per="day",
        name="shared",
        store=RedisBudgetStore(redis_url, namespace=namespace),
        estimate=lambda **_: (100, 50),
        model=GPT,
        **kw,
    )


def _client(base_url: str) -> Any:
    import openai  # noqa: PLC0415

    from sdk_http import httpx  # noqa: PLC0415

    http = httpx.Client(limits=httpx.Limits(max_connections=8, max_keepalive_connections=8), timeout=30)
    return openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, http_client=http)


def _report(result: dict[str, Any]) -> None:
    """Hand *result* to the parent process, on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def worker(mode: str, redis_url: str, base_url: str, namespace: str, start_at: float) -> None:
    """One process: *CALLERS* threads on the shared budget, or one holder that dies."""
    import llmguard as lg  # noqa: PLC0415

    client = _client(base_url)
    headers = {"x-fake-script": json.dumps({"usage": {"input_tokens": 100, "output_tokens": 50}, "delay": 0.05})}
    if mode == "die":
        b = _shared_budget(redis_url, namespace, reservation_ttl=1.0)

        @b
        def stream() -> Any:
            return client.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}], stream=True)

        s = stream()
        next(iter(s))
        _report({"held": b.spend().reserved_usd})
        import os  # noqa: PLC0415

        os._exit(0)  # dies holding the reservation: no finish hook, no settle

    b = _shared_budget(redis_url, namespace)

    @b
    def ask() -> Any:
        return client.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "hi"}], extra_headers=headers)

    done: list[int] = []
    refusals: list[list[float]] = []
    errors: list[str] = []

    def caller() -> None:
        time.sleep(max(start_at - time.time(), 0))
        try:
            ask()
            done.append(1)
        except lg.BudgetExceeded as exc:
            refusals.append([exc.spent, exc.reserved, exc.requested, exc.limit])
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(repr(exc))

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _report({"done": len(done), "refusals": refusals, "errors": errors})


def _spawn(mode: str, redis_url: str, base_url: str, namespace: str, start_at: float) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and file
        [sys.executable, str(Path(__file__).resolve()), mode, redis_url, base_url, namespace, repr(start_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.redis
def test_four_processes_of_50_callers_share_one_budget(redis_url: str, fake_provider: Any) -> None:
    """200 callers in 4 processes on a budget that fits 50: exactly 50 calls, spend == limit."""
    namespace = uuid.uuid4().hex
    start_at = time.time() + 3.0  # every process imported and waiting
    procs = [_spawn("worker", redis_url, fake_provider.openai_base_url, namespace, start_at) for _ in range(PROCESSES)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert 0 == p.returncode, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    b = _shared_budget(redis_url, namespace)
    spend = b.spend()
    refusals = [r for res in results for r in res["refusals"]]
    done = sum(res["done"] for res in results)

    assert [] == [e for res in results for e in res["errors"]]
    assert PROCESSES * CALLERS == done + len(refusals)
    assert FITS == done == len(fake_provider.requests) == spend.calls
    assert round(_worst() * PICO) * FITS == int(spend.exact_usd * PICO)
    assert spend.usd <= b.usd
    assert all(s + r + q > limit for s, r, q, limit in refusals)
    assert 0 == spend.reserved_tokens
    b.store.close()  # type: ignore[attr-defined]


@pytest.mark.redis
def test_a_process_that_dies_holding_a_reservation_does_not_leak_it(redis_url: str, fake_provider: Any) -> None:
    """The dead holder's reservation is visible, then expires with its lease."""
    namespace = uuid.uuid4().hex
    proc = _spawn("die", redis_url, fake_provider.openai_base_url, namespace, 0.0)
    out, err = proc.communicate(timeout=30)
    held = json.loads(out.strip().splitlines()[-1])["held"]
    died_at = time.time()
    b = _shared_budget(redis_url, namespace)
    before = b.spend().reserved_usd
    time.sleep(max(1.1 - (time.time() - died_at), 0))
    after = b.spend()

    assert 0 == proc.returncode, err
    assert held == before > 0
    assert (0.0, 0.0) == (after.reserved_usd, after.usd)
    b.store.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
