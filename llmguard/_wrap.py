"""Where guards imported the core's names from before `llmguard._runner`; going away (#13).

The facts of attempts are in `llmguard._facts`, guarded streams in
`llmguard._stream`, the protocol and the runner in `llmguard._runner`.
"""

from __future__ import annotations

from typing import Any

from ._facts import (
    _CURRENT,
    _OK,
    ASYNC,
    ASYNCGEN,
    GEN,
    SYNC,
    FinishHook,
    _apply_notes,
    _begin_attempt,
    _end_record,
    _end_record_hook,
    _fail_attempt,
    _price,
    _report_on,
    _settle_attempt,
    error_kind_of,
    outcome_of,
    release_frames,
    report_usage,
    shape_of,
)
from ._runner import (
    Call,
    Guard,
    Layer,
    _FunctionInfo,
    _request_model,
    _requests_stream,
    current_call,
    layer_of,
    layers_of,
    wrap,
)
from ._stream import (
    _PLAIN_TYPES,
    _STREAM_TYPES,
    _UNSEEN,
    AsyncGuardedStream,
    ErrorMap,
    GuardedStream,
    _inner_of,
    _StreamBase,
    stream_kind,
)


# Compatibility while the guards' lanes are deleted (nothing calls a lane any more).
class Lane(tuple):  # type: ignore[type-arg]  # noqa: SLOT001
    """Gone: guards have one path (`_runner.Guard.run`)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Lane:  # noqa: ARG004
        return super().__new__(cls, args)


class Answer(tuple):  # type: ignore[type-arg]  # noqa: SLOT001
    """Gone with the lanes."""


GENERAL: Any = object()
_F_CALL, _F_LAYER, _F_INFO, _F_FN, _F_ARGS, _F_KWARGS, _F_STARTED, _F_TOKEN, _F_DEADLINE, _F_USAGE, _F_NOTES = range(11)


def _realize(frame: Any) -> Any:
    raise NotImplementedError


def returned_call(frame: Any, result: Any) -> Any:
    raise NotImplementedError


def with_reported(read: Any, reported: Any) -> Any:
    raise NotImplementedError


__all__ = [
    "ASYNC",
    "ASYNCGEN",
    "GEN",
    "GENERAL",
    "SYNC",
    "_CURRENT",
    "_F_ARGS",
    "_F_CALL",
    "_F_DEADLINE",
    "_F_FN",
    "_F_INFO",
    "_F_KWARGS",
    "_F_LAYER",
    "_F_NOTES",
    "_F_STARTED",
    "_F_TOKEN",
    "_F_USAGE",
    "_OK",
    "_PLAIN_TYPES",
    "_STREAM_TYPES",
    "_UNSEEN",
    "Answer",
    "AsyncGuardedStream",
    "Call",
    "ErrorMap",
    "FinishHook",
    "Guard",
    "GuardedStream",
    "Lane",
    "Layer",
    "_FunctionInfo",
    "_StreamBase",
    "_apply_notes",
    "_begin_attempt",
    "_end_record",
    "_end_record_hook",
    "_fail_attempt",
    "_inner_of",
    "_price",
    "_realize",
    "_report_on",
    "_request_model",
    "_requests_stream",
    "_settle_attempt",
    "current_call",
    "error_kind_of",
    "layer_of",
    "layers_of",
    "outcome_of",
    "release_frames",
    "report_usage",
    "returned_call",
    "shape_of",
    "stream_kind",
    "with_reported",
    "wrap",
]
