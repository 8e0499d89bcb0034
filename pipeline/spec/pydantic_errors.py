"""Turn pydantic's validation errors into located, readable problems with suggestions."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.spec.base import SYNONYMS
from pipeline.spec.errors import PathPart, Problem, did_you_mean

# Input-type errors that only say "this union branch wanted another kind of value".
_SCALAR_TYPES = {
    "literal_error", "string_type", "int_type", "int_parsing", "float_type", "float_parsing",
    "bool_type", "bool_parsing", "none_required", "enum", "int_from_float",
}  # fmt: skip
_CONTAINER_TYPES = {"dict_type", "model_type", "model_attributes_type", "list_type", "tuple_type"}


def clean_path(raw: Any, loc: tuple) -> tuple[tuple[PathPart, ...], bool]:
    """Map pydantic's ``loc`` onto the user's key path, dropping union tags and branch labels.

    Returns the path and whether its last part exists in the raw tree."""
    path: list[PathPart] = []
    node = raw
    exists = True
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if (isinstance(node, Mapping) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
            path.append(part)
        elif isinstance(node, Mapping) and part == node.get("type"):
            continue  # discriminated-union tag
        elif exists and path and isinstance(part, str) and not isinstance(node, Mapping):
            continue  # below a scalar or in a list: a branch label ("constrained-int"), not a key
        elif isinstance(part, str) and ("[" in part or part in {"int", "str", "float", "bool"}):
            continue  # a union branch label like "literal['relu', ...]" or "tuple[int, int]"
        elif last and isinstance(part, str) and isinstance(node, Mapping):
            path.append(part)  # a missing key
            exists = False
        else:
            path.append(part)
            exists = False
    return tuple(path), exists


def model_at(root: type[BaseModel], raw: Any, path: tuple[PathPart, ...]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (follows lists, dicts, unions)."""
    ann: Any = root
    node = raw
    for part in path:
        ann = _unwrap(ann, node)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if not isinstance(part, str) or part not in ann.model_fields:
                return None
            ann = ann.model_fields[part].annotation
        elif origin in (list, tuple) and typing.get_args(ann):
            ann = typing.get_args(ann)[0]
        elif origin is dict and len(typing.get_args(ann)) == 2:
            ann = typing.get_args(ann)[1]
        else:
            return None
        node = _value_at(node, (part,))
    ann = _unwrap(ann, node)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _unwrap(ann: Any, node: Any) -> Any:
    """Strip Annotated and Optional; pick a union's member by the raw value's ``type`` tag."""
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
            continue
        if origin not in (typing.Union, types.UnionType):
            return ann
        members = [a for a in _flatten_union(typing.get_args(ann)) if a is not type(None)]
        models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
        tag = node.get("type") if isinstance(node, Mapping) else None
        tagged = [
            m for m in models if "type" in m.model_fields and m.model_fields["type"].default == tag
        ]
        if tagged:
            return tagged[0]
        if len(models) == 1 and isinstance(node, Mapping):
            return models[0]
        containers = [a for a in members if typing.get_origin(a) in (list, tuple, dict)]
        return containers[0] if containers else (models[0] if models else None)


def _flatten_union(args: tuple) -> list:
    out = []
    for a in args:
        if typing.get_origin(a) is typing.Annotated:
            a = typing.get_args(a)[0]
        if typing.get_origin(a) in (typing.Union, types.UnionType):
            out += _flatten_union(typing.get_args(a))
        else:
            out.append(a)
    return out


def _value_at(raw: Any, path: tuple[PathPart, ...]) -> Any:
    node = raw
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def convert(exc: ValidationError, raw: Any, root: type[BaseModel]) -> list[Problem]:
    """One problem per wrong place, however many union branches pydantic tried."""
    by_path: dict[tuple[PathPart, ...], list[tuple[dict, bool]]] = {}
    for err in exc.errors(include_url=False):
        path, exists = clean_path(raw, err["loc"])
        by_path.setdefault(path, []).append((err, exists))
    _drop_explained_missing(by_path)
    _drop_split_tuples(by_path, raw)
    problems = []
    paths = list(by_path)
    for path, errs in by_path.items():
        deeper = any(p[: len(path)] == path and len(p) > len(path) for p in paths)
        value = _value_at(raw, path)
        kept = [(e, x) for e, x in errs if not _branch_noise(e, value, deeper or len(errs) > 1)]
        if not kept:
            if deeper:
                continue  # the deeper errors say it better
            kept = errs
        problems.append(_problem(path, kept, value, raw, root))
    return problems


def _drop_explained_missing(by_path: dict[tuple[PathPart, ...], list]) -> None:
    """A missing 'kernel_size' next to an unknown 'kernal_size' is one mistake, not two."""
    unknown = {p for p, errs in by_path.items() if errs[0][0]["type"] == "extra_forbidden"}
    for path, errs in list(by_path.items()):
        if errs[0][0]["type"] != "missing":
            continue
        siblings = [str(u[-1]) for u in unknown if u[:-1] == path[:-1]]
        if did_you_mean(str(path[-1]), []) == "" and any(
            did_you_mean(sib, [str(path[-1])]) for sib in siblings
        ):
            del by_path[path]


_TUPLE_REST = re.compile(r"[\s\d.+-]*\)?\s*")


def _opens_tuple(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip().startswith("(")


def _drop_split_tuples(by_path: dict[tuple[PathPart, ...], list], raw: Any) -> None:
    """``{pool_size: (2, 2)}``: the flow mapping's comma makes ``(2`` a value and ``2)`` a key.
    The unknown key is the same mistake as the value: only the value's error stays."""
    for path, errs in list(by_path.items()):
        if errs[0][0]["type"] != "extra_forbidden" or not path:
            continue
        parent = _value_at(raw, path[:-1])
        key = path[-1]
        if (
            isinstance(parent, Mapping)
            and isinstance(key, str)
            and parent.get(key) is None
            and _TUPLE_REST.fullmatch(key)
            and any(_opens_tuple(v) and ")" not in v for v in parent.values())
        ):
            del by_path[path]


def _tuple_problem(path: tuple[PathPart, ...], value: str, raw: Any) -> Problem:
    """A value written as a Python tuple (a string to YAML), split or whole."""
    written = value
    parent = _value_at(raw, path[:-1])
    if ")" not in value and isinstance(parent, Mapping):
        keys = list(parent)
        rest = keys[keys.index(path[-1]) + 1 :] if path[-1] in keys else []
        for key in rest:
            if not (isinstance(key, str) and _TUPLE_REST.fullmatch(key)):
                break
            written += ", " + key.strip()
            if key.strip().endswith(")"):
                break
    inner = written.strip().removeprefix("(").removesuffix(")")
    return Problem(
        f"{_show(written)} is a Python tuple, which YAML does not have; write a list: "
        f"[{inner.strip()}]",
        path,
        code="tuple",
    )


def _branch_noise(err: dict, value: Any, others: bool) -> bool:
    if not others:
        return False
    if err["type"] in _SCALAR_TYPES and isinstance(value, (Mapping, list)):
        return True
    return err["type"] in _CONTAINER_TYPES and not isinstance(value, (Mapping, list))


def _problem(
    path: tuple[PathPart, ...], errs: list[tuple[dict, bool]], value: Any, raw: Any, root: Any
) -> Problem:
    err, _ = errs[0]
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if _opens_tuple(value) and any(e["type"] in _SCALAR_TYPES for e, _ in errs):
        return _tuple_problem(path, value, raw)
    if kind == "literal_error" and not isinstance(value, str):
        others = [(e, x) for e, x in errs if e["type"] != "literal_error"]
        if others:  # a number for a field of names or numbers: the number's error says more
            return _problem(path, others, value, raw, root)
    if kind == "extra_forbidden":
        key = str(path[-1])
        parent = model_at(root, raw, path[:-1])
        fields = list(parent.model_fields) if parent else []
        aliases = [f.alias for f in parent.model_fields.values() if f.alias] if parent else []
        valid = sorted(set(fields + aliases) - {"from_"})
        return Problem(
            f"unknown key {key!r}; valid keys here: {', '.join(valid)}",
            path,
            code="unknown-key",
            hint=did_you_mean(key, valid, SYNONYMS) or None,
        )
    if kind == "missing":
        return Problem(f"missing required key {path[-1]!r}", path, code="missing")
    if kind == "union_tag_invalid":
        tags = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        given = str(ctx.get("tag"))
        return Problem(
            f"unknown type {given!r}; valid: {', '.join(tags)}",
            (*path, "type"),
            code="unknown-name",
            hint=did_you_mean(given, tags, SYNONYMS) or None,
        )
    if kind == "union_tag_not_found":
        return Problem("missing 'type' (which kind this is)", path, code="missing")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(str(value), choices, SYNONYMS) if isinstance(value, str) else ""
        return Problem(
            f"{_show(value)} is not valid; valid: {', '.join(choices)}",
            path,
            code="unknown-name",
            hint=hint or None,
        )
    messages = []
    for e, _ in errs:
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if msg not in messages:
            messages.append(msg)
    text = " or ".join(messages)
    if not isinstance(value, (Mapping, list)) and value is not None and _show(value) not in text:
        text += f" (got {_show(value)})"
    return Problem(text, path, code=kind)
