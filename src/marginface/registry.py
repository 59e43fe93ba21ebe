"""One small name -> factory registry, shared by the losses, backbones, heads and face detectors.

>>> widgets = Registry("widget")
>>> @widgets.register("round")
... class Round:
...     def __init__(self, size: int = 1) -> None:
...         self.size = size
>>> widgets.create("round", size=3).size
3
>>> widgets.create("rond")
Traceback (most recent call last):
...
marginface.errors.UserError: unknown widget 'rond'; available: round (did you mean 'round'?)

A registry is a mapping from name to factory (``name in registry``, ``registry[name]``, iteration over the names
in :meth:`Registry.names` order). Names are registered once: a second registration under a taken name is refused,
and so is ``registry[name] = factory`` for a taken name, which keeps ``monkeypatch.setitem(registry, name, f)``
usable in tests for a temporary entry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar, overload

from marginface.errors import UserError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])


class Registry(MutableMapping[str, Callable[..., T]], Generic[T]):
    """Factories by name, for one kind of thing (``kind`` names it in errors: "loss", "backbone", ...).

    Args:
        kind: what the registry holds, as error messages should call it.
        sort: list names sorted (``True``) or in registration order (``False``).
    """

    def __init__(self, kind: str, *, sort: bool = False) -> None:
        self.kind = kind
        self.sort = sort
        self._factories: dict[str, Callable[..., T]] = {}

    @overload
    def register(self, name: str) -> Callable[[F], F]: ...

    @overload
    def register(self, name: str, factory: F) -> F: ...

    def register(self, name: str, factory: F | None = None) -> F | Callable[[F], F]:
        """Add ``factory`` under ``name``; without ``factory``, a decorator that registers what it decorates (a class
        or a function) and returns it unchanged. Raises ValueError when ``name`` is taken."""
        if factory is None:
            return lambda decorated: self.register(name, decorated)
        if name in self._factories:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._factories[name] = factory
        return factory

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a KeyError when it is not registered)."""
        del self._factories[name]

    def names(self) -> list[str]:
        """The registered names: sorted, or in registration order (see ``sort``)."""
        return sorted(self._factories) if self.sort else list(self._factories)

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; a UserError (a ValueError) listing the names, and the closest ones to
        ``name``, when there is none."""
        if name not in self._factories:
            raise UserError(self._unknown(name))
        return self._factories[name]

    def create(self, name: str, /, *args: object, **kwargs: object) -> T:
        """Build ``name``: its factory called with ``args`` and ``kwargs``; unknown names as in :meth:`factory`."""
        return self.factory(name)(*args, **kwargs)

    def _unknown(self, name: object) -> str:
        message = f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
        close = difflib.get_close_matches(str(name), self.names(), n=3) if isinstance(name, str) else []
        if not close:
            return message
        listed = " or ".join(filter(None, [", ".join(map(repr, close[:-1])), repr(close[-1])]))
        return f"{message} (did you mean {listed}?)"

    # the mapping protocol: ``registry[name]`` is the factory (KeyError with the same message when unknown)
    def __getitem__(self, name: str) -> Callable[..., T]:
        if name not in self._factories:
            raise KeyError(self._unknown(name))
        return self._factories[name]

    def __setitem__(self, name: str, factory: Callable[..., T]) -> None:
        self.register(name, factory)

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._factories)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
