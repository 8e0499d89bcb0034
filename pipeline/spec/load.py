"""Load a spec: YAML with marks -> extends -> overrides -> blocks/defaults -> pydantic -> checks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.spec import yamlio
from pipeline.spec.errors import Mark, PathPart, Problem, SpecError, did_you_mean, format_path
from pipeline.spec.paths import Roots, check_spec_file, path_problems
from pipeline.spec.pydantic_errors import convert, model_at
from pipeline.spec.resolve import expand_model, merged
from pipeline.spec.spec import Spec

_PART = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def parse_override(text: str) -> tuple[tuple[PathPart, ...], Any]:
    """``train.epochs=3`` or ``model.layers[0].filters=16`` (``layers.0`` works too), the value
    read as YAML (``1e-3`` is a number, ``[1, 2]`` a list), as ``dvc exp run -S`` writes them."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not of the form dotted.path=value")
    path: list[PathPart] = []
    for m in _PART.finditer(key):
        name, index = m.groups()
        path.append(int(index) if index is not None else int(name) if name.isdigit() else name)
    origin = f"-S {text}"
    if len(text) > yamlio.MAX_BYTES:
        raise yamlio.too_large(len(text), "the override", origin)
    try:
        loaded = yamlio.load_text(f"v: {value}" if value.strip() else "v: null", file=origin)
    except SpecError as err:  # the value's YAML: point into the override, past ``key=``
        shift = len(text) - len(value) - len("v: ")
        raise SpecError(
            [
                Problem(
                    p.message,
                    tuple(path),
                    Mark(origin, 1, p.mark.column + shift, (text,)) if p.mark else None,
                    code=p.code,
                    hint=p.hint,
                    source_line=text,
                )
                for p in err.problems
            ]
        ) from None
    return tuple(path), loaded["v"]


def apply_overrides(raw: Any, overrides: Iterable[str]) -> tuple[Any, list[Problem]]:
    """Set each dotted path; the new values' marks name the override, so errors point at it."""
    problems: list[Problem] = []
    out = yamlio.copy_node(raw)
    for text in overrides:
        origin = Mark(f"-S {text}", 1, 1)
        try:
            path, value = parse_override(text)
        except SpecError as err:
            problems += err.problems
            continue
        except ValueError as err:
            problems.append(Problem(str(err), (), origin, code="override"))
            continue
        node = out
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not isinstance(part, int) or not -len(node) <= part < len(node):
                    problems.append(
                        Problem(
                            f"index {part!r} is out of range (the list has {len(node)} items)",
                            path[: i + 1],
                            origin,
                            code="override",
                        )
                    )
                    break
            elif not isinstance(node, Mapping):
                problems.append(
                    Problem(
                        f"{format_path(path[:i])} is a value, not a section",
                        path[: i + 1],
                        origin,
                        code="override",
                    )
                )
                break
            elif not last and part not in node:
                node[part] = yamlio.mapping(_default_tag(out, path[: i + 1]), origin)
            if last:
                node[part] = value
                for attr in ("key_marks", "value_marks"):
                    if hasattr(node, attr):
                        getattr(node, attr)[part] = origin
                if hasattr(node, "item_marks") and isinstance(part, int):
                    node.item_marks[part] = origin
            else:
                node = node[part]
    return out, problems


def _default_tag(raw: Any, path: tuple[PathPart, ...]) -> dict:
    """For a section the file leaves out, the ``type`` of its default (``optimizer.lr=0.1`` on a
    spec without ``optimizer`` changes the default adam's rate)."""
    parent = model_at(Spec, raw, path[:-1])
    field = parent.model_fields.get(str(path[-1])) if parent else None
    kind = getattr(field.default, "type", None) if field else None
    return {"type": kind} if isinstance(kind, str) else {}


def _with_extends(raw: Any, file: Path, stack: tuple[Path, ...], roots: Roots) -> Any:
    base_ref = raw.get("extends") if isinstance(raw, Mapping) else None
    if base_ref is None:
        return raw
    mark = yamlio.locate(raw, ("extends",))
    if not isinstance(base_ref, str):
        raise SpecError([Problem("extends must be a file path", ("extends",), mark)])
    refused = roots.problem(base_ref, file.parent, ("extends",), spec_file=True)
    if refused is not None:  # before the target is opened: its text never reaches a message
        refused.mark = mark
        raise SpecError(_located([refused], raw))
    base_path = (file.parent / base_ref).resolve()
    if base_path in stack:
        chain = " -> ".join(p.name for p in (*stack, base_path))
        raise SpecError([Problem(f"extends goes round in a circle: {chain}", ("extends",), mark)])
    if not base_path.is_file():
        raise SpecError(
            [
                Problem(
                    f"base spec {base_ref!r} not found (looked at {base_path})",
                    ("extends",),
                    mark,
                    code="file-not-found",
                )
            ]
        )
    base = _with_extends(yamlio.load_file(base_path), base_path, (*stack, base_path), roots)
    own = yamlio.copy_node(raw)
    del own["extends"]
    return merged(base, own)


def resolve_raw(
    raw: Any, file: Path | None, overrides: Sequence[str] = (), *, roots: Roots | None = None
) -> Any:
    """The raw tree after extends, overrides, blocks and defaults: what pydantic validates.
    ``extends`` must name a spec file in ``roots`` (default: those of ``file``'s folder)."""
    problems: list[Problem] = []
    if file is not None:
        file = file.resolve()
        raw = _with_extends(raw, file, (file,), roots or Roots.for_folder(file.parent))
    if overrides:
        raw, problems = apply_overrides(raw, overrides)
    if isinstance(raw, Mapping) and "model" in raw:
        expanded = expand_model(raw["model"], problems, ("model",))
        problems = _located(problems, raw)  # against the tree as written
        raw["model"] = expanded
    if problems:
        raise SpecError(_located(problems, raw))
    return raw


def _located(problems: Iterable[Problem], raw: Any) -> list[Problem]:
    out: list[Problem] = []
    seen: dict[tuple, int] = {}
    for p in problems:
        if p.mark is None:
            want_key = p.code == "unknown-key"
            p.mark = (yamlio.key_mark if want_key else yamlio.locate)(raw, p.path)
        if p.mark is not None and p.source_line is None:
            p.source_line = p.mark.text
        # one mistake seen through two paths (a bad key in model.defaults, again in each layer
        # it reaches) is one error: at the same place, of the same kind, report it once, under
        # the key path where it is written
        key = (p.mark, p.code or p.message) if p.mark is not None else (None, p.message)
        if key not in seen:
            seen[key] = len(out)
            out.append(p)
        elif _nearness(raw, p) < _nearness(raw, out[seen[key]]):
            out[seen[key]] = p
    return out


def _nearness(raw: Any, p: Problem) -> tuple[float, float]:
    """How close the mapping or list holding ``p``'s key starts before ``p``'s mark: the key
    path where a mistake is written beats one it reached through defaults (whose container
    starts elsewhere, usually later)."""
    parent = yamlio.locate(raw, p.path[:-1]) if p.path else None
    mark = p.mark
    if parent is None or mark is None or parent.file != mark.file:
        return (float("inf"), float("inf"))
    if (parent.line, parent.column) > (mark.line, mark.column):
        return (float("inf"), float("inf"))
    return (mark.line - parent.line, mark.column - parent.column)


def validate_raw(
    raw: Any, *, base_dir: Path | None = None, check: bool = True, roots: Roots | None = None
) -> Spec:
    """Validate a resolved raw tree; SpecError carries every located error, warnings kept on
    ``spec.warnings``. Every path the spec names must lie in ``roots`` (default: those of
    ``base_dir``); none is opened before that is checked."""
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_located(convert(exc, raw, Spec), raw)) from None
    spec._base_dir = base_dir or Path.cwd()
    roots = roots or Roots.for_folder(spec._base_dir)
    problems = path_problems(spec, roots, spec._base_dir) + _unknown_checks(spec)
    if problems:
        raise SpecError(_located(problems, raw))
    problems = _load_reused(spec)
    if check and not problems:
        from pipeline.spec.checks import run_checks

        problems = run_checks(spec)
    problems = _located(problems, raw)
    if any(p.severity == "error" for p in problems):
        raise SpecError(problems)
    spec._warnings = problems
    return spec


def _unknown_checks(spec: Spec) -> list[Problem]:
    """``ignore_checks`` may name only registered checks: a misspelt one would silence
    nothing, and say nothing."""
    from pipeline.spec.checks import CHECKS

    return [
        Problem(
            f"unknown check {name!r}; checks: {', '.join(CHECKS)}",
            ("ignore_checks", i),
            code="unknown-name",
            hint=did_you_mean(name, CHECKS) or "`pipeline checks` lists them",
        )
        for i, name in enumerate(spec.ignore_checks)
        if name not in CHECKS
    ]


def _load_reused(spec: Spec) -> list[Problem]:
    from pipeline.spec.composite import Reuse
    from pipeline.spec.shapes import named_layers

    problems = []
    for path, _, layer in named_layers(spec.model.layers):
        if not isinstance(layer, Reuse):
            continue
        target = spec.path_of(layer.spec)
        try:
            layer._source = load_spec(target, check=False)
        except SpecError as err:
            problems.append(
                Problem(
                    f"the reused spec {layer.spec!r} has errors:\n" + err.format(source=False),
                    ("model", "layers", *path, "spec"),
                )
            )
    return problems


def load_spec(path: str | Path, overrides: Sequence[str] = (), *, check: bool = True) -> Spec:
    """Load, resolve and validate a spec file; raises SpecError listing every located problem.
    The overrides are kept, as given, on ``spec.overrides``."""
    file = Path(path)
    refused = check_spec_file(file)
    if refused is not None:  # never read a file that is not a spec (its text would show)
        raise SpecError([refused])
    roots = Roots.for_folder(file.resolve().parent)
    raw = resolve_raw(yamlio.load_file(file), file, overrides, roots=roots)
    spec = validate_raw(raw, base_dir=file.resolve().parent, check=check, roots=roots)
    spec._overrides = tuple(overrides)
    spec._source = file.resolve()
    return spec


def load_spec_text(
    text: str,
    overrides: Sequence[str] = (),
    *,
    file: str = "<string>",
    base_dir: str | Path | None = None,
    check: bool = True,
) -> Spec:
    """Like :func:`load_spec` for YAML text (what a Prefect flow is given); relative paths in it
    (``extends``, reused specs, data folders) are taken from ``base_dir``, by default the
    current folder, and must lie in that folder's project (``pipeline.spec.paths``)."""
    base = (Path(base_dir) if base_dir is not None else Path.cwd()).resolve()
    roots = Roots.for_folder(base)
    raw = yamlio.load_text(text, file=file)
    raw = resolve_raw(
        raw, base / Path(file).name if "extends" in raw else None, overrides, roots=roots
    )
    spec = validate_raw(raw, base_dir=base, check=check, roots=roots)
    spec._overrides = tuple(overrides)
    return spec


def to_yaml(spec: Spec) -> str:
    """The resolved spec (``Spec.resolved``) as YAML."""
    return yaml.safe_dump(spec.resolved(), sort_keys=False, default_flow_style=None, width=100)
