"""One argument binder per guarded function, compiled once when it is decorated.

Every guard reads a call's arguments through the function's `Binder`: budget's
``key=``/``estimate=`` and its argument reading, cache keys, trace
attributes, the request's model and ``stream``. Guards see the arguments the
function itself receives, split into the instance and the rest by **one
rule**:

    The first positional argument is the instance (``self``, or the class for
    a classmethod), whatever the parameter is named, when the function is a
    method of a class -- it was defined in a class body (its
    ``__qualname__`` is ``Class.name``) -- and that argument is an instance
    of that class or of a subclass (for a classmethod: that class or a
    subclass). It is then ``Call.instance`` and never one of the call's
    arguments. A ``staticmethod`` has no instance.

So ``def ask(this, q)`` in a class is a method like ``def ask(self, q)``,
called as ``obj.ask(q)`` or ``Class.ask(obj, q)``, on every call shape (the
closures of ``def``/``async def`` get the instance from Python's binding,
wrapt's generator wrappers put it back for the binder: see
`_runner._wrapper`), and so is ``def make(klass, q)`` under
``@classmethod``. A module-level function is never a method, whatever its
first parameter is called, nor is one guarded outside a class and assigned
to it later (define it in the class body). A static method has no instance: the guard is
told so when written over ``@staticmethod``; written under it, the first
argument is an argument unless it happens to be an instance of the class
(the one case the rule cannot tell apart: write the guard over
``@staticmethod``). Whether a class is the owner is worked out once per
class (for the first 64 classes seen).

Why not by the parameter's name: ``this`` and ``klass`` are methods too, and
``def handler(self, event)`` at module level is not. Why not by descriptor
binding alone: ``def``/``async def`` are guarded by plain closures (a
function, the cheapest call), which Python binds without telling them; the
class-body rule gives the same answer on every shape.
"""

from __future__ import annotations

import inspect

from collections.abc import Callable, Sequence
from typing import Any


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
# How many classes of first arguments a method's binder remembers the answer for.
_REMEMBERED = 64


def _owner_of(fn: Callable[..., Any]) -> str | None:
    """The qualified name of the class whose body defined *fn*, or None."""
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str) or "." not in qualname:
        return None
    owner = qualname.rpartition(".")[0]
    return None if owner.endswith("<locals>") else owner


class Binder:
    """What the guards need of a function's parameters, worked out once.

    ``positional`` are the positional parameter names in order (the
    instance's first for a method), ``defaults`` the defaults by name,
    ``first`` the instance's parameter name for a method (else None).
    """

    __slots__ = (
        "_classes",
        "_module",
        "_name",
        "_owned",
        "defaults",
        "first",
        "owner",
        "positional",
        "positions",
        "positions_after",
        "signature",
        "simple",
    )

    def __init__(self, fn: Callable[..., Any], *, static: bool = False) -> None:
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self.signature = None
        params = list(self.signature.parameters.values()) if self.signature else []
        self.positional = tuple(p.name for p in params if p.kind in _POSITIONAL)
        self.owner = None if static or not self.positional else _owner_of(fn)
        self._module = getattr(fn, "__module__", None)
        self._name = getattr(fn, "__name__", None)
        self.first = self.positional[0] if self.owner is not None else None
        # name -> index in the arguments as passed (instance included), and
        # in the arguments after a method's instance.
        self.positions = {name: i for i, name in enumerate(self.positional)}
        self.positions_after = {name: i - 1 for name, i in self.positions.items() if i} if self.first else self.positions
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty and p.kind is not p.VAR_KEYWORD}
        # No *args and no positional-only parameters: arguments by name are
        # the defaults, then the positionals zipped to names, then the keywords.
        self.simple = not any(p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) for p in params)
        self._owned: dict[type, bool] = {}  # type of a first argument -> is it the owner's instance
        self._classes: dict[type, bool] = {}  # a class as first argument -> is it the owner or a subclass

    # -- the instance ----------------------------------------------------------

    def split(self, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        """``(instance, the other arguments)`` of a call's positional *args* (see the module docs).

        The instance is None when there is none (a None first argument is an
        argument like any other).
        """
        if self.owner is None or not args:
            return None, args
        first = args[0]
        kind = type(first)
        owned = self._recall(self._owned, kind)
        if not owned and isinstance(first, type):  # a classmethod's class
            owned = self._recall(self._classes, first)
        return (first, args[1:]) if owned else (None, args)

    def _recall(self, seen: dict[type, bool], cls: type) -> bool:
        """Whether *cls* belongs to the owner, remembered for the first few classes seen.

        Bounded, so classes made on the fly are not kept alive by a method they were passed to.
        A class that cannot be hashed (its metaclass defines ``__eq__`` only) is worked out each time.
        """
        try:
            owned = seen.get(cls)
        except TypeError:
            return self._is_owner(cls)
        if owned is None:
            owned = self._is_owner(cls)
            if len(seen) < _REMEMBERED:
                seen[cls] = owned
        return owned

    def _is_owner(self, cls: type) -> bool:
        """Whether *cls* is the class that defined the function, or a subclass of it.

        The class is known by its qualified name, and by its module, or when
        that was rewritten (``Class.__module__ = "pkg"``, a package showing
        its public path) by holding an attribute of the function's name.
        """
        return any(
            getattr(c, "__qualname__", None) == self.owner
            and (getattr(c, "__module__", None) == self._module or self._name in getattr(c, "__dict__", ()))
            for c in cls.__mro__
        )

    def names(self, instance: Any) -> tuple[str, ...]:
        """The positional parameter names that the arguments after *instance* fill, in order."""
        return self.positional[1:] if instance is not None and self.first else self.positional

    # -- arguments by name -----------------------------------------------------

    def arg(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str, default: Any = None) -> Any:
        """The argument passed for parameter *name* (by keyword or position), else its default, else *default*."""
        if name in kwargs:
            return kwargs[name]
        pos = (self.positions_after if instance is not None else self.positions).get(name)
        if pos is not None and pos < len(args):
            return args[pos]
        return self.defaults.get(name, default)

    def arguments(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, defaults applied, the instance left out (for ``key=``, ``estimate=``).

        Keywords a ``**kwargs`` takes are among them by their own names.
        Arguments that do not bind give what they can (the function itself
        then raises its TypeError).
        """
        if self.simple:
            out = self.defaults.copy()
            out.update(zip(self.names(instance), args, strict=False))
            out.update(kwargs)
            return out
        return self.bound(instance, args, kwargs)

    def bound(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """As `inspect.BoundArguments.arguments`, defaults applied, the instance left out.

        ``*args`` and ``**kwargs`` are under their own parameter names.
        """
        sig = self.signature
        if sig is None:
            return {**{f"*{i}": a for i, a in enumerate(args)}, **kwargs}
        split = instance is not None and self.first is not None
        bound = sig.bind(instance, *args, **kwargs) if split else sig.bind(*args, **kwargs)
        bound.apply_defaults()
        out = dict(bound.arguments)
        if split:
            out.pop(self.first, None)  # type: ignore[arg-type]
        return out

    def binding(self, excluded: frozenset[str]) -> Binding:
        """A fast exact `Binding` of this function's arguments, leaving *excluded* out of the defaults."""
        assert self.signature is not None  # noqa: S101 - callers check
        return Binding(self.signature, self.first, excluded)


class Binding:
    """Binds a call's arguments to parameter names, defaults applied, exactly as Python would.

    `inspect.Signature.bind` costs microseconds per call; this does the
    common shapes with a few dict operations and returns None for anything
    it cannot bind exactly as Python would (cache then leaves the call
    uncached and the function raises its own TypeError).
    """

    __slots__ = (
        "defaults",
        "drop_extra",
        "first",
        "keywordable",
        "pos_after_first",
        "positional",
        "required",
        "required_after_first",
        "var_kw",
        "var_pos",
    )

    def __init__(self, sig: inspect.Signature, first: str | None, excluded: frozenset[str] = frozenset()) -> None:
        params = list(sig.parameters.values())
        self.positional = tuple(p.name for p in params if p.kind in _POSITIONAL)
        self.first = first
        self.pos_after_first = self.positional[1:] if self.first else self.positional
        self.keywordable = frozenset(
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )
        var_pos = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
        # An excluded *args is bound to nothing (and no default is filled in
        # for an excluded parameter): what is left out never enters the key.
        self.var_pos = None if var_pos in excluded else var_pos
        self.drop_extra = var_pos is not None and var_pos in excluded
        self.var_kw = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        self.defaults = {
            p.name: p.default for p in params if p.default is not p.empty and p.name not in excluded
        }
        self.required = frozenset(
            p.name
            for p in params
            if p.default is p.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        )
        self.required_after_first = self.required - {self.first} if self.first else self.required

    def bind(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """``{name: value}`` for the call (the instance left out), or None if it would not bind."""
        if instance is not None and self.first:
            names, required = self.pos_after_first, self.required_after_first
        else:
            names, required = self.positional, self.required
        out = self.defaults.copy()
        n = len(args)
        if n > len(names):
            if self.var_pos is not None:
                out[self.var_pos] = list(args[len(names) :])
            elif not self.drop_extra:
                return None
        elif self.var_pos is not None:
            out[self.var_pos] = []
        if n == 1 and names:
            out[names[0]] = args[0]  # the usual ask(prompt, **options), without a zip
        elif n:
            out.update(zip(names, args, strict=False))
        if kwargs and not self._add_kwargs(out, kwargs, names[:n]):
            return None
        return out if required <= out.keys() else None

    def _add_kwargs(self, out: dict[str, Any], kwargs: dict[str, Any], passed: Sequence[str]) -> bool:
        keys = kwargs.keys()
        if keys <= self.keywordable and (not passed or keys.isdisjoint(passed)):
            out.update(kwargs)
            return True
        if self.var_kw is None:
            return False  # an unknown keyword, or "got multiple values": let Python say so
        for k, v in kwargs.items():
            if k in self.keywordable:
                if k in passed:
                    return False
                out[k] = v
            elif k in out:  # a positional-only name also passed in **kwargs
                out["**" + k] = v
            else:
                out[k] = v
        return True
