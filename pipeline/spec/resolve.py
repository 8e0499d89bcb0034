"""Rewrites of the raw YAML tree before validation: ``extends``, named blocks, per-kind defaults.

They work on plain mappings and lists (the loader's nodes keep their source marks through
them), so a problem in a block or a default still points at the line where it was written.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pipeline.spec.errors import PathPart, Problem, did_you_mean


def merged(base: Any, over: Any) -> Any:
    """Deep merge: mappings merge key by key, anything else (lists too) is replaced by ``over``."""
    if not (isinstance(base, Mapping) and isinstance(over, Mapping)):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(base[key], value) if key in base else copy.deepcopy(value)
        _carry_marks(out, over, key)
    return out


def _carry_marks(out: Any, src: Any, key: str) -> None:
    for attr in ("key_marks", "value_marks"):
        marks = getattr(src, attr, None)
        if marks is not None and key in marks and hasattr(out, attr):
            getattr(out, attr)[key] = marks[key]


def under(defaults: Mapping, layer: Mapping) -> Any:
    """``layer`` with the keys it does not set taken from ``defaults`` (one level, not deep)."""
    out = copy.deepcopy(layer)
    for key, value in defaults.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
            _carry_marks(out, defaults, key)
    return out


def expand_model(model: Any, problems: list[Problem], path: tuple[PathPart, ...]) -> Any:
    """Expand ``{type: block}`` references and apply ``defaults`` in a raw ``model`` mapping."""
    if not isinstance(model, Mapping):
        return model
    blocks = model.get("blocks") or {}
    defaults = model.get("defaults") or {}
    if not isinstance(blocks, Mapping) or not isinstance(defaults, Mapping):
        return model
    out = copy.deepcopy(model)
    if isinstance(model.get("layers"), list):
        out["layers"] = _expand(model["layers"], blocks, defaults, problems, (*path, "layers"), ())
    if blocks:
        out["blocks"] = copy.deepcopy(blocks)
        for name, layers in blocks.items():
            if isinstance(layers, list):
                out["blocks"][name] = _expand(
                    layers, blocks, defaults, problems, (*path, "blocks", name), (name,)
                )
    return out


def _expand(
    layers: list,
    blocks: Mapping,
    defaults: Mapping,
    problems: list[Problem],
    path: tuple[PathPart, ...],
    stack: tuple[str, ...],
) -> list:
    out = copy.copy(layers)  # keeps a node's marks list; entries are replaced below
    out.clear()
    marks_out = [] if hasattr(layers, "item_marks") else None
    for i, layer in enumerate(layers):
        mark = layers.item_marks[i] if marks_out is not None else None
        if not isinstance(layer, Mapping):
            out.append(layer)
            if marks_out is not None:
                marks_out.append(mark)
            continue
        if layer.get("type") == "block":
            for item in _block_items(layer, blocks, defaults, problems, (*path, i), stack):
                out.append(item)
                if marks_out is not None:
                    marks_out.append(mark)
            continue
        kind_defaults = defaults.get(layer.get("type"))
        item = under(kind_defaults, layer) if isinstance(kind_defaults, Mapping) else layer
        if isinstance(item.get("layers"), list):  # residual: expand its branch too
            item = copy.copy(item)
            item["layers"] = _expand(
                item["layers"], blocks, defaults, problems, (*path, i, "layers"), stack
            )
        out.append(item)
        if marks_out is not None:
            marks_out.append(mark)
    if marks_out is not None:
        out.item_marks = marks_out
    return out


def _block_items(
    ref: Mapping,
    blocks: Mapping,
    defaults: Mapping,
    problems: list[Problem],
    path: tuple[PathPart, ...],
    stack: tuple[str, ...],
) -> list:
    name = ref.get("block")
    if name not in blocks:
        hint = did_you_mean(str(name), [str(b) for b in blocks])
        valid = ", ".join(map(str, blocks)) or "none defined (add model.blocks)"
        problems.append(
            Problem(
                f"unknown block {name!r}; blocks: {valid}",
                (*path, "block"),
                code="block",
                hint=hint or None,
            )
        )
        return []
    if name in stack:
        problems.append(Problem(f"block {name!r} includes itself", path, code="block"))
        return []
    repeat = ref.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        problems.append(
            Problem(
                f"repeat must be a positive integer, got {repeat!r}",
                (*path, "repeat"),
                code="block",
            )
        )
        return []
    prefix = ref.get("name") or name
    items = []
    for r in range(1, repeat + 1):
        inner = _expand(blocks[name], blocks, defaults, problems, path, (*stack, name))
        for layer in inner:
            if isinstance(layer, Mapping) and layer.get("name"):
                tag = f"{prefix}{r}" if repeat > 1 else prefix
                layer = copy.copy(layer)
                layer["name"] = f"{tag}_{layer['name']}"
            items.append(layer)
    return items
