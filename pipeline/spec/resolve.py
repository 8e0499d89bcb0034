"""Rewrites of the raw YAML tree before validation: ``extends``, named blocks, per-kind defaults.

They work on plain mappings and lists (the loader's nodes keep their source marks through
them), so a problem in a block or a default still points at the line where it was written.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.spec.base import LAYERS, LayerKind, child_lists
from pipeline.spec.composite import Block
from pipeline.spec.errors import PathPart, Problem, did_you_mean

MAX_LAYERS = 10_000
"""Most layers a block reference may expand to (``repeat: 10**9`` would never finish)."""


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
            elif isinstance(layers, Mapping):
                _check_definition(name, layers, problems, (*path, "blocks", name))
    return out


# ``$width`` (plain, also inside YAML flow mappings) or ``${width}`` (inside longer text)
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}|\$([A-Za-z_]\w*)")


def _check_definition(
    name: str, block: Mapping, problems: list[Problem], path: tuple[PathPart, ...]
) -> None:
    """A parameterised block: every ``$name`` it uses is one of its ``params``."""
    params = block.get("params") or {}
    if not isinstance(params, Mapping) or not isinstance(block.get("layers"), list):
        return  # the schema reports the shape
    _substitute(block["layers"], {k: f"${k}" for k in params}, problems, (*path, "layers"), name)


def _substitute(
    node: Any, values: Mapping, problems: list[Problem], path: tuple[PathPart, ...], block: str
) -> Any:
    """``node`` with each ``$param`` replaced: a whole-string placeholder by the value itself
    (a number stays a number), one inside a longer string by its text. Marks are kept."""
    if isinstance(node, Mapping):
        out = copy.copy(node)
        for key, value in node.items():
            out[key] = _substitute(value, values, problems, (*path, key), block)
        return out
    if isinstance(node, list):
        out = copy.copy(node)
        out[:] = [_substitute(v, values, problems, (*path, i), block) for i, v in enumerate(node)]
        return out
    if not isinstance(node, str) or "$" not in node:
        return node
    for match in _PLACEHOLDER.finditer(node):
        used = match.group(1) or match.group(2)
        if used not in values:
            known = ", ".join(values) or "none (add params to the block)"
            problems.append(
                Problem(
                    f"block {block!r} has no parameter {used!r}; its params: {known}",
                    path,
                    code="block",
                    hint=did_you_mean(used, list(values)) or None,
                )
            )
            return node
    whole = _PLACEHOLDER.fullmatch(node)
    if whole:
        return copy.deepcopy(values[whole.group(1) or whole.group(2)])
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1) or m.group(2)]), node)


def _block_body(
    name: str, block: Any, ref: Mapping, problems: list[Problem], path: tuple[PathPart, ...]
) -> list | None:
    """The layers a reference inserts: a plain block's list, or a parameterised block's layers
    with the reference's ``params`` (over the block's defaults) substituted."""
    given = ref.get("params") or {}
    if isinstance(block, list):
        if given:
            problems.append(
                Problem(
                    f"block {name!r} takes no params (define it as "
                    "{params: {...}, layers: [...]} to give it some)",
                    (*path, "params"),
                    code="block",
                )
            )
        return block
    if not isinstance(block, Mapping) or not isinstance(block.get("layers"), list):
        return None  # the schema reports the shape
    declared = block.get("params") or {}
    if not isinstance(given, Mapping) or not isinstance(declared, Mapping):
        return None
    ok = True
    for key in given:
        if key not in declared:
            ok = False
            known = ", ".join(map(str, declared)) or "none"
            problems.append(
                Problem(
                    f"block {name!r} has no parameter {key!r}; its params: {known}",
                    (*path, "params", key),
                    code="block",
                    hint=did_you_mean(str(key), list(declared)) or None,
                )
            )
    values = {**declared, **given}
    for key, value in values.items():
        if value is None:
            ok = False
            problems.append(
                Problem(
                    f"block {name!r} needs a value for its parameter {key!r} (it has no default)",
                    (*path, "params"),
                    code="block",
                )
            )
    if not ok:
        return None
    # an unknown $name is reported once, where the block is defined (_check_definition)
    return _substitute(block["layers"], values, [], path, name)


def _kind(layer: Mapping) -> type[LayerKind] | None:
    """The schema class a raw layer's ``type`` names; None for a missing or unknown one (the
    schema reports it)."""
    name = layer.get("type")
    return LAYERS.kinds.get(name) if isinstance(name, str) else None  # type: ignore[return-value]


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
        kind = _kind(layer)
        if kind is Block:
            for item in _block_items(layer, blocks, defaults, problems, (*path, i), stack):
                out.append(item)
                if marks_out is not None:
                    marks_out.append(mark)
            if len(out) > MAX_LAYERS:
                problems.append(
                    Problem(
                        f"the blocks expand this list to more than {MAX_LAYERS} layers",
                        (*path, i),
                        code="block",
                    )
                )
                break
            continue
        kind_defaults = defaults.get(kind.type_name) if kind is not None else None
        item = under(kind_defaults, layer) if isinstance(kind_defaults, Mapping) else layer
        item = _map_children(
            item,
            kind,
            lambda keys, children, at=(*path, i): _expand(
                children, blocks, defaults, problems, (*at, *keys), stack
            ),
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
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_LAYERS:
        problems.append(
            Problem(
                f"repeat must be an integer from 1 to {MAX_LAYERS}, got {repeat!r}",
                (*path, "repeat"),
                code="block",
            )
        )
        return []
    body = _block_body(name, blocks[name], ref, problems, path)
    if body is None:
        return []
    prefix = ref.get("name") or name
    items: list = []
    for r in range(1, repeat + 1):
        inner = _expand(body, blocks, defaults, problems, path, (*stack, name))
        if len(inner) * repeat > MAX_LAYERS:  # measured on the first repeat, before the rest
            problems.append(
                Problem(
                    f"block {name!r} repeated {repeat} times expands to {len(inner) * repeat} "
                    f"layers; a model may have at most {MAX_LAYERS}",
                    (*path, "repeat"),
                    code="block",
                )
            )
            return []
        tag = f"{prefix}{r}" if repeat > 1 else prefix
        items += [_prefixed(layer, tag) for layer in inner]
    return items


def _prefixed(layer: Any, tag: str) -> Any:
    """``layer`` with its explicit name prefixed by ``tag`` (the block reference's name,
    numbered when repeated), and so the names of the layers nested in it: repeats never
    collide, however deep a named layer sits."""
    if not isinstance(layer, Mapping):
        return layer
    out = copy.copy(layer)
    if layer.get("name"):
        out["name"] = f"{tag}_{layer['name']}"
    return _map_children(out, _kind(layer), lambda _, children: _prefixed_list(children, tag))


def _prefixed_list(layers: list, tag: str) -> list:
    out = copy.copy(layers)  # keeps the list's marks
    out[:] = [_prefixed(child, tag) for child in layers]
    return out


def _map_children(
    item: Any, kind: type[LayerKind] | None, fn: Callable[[tuple[PathPart, ...], list], list]
) -> Any:
    """A copy of the raw layer ``item`` with each nested layer list (a residual's ``layers``,
    each of a branch's ``branches``) replaced by ``fn(key path, list)``; marks are kept."""
    nested = list(child_lists(kind, item.get)) if kind is not None else []
    if not nested:
        return item
    out = copy.copy(item)
    for keys, children in nested:
        if len(keys) == 1:
            out[keys[0]] = fn(keys, children)
        else:  # one list of a list of lists: copy the outer list once, then replace in it
            key, j = keys
            if out[key] is item[key]:
                out[key] = copy.copy(item[key])
            out[key][j] = fn(keys, children)
    return out
