"""Budget scopes reach every SDK request: a request no budget guard covers is reserved, refused or charged at the wire.

Inside ``with lg.budget(...)`` an SDK request made by code that no
``@lg.budget`` guards (an unguarded function, a retry-only one, instructor,
an agent framework) is one *call* of `sdk_request` for the scopes: its worst
case is reserved from the request's own body (model, output cap, messages)
before it leaves, or it is refused with `BudgetExceeded` and nothing is
sent; it is charged what the wire measured once its body was read (an
estimate, flagged, if nothing was measured). A request a budget guard
already covers (the guard reserved for it, scopes included) is left to it.
"""

from __future__ import annotations

import json

from typing import Any

from ._budget import _FunctionBudget, budget
from ._call import Call
from ._context import Refused
from ._runner import _Runner, runner_of
from .errors import BudgetExceeded


def sdk_request(
    model: str | None = None,
    max_tokens: int | None = None,
    messages: Any = None,
    system: Any = None,
    prompt: Any = None,
    input: Any = None,  # noqa: A002 - the SDKs' own name
    instructions: Any = None,
    contents: Any = None,
    tools: Any = None,
) -> None:
    """One SDK request made inside a budget scope by code no budget guards (what the scopes' records name)."""


_INPUTS = ("messages", "system", "prompt", "input", "instructions", "contents", "tools")
_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")

def _runner() -> tuple[_Runner, _FunctionBudget]:
    runner = runner_of(budget(sdk_request))
    assert runner is not None  # noqa: S101 - built just here
    guard = runner.guards[0]
    assert isinstance(guard, _FunctionBudget)  # noqa: S101
    return runner, guard


_RUNNER, _GUARD = _runner()


def covered(running: Any) -> bool:
    """Whether a budget guard of the running guarded call (or one it runs in) already reserved for this request."""
    call = None if running is None else running[0]
    while call is not None:
        if any(isinstance(g, _FunctionBudget) for g in call.runner.guards):
            return True
        call = call._parent
    return False


def arguments_of(request: Any) -> dict[str, Any]:
    """The request's model, output cap and input, by the names the budget's estimate reads."""
    out: dict[str, Any] = {}
    try:
        body = json.loads(request.content)
    except Exception:  # noqa: BLE001 - an unreadable body: estimated from nothing (at least one token)
        body = None
    path = request.url.path
    if "/models/" in path and ":" in path:  # google: the model is in the URL
        out["model"] = path.rsplit("/models/", 1)[1].split(":", 1)[0]
    if isinstance(body, dict):
        if isinstance(body.get("model"), str):
            out["model"] = body["model"]
        for name in _CAPS:
            if isinstance(body.get(name), int):
                out["max_tokens"] = body[name]
                break
        config = body.get("generationConfig") or body.get("generation_config")
        if isinstance(config, dict) and isinstance(config.get("maxOutputTokens"), int):
            out["max_tokens"] = config["maxOutputTokens"]
        for name in _INPUTS:
            if name in body:
                out[name] = body[name]
    return out


def reserve(request: Any) -> tuple[Call, list[Any], Any] | None:
    """Reserve the request's worst case in every active scope (or raise `BudgetExceeded`); None if none applies."""
    call = Call(_RUNNER, None, (), arguments_of(request))
    try:
        ticket = _GUARD.enter(call)
    except BudgetExceeded as exc:
        raise Refused(exc) from None  # past the SDK's wrapping and retries; the scope raises exc
    if ticket is None:
        return None
    return call, call._begin(), ticket


def settle(state: tuple[Call, list[Any], Any], exc: BaseException | None = None) -> None:
    """Charge the scopes what the request used: what the wire measured (on its slot), else an estimate."""
    call, slot, ticket = state
    if exc is None:
        call._returned(slot, None)
        call._finish_call(None)
        _GUARD.leave(call, ticket, None)
    else:
        call._failed(slot, exc)
        call._finish_call(exc)
        _GUARD.fail(call, ticket, exc)
