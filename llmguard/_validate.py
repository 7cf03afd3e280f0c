"""`validate`: typed structured outputs, bounded re-asks that cost linear, input checks before anything is sent.

``@lg.validate(Model, reask=2)`` makes a function calling an LLM return a
validated ``Model`` (and its static type says so). The answer is found by
`llmguard._extract` (SDK-parsed output, a tool call's arguments, JSON in the
text) and validated by pydantic (a ``BaseModel``, or anything ``TypeAdapter``
takes: ``list[Item]``, ``Literal[...]``, a ``TypedDict``) or by a callable
``raw -> value`` that raises on bad output.

A re-ask is the guard protocol's "run again with other arguments": ``leave``
returns `Run` with the call's *original* arguments plus one exchange (the
last answer, then its errors), so each re-ask **replaces** the failed
exchange before it instead of stacking all of them: the prompt of re-ask
*n* is the original prompt, one answer and one list of errors, whatever
*n* (cost linear in ``reask``; instructor #2122, pydantic-ai #7875). The
exchange is added to a ``messages`` argument (anthropic, openai chat) or an
``input`` argument (openai Responses); any function can read it with
`feedback`. An exception from the function (a transport error, a 429) is not
an answer: it propagates to retry and fallback below and is never pasted
into a prompt (instructor #1907).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import typing

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Generic, NamedTuple, ParamSpec, TypeVar, cast, overload

import pydantic

from . import _check, _events, _extract
from ._binder import Binder
from ._call import Call
from ._context import remaining
from ._facts import _CURRENT, ASYNC, ASYNCGEN, GEN
from ._input_check import ALL_INPUT, USER_INPUT, describe, input_checks, input_text
from ._runner import Guard, Run
from ._stream import AsyncGuardedStream, GuardedStream
from .errors import InputRejected, ValidationFailed
from .providers import StreamAccumulator


P = ParamSpec("P")
T = TypeVar("T")

_MAX_ERRORS: Final = 20  # errors fed back and kept per attempt: a huge answer's 500 errors would be a prompt of their own
_REASK_INTRO: Final = "Your previous answer did not validate:"
_REASK_ASK: Final = "Answer again with the corrected output only."


# -- feedback -----------------------------------------------------------------


class Feedback(NamedTuple):
    """What a re-ask tells the model: `feedback` returns it inside the function during a re-ask.

    ``attempt`` is the answer about to be asked for (2 for the first
    re-ask), ``answer`` the previous answer as text, ``errors`` its
    validation errors, ``message`` both as one ready-to-send user message.
    """

    attempt: int
    answer: str
    errors: tuple[str, ...]
    message: str


def feedback() -> Feedback | None:
    r"""The re-ask's feedback inside a function `validate` is running again, else None.

    For a function without a ``messages`` or ``input`` argument (validate
    adds the exchange to those itself), or one decorated with
    ``feed=False``: add ``feedback().message`` to the prompt yourself::

        @lg.validate(Contact, reask=2, feed=False)
        def extract(text: str) -> str:
            fb = lg.feedback()
            prompt = PROMPT + text + ("\\n\\n" + fb.message if fb else "")
            return ask(prompt)
    """
    running = _CURRENT.get()
    call: Call | None = None if running is None else running[0]
    while call is not None:
        found = call.__dict__.get("_llmguard_feedback")
        if found is not None:
            return typing.cast("Feedback", found)
        call = call._parent
    return None


def _message(errors: Sequence[str]) -> str:
    return "\n".join((_REASK_INTRO, *(f"- {e}" for e in errors), _REASK_ASK))


# -- the target -------------------------------------------------------------------


class _Target:
    """What the answer is validated into: a pydantic type (``TypeAdapter``) or a callable."""

    __slots__ = ("adapter", "fn", "instance_of", "name", "validate_json", "wants_context")

    def __init__(self, model: Any) -> None:
        self.name = describe(model)
        self.adapter: pydantic.TypeAdapter[Any] | None = None
        self.validate_json: Callable[..., Any] | None = None
        self.fn: Callable[..., Any] | None = None
        self.wants_context = False
        self.instance_of: type | None = None
        if isinstance(model, type) or typing.get_origin(model) is not None:
            try:
                self.adapter = pydantic.TypeAdapter(model)
            except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
                msg = f"validate(model=...) must be a type pydantic can validate, a BaseModel, or a callable raw -> value: {exc}"
                raise TypeError(msg) from exc
            if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
                self.instance_of = model
            # The core validator's own method: the fast path of a valid JSON answer skips
            # TypeAdapter's Python wrapper (a µs of a ~10 µs validation of 1 KB).
            self.validate_json = self.adapter.validator.validate_json
            return
        if not callable(model):
            msg = f"validate(model=...) must be a BaseModel, a type pydantic's TypeAdapter takes, or a callable raw -> value, got {model!r}"
            raise TypeError(msg)
        self.fn = model
        try:
            params = inspect.signature(model).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self.wants_context = "context" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def check(self, found: _extract.Extracted, context: dict[str, Any]) -> tuple[Any, list[str], Any]:
        """``(value, errors, parsed)``: *errors* empty when *found* validated into *value*."""
        if self.fn is not None:
            value = found.value
            if found.step == "tool" and isinstance(value, str):
                parsed = _loads(value)
                value = value if parsed is _NOTHING else parsed
            try:
                return (self.fn(value, context=context) if self.wants_context else self.fn(value)), [], None
            except Exception as exc:  # noqa: BLE001 - the callable's way of saying the output is bad
                return None, _errors_of(exc), None
        value = found.value
        if found.step == "text":
            try:  # the whole text is the JSON: the common case, first
                return typing.cast("Callable[..., Any]", self.validate_json)(value, context=context), [], None
            except Exception as exc:  # noqa: BLE001 - not that: the slow path says what is wrong
                return self._text(typing.cast("pydantic.TypeAdapter[Any]", self.adapter), value, context, exc)
        adapter = typing.cast("pydantic.TypeAdapter[Any]", self.adapter)
        if found.step == "tool" and isinstance(value, str):
            return self._json(adapter, value, context)
        if self.instance_of is not None and isinstance(value, self.instance_of):
            return value, [], None
        if isinstance(value, pydantic.BaseModel):
            value = value.model_dump()
        try:
            return adapter.validate_python(value, context=context), [], None
        except pydantic.ValidationError as exc:
            return None, _errors_of(exc), value
        except Exception as exc:  # noqa: BLE001 - a validator of the model raised something else
            return None, _errors_of(exc), value

    def _json(self, adapter: pydantic.TypeAdapter[Any], text: str, context: dict[str, Any]) -> tuple[Any, list[str], Any]:
        try:
            return adapter.validate_json(text, context=context), [], None
        except Exception as exc:  # noqa: BLE001 - a pydantic error, or a validator of the model raised something else
            return _json_failure(exc, text)

    def _text(self, adapter: pydantic.TypeAdapter[Any], text: str, context: dict[str, Any], first: Exception) -> tuple[Any, list[str], Any]:
        """After the whole text failed as JSON (*first*): a fenced block, then JSON inside prose, then the text itself."""
        value, errors, parsed = _json_failure(first, text)
        if parsed is not None and parsed is not _NOTHING:
            return value, errors, parsed  # it was JSON: what is wrong is the value
        for candidate, where in _extract.json_candidates(text):
            value, errors, parsed = self._json(adapter, candidate, context)
            if not errors:
                return value, errors, parsed
            if parsed is not _NOTHING and parsed is not None:
                return None, [f"{e} (in {where})" for e in errors], parsed
        # No JSON at all: the text itself, for a target that is text (a Literal, a str).
        stripped = text.strip()
        with contextlib.suppress(Exception):  # not that either
            return adapter.validate_python(stripped, context=context), [], None
        if not stripped:
            return None, ["the answer was empty"], None
        return None, ["no JSON value found in the answer (tried: the whole text, code fences, JSON inside the text)"], None


_NOTHING: Final[Any] = object()


def _json_failure(exc: Exception, text: str) -> tuple[Any, list[str], Any]:
    """``(None, errors, parsed)`` of *text* failing to validate as JSON with *exc* (*parsed* None: not JSON)."""
    if isinstance(exc, pydantic.ValidationError) and _only_json_invalid(exc):
        return None, [f"not valid JSON: {_first_message(exc)}"], None
    return None, _errors_of(exc), _loads(text)


def _loads(text: str) -> Any:
    import json  # noqa: PLC0415 - only on a failure path

    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOTHING


def _only_json_invalid(exc: pydantic.ValidationError) -> bool:
    return all(e["type"] == "json_invalid" for e in exc.errors(include_url=False))


def _first_message(exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False)
    return str(errors[0]["msg"]) if errors else str(exc)


def _errors_of(exc: BaseException) -> list[str]:
    if isinstance(exc, pydantic.ValidationError):
        out = []
        for e in exc.errors(include_url=False, include_context=False)[:_MAX_ERRORS]:
            loc = ".".join(str(p) for p in e["loc"])
            out.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
        return out or [str(exc)]
    return [f"{type(exc).__name__}: {exc}"[:2000]]


# -- the guard --------------------------------------------------------------------


class _State:
    """One call's failed answers so far (the state `leave` hands itself through `Run`)."""

    __slots__ = ("history", "parsed", "raw", "step", "text")

    def __init__(self) -> None:
        self.history: list[list[str]] = []
        self.raw: Any = None
        self.parsed: Any = None
        self.text = ""
        self.step = ""


class _Read(NamedTuple):
    """A stream `validate` read to its end: its text, and its first tool call's arguments if it had one."""

    text: str
    tool: str | None = None


class _Reading:
    """A stream being read: its text and its first tool call, chunk by chunk."""

    __slots__ = ("acc", "tool")

    def __init__(self) -> None:
        self.acc = StreamAccumulator()  # a cache's replay has no text of its own: read it here too
        self.tool = _extract.StreamedTool()

    def feed(self, chunk: Any) -> None:
        self.acc.feed(chunk)
        self.tool.feed(chunk)

    def done(self, text: str) -> _Read:
        return _Read(text or self.acc.text, self.tool.arguments)


class ValidateGuard(Guard, Generic[T]):
    """The `validate` guard. Build it with `validate`, not directly."""

    name = "validate"

    def __init__(
        self,
        model: Any,
        *,
        reask: int = 2,
        input: Sequence[str | Callable[[str], Any]] = (),  # noqa: A002 - the public name
        output: Sequence[Callable[[Any], Any]] = (),
        max_input_chars: int | None = None,
        max_input_tokens: int | None = None,
        feed: bool = True,
    ) -> None:
        _check.number("validate", "reask", reask, integer=True, minimum=0, exclusive=False)
        _check.number("validate", "max_input_chars", max_input_chars, integer=True, minimum=1, exclusive=False, optional=True)
        _check.number("validate", "max_input_tokens", max_input_tokens, integer=True, minimum=1, exclusive=False, optional=True)
        if not isinstance(cast("object", feed), bool):
            msg = f"validate(feed=...) must be True or False, got {feed!r}"
            raise TypeError(msg)
        self.target = _Target(model)
        self.model = model
        self.reask = int(reask)
        self.input_checks = input_checks(input)
        self.output_checks = _output_checks(output)
        self.max_input_chars = max_input_chars
        self.max_input_tokens = max_input_tokens
        self.feed = feed

    def settings(self) -> dict[str, Any]:
        """The configuration, for `describe`."""
        return {
            "model": self.target.name,
            "reask": self.reask,
            "input": tuple(name for name, _ in self.input_checks),
            "output": tuple(describe(c) for c in self.output_checks),
            "max_input_chars": self.max_input_chars,
            "max_input_tokens": self.max_input_tokens,
            "feed": self.feed,
        }

    def for_function(self, fn: Callable[..., Any], shape: str, binder: Binder) -> ValidateGuard[T]:  # noqa: ARG002
        """A copy for *fn*: its input checks as ``enter`` (only if any), its stream reading for its shape."""
        if shape in (GEN, ASYNCGEN):
            msg = (
                f"validate() cannot decorate the generator function {describe(fn)}: it returns one validated "
                "value, not a stream; return the SDK stream (or the text) from a plain function instead"
            )
            raise TypeError(msg)
        made = copy.copy(self)
        if self.input_checks or self.max_input_chars is not None or self.max_input_tokens is not None:
            made.enter = made._check_input
        if shape == ASYNC:
            made.aleave = made._aleave
        return made

    # -- before anything is sent ----------------------------------------------

    def _check_input(self, call: Call) -> None:
        """``enter`` (once a call, re-asks included): the input checks; raising `InputRejected` sends nothing."""
        if self.max_input_chars is not None or self.max_input_tokens is not None:
            text = input_text(call, ALL_INPUT)
            if self.max_input_chars is not None and len(text) > self.max_input_chars:
                self._reject(call, "max_input_chars", f"{len(text)} characters > max_input_chars={self.max_input_chars}")
            if self.max_input_tokens is not None:
                tokens = call.estimated_input_tokens()
                if tokens > self.max_input_tokens:
                    self._reject(call, "max_input_tokens", f"about {tokens} tokens > max_input_tokens={self.max_input_tokens}")
        if self.input_checks:
            text = input_text(call, USER_INPUT)
            for name, check in self.input_checks:
                try:
                    verdict = check(text)
                except InputRejected:
                    raise
                except Exception as exc:  # noqa: BLE001 - a check's way of refusing
                    self._reject(call, name, f"{type(exc).__name__}: {exc}")
                if verdict is False or isinstance(verdict, str):
                    self._reject(call, name, verdict or "refused")

    def _reject(self, call: Call, check: str, reason: str) -> typing.NoReturn:
        msg = f"llmguard.validate: the input of {call.function_name} was rejected by {check} ({reason}); nothing was sent"
        raise InputRejected(msg, check=check, reason=reason)

    # -- after the answer ---------------------------------------------------------

    def leave(self, call: Call, state: _State | None, result: Any) -> Any:
        """Validate the answer: the value, or `Run` (a re-ask), or `ValidationFailed`."""
        if isinstance(result, GuardedStream):
            read = _Reading()
            for chunk in result:  # validated at its end: the caller gets the value, never a half-read stream
                read.feed(chunk)
            result = read.done(result.text)
        return self._decide(call, state, result)

    async def _aleave(self, call: Call, state: _State | None, result: Any) -> Any:
        """``aleave`` of an ``async def``: an async stream is read here, the decision is `leave`'s."""
        if isinstance(result, AsyncGuardedStream):
            read = _Reading()
            async for chunk in result:
                read.feed(chunk)
            result = read.done(result.text)
        return self.leave(call, state, result)

    def judge(self, call: Call, result: Any) -> str | None:
        """Why the answer *result* will be rejected, or None: what a cache below asks before keeping it."""
        if isinstance(result, tuple) and not isinstance(result, _Read) and call.recorded and call.record.stream:
            read = _Reading()  # a stream's chunks, as a cache kept them (a tuple a function returns is a value)
            for chunk in result:
                read.feed(chunk)
            result = read.done("")
            memo = None
        else:
            memo = result
        value, errors, found, parsed = self._validate(call, result)
        if memo is not None:
            call.__dict__["_llmguard_validated"] = (memo, value, errors, found, parsed)
        return None if not errors else f"validate rejected it: {errors[0]}"

    def _validate(self, call: Call, result: Any) -> tuple[Any, list[str], _extract.Extracted, Any]:
        memo = call.__dict__.pop("_llmguard_validated", None)
        if memo is not None and memo[0] is result:
            return memo[1], memo[2], memo[3], memo[4]
        round_ = call.__dict__.get("_llmguard_round", 1)
        found = _extract.extract(None, text=result.text, tool=result.tool) if isinstance(result, _Read) else _extract.extract(result)
        context = {"attempt": round_, "reask": self.reask, "remaining": remaining()}
        value, errors, parsed = self.target.check(found, context)
        if not errors:
            errors = self._check_output(value)
        if errors and found.tried and found.step == "text" and not found.text:
            errors = [*errors, f"tried: {', '.join(found.tried)}"]
        return value, errors, found, parsed

    def _check_output(self, value: Any) -> list[str]:
        for check in self.output_checks:
            try:
                verdict = check(value)
            except Exception as exc:  # noqa: BLE001 - a check's way of refusing
                return [f"{describe(check)}: {type(exc).__name__}: {exc}"]
            if verdict is False or isinstance(verdict, str):
                return [f"{describe(check)}: {verdict or 'refused the output'}"]
        return []

    def fail(self, call: Call, state: _State | None, exc: BaseException) -> Run | None:
        """The function raised: a pydantic error is a bad answer (an SDK's ``.parse()``), re-asked; anything else propagates."""
        if not isinstance(exc, pydantic.ValidationError):
            return None  # a transport error, a refusal: retry's and fallback's, never fed into a prompt
        roots = [e.get("input") for e in exc.errors(include_url=False) if not e["loc"]]  # the whole answer, if kept
        text = next((i for i in roots if isinstance(i, str)), "(the answer, which the SDK could not parse)")
        found = _extract.Extracted("parsed", None, text, ("parsed: the SDK's parse raised",))
        again: Run = self._verdict(call, state, exc, None, _errors_of(exc), found, _NOTHING)  # errors: never a value
        return again

    def _decide(self, call: Call, state: _State | None, result: Any) -> Any:
        value, errors, found, parsed = self._validate(call, result)
        raw = found.text if isinstance(result, _Read) else result
        return self._verdict(call, state, raw, value, errors, found, parsed)

    def _verdict(
        self, call: Call, state: _State | None, raw: Any, value: Any, errors: list[str], found: _extract.Extracted, parsed: Any
    ) -> Any:
        if not errors:
            if state is not None:
                call.note(extra={"reasks": len(state.history)})
            return value
        if state is None:
            state = _State()
        state.history.append(errors)
        state.raw = raw
        state.text, state.step = found.text, found.step
        if parsed is not None and parsed is not _NOTHING:
            state.parsed = parsed
        made = len(state.history)
        left = remaining()  # a re-ask past the call's deadline could only time out: the answer's failure is the news
        again = made <= self.reask and (left is None or left > 0)
        record = call.record
        record.extra["reasks"] = made - 1 + again
        _events.emit(
            _events.VALIDATE_FAILED,
            record,
            level="warning",
            attempt=made,
            step=found.step,
            errors=len(errors),
            error=errors[0],
            reask=again,
        )
        if not again:
            msg = (
                f"llmguard.validate: the answer of {call.function_name} did not validate as {self.target.name} "
                f"after {made} attempt{'s' * (made != 1)} (found in: {found.step}): {'; '.join(errors[:3])}"
            )
            raise ValidationFailed(
                msg,
                raw=state.raw,
                errors=errors,
                attempts=made,
                parsed=state.parsed,
                history=state.history,
                usage=record.usage,
                text=state.text,
                step=state.step,
            )
        told = Feedback(made + 1, found.text, tuple(errors), _message(errors))
        call.__dict__["_llmguard_feedback"] = told
        call.__dict__["_llmguard_round"] = made + 1
        args, kwargs = _fed(call, told) if self.feed else (None, None)
        return Run(args=args, kwargs=kwargs, state=state)


def _fed(call: Call, told: Feedback) -> tuple[tuple[Any, ...] | None, dict[str, Any] | None]:
    """The call's arguments with the one exchange added: to ``messages``, else to ``input``; else unchanged."""
    answer = {"role": "assistant", "content": told.answer or "(an empty answer)"}
    ask = {"role": "user", "content": told.message}
    for name in ("messages", "input"):
        given = call.param(name)
        if isinstance(given, (list, tuple)):
            return _replace(call, name, [*given, answer, ask])
        if name == "input" and isinstance(given, str):
            return _replace(call, name, [{"role": "user", "content": given}, answer, ask])
    return None, None


def _replace(call: Call, name: str, value: Any) -> tuple[tuple[Any, ...] | None, dict[str, Any] | None]:
    binder = call.info.binder
    if name not in call.kwargs:
        pos = (binder.positions_after if call.instance is not None else binder.positions).get(name)
        if pos is not None and pos < len(call.args):
            args = list(call.args)
            args[pos] = value
            return tuple(args), None
    return None, {**call.kwargs, name: value}


def _output_checks(given: object) -> tuple[Callable[[Any], Any], ...]:
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or not all(callable(c) for c in given):
        msg = f"validate(output=...) must be a sequence of callables taking the validated value, got {given!r}"
        raise TypeError(msg)
    return tuple(given)


class Validator(ValidateGuard[T]):
    """`validate`'s decorator: its static type turns the function's return type into the model's."""

    @overload  # type: ignore[override] # returns the model's type, not the function's, on purpose
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, Any]]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate *fn*: it returns the validated value."""
        return super().__call__(fn)


@overload
def validate(
    model: Callable[..., T],
    *,
    reask: int = 2,
    input: Sequence[str | Callable[[str], Any]] = (),
    output: Sequence[Callable[[Any], Any]] = (),
    max_input_chars: int | None = None,
    max_input_tokens: int | None = None,
    feed: bool = True,
) -> Validator[T]: ...
@overload
def validate(
    model: type[T],
    *,
    reask: int = 2,
    input: Sequence[str | Callable[[str], Any]] = (),
    output: Sequence[Callable[[Any], Any]] = (),
    max_input_chars: int | None = None,
    max_input_tokens: int | None = None,
    feed: bool = True,
) -> Validator[T]: ...
@overload
def validate(
    model: Any,
    *,
    reask: int = 2,
    input: Sequence[str | Callable[[str], Any]] = (),
    output: Sequence[Callable[[Any], Any]] = (),
    max_input_chars: int | None = None,
    max_input_tokens: int | None = None,
    feed: bool = True,
) -> Validator[Any]: ...
def validate(
    model: Any,
    *,
    reask: int = 2,
    input: Sequence[str | Callable[[str], Any]] = (),  # noqa: A002 - the public name
    output: Sequence[Callable[[Any], Any]] = (),
    max_input_chars: int | None = None,
    max_input_tokens: int | None = None,
    feed: bool = True,
) -> Validator[Any]:
    """Make the function return its answer validated as *model*, re-asking up to *reask* times.

    *model*: a pydantic ``BaseModel``, anything ``TypeAdapter`` takes
    (``list[Item]``, ``Literal["a", "b"]``, a ``TypedDict``), or a callable
    ``raw -> value`` raising on bad output (``raw`` is the answer's text, or
    the tool's arguments / the SDK-parsed object; a ``context`` parameter
    gets ``{"attempt", "reask", "remaining"}``, as pydantic validators do in
    ``info.context``). *reask*: how many times to ask again (0: never).
    *input*: checks before anything is sent: ``"injection"`` (phrases of
    prompt injection, a heuristic), ``"invisible"`` (invisible Unicode), or
    callables ``text -> None | False | reason`` (raising refuses too);
    *max_input_chars* / *max_input_tokens*: limits on the input (tokens
    estimated). *output*: callables of the validated value refusing it the
    same way (a refusal is re-asked). *feed*: add the re-ask's exchange to a
    ``messages`` / ``input`` argument (else only `feedback` has it).

    Raises `lg.InputRejected` (nothing sent) and `lg.ValidationFailed`
    (after ``1 + reask`` answers); errors of the function itself propagate.
    """
    return Validator(
        model,
        reask=reask,
        input=input,
        output=output,
        max_input_chars=max_input_chars,
        max_input_tokens=max_input_tokens,
        feed=feed,
    )
