"""Name -> builder tables: adding a kind is one decorated function, never another elif."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict[str, F]):
    """A dict of builders by spec name; ``@table.register("name", ...)`` adds one."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, *names: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            for name in names:
                if name in self:
                    raise ValueError(f"{self.what} {name!r} is registered twice")
                self[name] = fn
            return fn

        return add
