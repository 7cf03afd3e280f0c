"""What `route` reads of a request, its rules, and its default scorer (`RouteScorer`).

Kept apart from the guard (`llmguard._route`), which decides with them; see
its module docs and docs/route.md for the signals, thresholds and rules.
"""

from __future__ import annotations

import itertools
import math
import re

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from . import _check, _estimate


if TYPE_CHECKING:
    from ._call import Call


# Content-block types that carry an image: Anthropic, OpenAI chat, OpenAI responses.
_IMAGE_TYPES: Final = frozenset({"image", "image_url", "input_image"})
# What the scorer reads of a long text: its head and its tail (a question often ends a pasted document).
_SCAN_HEAD: Final = 2048
_SCAN_TAIL: Final = 2048
# Default score boundaries by the number of tiers (LiteLLM's complexity router's for four).
_DEFAULT_THRESHOLDS: Final[dict[int, tuple[float, ...]]] = {
    1: (),
    2: (0.15,),
    3: (0.15, 0.35),
    4: (0.15, 0.35, 0.60),
}


# -- what a rule, a classifier and the scorer see ---------------------------------


class RouteRequest:
    """The request as routing sees it, built once per call before the model is chosen.

    ``text`` is the text of the last user message (or of the prompt: the
    ``prompt`` / ``input`` / ``contents`` argument, else the call's string
    arguments); ``input_tokens`` llmguard's one best-guess estimate of the
    whole input (`Call.estimated_input_tokens`); ``tools`` / ``images``
    whether the request carries tool definitions / an image block; ``model``
    the model the caller asked for. ``arguments()`` gives every argument by
    name (defaults applied), for a classifier that needs more.
    """

    __slots__ = ("_call", "_size", "images", "input_tokens", "model", "text", "tools")

    def __init__(
        self, text: str, *, input_tokens: int | None = None, tools: bool = False, images: bool = False, model: str | None = None
    ) -> None:
        """A request of *text* alone (a sample for `RouteScorer.calibrate`, a test of your classifier).

        *input_tokens* defaults to llmguard's estimate of the text.
        """
        self._call: Call | None = None
        self.text = text
        self._size = size = _estimate.size(text)
        self.input_tokens = _estimate.tokens(size) if input_tokens is None else input_tokens
        self.tools = tools
        self.images = images
        self.model = model

    @classmethod
    def of(cls, call: Call, param: str = "model") -> RouteRequest:
        """The request of a guarded *call* (what `route` builds before each call)."""
        self = object.__new__(cls)
        self._call = call
        self.text, self.images = _text_and_images(call, param)
        tools = call.param("tools")
        self.tools = bool(tools) and tools is not None
        self._size = size = call.estimated_input_size()  # read once: the scorer's tokens and the window check's
        self.input_tokens = _estimate.tokens(size)
        model = call.param(param)
        self.model = model if isinstance(model, str) else None
        return self

    def arguments(self) -> dict[str, Any]:
        """Every argument of the call by name, defaults applied (the instance left out); ``{}`` for a bare text."""
        return {} if self._call is None else self._call.arguments()

    def __repr__(self) -> str:
        return (
            f"RouteRequest(text={self.text[:40]!r}, input_tokens={self.input_tokens}, "
            f"tools={self.tools}, images={self.images}, model={self.model!r})"
        )


def _text_and_images(call: Call, param: str) -> tuple[str, bool]:
    """The text the scorer reads and whether any image is attached."""
    messages = call.param("messages")
    if isinstance(messages, list):
        return _from_messages(messages)
    for name in ("input", "contents", "prompt"):
        value = call.param(name)
        if isinstance(value, str):
            return value, False
        if isinstance(value, list):
            return _from_messages(value)
    # No input argument by the SDKs' names: the call's own string arguments (ask(question)).
    skip = call.param(param)
    texts = [a for a in call.args if isinstance(a, str) and a is not skip]
    texts.extend(v for k, v in call.kwargs.items() if isinstance(v, str) and k not in (param, "model"))
    return " ".join(texts), False


def _from_messages(messages: list[Any]) -> tuple[str, bool]:
    images = False
    text = ""
    for message in messages:
        if isinstance(message, str):
            text = message
            continue
        role, content = _field(message, "role"), _field(message, "content")
        if content is None:
            content = _field(message, "parts")  # google-genai's Content
        if content is None:
            content = [message]  # a bare part or block (google-genai's contents=[part, "text"])
        if isinstance(content, str):
            if role in (None, "user"):
                text = content
            continue
        if isinstance(content, list):
            parts = []
            for block in content:
                if isinstance(block, str):
                    parts.append(block)
                    continue
                kind = _field(block, "type")
                if kind in _IMAGE_TYPES or _is_inline_image(block):
                    images = True
                elif isinstance(t := _field(block, "text"), str):
                    parts.append(t)
            if role in (None, "user") and parts:
                text = " ".join(parts)
    return text, images


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _is_inline_image(block: Any) -> bool:
    """A google-genai part holding image bytes (``inline_data`` with an ``image/*`` type)."""
    data = _field(block, "inline_data")
    mime = _field(data, "mime_type") if data is not None else None
    return isinstance(mime, str) and mime.startswith("image/")


# -- the rules ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One rule: when every condition given holds, the request goes to *tier*.

    ``keywords``: any of them in the text (case-insensitive, whole words);
    ``min_input_tokens`` / ``max_input_tokens``: bounds on the estimated
    input tokens; ``tools`` / ``images``: the request has (True) or has no
    (False) tool definitions / images. A rule with no condition always
    matches (a catch-all).
    """

    tier: str
    keywords: Sequence[str] = ()
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None
    tools: bool | None = None
    images: bool | None = None
    _matcher: _Matcher | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.keywords, str):
            msg = f"RouteRule(keywords=...) must be a list of words, not one string: {self.keywords!r}"
            raise TypeError(msg)
        for name in ("min_input_tokens", "max_input_tokens"):
            _check.number("RouteRule", name, getattr(self, name), integer=True, exclusive=False, optional=True)
        for name in ("tools", "images"):
            if getattr(self, name) not in (None, True, False):
                msg = f"RouteRule({name}=...) must be True, False or None, got {getattr(self, name)!r}"
                raise TypeError(msg)
        words = tuple(self.keywords)
        if not all(isinstance(w, str) and w.strip() for w in words):
            msg = f"RouteRule(keywords=...) must be non-empty strings, got {words!r}"
            raise TypeError(msg)
        object.__setattr__(self, "keywords", words)
        if words:
            object.__setattr__(self, "_matcher", _Matcher({"rule": words}))

    def matches(self, request: RouteRequest) -> bool:
        """Whether every condition of the rule holds for *request*."""
        if self.tools is not None and request.tools != self.tools:
            return False
        if self.images is not None and request.images != self.images:
            return False
        if self.min_input_tokens is not None and request.input_tokens < self.min_input_tokens:
            return False
        if self.max_input_tokens is not None and request.input_tokens > self.max_input_tokens:
            return False
        return self._matcher is None or bool(self._matcher.hits(_scanned(request.text)))

    def describe(self) -> str:
        """The rule's conditions, for the decision's reason."""
        parts = []
        if self.keywords:
            parts.append(f"keywords={list(self.keywords)}")
        if self.min_input_tokens is not None:
            parts.append(f"input_tokens>={self.min_input_tokens}")
        if self.max_input_tokens is not None:
            parts.append(f"input_tokens<={self.max_input_tokens}")
        if self.tools is not None:
            parts.append(f"tools={self.tools}")
        if self.images is not None:
            parts.append(f"images={self.images}")
        return ", ".join(parts) or "always"


_WORD = re.compile(r"[^\s!\"#$%&()*+,./:;<=>?@\[\\\]^`{|}~]+")  # a word as `_SPLIT` leaves it: kept whole
# Punctuation (but - ' _, which join words: trade-off, don't, snake_case) to spaces,
# then str.split(): both C loops, five times faster than a regex's findall.
_SPLIT = str.maketrans(dict.fromkeys('!"#$%&()*+,./:;<=>?@[\\]^`{|}~', " "))


class _Matcher:
    """Counts the keywords of each signal in a text, in time linear in the text (not in the keywords).

    One regular expression alternating every keyword costs a try of each at
    every position (about 1 ms for 4 kB and a hundred words). Instead the
    text is split into words once (`str.translate`, `str.split`), the keywords
    present are one set intersection, and only those are counted (all C
    loops); a keyword that is not one word (``step by step``, a code fence)
    is a substring count.
    """

    __slots__ = ("keywords", "phrases", "signal_of")

    def __init__(self, keywords: Mapping[str, Iterable[str]]) -> None:
        self.signal_of: dict[str, list[str]] = {}  # single-word keyword -> the signals it counts for
        self.phrases: dict[str, list[str]] = {}  # signal -> its other keywords
        for signal, words in keywords.items():
            for word in words:
                w = word.strip().lower()
                if _WORD.fullmatch(w):
                    self.signal_of.setdefault(w, []).append(signal)
                else:
                    self.phrases.setdefault(signal, []).append(w)
        self.keywords = frozenset(self.signal_of)

    def hits(self, text: str) -> dict[str, int]:
        """Keyword occurrences per signal in *text* (already lowercased); signals without any left out."""
        tokens = text.translate(_SPLIT).split()
        out: dict[str, int] = {}
        signal_of = self.signal_of
        # The keywords present (a C-speed set intersection), then each one's count: few match.
        for word in self.keywords.intersection(tokens):
            n = tokens.count(word)
            for signal in signal_of[word]:
                out[signal] = out.get(signal, 0) + n
        for signal, phrases in self.phrases.items():
            n = sum(text.count(p) for p in phrases)
            if n:
                out[signal] = out.get(signal, 0) + n
        return out


def _scanned(text: str) -> str:
    """What a rule or the scorer reads of *text*: lowercased, its head and tail when long (bounded cost)."""
    if len(text) > _SCAN_HEAD + _SCAN_TAIL:
        text = text[:_SCAN_HEAD] + "\n" + text[-_SCAN_TAIL:]
    return text.lower()


# -- the default scorer -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteScore:
    """What a scorer says of a request: a *value* in [0, 1] and the signals it came from."""

    value: float
    signals: Mapping[str, float] = field(default_factory=dict)


# Each keyword signal: (weight, words). A signal's strength is 0.6 for one hit, 1 for two or more.
_SIGNALS: Final[dict[str, tuple[float, tuple[str, ...]]]] = {
    "code": (
        0.30,
        ("```", "def", "class", "import", "function", "traceback", "stack trace", "compile", "regex",
         "sql", "json", "python", "javascript", "typescript", "rust", "bug", "refactor", "unit test"),
    ),
    "reasoning": (
        0.25,
        ("step by step", "prove", "proof", "derive", "explain why", "analyze", "analyse", "compare",
         "trade-off", "tradeoff", "trade-offs", "evaluate", "justify", "critique", "design", "plan",
         "optimize", "optimise", "reason", "why does", "how would"),
    ),
    "technical": (
        0.25,
        ("algorithm", "architecture", "distributed", "concurrency", "database", "kubernetes", "latency",
         "throughput", "complexity", "theorem", "equation", "integral", "matrix", "protocol",
         "encryption", "compiler", "kernel", "schema", "api", "consistency", "scalability"),
    ),
    "multistep": (0.03, ("first", "then", "finally", "next", "afterwards", "step 1")),
    "simple": (
        -0.05,
        ("hi", "hello", "thanks", "thank you", "what is", "who is", "when did", "define", "translate",
         "spell", "capital of", "yes or no", "summarize", "summarise", "tl;dr"),
    ),
}
_ONE_HIT: Final = 0.6  # a keyword signal's strength for one hit; two or more: 1
_LENGTH_WEIGHT: Final = 0.10
_TOOLS_WEIGHT: Final = 0.10
_QUESTIONS_WEIGHT: Final = 0.02


class RouteScorer:
    """The default rule scorer: a weighted sum of cheap signals of the request, in [0, 1].

    Signals (each a strength in [0, 1] times its weight; docs/route.md has
    the word lists):

    ========== ======= ===============================================================
    signal     weight  strength
    ========== ======= ===============================================================
    length     0.10    estimated input tokens, 0 at ``short_tokens`` (15) or fewer,
                       1 at ``long_tokens`` (400) or more, linear between
    code       0.30    code words or a code fence: 0.6 for one hit, 1 for two or more
    reasoning  0.25    "step by step", "prove", "explain why", "compare"...
    technical  0.25    "algorithm", "distributed", "database", "latency"...
    tools      0.10    the request carries tool definitions: 1
    multistep  0.03    "first", "then", "finally"...
    questions  0.02    two question marks or more: 1
    simple     -0.05   "hi", "thanks", "what is", "translate", "summarize"...
    ========== ======= ===============================================================

    The sum is clamped to [0, 1] and cut into tiers by *thresholds* (one
    fewer than the tiers, increasing): below the first, the first tier; at
    or above the last, the last. Defaults: 0.15 for two tiers, (0.15, 0.35)
    for three, (0.15, 0.35, 0.60) for four (LiteLLM's complexity router's).
    Words are whole words, case-insensitive; the text read is the last user
    message, its first and last 2 KiB when longer, so the cost stays a few
    microseconds to tens of microseconds whatever the request's size.
    ``keywords={"code": [...], ...}`` adds words to a signal.
    """

    __slots__ = ("_matcher", "_weights", "keywords", "long_tokens", "short_tokens", "thresholds")

    def __init__(
        self,
        *,
        thresholds: Sequence[float] | None = None,
        keywords: Mapping[str, Iterable[str]] | None = None,
        short_tokens: int = 15,
        long_tokens: int = 400,
    ) -> None:
        _check.number("RouteScorer", "short_tokens", short_tokens, integer=True, exclusive=False)
        _check.number("RouteScorer", "long_tokens", long_tokens, integer=True, minimum=short_tokens)
        self.short_tokens = short_tokens
        self.long_tokens = long_tokens
        self.thresholds = None if thresholds is None else _thresholds("RouteScorer", thresholds)
        words = {name: list(w) for name, (_, w) in _SIGNALS.items()}
        for name, extra in (keywords or {}).items():
            if name not in words:
                msg = f"RouteScorer(keywords=...) names unknown signal {name!r}; signals: {sorted(words)}"
                raise ValueError(msg)
            if isinstance(extra, str):
                msg = f"RouteScorer(keywords={{{name!r}: ...}}) must be a list of words, not one string"
                raise TypeError(msg)
            words[name].extend(extra)
        self.keywords = {name: tuple(w) for name, w in words.items()}
        self._weights = {name: weight for name, (weight, _) in _SIGNALS.items()}
        self._matcher = _Matcher(self.keywords)

    def __call__(self, request: RouteRequest) -> RouteScore:
        """Score *request* (see the class docs)."""
        text = _scanned(request.text)
        hits = self._matcher.hits(text)
        signals: dict[str, float] = {}
        span = self.long_tokens - self.short_tokens
        length = (request.input_tokens - self.short_tokens) / span if span else float(request.input_tokens > self.short_tokens)
        length = min(1.0, max(0.0, length))
        if length:
            signals["length"] = length
        score = _LENGTH_WEIGHT * length
        weights = self._weights
        for name, count in hits.items():
            strength = 1.0 if count > 1 else _ONE_HIT
            signals[name] = strength
            score += weights[name] * strength
        if request.tools:
            signals["tools"] = 1.0
            score += _TOOLS_WEIGHT
        if text.count("?") >= 2:  # two questions or more
            signals["questions"] = 1.0
            score += _QUESTIONS_WEIGHT
        return RouteScore(min(1.0, max(0.0, round(score, 6))), signals)

    def calibrate(self, samples: Iterable[str | RouteRequest], shares: Sequence[float]) -> tuple[float, ...]:
        """The thresholds that split *samples* into tiers in the proportions *shares* (cheapest first).

        RouteLLM's lesson: what share of your traffic goes to the strong
        model is the setting that matters, and it depends on your traffic.
        ``route(tiers, thresholds=scorer.calibrate(last_week, [0.75, 0.25]))``
        sends about a quarter of requests like *samples* to the second tier.
        *samples* are texts or `RouteRequest` objects; *shares* one per tier, summing
        to 1. Requests scoring the same at a cut all go up (escalate), so a
        share can come out higher than asked on ties.
        """
        requests = [s if isinstance(s, RouteRequest) else RouteRequest(s) for s in samples]
        if not requests:
            msg = "RouteScorer.calibrate(samples=...) needs at least one sample"
            raise ValueError(msg)
        if isinstance(shares, (str, bytes)) or not isinstance(shares, Sequence) or len(shares) < 2:  # two tiers at least
            msg = f"RouteScorer.calibrate(shares=...) must give one share per tier, two tiers or more, got {shares!r}"
            raise ValueError(msg)
        checked = [float(_check.number("RouteScorer.calibrate", "shares", v, exclusive=False, maximum=1)) for v in shares]
        if not math.isclose(sum(checked), 1.0, abs_tol=1e-6):
            msg = f"RouteScorer.calibrate(shares=...) must sum to 1, got {sum(checked):g}"
            raise ValueError(msg)
        scores = sorted(self(r).value for r in requests)
        n = len(scores)
        cuts: list[float] = []
        below = 0.0
        for share in checked[:-1]:
            below += share
            i = round(below * n)  # the first sample (by score) to go up
            cut = scores[i] if i < n else 1.0
            floor = cuts[-1] + 1e-6 if cuts else 1e-6  # thresholds are > 0 and increase
            cuts.append(round(min(1.0, max(cut, floor)), 6))
        return _thresholds("RouteScorer.calibrate", cuts)


def _thresholds(guard: str, values: Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        msg = f"{guard}(thresholds=...) must be a sequence of numbers, got {values!r}"
        raise TypeError(msg)
    out = tuple(float(_check.number(guard, "thresholds", v, maximum=1)) for v in values)
    if any(b <= a for a, b in itertools.pairwise(out)):
        msg = f"{guard}(thresholds=...) must increase, got {list(values)!r}"
        raise ValueError(msg)
    return out
