"""The checks of a search's space, a mixin of the search file's loader
(:mod:`pipeline.search.load`): each key is a path of the base spec's schema, each distribution
well formed (and a grid's ranges stepped), ``when`` names earlier parameters and values they
take, and both ends of every range and every choice validate when applied to the base. Each
problem is located at its key or value in the search file."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pipeline.search import space as space_
from pipeline.search.schema import Choice, FloatRange, IntRange, Search
from pipeline.spec.errors import Mark, PathPart, SpecError, did_you_mean, format_path
from pipeline.spec.load import parse_override
from pipeline.spec.pydantic_errors import model_at
from pipeline.spec.spec import Spec

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+|\[-?\d+\])*$")


class SpaceChecks:
    """The loader's checks of ``space`` (its ``add``, ``warn``, ``at``, ``ok``, ``base`` and
    ``settings`` are the loader's)."""

    def check_space(self, search: Search) -> None:
        keys = list(search.space)
        for key, dist in search.space.items():
            at = ("space", key)
            self.check_distribution(search, key, dist)
            self.check_when(search, key, dist, keys)
            parts = self.check_path(search, key)
            if parts is not None:
                self.path_ok[key] = parts
            for i, text in enumerate(search.overrides if self.ok("overrides") else []):
                if parts is not None and _override_parts(text) == parts:
                    self.warn(
                        f"{key} is also set by overrides[{i}]; each trial's drawn value "
                        "replaces it",
                        at,
                        key=True,
                    )
        if self.base_spec is None:
            return
        for key, dist in search.space.items():
            if key in self.path_ok and self.distribution_ok(key):
                self.check_values(search, key, dist)

    def distribution_ok(self, key: str) -> bool:
        """Whether ``key``'s distribution and ``when`` passed their own checks."""
        at = ("space", key)
        return not any(
            p.severity == "error" and p.path[: len(at)] == at and len(p.path) > 2
            for p in self.problems
        )

    def check_distribution(self, search: Search, key: str, dist: Any) -> None:
        at = ("space", key)
        grid = search.sampler.type == "grid" and self.ok("sampler")
        if isinstance(dist, Choice):
            return
        if dist.low >= dist.high:
            self.add(
                f"low ({dist.low}) must be less than high ({dist.high})",
                (*at, "low"),
                hint="for a fixed value, set it in overrides instead",
            )
        elif dist.log and dist.low <= 0:
            self.add(
                f"a log range needs low > 0 (got {dist.low}): the logarithm of {dist.low} "
                "does not exist",
                (*at, "low"),
            )
        if isinstance(dist, IntRange) and dist.log and dist.step != 1:
            self.add(
                f"a log range of integers is drawn in steps of 1 (got step {dist.step})",
                (*at, "step"),
                hint="remove step or log",
            )
        if isinstance(dist, FloatRange) and dist.log and dist.step is not None:
            self.add(
                "a log range cannot have a step (Optuna samples one or the other)",
                (*at, "step"),
                hint="remove step or log",
            )
        if isinstance(dist, FloatRange) and dist.step is None and grid:
            self.add(
                "the grid sampler tries every value: a float range needs a step",
                at,
                key=True,
                hint=f"add step, e.g. {{step: {_nice_step(dist)}}}, or make it a choice",
            )
        if dist.low < dist.high and dist.step is not None and not (dist.log and dist.step != 1):
            top = _top(dist)
            if not math.isclose(top, dist.high, rel_tol=1e-9, abs_tol=1e-12):
                self.warn(
                    f"high ({dist.high}) is not low plus a whole number of steps of "
                    f"{dist.step}: the largest value drawn is {top}",
                    (*at, "high"),
                )

    def check_when(self, search: Search, key: str, dist: Any, keys: list[str]) -> None:
        if not dist.when:
            return
        at = ("space", key, "when")
        if search.sampler.type == "grid" and self.ok("sampler"):
            self.add(
                "the grid sampler tries every combination: it cannot leave a parameter out",
                at,
                key=True,
                hint="remove when, or search the cases in separate files",
            )
        earlier = keys[: keys.index(key)]
        for name, value in dist.when.items():
            if name not in earlier:
                if name == key:
                    why = "a parameter cannot depend on itself"
                elif name in keys:
                    why = f"{name!r} comes after {key!r} in space: move {key!r} below it"
                else:
                    why = f"it is not a parameter of space (earlier ones: {', '.join(earlier)})"
                    if not earlier:
                        why = "it is not a parameter of space before this one (there is none)"
                self.add(
                    f"when names {name!r}, which is not drawn before this parameter: {why}",
                    (*at, name),
                    key=True,
                    hint=did_you_mean(name, keys) if name not in keys else None,
                )
                continue
            other = search.space[name]
            if isinstance(other, Choice):
                if not any(_same(value, v) for v in other.values):
                    shown = ", ".join(space_.as_yaml(v) for v in other.values)
                    plain = [v for v in other.values if isinstance(v, str)]
                    self.add(
                        f"{name} is never {space_.as_yaml(value)}: its choices are {shown}",
                        (*at, name),
                        hint=did_you_mean(str(value), plain) if isinstance(value, str) else None,
                    )
            elif isinstance(value, bool) or not isinstance(value, int | float):
                self.add(
                    f"{name} is a number from {other.low} to {other.high}, never "
                    f"{space_.as_yaml(value)}",
                    (*at, name),
                )
            elif not other.low <= value <= other.high:
                self.add(
                    f"{name} is drawn from {other.low} to {other.high}: never {value}",
                    (*at, name),
                )

    def check_path(self, search: Search, key: str) -> tuple[PathPart, ...] | None:
        """The parts of ``key`` if it names a field of the base spec; else a problem."""
        at = ("space", key)
        if not _PATH.match(key):
            self.add(
                f"{key!r} is not a spec path: dotted names and [index], as -S writes them "
                "(optimizer.lr, model.layers[6].units)",
                at,
                key=True,
            )
            return None
        parts, _ = parse_override(f"{key}=null")
        if self.base is None:
            return None
        dist = search.space[key]
        conditions = {k: v for k, v in (dist.when or {}).items() if k in search.space}
        tree, problems = self.base.tree(self.settings(conditions))
        if problems:
            return None  # its conditions fail: reported at their own parameters
        found = _path_problem(tree, parts, key)
        if found is not None:
            message, hint, i = found
            written = key[: _offset(key, parts, i)]
            self.add(
                message,
                at,
                mark=mark_within(self.at(at, key=True), key, len(written)),
                hint=hint,
                code="unknown-path",
            )
            return None
        return parts if self.check_kinds(search, key, parts, conditions) else None

    def check_kinds(
        self, search: Search, key: str, parts: tuple[PathPart, ...], conditions: dict
    ) -> bool:
        """``key`` must be a field for every value of a choice that changes the kind of a
        section it is in (``optimizer.type``, or ``optimizer`` itself), unless its ``when``
        fixes that choice: ``optimizer.momentum`` does not exist when the optimizer is adam."""
        keys = list(search.space)
        for other, dist in search.space.items():
            if other == key or other in conditions or not isinstance(dist, Choice):
                continue
            q = _override_parts(f"{other}=null")
            if q is None or not _changes_kind(q, parts):
                continue
            works, fails = [], []
            for value in dist.values:
                tree, problems = self.base.tree(self.settings({**conditions, other: value}))
                found = None if problems else _path_problem(tree, parts, key)
                (fails if found else works).append((value, found))
            if not fails:
                continue
            value, (message, _, _) = fails[0]
            hint = None
            if len(works) == 1:
                hint = f"add when: {{{other}: {space_.as_yaml(works[0][0])}}}"
                if keys.index(other) > keys.index(key):
                    hint += f" and move {key} below {other}"
            self.add(
                f"{key} is not a field when {other} is {space_.as_yaml(value)}: {message}",
                ("space", key),
                key=True,
                hint=hint,
                code="unknown-path",
            )
            return False
        return True

    def check_values(self, search: Search, key: str, dist: Any) -> None:
        """Each end of a range and each choice, applied to the base, must validate."""
        at = ("space", key)
        conditions = {k: v for k, v in (dist.when or {}).items() if k in search.space}
        tries: list[tuple[Any, tuple[PathPart, ...], str]] = []
        if isinstance(dist, Choice):
            tries = [(v, (*at, "values", i), "") for i, v in enumerate(dist.values)]
        else:
            top = _top(dist) if dist.step is not None else dist.high
            note = "" if top == dist.high else f" (the largest value drawn, {top})"
            tries = [(dist.low, (*at, "low"), ""), (top, (*at, "high"), note)]
        base_settings = self.settings(conditions)
        if conditions:
            try:
                self.base.spec(base_settings)  # type: ignore[union-attr]
            except SpecError:
                return  # the condition's own value is reported at its parameter
        for value, where, note in tries:
            settings = self.settings({**conditions, key: value})
            try:
                self.base.spec(settings)  # type: ignore[union-attr]
            except SpecError as err:
                quoted = "; ".join(
                    f"{format_path(p.path)}: {p.message}" if p.path else p.message
                    for p in err.errors
                )
                hints = [p.hint for p in err.errors if p.hint]
                when = (
                    " with " + ", ".join(space_.override_text(k, v) for k, v in conditions.items())
                    if conditions
                    else ""
                )
                self.add(
                    f"the base spec rejects {space_.override_text(key, value)}{note}{when}: "
                    f"{quoted}",
                    where,
                    hint=hints[0] if hints else None,
                    code="value-rejected",
                )


def _path_problem(
    tree: Any, parts: tuple[PathPart, ...], key: str
) -> tuple[str, str | None, int] | None:
    """Why ``parts`` names no field of a spec whose tree is ``tree`` (message, hint, index
    of the part at fault); None when it does. Sections the tree leaves out are taken as
    their defaults, as ``-S`` fills them in."""
    from pipeline.spec.load import apply_overrides

    filled, problems = apply_overrides(tree, [f"{key}=null"])
    root = node = tree if problems else filled
    for i, part in enumerate(parts):
        where = format_path(parts[:i])
        if isinstance(node, list):
            if not isinstance(part, int):
                return f"{where} is a list: name an item by its index, {where}[0]", None, i
            if not -len(node) <= part < len(node):
                return (
                    f"{where} has {len(node)} items (indices 0 to {len(node) - 1}, as written "
                    f"in the base spec): there is no [{part}]",
                    None,
                    i,
                )
            node = node[part]
            continue
        cls = model_at(Spec, root, parts[:i])
        if cls is None:
            if isinstance(node, Mapping):
                return None  # a free mapping (block params, dataset options): any key
            return (
                f"{where} is a value ({space_.as_yaml(node)}), not a section: it has no {part!r}",
                None,
                i,
            )
        if isinstance(part, int):
            return f"{where or 'the spec'} is a section, not a list: there is no [{part}]", None, i
        names = sorted(
            {n for n in cls.model_fields if n != "from_"}
            | {f.alias for f in cls.model_fields.values() if f.alias}
        )
        if part not in names:
            kind = node.get("type") if isinstance(node, Mapping) else None
            place = f"in {where} ({kind})" if kind and i else f"in {where}" if i else "at the top"
            return (
                f"the spec has no {part!r} {place}; valid keys there: {', '.join(names)}",
                did_you_mean(part, names) or None,
                i,
            )
        node = node.get(part) if isinstance(node, Mapping) else None
    return None


def _changes_kind(choice: tuple[PathPart, ...], path: tuple[PathPart, ...]) -> bool:
    """Whether a choice at ``choice`` can change what kind of section ``path`` lies in: it
    sets a section above ``path``, or the ``type`` of one."""
    if len(choice) < len(path) and path[: len(choice)] == choice:
        return True
    section = choice[:-1]
    return choice[-1] == "type" and path != choice and path[: len(section)] == section != path


def _override_parts(text: str) -> tuple[PathPart, ...] | None:
    try:
        return parse_override(text)[0]
    except (SpecError, ValueError):
        return None


def _offset(key: str, parts: tuple[PathPart, ...], i: int) -> int:
    """How many characters of ``key`` come before its ``i``-th part."""
    pieces = re.findall(r"[^.\[\]]+|\[-?\d+\]", key)
    text = ""
    for j, piece in enumerate(pieces[:i]):
        text += piece
        nxt = pieces[j + 1] if j + 1 < len(pieces) else ""
        if not nxt.startswith("["):
            text += "."
    return len(text)


def mark_within(mark: Mark | None, written: str, offset: int) -> Mark | None:
    """``mark`` moved ``offset`` characters into ``written`` when the line holds it there
    (as a plain or quoted scalar); else ``mark`` as it is."""
    if mark is None or offset <= 0:
        return mark
    line = mark.text or ""
    rest = line[mark.column - 1 :]
    for quote in ("", '"', "'"):
        if rest.startswith(quote + written):
            return Mark(mark.file, mark.line, mark.column + len(quote) + offset, mark.source)
    return mark


def _top(dist: IntRange | FloatRange) -> float:
    """The largest value a stepped range draws (Optuna's high, adjusted down to a step)."""
    assert dist.step is not None
    steps = math.floor((dist.high - dist.low) / dist.step + 1e-9)
    top = dist.low + steps * dist.step
    return int(top) if isinstance(dist, IntRange) else round(top, 12)


def _nice_step(dist: FloatRange) -> str:
    return space_.as_yaml(float(f"{(dist.high - dist.low) / 4:.2g}"))


def _same(a: Any, b: Any) -> bool:
    """Equal as ``when`` compares them, but ``True`` is not ``1``."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return (type(a) is type(b) or numbers) and a == b
