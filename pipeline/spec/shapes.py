"""Shape inference and layer naming over a layer list, torch-free."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline.spec.errors import PathPart
from pipeline.spec.layers import Shape, ShapeError, fmt


class LayerShapeError(Exception):
    """A shape problem at a layer, with the layer's key path relative to the list checked."""

    def __init__(self, path: tuple[PathPart, ...], message: str, hint: str | None):
        super().__init__(message)
        self.path, self.message, self.hint = path, message, hint


def infer_shapes(layers: Sequence[Any], shape: Shape, path: tuple[PathPart, ...]) -> list[Shape]:
    """Each layer's output shape, in order; LayerShapeError at the first that does not fit."""
    shapes: list[Shape] = []
    for i, layer in enumerate(layers):
        try:
            shape = tuple(layer.output_shape(tuple(shape)))
        except LayerShapeError as inner:  # in a nested list; its path starts below the layer
            raise LayerShapeError((*path, i, *inner.path), inner.message, inner.hint) from None
        except ShapeError as err:
            given = fmt(tuple(shape))
            message = str(err) if given in str(err) else f"{err} (input {given})"
            raise LayerShapeError((*path, i), message, err.hint) from None
        shapes.append(shape)
    return shapes


def named_layers(
    layers: Sequence[Any], counts: Counter[str] | None = None, prefix: tuple[PathPart, ...] = ()
) -> Iterator[tuple[tuple[PathPart, ...], str, Any]]:
    """(key path, name, layer) for every layer, nested ones too; unnamed layers get
    ``<type>_<n>`` numbered per kind in order of appearance, as Keras names them."""
    counts = Counter() if counts is None else counts
    for i, layer in enumerate(layers):
        counts[layer.type] += 1
        name = layer.name or f"{layer.type}_{counts[layer.type]}"
        yield (*prefix, i), name, layer
        for keys, children in layer.sublayers():
            yield from named_layers(children, counts, (*prefix, i, *keys))
