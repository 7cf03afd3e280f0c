"""Semantic mode for `llmguard.cache`: a paraphrase of a cached question hits.

Semantic caches are known to serve wrong answers: GPTCache keyed only the
last message (#526) and matched a question with its exact reversal at its
0.8 default (#694); LiteLLM's matched unrelated queries (#12234). So here:

* Only entries whose request is *exactly* the same apart from the last user
  message are candidates: same function, model, parameters, system prompt,
  tools and earlier turns (they share a *namespace*, the canonical hash of
  the request with that one message blanked out).
* The last user message's embedding decides, by cosine similarity against
  the candidates, with a strict default threshold (0.95), and an optional
  ``verify(new_text, cached_text)`` hook gets the last word.
* The score goes on the call record (``record.cache_similarity``) and the
  span, hit or miss, so the threshold can be tuned from real traffic.

Vectors are normalised once when stored; a lookup is one matrix-vector
product with numpy when it is installed, plain Python otherwise.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from . import _check


if TYPE_CHECKING:
    from .stores.cache import Candidate


__all__ = ["Query", "Semantic"]

# Arguments that usually carry the user's message, in the order tried when
# `Semantic(param=...)` is not given.
_TEXT_PARAMS: Final = ("messages", "prompt", "input", "contents", "question", "query", "q", "text")
_BLANK: Final = "\x00llmguard.semantic"

Vector = Sequence[float]


@dataclass(frozen=True)
class Semantic:
    """Semantic matching for `llmguard.cache` (off unless passed as ``semantic=``).

    *embed* turns a text into a vector (a list, tuple or numpy array of
    floats; sync, or async for async functions). *threshold* is the cosine
    similarity at or above which a candidate answers (0 < threshold <= 1).
    *param* names the argument holding the user's message: a chat
    ``messages`` list (its last ``"user"`` message is embedded) or a string;
    by default the first of ``messages``, ``prompt``, ``input``, ``contents``,
    ``question``, ``query``, ``q``, ``text`` the function has. *verify*,
    if given, is asked ``verify(new_text, cached_text)`` before a candidate
    is served and can refuse it; it must be synchronous (an async one is a
    `TypeError`, as it would never be awaited).
    """

    embed: Callable[[str], Any]
    threshold: float = 0.95
    param: str | None = None
    verify: Callable[[str, str], bool] | None = None
    is_async: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        embed: object = self.embed
        if not callable(embed):
            msg = f"Semantic(embed=...) must be a callable text -> vector, got {self.embed!r}"
            raise TypeError(msg)
        _check.number("Semantic", "threshold", self.threshold, maximum=1)
        if self.param is not None and (not isinstance(self.param, str) or not self.param):
            msg = f"Semantic(param=...) must be an argument name, got {self.param!r}"
            raise ValueError(msg)
        verify: object = self.verify
        if verify is not None and not callable(verify):
            msg = f"Semantic(verify=...) must be a callable (new_text, cached_text) -> bool, got {self.verify!r}"
            raise TypeError(msg)
        if verify is not None and _is_async_callable(verify):
            # It would be called without await: its coroutine is truthy, so
            # every candidate would pass.
            msg = (
                f"Semantic(verify=...) must be a plain (sync) callable (new_text, cached_text) -> bool, "
                f"got the async {self.verify!r}; do the check synchronously"
            )
            raise TypeError(msg)
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.embed))

    def param_for(self, fn: Callable[..., Any], names: Sequence[str], has_var_kw: bool) -> str:
        """The argument of *fn* that holds the user's message (decoration time)."""
        label = getattr(fn, "__qualname__", repr(fn))
        if self.param is not None:
            if self.param not in names and not has_var_kw:
                msg = f"cache(semantic=Semantic(param={self.param!r})): {label}() has no parameter {self.param!r}"
                raise ValueError(msg)
            return self.param
        for name in _TEXT_PARAMS:
            if name in names:
                return name
        msg = (
            f"cache(semantic=...) cannot tell which argument of {label}({', '.join(names)}) "
            f"is the user's message; pass Semantic(param='<name>')"
        )
        raise ValueError(msg)

    async def aembed(self, text: str) -> Any:
        """`embed` from an event loop: awaited if async, else in a worker thread (it is CPU work)."""
        if self.is_async:
            return await self.embed(text)
        return await asyncio.to_thread(self.embed, text)

    def matches(self, query: Query, candidates: list[Candidate]) -> list[tuple[Candidate, float]]:
        """The candidates that may answer *query*, best first (at or above the threshold, verified).

        Notes the best score on *query* (``record.cache_similarity`` of a miss).
        """
        ranked = rank(query.vector, [c.vector for c in candidates])
        if ranked:
            query.best = ranked[0][1]
        out = []
        for i, score in ranked:
            if score < self.threshold:
                break
            candidate = candidates[i]
            if self.verify is not None and not self.verify(query.text, candidate.text):
                continue
            out.append((candidate, score))
        return out


class Query:
    """The semantic side of one miss: where to look, and what was asked."""

    __slots__ = ("best", "namespace", "text", "vector")

    def __init__(self, namespace: str, text: str, vector: tuple[float, ...]) -> None:
        self.namespace = namespace  # the hash of the request but its last user message
        self.text = text  # that message
        self.vector = vector  # its embedding, unit length
        self.best: float | None = None  # the best candidate's score, once ranked


def _is_async_callable(fn: object) -> bool:
    """Whether calling *fn* returns an awaitable it means: a coroutine function or async ``__call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = inspect.getattr_static(type(fn), "__call__", None)
    return call is not None and inspect.iscoroutinefunction(call)


def split(bound: dict[str, Any], param: str) -> tuple[str, dict[str, Any]] | None:
    """The user's last message and the request with it blanked out.

    *bound* is the canonical (normalised) request. None when there is no
    user message to compare (the call is then cached exactly only).
    """
    value = bound.get(param)
    if isinstance(value, str):
        return value, {**bound, param: _BLANK}
    if not isinstance(value, list):
        return None
    for i in range(len(value) - 1, -1, -1):
        msg = value[i]
        if isinstance(msg, dict) and msg.get("role") == "user":
            text = _text_of(msg.get("content"))
            if text is None:
                return None
            blanked = list(value)
            blanked[i] = {**msg, "content": _BLANK}
            return text, {**bound, param: blanked}
    return None


def _text_of(content: Any) -> str | None:
    """The text of a message's content: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, str):
                parts.append(block)
            else:
                return None  # an image or a tool result: not comparable by text
        return "\n".join(parts)
    return None


# -- vectors -----------------------------------------------------------------

_np: Any
try:  # numpy is optional: a matrix-vector product when present
    _np = importlib.import_module("numpy")
except ImportError:  # pragma: no cover - depends on the install
    _np = None


def unit(vector: Any) -> tuple[float, ...]:
    """*vector* scaled to length 1, as a tuple of floats (ValueError if empty or zero)."""
    if _np is not None:
        arr = _np.asarray(vector, dtype=_np.float64).ravel()
        norm = float(_np.linalg.norm(arr))
        if arr.size == 0 or not math.isfinite(norm) or norm == 0.0:
            msg = "the embedder returned an empty, zero or non-finite vector"
            raise ValueError(msg)
        return tuple((arr / norm).tolist())
    values = [float(x) for x in vector]
    norm = math.sqrt(math.fsum(x * x for x in values))
    if not values or not math.isfinite(norm) or norm == 0.0:
        msg = "the embedder returned an empty, zero or non-finite vector"
        raise ValueError(msg)
    return tuple(x / norm for x in values)


def rank(query: tuple[float, ...], vectors: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
    """``(index, cosine similarity)`` of every vector, the closest first.

    All vectors are unit length, so cosine similarity is the dot product.
    Vectors of another dimension (a changed embedder) are left out.
    """
    dim = len(query)
    usable = [i for i, v in enumerate(vectors) if len(v) == dim]
    if not usable:
        return []
    if _np is not None:
        matrix = _np.asarray([vectors[i] for i in usable], dtype=_np.float64)
        scores = (matrix @ _np.asarray(query, dtype=_np.float64)).tolist()
    else:
        scores = [math.fsum(a * b for a, b in zip(query, vectors[i], strict=True)) for i in usable]
    return sorted(zip(usable, scores, strict=True), key=lambda pair: -pair[1])
