"""Guarded streams: what a stream result is passed through, chunk by chunk.

A stream is whatever the guarded code hands back to be iterated: a
generator, an anthropic or openai ``Stream``/``AsyncStream``, or a stream
manager (``client.messages.stream(...)``). It is wrapped lazily (each chunk
passes through as it arrives, nothing is buffered), and every guarded
stream has **one idempotent finish hook** that runs exactly once whichever
way the stream ends: exhaustion, an exception, ``close()``/``aclose()``,
``__exit__``, ``GeneratorExit``, task cancellation, or garbage collection as
a last resort. Guards register callbacks with `GuardedStream.on_finish`
(and ``on_chunk``, ``map_errors``) in their ``leave`` hook.

The innermost guarded stream of an attempt feeds a
`providers.StreamAccumulator` and settles the attempt when it ends (text,
usage, model, finish reasons; estimated, never zero, if it ended early).
"""

from __future__ import annotations

import inspect
import threading

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from . import _clock, _estimate, providers
from ._facts import _CURRENT, _OK, FinishHook, _price, error_kind_of, outcome_of
from ._record import Attempt, CallRecord, Outcome, Usage
from ._warn import warn
from .errors import StreamFailed


if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._call import Call


ErrorMap = Callable[["BaseException", "_StreamBase"], "BaseException | None"]


# Finishing flips one flag; a stream may be ended from two threads at once
# (a timeout closing it while a worker is still reading), so the flip is locked.
_FINISH_LOCK = threading.Lock()

# What `stream_kind` found each result type to be (None: not a stream).
_STREAM_TYPES: dict[type, str | None] = {}
# Types seen and known to be whole results (not streams, not guarded streams).
_PLAIN_TYPES: set[type] = set()
_UNSEEN = "unseen"

# (module, class name, kind) of the SDKs' stream objects, resolved lazily so
# that no SDK is imported unless the user's code already returned one of its
# objects.
_SDK_STREAMS = (
    ("anthropic", "Stream", "sync"),
    ("anthropic", "AsyncStream", "async"),
    ("anthropic.lib.streaming", "MessageStreamManager", "manager"),
    ("anthropic.lib.streaming", "AsyncMessageStreamManager", "async manager"),
    ("anthropic.lib.streaming", "MessageStream", "sync"),
    ("anthropic.lib.streaming", "AsyncMessageStream", "async"),
    ("openai", "Stream", "sync"),
    ("openai", "AsyncStream", "async"),
    ("openai.lib.streaming.chat", "ChatCompletionStreamManager", "manager"),
    ("openai.lib.streaming.chat", "AsyncChatCompletionStreamManager", "async manager"),
    ("openai.lib.streaming.responses", "ResponseStreamManager", "manager"),
    ("openai.lib.streaming.responses", "AsyncResponseStreamManager", "async manager"),
)


def stream_kind(result: object) -> str | None:
    """``"sync"``, ``"async"``, ``"manager"``, ``"async manager"`` for a stream, else None."""
    tp = type(result)
    try:
        return _STREAM_TYPES[tp]
    except KeyError:
        pass
    kind: str | None = None
    if isinstance(result, (GuardedStream, AsyncGuardedStream)):
        kind = None  # already guarded; never wrap twice
    elif inspect.isgenerator(result):
        kind = "sync"
    elif inspect.isasyncgen(result):
        kind = "async"
    else:
        module = tp.__module__.partition(".")[0]
        if module in ("anthropic", "openai"):
            import importlib  # noqa: PLC0415 - only once the SDK is in use

            for mod, cls_name, k in _SDK_STREAMS:
                if not mod.startswith(module):
                    continue
                try:
                    cls = getattr(importlib.import_module(mod), cls_name)
                except (ImportError, AttributeError):
                    continue
                if isinstance(result, cls):
                    kind = k
                    break
    _STREAM_TYPES[tp] = kind
    if kind is None and not isinstance(result, _StreamBase):
        _PLAIN_TYPES.add(tp)
    return kind


# -- streams -----------------------------------------------------------------


def _sent_body_tokens(source: object) -> int:
    """A token estimate of the request body an SDK stream was sent with (0 if none can be read)."""
    try:
        body = source.response.request.content  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not an SDK stream, or a body that cannot be read
        return 0
    if not isinstance(body, (bytes, bytearray)):
        return 0
    return _estimate.tokens(len(body))  # the body is UTF-8 JSON: its length is the count


def _inner_of(source: object) -> _StreamBase | None:
    """The guarded stream *source* is, or reads from (an adapter's ``inner_stream``)."""
    if isinstance(source, _StreamBase):
        return source
    inner = getattr(type(source), "inner_stream", None)
    if inner is not None:
        found = getattr(source, "inner_stream", None)
        return found if isinstance(found, _StreamBase) else None
    return None


class _StreamBase:
    """What sync and async guarded streams share: state and the finish hook.

    A layer that reads a guarded stream through an adapter of its own (as
    `timeout` does, to bound each pull) gives the adapter an ``inner_stream``
    property, so text, usage and finishing still reach the innermost stream.
    """

    __slots__ = (
        "__weakref__",
        "_acc",
        "_attempt",
        "_buffer",
        "_call",
        "_chunk_hooks",
        "_error_maps",
        "_finish_hooks",
        "_finished",
        "_is_managed",
        "_it",
        "_manager",
        "_record",
        "_source",
        "_start",
        "delivered",
        "outcome",
    )

    def __init__(
        self,
        *,
        source: Any = None,
        start: Callable[[], Any] | None = None,
        manager: Any = None,
        record: CallRecord,
        attempt: Attempt | None = None,
        call: Call | None = None,
    ) -> None:
        self._source = source  # the iterable (SDK stream, generator, guarded stream)
        self._start = start  # lazily produces the source (layers not run yet)
        self._manager = manager  # an SDK stream manager, entered on first use
        self._is_managed = manager is not None
        self._record = record
        self._attempt = attempt  # set on the innermost stream only
        self._call = call
        self._acc = providers.StreamAccumulator() if attempt is not None else None
        self._it: Any = None
        self._buffer: deque[Any] = deque()
        self._chunk_hooks: list[Callable[[Any], None]] = []
        self._error_maps: list[ErrorMap] = []
        self._finish_hooks: list[FinishHook] = []
        self._finished = False
        self.delivered = 0  # chunks handed to the caller
        self.outcome: Outcome = Outcome.PENDING

    @property
    def record(self) -> CallRecord:
        """The call record of the call that produced this stream."""
        return self._record

    @property
    def finished(self) -> bool:
        """Whether the stream has ended (and its finish hooks have run)."""
        return self._finished

    @property
    def text(self) -> str:
        """The text seen so far (from the innermost stream's accumulator)."""
        inner = self._innermost()
        return inner._acc.text if inner._acc is not None else ""

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far (None until the provider says)."""
        inner = self._innermost()
        return inner._acc.usage if inner._acc is not None else None

    def usage_so_far(self) -> Usage | None:
        """The usage as the attempt will record it if the stream ends now.

        What the provider reported if the stream had completed; else the input
        it confirmed and the larger of the output it reported and an estimate
        from the text seen, flagged estimated (never zero for output seen).
        """
        inner = self._innermost()
        if inner._acc is None:
            return None
        return inner._usage_for(Outcome.ERROR, inner._acc)

    def _innermost(self) -> _StreamBase:
        node: _StreamBase = self
        while (inner := _inner_of(node._source)) is not None:
            node = inner
        return node

    def on_chunk(self, hook: Callable[[Any], None]) -> None:
        """Call *hook(chunk)* for each chunk as it passes to the caller.

        Chunks already fetched but not yet handed over (a layer below called
        `prime`) are given to *hook* now, so it sees every chunk once.
        """
        for chunk in self._buffer:
            hook(chunk)
        self._chunk_hooks.append(hook)

    def map_errors(self, mapper: ErrorMap) -> None:
        """Let *mapper(exc, stream)* replace an error raised to the reader.

        If it returns an exception, that is raised instead (``from`` the
        original); None keeps the original. The finish hooks (and so the
        record, the span, the ledgers) see the original error. The runner uses
        it to turn a failure after the first chunk into `StreamInterrupted`.
        """
        self._error_maps.append(mapper)

    def _mapped(self, exc: BaseException) -> BaseException:
        for mapper in self._error_maps:
            replacement = mapper(exc, self)
            if replacement is not None:
                replacement.__cause__ = exc
                return replacement
        return exc

    def on_finish(self, hook: FinishHook) -> None:
        """Call *hook(outcome, exc)* once, when the stream ends in any way.

        If it has already ended, *hook* runs now.
        """
        if self._finished:
            hook(self.outcome, None)
        else:
            self._finish_hooks.append(hook)

    def _ended_outcome(self, exc: BaseException | None) -> Outcome:
        """How a stream ended early by the caller (close, with-exit) ended."""
        if exc is not None:
            return outcome_of(exc)
        inner = self._innermost()
        if inner._is_managed and inner._acc is not None and inner._source is not None:
            # Read to the end through the manager's own helpers: completed.
            inner._acc.finish_from(inner._source)
            if inner._acc.finish_reasons:
                return Outcome.OK
        return Outcome.CLOSED

    @property
    def _running(self) -> tuple[Call, Attempt] | None:
        """What `_CURRENT` holds while the innermost stream's code runs."""
        call, attempt = self._call, self._attempt
        return None if call is None or attempt is None else (call, attempt)

    def _observe_chunk(self, chunk: Any) -> None:
        attempt = self._attempt
        if attempt is not None:
            if attempt.first_chunk_at is None:
                attempt.first_chunk_at = _clock.now()
            attempt.chunks += 1
            self._acc.feed(chunk)  # type: ignore[union-attr]
        for hook in self._chunk_hooks:
            hook(chunk)

    def _ended(self) -> tuple[Outcome, BaseException | None]:
        """How a stream that ran out ended: OK, unless the provider said in it that it failed.

        What it said is on the innermost stream's accumulator (an adapter's
        guarded stream reads through to it).
        """
        stream: _StreamBase | None = self
        while stream is not None and stream._acc is None:
            stream = _inner_of(stream._source)
        failure = None if stream is None else cast("providers.StreamAccumulator", stream._acc).failure
        if failure is None:
            return _OK, None
        return Outcome.ERROR, StreamFailed(f"the provider reported a failure inside the stream: {failure}")

    def _finish(self, outcome: Outcome, exc: BaseException | None) -> None:
        """Run the finish hooks, once, innermost stream first."""
        with _FINISH_LOCK:
            if self._finished:
                return
            self._finished = True
        self.outcome = outcome
        inner = _inner_of(self._source)
        if inner is not None:
            inner._finish(outcome, exc)
        if self._attempt is not None:
            self._settle(outcome, exc)
        hooks, self._finish_hooks = self._finish_hooks, []
        for hook in hooks:
            try:
                hook(outcome, exc)
            except Exception as hook_exc:  # noqa: BLE001 - a guard's bug must not mask the stream's end
                warn(f"llmguard: a stream finish hook failed: {hook_exc!r}", RuntimeWarning)

    def _settle(self, outcome: Outcome, exc: BaseException | None) -> None:
        attempt = self._attempt
        acc = self._acc
        assert attempt is not None  # noqa: S101 - called on the innermost stream only
        assert acc is not None  # noqa: S101
        if outcome is Outcome.OK or self._is_managed:
            # A manager's stream may have been read through its own helpers
            # (``text_stream``), which we don't see: its snapshot has the facts.
            acc.finish_from(self._source)
        attempt.text = acc.text
        attempt.response_model = acc.model or attempt.response_model
        attempt.provider = acc.provider or attempt.provider
        attempt.response_id = acc.response_id or attempt.response_id
        attempt.finish_reasons = acc.finish_reasons or attempt.finish_reasons
        if attempt.usage is None:  # what the user reported wins
            attempt.usage = self._usage_for(outcome, acc)
        attempt.outcome = outcome
        if exc is not None:
            attempt.error = exc
            attempt.error_kind = error_kind_of(exc)
        attempt.ended_at = _clock.now()
        _price(attempt)

    def _usage_for(self, outcome: Outcome, acc: providers.StreamAccumulator) -> Usage | None:
        """Measured usage if the stream completed with it; else an estimate.

        Never zero for a stream that produced output: an interrupted stream
        keeps the input the provider confirmed and the larger of the output
        it reported and an estimate from the text seen, flagged estimated.
        """
        measured = acc.usage
        if outcome is Outcome.OK and measured is not None:
            return measured
        out_est = _estimate.text_tokens(acc.text)
        if measured is not None:
            return Usage(
                measured.input_tokens,
                max(measured.output_tokens, out_est),
                measured.cache_read_tokens,
                measured.cache_write_tokens,
                measured.reasoning_tokens,
                estimated=True,
            )
        if acc.chunks == 0 and outcome is not Outcome.OK:
            return None  # nothing came back; nothing to estimate from
        in_est = self._call.estimated_input_tokens() if self._call is not None else 0
        if not in_est:
            # No input in the arguments (the function builds its request
            # itself): the body the SDK sent, else the least a request is
            # billed. Something came back, so something was billed: never zero.
            in_est = max(_sent_body_tokens(self._source), 1)
        return Usage(in_est, out_est, estimated=True)

    def __getattr__(self, name: str) -> Any:
        # Everything else (``.response``, ``get_final_message()``,
        # ``text_stream``...) is the underlying SDK object's.
        if name.startswith("__"):
            raise AttributeError(name)
        source = object.__getattribute__(self, "_source")
        if source is None:
            msg = f"{type(self).__name__!r} has no attribute {name!r} before the stream starts"
            raise AttributeError(msg)
        return getattr(source, name)

    def __del__(self) -> None:
        # Last resort: the caller dropped the stream without finishing it.
        # A stream that exists (its request sent) counts even if never read;
        # a generator function's stream that never started made no call.
        try:
            if not self._finished and (
                self._it is not None or self._manager is not None or self._source is not None
            ):
                self._finish(Outcome.ABANDONED, None)
        except Exception:  # noqa: BLE001, S110 - nothing may escape __del__
            pass


class GuardedStream(_StreamBase):
    """A sync stream passed through llmguard's guards, chunk by chunk.

    Iterate it like the stream your function returned; other attributes
    (``.response``, ``get_final_message()``...) are the underlying stream's.
    ``close()`` or a ``with`` block ends it early.
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._buffer:
            self.delivered += 1
            return self._buffer.popleft()
        chunk = self._pull()
        self.delivered += 1
        return chunk

    def prime(self) -> bool:
        """Fetch the first chunk now (to see early failures); False if empty."""
        if self._buffer or self.delivered:
            return True
        try:
            self._buffer.append(self._pull())
        except StopIteration:
            return False
        return True

    def _open(self) -> Any:
        try:
            if self._start is not None:
                start, self._start = self._start, None
                self._source = start()
            if self._manager is not None:
                self._source = self._manager.__enter__()
                if self._attempt is not None:
                    self._attempt.sent = True
            source = self._source
            self._it = source if isinstance(source, _StreamBase) else iter(source)
        except BaseException as exc:
            self._finish(outcome_of(exc), exc)
            raise
        return self._it

    def _pull(self) -> Any:
        if self._finished:
            raise StopIteration
        it = self._it if self._it is not None else self._open()
        try:
            if self._attempt is not None:
                token = _CURRENT.set(self._running)
                try:
                    chunk = next(it)
                finally:
                    _CURRENT.reset(token)
            else:
                chunk = next(it)
        except StopIteration:
            self._close_manager(None)
            self._finish(*self._ended())
            raise
        except BaseException as exc:
            try:
                self._close_manager(exc)
            finally:
                self._finish(outcome_of(exc), exc)
            mapped = self._mapped(exc) if self._error_maps else exc
            if mapped is not exc:
                raise mapped from exc
            raise
        self._observe_chunk(chunk)
        return chunk

    def _close_manager(self, exc: BaseException | None) -> None:
        manager, self._manager = self._manager, None
        if manager is not None and self._source is not None:
            manager.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    def close(self) -> None:
        """Stop the stream now; the underlying stream is closed too."""
        self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        if self._finished:
            return
        try:
            if self._manager is not None:
                self._close_manager(exc)
            elif self._source is not None and (closer := getattr(self._source, "close", None)):
                closer()
        finally:
            self._finish(self._ended_outcome(exc), exc)

    def __enter__(self) -> GuardedStream:
        # Entering opens the whole chain, down to the SDK's stream manager,
        # so its attributes (get_final_text()...) work before any pull.
        node: _StreamBase | None = self
        while isinstance(node, GuardedStream):
            if node._it is None:
                node._open()
            node = _inner_of(node._source)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._end(exc_info[1] if isinstance(exc_info[1], BaseException) else None)


class AsyncGuardedStream(_StreamBase):
    """An async stream passed through llmguard's guards, chunk by chunk.

    ``async for`` over it; ``await s.aclose()`` (or ``await s.close()``, as
    the SDKs spell it) or ``async with`` ends it early.
    """

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._buffer:
            self.delivered += 1
            return self._buffer.popleft()
        chunk = await self._pull()
        self.delivered += 1
        return chunk

    async def prime(self) -> bool:
        """Fetch the first chunk now (to see early failures); False if empty."""
        if self._buffer or self.delivered:
            return True
        try:
            self._buffer.append(await self._pull())
        except StopAsyncIteration:
            return False
        return True

    async def _open(self) -> Any:
        try:
            if self._start is not None:
                start, self._start = self._start, None
                self._source = await cast("Awaitable[Any]", start())
            if self._manager is not None:
                self._source = await self._manager.__aenter__()
                if self._attempt is not None:
                    self._attempt.sent = True
            source = self._source
            self._it = source if isinstance(source, _StreamBase) else source.__aiter__()
        except BaseException as exc:
            self._finish(outcome_of(exc), exc)
            raise
        return self._it

    async def _pull(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        it = self._it if self._it is not None else await self._open()
        try:
            if self._attempt is not None:
                token = _CURRENT.set(self._running)
                try:
                    chunk = await it.__anext__()
                finally:
                    _CURRENT.reset(token)
            else:
                chunk = await it.__anext__()
        except StopAsyncIteration:
            await self._close_manager(None)
            self._finish(*self._ended())
            raise
        except BaseException as exc:
            try:
                await self._close_manager(exc)
            finally:
                self._finish(outcome_of(exc), exc)
            mapped = self._mapped(exc) if self._error_maps else exc
            if mapped is not exc:
                raise mapped from exc
            raise
        self._observe_chunk(chunk)
        return chunk

    async def _close_manager(self, exc: BaseException | None) -> None:
        manager, self._manager = self._manager, None
        if manager is not None and self._source is not None:
            await manager.__aexit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    async def aclose(self) -> None:
        """Stop the stream now; the underlying stream is closed too."""
        await self._end(None)

    close = aclose  # the SDKs' AsyncStream spells it close()

    async def _end(self, exc: BaseException | None) -> None:
        if self._finished:
            return
        try:
            if self._manager is not None:
                await self._close_manager(exc)
            elif self._source is not None:
                source = self._source
                closer = getattr(source, "aclose", None) or getattr(source, "close", None)
                if closer is not None:
                    result = closer()
                    if inspect.isawaitable(result):
                        await result
        finally:
            self._finish(self._ended_outcome(exc), exc)

    async def __aenter__(self) -> AsyncGuardedStream:
        node: _StreamBase | None = self
        while isinstance(node, AsyncGuardedStream):
            if node._it is None:
                await node._open()
            node = _inner_of(node._source)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._end(exc_info[1] if isinstance(exc_info[1], BaseException) else None)


