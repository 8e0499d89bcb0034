"""The layer names that ``freeze``, ``unfreeze`` and ``param_groups`` may use, torch-free.

The same table as :func:`pipeline.train.params.layer_table` builds from the model, in model
order: each top-level layer; the layers nested in it (a residual's and a branch's by their own
names, a backbone's blocks as ``<backbone>.<block>`` and bare, a reused model's layers as
``<reuse>.<layer>``); and the names ``pipeline summary --expand`` gives a composite's parts
(``<residual>.<layer>``, ``<residual>.shortcut``, ``<branch>.<layer>``). A name given twice
means its first layer, except that a top-level layer's own name always means that layer. Each
entry carries the module's path in the built model, so two names of one layer are known to be
one layer.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.spec.composite import BACKBONE_ARCHS, Backbone, Branch, Residual, Reuse
from pipeline.spec.layers import ShapeError
from pipeline.spec.shapes import named_layers
from pipeline.spec.train import LayerRange


@dataclass(frozen=True)
class Selectable:
    name: str
    """What a selector may write."""
    path: str
    """The module's path in the built model (``get_submodule``); aliases share it."""

    def within(self, other: Selectable) -> bool:
        """This layer is ``other`` or sits inside it."""
        return self.path == other.path or self.path.startswith(other.path + ".")


def backbone_blocks(layer: Backbone) -> list[str]:
    """The children of a built backbone: its blocks, then with ``include_top`` its head (a timm
    backbone: the timm model's own top-level children)."""
    return BACKBONE_ARCHS[layer.arch].children(layer.include_top)


def _inner(
    name: str, layer: Any, path: str, names: dict[tuple, str], at: tuple
) -> Iterator[tuple[str, str]]:
    """(selector name, module path) of the layers inside ``layer`` (named ``name``, built at
    ``path``, written at key path ``at`` of a layer list whose names are ``names``)."""
    if isinstance(layer, Residual):
        for i, child in enumerate(layer.layers):
            child_name = names[(*at, "layers", i)]
            child_path = f"{path}.branch.{child_name}"
            yield child_name, child_path
            yield from _inner(child_name, child, child_path, names, (*at, "layers", i))
    elif isinstance(layer, Branch):
        for j, branch in enumerate(layer.branches):
            for i, child in enumerate(branch):
                at_child = (*at, "branches", j, i)
                child_name = names[at_child]
                child_path = f"{path}.branches.{j}.{child_name}"
                yield child_name, child_path
                yield from _inner(child_name, child, child_path, names, at_child)
    elif isinstance(layer, Backbone):
        for block in backbone_blocks(layer):
            yield f"{name}.{block}", f"{path}.{block}"
            yield block, f"{path}.{block}"
    elif isinstance(layer, Reuse) and layer._source is not None:
        try:
            kept = layer.kept_layers()
        except ShapeError:
            return  # the shapes check reports it
        source = {p: n for p, n, _ in named_layers(layer._source.model.layers)}
        for i, child in enumerate(kept):
            child_name = source[(i,)]
            child_path = f"{path}.{child_name}"
            yield f"{name}.{child_name}", child_path
            for sub, sub_path in _inner(child_name, child, child_path, source, (i,)):
                yield f"{name}.{sub}", sub_path


def _parts(name: str, layer: Any, names: dict[tuple, str], at: tuple) -> list[tuple[str, str]]:
    """The summary's ``<composite>.<part>`` rows of a top-level residual or branch (a
    backbone's and a reused model's are among their inner names already)."""
    if isinstance(layer, Branch):
        return [
            (f"{name}.{k}", f"{name}.branches.{j}.{k}")
            for j, branch in enumerate(layer.branches)
            for k in (names[(*at, "branches", j, i)] for i in range(len(branch)))
        ]
    if not isinstance(layer, Residual):
        return []
    kids = [names[(*at, "layers", i)] for i in range(len(layer.layers))]
    return [(f"{name}.{k}", f"{name}.branch.{k}") for k in kids] + [
        (f"{name}.shortcut", f"{name}.shortcut")
    ]


def selectable(layers: Sequence[Any]) -> list[Selectable]:
    """Every selectable name of a model's layer list, in model order (see the module doc)."""
    names = {p: n for p, n, _ in named_layers(layers)}
    top = {names[(i,)] for i in range(len(layers))}
    out: dict[str, str] = {}
    for i, layer in enumerate(layers):
        name = names[(i,)]
        out[name] = name
        parts = dict((path, alias) for alias, path in _parts(name, layer, names, (i,)))
        for inner, path in _inner(name, layer, name, names, (i,)):
            if inner not in top:
                out.setdefault(inner, path)
            alias = parts.pop(path, None)
            if alias is not None:
                out.setdefault(alias, path)
        for path, alias in parts.items():
            out.setdefault(alias, path)
    return [Selectable(n, p) for n, p in out.items()]


def resolve(selector: Any, table: Sequence[Selectable], top: Sequence[str]) -> list[Selectable]:
    """The entries a selector picks, as :func:`pipeline.train.params.select` does: a name or
    glob, a top-level index, or a range in model order. Empty for what names nothing."""
    order = [s.name for s in table]

    def position(target: str | int) -> int | None:
        if isinstance(target, int):
            return order.index(top[target]) if -len(top) <= target < len(top) else None
        return order.index(target) if target in order else None

    if isinstance(selector, LayerRange):
        if selector.from_ is not None:
            start = position(selector.from_)
            return [] if start is None else list(table[start:])
        end = position(selector.before)  # type: ignore[arg-type]
        return [] if end is None else list(table[:end])
    if isinstance(selector, int):
        at = position(selector)
        return [] if at is None else [table[at]]
    return [s for s in table if fnmatch.fnmatchcase(s.name, selector)]
