"""What each spec kind is built into: a table keyed by the kind's schema class.

The spec package names every kind once, in its schema class (``type: Literal["conv2d"]``,
registered in a :class:`pipeline.spec.base.Kinds` such as ``LAYERS``). The torch side never
repeats that name: a builder is registered for the schema class itself, and the table checks,
when the module that fills it is imported, that every kind of the spec registry has a builder.
A kind added to the schema without a builder fails at import, naming it, not in the middle of a
run::

    LAYER_BUILDERS: Builders[LayerBuilder] = Builders(LAYERS, "layer")

    @LAYER_BUILDERS.register(Conv2D)
    def _conv2d(layer: Conv2D, ctx: LayerContext) -> nn.Module: ...

    LAYER_BUILDERS.check_complete()  # at the end of the module(s) that register

Kinds the loader expands away (``Kind.expanded_on_load``: a block reference) need no builder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from pipeline.spec.base import Kind, Kinds

F = TypeVar("F", bound=Callable[..., Any])


class Builders(Generic[F]):
    """Schema class of a kind -> the function that builds it."""

    def __init__(self, kinds: Kinds, what: str) -> None:
        self.kinds = kinds
        self.what = what
        self._table: dict[type[Kind], F] = {}

    def register(self, *classes: type[Kind]) -> Callable[[F], F]:
        """``@table.register(SchemaClass, ...)``: ``fn`` builds these kinds."""

        def add(fn: F) -> F:
            for cls in classes:
                if cls not in self.kinds.kinds.values():
                    raise TypeError(f"{cls.__name__} is not a registered {self.kinds.group} kind")
                if cls in self._table:
                    raise TypeError(f"{self.what} builder for {cls.__name__} is registered twice")
                self._table[cls] = fn
            return fn

        return add

    def __getitem__(self, kind: Kind | type[Kind]) -> F:
        """The builder of a spec object (or its class)."""
        cls = kind if isinstance(kind, type) else type(kind)
        try:
            return self._table[cls]
        except KeyError:
            raise TypeError(f"no {self.what} builder for {cls.__name__}") from None

    def __contains__(self, kind: object) -> bool:
        return (kind if isinstance(kind, type) else type(kind)) in self._table

    def __iter__(self) -> Iterator[type[Kind]]:
        return iter(self._table)

    def missing(self) -> list[str]:
        """The ``type`` names of spec kinds with no builder (kinds expanded on load need none)."""
        return sorted(
            name
            for name, cls in self.kinds.kinds.items()
            if cls not in self._table and not cls.expanded_on_load
        )

    def check_complete(self) -> None:
        """Raise TypeError naming every spec kind that has no builder."""
        if missing := self.missing():
            classes = ", ".join(f"{self.kinds.kinds[n].__name__} ({n})" for n in missing)
            raise TypeError(
                f"no {self.what} builder for the spec's {self.kinds.group} kinds {classes}: "
                "register a builder for each with @<its table>.register(<class>)"
            )
