"""Load a search file and check everything a trial would trip on, before any trial runs.

The file is read as specs are (``pipeline.spec.yamlio``: marks, size limits, no tags, no
duplicate keys), validated against :class:`~pipeline.search.schema.Search`, and then checked
against its base spec: every searched path exists in the base's schema, both ends of every
range and every choice validate when applied to the base, ``when`` names earlier parameters
and values they can take, the objective's metric is one the trials record, the sampler and
pruner fit the objectives, the budget ends, and the storage can be opened. Every problem is
located in the search file (or, for the base spec's own errors, in the base) and all of them
are raised at once as one :class:`~pipeline.spec.errors.SpecError`. Nothing is created: no
study, no trial, no folder.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError, create_model

from pipeline.search import space as space_
from pipeline.search.schema import Choice, Distribution, FloatRange, IntRange, Objective, Search
from pipeline.spec import yamlio
from pipeline.spec.base import StrictModel
from pipeline.spec.errors import Mark, PathPart, Problem, SpecError, did_you_mean, format_path
from pipeline.spec.load import _located, _with_extends, parse_override, resolve_raw, validate_raw
from pipeline.spec.paths import Roots, check_spec_file
from pipeline.spec.pydantic_errors import convert, model_at
from pipeline.spec.spec import Spec

SCHEMA_FILE = "search.schema.json"
"""The search file's JSON Schema, at the project root next to ``spec.schema.json``."""

CONNECT_TIMEOUT_S = 5.0
"""How long a storage server may take to answer the check's connection."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+|\[-?\d+\])*$")
_HISTORY = re.compile(r"(val_)?(loss|accuracy|top(\d+)_accuracy)")
_TEST = re.compile(r"test_(loss|accuracy|top(\d+)_accuracy)")
_PER_CLASS = re.compile(r"(precision|recall|f1)/(.+)")
_MC = ("mc_test_accuracy", "mc_test_loss", "mc_ece", "mc_mean_spread")
_LOWER_BETTER = ("loss", "ece", "params", "mc_mean_spread")
_MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")


@dataclass(frozen=True)
class LoadedSearch:
    """A checked search file, with its base spec loaded and its storage settled."""

    search: Search
    """Validated."""
    file: Path
    """The search file, absolute."""
    name: str
    """``search.name`` or the file's stem: the study's name and ``runs/<name>``."""
    base_file: Path
    """The base spec, absolute."""
    base: Spec
    """The base spec loaded with ``search.overrides``."""
    folder: Path
    """``runs_root() / name``, relative like ``runs_root()``."""
    storage: str
    """The Optuna storage URL; ``journal:<path>`` as given (the engine opens a journal file)."""
    grid_size: int | None
    """Combinations of a grid sampler; None for the others."""
    warnings: list[Problem] = field(default_factory=list)

    def describe(self) -> str:
        """A few lines: base, objectives, each parameter, sampler, pruner, budget, storage."""
        s = self.search
        lines = [f"search {self.name} ({_shown_path(self.file)})"]
        base = f"  base: {_shown_path(self.base_file)}"
        if s.overrides:
            base += f" with {' '.join(s.overrides)}"
        lines.append(base)
        objectives = ", ".join(
            f"{o.metric} ({d})" for o, d in zip(s.objectives, s.directions, strict=True)
        )
        kind = "objectives (Pareto front)" if len(s.objectives) > 1 else "objective"
        lines.append(f"  {kind}: {objectives}")
        n = len(s.space)
        lines.append(f"  space: {n} parameter{'s' if n != 1 else ''}")
        lines += [f"    {path}: {_dist_text(d)}" for path, d in s.space.items()]
        sampler = s.sampler.type
        if s.sampler.type != "grid":
            sampler += f", seed {s.sampler.seed}" if s.sampler.seed is not None else ", unseeded"
        if s.sampler.startup_trials is not None:
            sampler += f", {s.sampler.startup_trials} random trials first"
        lines.append(f"  sampler: {sampler}")
        p = s.pruner
        pruner = p.type
        if p.type != "none":
            pruner += (
                f", after {p.warmup_epochs} warm-up epoch{'s' if p.warmup_epochs != 1 else ''}"
            )
            if p.type == "median":
                pruner += f" and {p.startup_trials} unpruned trials"
        lines.append(f"  pruner: {pruner}")
        lines.append(f"  budget: {_budget_text(s, self.grid_size)}")
        lines.append(f"  storage: {self.storage}")
        lines.append(f"  folder: {self.folder}")
        if self.grid_size is not None:
            lines.append(
                f"  grid: {self.grid_size} combination{'s' if self.grid_size != 1 else ''}"
            )
        return "\n".join(lines)


def search_schema() -> dict[str, Any]:
    """The search file's JSON Schema (draft 2020-12), as editors read it."""
    from pipeline.spec.reference import json_schema

    return json_schema(Search, "pipeline search file")


def search_schema_text() -> str:
    return json.dumps(search_schema(), indent=2, sort_keys=False) + "\n"


# ---- loading ------------------------------------------------------------------------------


def load_search(path: str | Path) -> LoadedSearch:
    """Read, validate and check a search file; raise SpecError with every located problem."""
    try:
        return _load_search(Path(path))
    except SpecError as err:
        raise SpecError(err.problems, subject="search file") from None


def _load_search(given: Path) -> LoadedSearch:
    if check_spec_file(given) is not None:  # never read a file that is not YAML
        raise SpecError(
            [
                Problem(
                    f"{str(given)!r} is not a search file (its name ends in .yaml or .yml)",
                    code="path-not-spec",
                )
            ]
        )
    if not given.is_file():
        why = f"{given} is a folder" if given.is_dir() else f"search file not found: {given}"
        raise SpecError([Problem(why, code="file-not-found")])
    raw = yamlio.load_file(given, require_mapping=False)
    if not isinstance(raw, yamlio.MappingNode):
        start = Mark(str(given), 1, 1)
        got = "empty" if raw is None else "a list" if isinstance(raw, list) else repr(raw)
        raise SpecError(
            [
                Problem(
                    f"a search file is a mapping like `base: ...`, `space: ...`; this one is {got}",
                    mark=getattr(raw, "mark", None) or start,
                    code="not-mapping",
                )
            ]
        )
    return _Loader(given, raw).load()


class _Base:
    """The base spec's tree after ``extends``, read once: every variant (the search's
    overrides and a value to try) is resolved and validated from a copy of it, as
    ``load_spec`` does, without reading the files again."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.roots = Roots.for_folder(file.parent)
        self.extended = _with_extends(yamlio.load_file(file), file, (file,), self.roots)

    def tree(self, overrides: Sequence[str]) -> tuple[Any, list[Problem]]:
        """The tree with ``overrides`` set, before blocks and defaults are expanded."""
        from pipeline.spec.load import apply_overrides

        return apply_overrides(self.extended, overrides)

    def spec(self, overrides: Sequence[str]) -> Spec:
        raw = resolve_raw(yamlio.copy_node(self.extended), None, overrides, roots=self.roots)
        spec = validate_raw(raw, base_dir=self.file.parent, roots=self.roots)
        spec._overrides = tuple(overrides)
        return spec


class _Loader:
    """One load: the problems found so far, and the checks that find them."""

    def __init__(self, given: Path, raw: yamlio.MappingNode) -> None:
        self.given, self.raw = given, raw
        self.file = given.resolve()
        self.problems: list[Problem] = []
        self.bad: set[str] = set()  # top-level keys (and "space.<key>") that did not validate
        self.base: _Base | None = None
        self.base_spec: Spec | None = None
        self.path_ok: dict[str, tuple[PathPart, ...]] = {}  # space keys whose path exists
        self.fixed = Search.model_construct(base="", space={})  # the overrides that apply

    # -- reporting --

    def at(self, path: Sequence[PathPart], *, key: bool = False) -> Mark | None:
        return (yamlio.key_mark if key else yamlio.locate)(self.raw, path)

    def add(
        self,
        message: str,
        path: Sequence[PathPart],
        *,
        key: bool = False,
        mark: Mark | None = None,
        hint: str | None = None,
        code: str = "search",
        severity: str = "error",
    ) -> None:
        mark = mark or self.at(path, key=key)
        self.problems.append(
            Problem(
                message,
                tuple(path),
                mark,
                severity=severity,  # type: ignore[arg-type]
                code=code,
                hint=hint or None,
                source_line=mark.text if mark else None,
            )
        )

    def warn(self, message: str, path: Sequence[PathPart], **kw: Any) -> None:
        self.add(message, path, severity="warning", **kw)

    def ok(self, name: str) -> bool:
        return name not in self.bad

    # -- the steps --

    def load(self) -> LoadedSearch:
        search = self.validate()
        name = self.check_name(search)
        self.load_base(search)
        self.check_space(search)
        self.check_objectives(search)
        self.check_sampler(search)
        self.check_budget(search)
        from pipeline.run import runs_root

        folder = runs_root() / name if name else None
        storage = ""
        if folder is not None and self.ok("storage"):
            storage = self.check_storage(search, folder)
        errors = any(p.severity == "error" for p in self.problems)
        if errors or folder is None or self.base is None or self.base_spec is None:
            raise SpecError(self.problems)  # each of those three comes with its error
        grid = space_.grid_size(search) if search.sampler.type == "grid" else None
        return LoadedSearch(
            search=search,
            file=self.file,
            name=name,
            base_file=self.base.file,
            base=self.base_spec,
            folder=folder,
            storage=storage,
            grid_size=grid,
            warnings=[*self.problems, *self.base_spec.warnings],
        )

    def validate(self) -> Search:
        """The validated search; on errors, a search of the parts that validate on their own
        (the rest marked bad), so the other checks still run and report at once."""
        try:
            return Search.model_validate(_plain(self.raw))
        except ValidationError as exc:
            problems = convert(exc, self.raw, Search)
        # objective's own errors, without the noise of its union's other branch (and without
        # the model's 'named twice', which _objective_problems says at objective)
        problems = [p for p in problems if p.path[:1] != ("objective",) and not _twice(p)]
        own = _objective_problems(self.raw)
        if own:
            self.bad.add("objective")
        problems += own
        for p in problems:
            if p.code == "too_short" and len(p.path) == 3 and p.path[-1] == "values":
                p.message = "a choice needs at least one value"
        self.problems += _located(problems, self.raw)
        return self.salvage()

    def salvage(self) -> Search:
        parts: dict[str, Any] = {}
        plain = _plain(self.raw)
        for name in Search.model_fields:
            if name not in plain:
                continue
            value = plain[name]
            if name == "space":
                parts[name] = {}
                if not isinstance(value, Mapping):
                    self.bad.add(name)
                    continue
                for key, dist in value.items():
                    try:
                        parts[name][key] = _distribution().validate_python(dist)
                    except ValidationError:
                        self.bad.add(f"space.{key}")
                continue
            try:
                parts[name] = _field(name).validate_python(value)
            except ValidationError:
                self.bad.add(name)
        for name in list(parts):
            if name in self.bad:
                del parts[name]
        if "base" not in parts:
            self.bad.add("base")
        parts.setdefault("base", "")
        parts.setdefault("space", {})
        return Search.model_construct(**parts)

    def check_name(self, search: Search) -> str | None:
        if not self.ok("name"):
            return None
        if search.name:
            return search.name
        stem = self.file.stem
        if _NAME.match(stem) and len(stem) <= 80:
            return stem
        fixed = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.-")[:80] or "search"
        self.add(
            f"the file's name {stem!r} cannot name the search (its study and runs/<name> "
            "folder): letters, digits, _ . - only, at most 80",
            ("name",),
            mark=self.raw.mark,
            hint=f"add `name: {fixed}`",
        )
        return None

    def load_base(self, search: Search) -> None:
        if not self.ok("base"):
            return
        written = search.base
        refused = Roots.for_folder(self.file.parent).problem(
            written, self.file.parent, ("base",), spec_file=True
        )
        if refused is not None:  # before the target is opened: its text never reaches a message
            self.add(refused.message, ("base",), hint=refused.hint, code=refused.code)
            return
        file = Path(os.path.realpath(self.file.parent / written))
        if not file.is_file():
            self.add(
                f"base spec {written!r} not found (looked at {file})",
                ("base",),
                code="file-not-found",
            )
            return
        try:
            self.base = _Base(file)
        except SpecError as err:
            self.base_failed(err, written)
            return
        overrides = list(search.overrides) if self.ok("overrides") else []
        good: list[str] = []
        for text in overrides:  # in order: each applies to the tree the earlier ones made
            _, problems = self.base.tree([*good, text])
            if problems:
                self.problems += [self.in_overrides(p, search) for p in problems]
            else:
                good.append(text)
        self.fixed = search.model_copy(update={"overrides": good})
        try:
            self.base_spec = self.base.spec(good)
        except SpecError as err:
            if all(self.from_override(p, search) is not None for p in err.errors):
                self.problems += [self.in_overrides(p, search) for p in err.problems]
            else:
                self.base_failed(err, written, search)

    def settings(self, values: Mapping[str, Any]) -> list[str]:
        """A trial's -S settings for ``values``: the overrides that apply, then the values."""
        return space_.overrides(self.fixed, values)

    def base_failed(self, err: SpecError, written: str, search: Search | None = None) -> None:
        """The base spec's own errors, where they are; and one here, at ``base``."""
        n = len(err.errors)
        with_overrides = " with the search's overrides" if search and search.overrides else ""
        self.add(
            f"the base spec {written!r}{with_overrides} does not validate: {n} "
            f"error{'s' if n != 1 else ''}, each reported at its place",
            ("base",),
            code="base-invalid",
        )
        self.problems += [
            self.in_overrides(p, search) if search else p for p in err.problems if p.mark
        ] + [p for p in err.problems if not p.mark]

    def from_override(self, p: Problem, search: Search) -> int | None:
        """The index in ``overrides`` of the -S setting ``p`` is located at, if it is one."""
        if p.mark is None or not p.mark.file.startswith("-S "):
            return None
        text = p.mark.file.removeprefix("-S ")
        return search.overrides.index(text) if text in search.overrides else None

    def in_overrides(self, p: Problem, search: Search) -> Problem:
        """``p`` moved from its ``-S`` origin to the override as written in the search file."""
        i = self.from_override(p, search)
        if i is None:
            return p
        written = search.overrides[i]
        mark = _within(self.at(("overrides", i)), written, (p.mark.column - 1) if p.mark else 0)
        what = format_path(p.path) if p.path else "override"
        return Problem(
            f"{what}: {p.message} (the base spec with override {written!r})",
            ("overrides", i),
            mark,
            severity=p.severity,
            code=p.code,
            hint=p.hint,
            source_line=mark.text if mark else None,
        )

    # -- the space --

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
                mark=_within(self.at(at, key=True), key, len(written)),
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

    # -- objectives, sampler, pruner, budget --

    def check_objectives(self, search: Search) -> None:
        if not self.ok("objective"):
            return
        single = not isinstance(search.objective, list)
        spec = self.base_spec
        for i, objective in enumerate(search.objectives):
            at: tuple[PathPart, ...] = ("objective",) if single else ("objective", i)
            metric = objective.metric
            problem = _metric_problem(metric, spec)
            if problem is not None:
                message, hint = problem
                self.add(
                    message,
                    (*at, "metric") if "metric" in _node(self.raw, at) else at,
                    hint=hint or did_you_mean(metric, _metric_names(spec)),
                    code="unknown-metric",
                )
                continue
            natural = "minimize" if _lower_better(metric) else "maximize"
            direction = objective.resolved_direction()
            if direction != natural:
                written = objective.direction is not None
                self.warn(
                    f"{metric} is better {'lower' if natural == 'minimize' else 'higher'}, "
                    f"but the search {direction}s it"
                    + ("" if written else " (the default direction for this metric)"),
                    (*at, "direction") if written else at,
                    hint=f"direction: {natural}",
                )

    def check_sampler(self, search: Search) -> None:
        sampler_ok, pruner_ok = self.ok("sampler"), self.ok("pruner")
        several = self.ok("objective") and len(search.objectives) > 1
        kind = search.sampler.type
        if several and sampler_ok and kind not in _MULTI_OBJECTIVE_SAMPLERS:
            self.add(
                f"the {kind} sampler optimizes one objective; this search has "
                f"{len(search.objectives)}",
                ("sampler", "type"),
                hint="for several objectives use " + ", ".join(_MULTI_OBJECTIVE_SAMPLERS),
            )
        if several and pruner_ok and search.pruner.type != "none":
            self.add(
                f"a {search.pruner.type} pruner cannot act on several objectives (Optuna "
                "prunes single-objective studies only)",
                ("pruner", "type"),
                hint="pruner: {type: none}, or one objective",
            )
        elif pruner_ok and search.pruner.type != "none" and self.ok("objective"):
            metric = search.objectives[0].metric
            if not _HISTORY.fullmatch(metric) and _metric_problem(metric, None) is None:
                self.warn(
                    f"the pruner never acts: {metric} is known only after a trial's "
                    "training, and pruning compares the metric epoch by epoch",
                    ("pruner", "type"),
                    hint="prune on a history metric (val_loss, val_accuracy), or pruner: none",
                )
        if not sampler_ok:
            return
        if kind == "cmaes":
            numeric = [k for k, d in search.space.items() if not isinstance(d, Choice)]
            for key, dist in search.space.items():
                if isinstance(dist, Choice):
                    self.warn(
                        "CMA-ES draws numeric ranges only: this choice is drawn at random",
                        ("space", key),
                        key=True,
                        hint="sampler tpe or gp model choices too",
                    )
            if len(numeric) < 2:
                self.warn(
                    "CMA-ES needs two or more numeric ranges; with fewer Optuna draws at random",
                    ("sampler", "type"),
                    hint="sampler: {type: tpe}",
                )
        if kind in ("grid", "random", "nsga2") and search.sampler.startup_trials is not None:
            self.warn(
                f"startup_trials is for tpe, gp and cmaes; the {kind} sampler ignores it",
                ("sampler", "startup_trials"),
                key=True,
            )

    def check_budget(self, search: Search) -> None:
        if not self.ok("budget") or not self.ok("sampler"):
            return
        b = search.budget
        if search.sampler.type == "grid":
            if self.ok("space") and not any(k.startswith("space.") for k in self.bad):
                size = space_.grid_size(search)
                if b.trials is not None and b.trials < size:
                    self.warn(
                        f"budget.trials ({b.trials}) is less than the grid's {size} "
                        f"combinations: {size - b.trials} will not be tried",
                        ("budget", "trials"),
                    )
            return
        if b.trials is None and b.timeout is None:
            self.add(
                "the search would never end: the budget needs trials or timeout (or both)",
                ("budget",),
                key=True,
                mark=None if "budget" in self.raw else self.raw.mark,
                hint="budget: {trials: 20} or budget: {timeout: 2h}",
                code="missing",
            )

    # -- storage --

    def check_storage(self, search: Search, folder: Path) -> str:
        at = ("storage",)
        url = search.storage
        if url is None:
            problem = _folder_problem(folder)
            if problem:
                self.add(
                    f"the study's default storage {folder / 'study.db'} cannot be made: {problem}",
                    at,
                    mark=self.raw.mark,
                    hint="set PIPELINE_RUNS_DIR, or storage: to a URL or journal:<file>",
                    code="storage",
                )
            return f"sqlite:///{(folder / 'study.db').resolve()}"
        if url.startswith("journal:"):
            written = url.removeprefix("journal:").strip()
            if not written:
                self.add("journal: needs a file, e.g. journal:runs/study.log", at, code="storage")
                return url
            problem = _file_problem(Path(written))
            if problem:
                self.add(f"the journal file {written} cannot be made: {problem}", at)
            return url
        problem = _url_problem(url, search.budget.parallel if self.ok("budget") else 1)
        if problem is not None:
            message, severity = problem
            self.add(message, at, severity=severity, code="storage")
        return url


# ---- helpers ------------------------------------------------------------------------------


@functools.cache
def _distribution() -> TypeAdapter:
    return TypeAdapter(Distribution)


@functools.cache
def _field(name: str) -> TypeAdapter:
    info = Search.model_fields[name]
    return TypeAdapter(Annotated[info.annotation, info])


def _objectives(value: Any) -> list[Objective]:
    return list(value) if isinstance(value, list) else [value]


@functools.cache
def _objective_holder(several: bool) -> type[StrictModel]:
    """A model with the one field ``objective`` as one branch of its union (a mapping, or a
    list of them), so its errors carry no noise from the other branch."""
    ann: Any = Objective
    if several:
        ann = Annotated[list[Objective], Field(min_length=1, max_length=4)]
    return create_model("ObjectiveOnly", __base__=StrictModel, objective=(ann, ...))


def _objective_problems(raw: Mapping) -> list[Problem]:
    """``objective``'s errors, validated as the branch it is written as; an objective named
    twice too."""
    if "objective" not in raw:
        return []
    value = raw["objective"]
    if not isinstance(value, Mapping | list):
        return [
            Problem(
                "objective is a mapping such as {metric: val_accuracy}, or a list of them",
                ("objective",),
                code="objective",
            )
        ]
    holder = _objective_holder(isinstance(value, list))
    try:
        objectives = _objectives(holder.model_validate({"objective": _plain(value)}).objective)
    except ValidationError as exc:
        return convert(exc, raw, holder)
    metrics = [o.metric for o in objectives]
    if len(set(metrics)) < len(metrics):
        return [
            Problem(f"an objective is named twice: {metrics}", ("objective",), code="objective")
        ]
    return []


def _plain(value: Any) -> Any:
    """The loaded tree as plain dicts and lists: what a search holds (its choices are dumped
    as YAML and compared), without the marks, which stay on the tree errors are located in."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _twice(p: Problem) -> bool:
    """The model's own error for an objective named twice (its path is the top level)."""
    return not p.path and p.message.startswith("an objective is named twice")


def _node(raw: Any, path: Sequence[PathPart]) -> Any:
    node = raw
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node


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


def _within(mark: Mark | None, written: str, offset: int) -> Mark | None:
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


def _classes(spec: Spec | None) -> list[str] | None:
    if spec is None:
        return None
    names = spec.data.source_classes()
    sel = spec.data.classes
    if names is None:
        return None
    return sel.names(names) if sel is not None else list(names)


def _metric_names(spec: Spec | None) -> list[str]:
    """The metrics a trial of ``spec`` records (without the per-class ones)."""
    history = ["loss", "accuracy"]
    if spec is not None:
        history += [f"top{k}_accuracy" for k in spec.train.top_k]
    names = list(history)
    if spec is None or spec.data.validation is not None:
        names += [f"val_{m}" for m in history]
    test_k = sorted(set(spec.evaluate.top_k) | set(spec.train.top_k)) if spec else []
    names += ["test_loss", "test_accuracy", *(f"test_top{k}_accuracy" for k in test_k)]
    names += ["macro_f1", "ece", "params"]
    if spec is None or spec.evaluate.mc_dropout is not None:
        names += list(_MC)
    if spec is None or spec.evaluate.fold_batch_norm:
        names.append("fold_test_accuracy")
    return names


def _metric_problem(metric: str, spec: Spec | None) -> tuple[str, str | None] | None:
    """Why no trial of ``spec`` records ``metric`` (message, hint); None when one does."""
    known = (
        "loss, accuracy, topK_accuracy (each as it is, or with val_ or test_), macro_f1, "
        "ece, params, precision/<class>, recall/<class>, f1/<class>, mc_test_accuracy, "
        "mc_test_loss, mc_ece, mc_mean_spread, fold_test_accuracy"
    )
    history, test, per_class = (
        _HISTORY.fullmatch(metric),
        _TEST.fullmatch(metric),
        _PER_CLASS.fullmatch(metric),
    )
    if not (
        history
        or test
        or per_class
        or metric in ("macro_f1", "ece", "params", "fold_test_accuracy", *_MC)
    ):
        return f"unknown metric {metric!r}; valid: {known}", None
    if spec is None:
        return None
    if history and history.group(1) and spec.data.validation is None:
        return (
            f"{metric} needs a validation split: the base spec has no data.validation, so "
            "trials record no val_ metrics",
            f"add data.validation to the base (or overrides), or use {metric[4:]} or test_"
            f"{metric[4:]}",
        )
    k = (history and history.group(3)) or (test and test.group(2))
    if k and history and int(k) not in spec.train.top_k:
        return (
            f"{metric} is recorded only for k in train.top_k (the base has {spec.train.top_k})",
            f"add train.top_k=[{k}] to overrides",
        )
    if k and test and int(k) not in {*spec.evaluate.top_k, *spec.train.top_k}:
        return (
            f"{metric} is recorded only for k in evaluate.top_k (the base has "
            f"{spec.evaluate.top_k})",
            f"add evaluate.top_k=[{k}] to overrides",
        )
    classes = _classes(spec)
    if per_class and classes is not None and per_class.group(2) not in classes:
        return (
            f"the base spec has no class {per_class.group(2)!r}; its classes: "
            + ", ".join(classes),
            did_you_mean(per_class.group(2), classes) or None,
        )
    if per_class and not spec.evaluate.per_class:
        return f"{metric} needs evaluate.per_class: true", None
    if metric in _MC and spec.evaluate.mc_dropout is None:
        return f"{metric} needs evaluate.mc_dropout in the base spec", None
    if metric == "fold_test_accuracy" and not spec.evaluate.fold_batch_norm:
        return f"{metric} needs evaluate.fold_batch_norm: true in the base spec", None
    return None


def _lower_better(metric: str) -> bool:
    return "loss" in metric or metric in _LOWER_BETTER or metric.endswith("_ece")


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` can neither be used nor made (nothing is created); None when it can."""
    path = Path(os.path.abspath(folder))
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"the folder {path} is not writable"
        return None
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, so no folder can be made inside it"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"the folder {parent} is not writable, so {path} cannot be made in it"
            return None
    return f"none of the folders above {path} exists"


def _file_problem(file: Path) -> str | None:
    if file.is_dir():
        return f"{file} is a folder"
    return _folder_problem(file.parent)


def _url_problem(url: str, parallel: int) -> tuple[str, str] | None:
    """Why the storage ``url`` cannot be opened (message, severity); None when it can."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as err:
        return (
            f"{url!r} is not a storage URL ({err}); write sqlite:///<file>, "
            "postgresql://user@host/db, or journal:<file>",
            "error",
        )
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or "mode=memory" in str(parsed.query):
            if parallel > 1:
                return (
                    "an in-memory SQLite database is one process's own: parallel trials "
                    "cannot share it; name a file (sqlite:///runs/study.db)",
                    "error",
                )
            return (
                "an in-memory SQLite database: the study is lost when the search ends and "
                "cannot be continued",
                "warning",
            )
        problem = _file_problem(Path(database))
        if problem:
            return f"the SQLite database {database} cannot be made: {problem}", "error"
        return None
    return _connect_problem(url, parsed)


def _connect_problem(url: str, parsed: Any) -> tuple[str, str] | None:
    """Connect once, with a short timeout, to a storage server; never creates anything."""
    import sqlalchemy
    from sqlalchemy.exc import NoSuchModuleError
    from sqlalchemy.pool import NullPool

    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    connect_args = (
        {"connect_timeout": int(CONNECT_TIMEOUT_S)}
        if backend
        in (
            "postgresql",
            "mysql",
            "mariadb",
        )
        else {}
    )
    try:
        engine = sqlalchemy.create_engine(parsed, connect_args=connect_args, poolclass=NullPool)
    except NoSuchModuleError:
        return f"{shown}: SQLAlchemy has no database kind {parsed.drivername!r}", "error"
    except ModuleNotFoundError as err:
        driver = err.name or parsed.drivername
        return (
            f"{shown}: the {backend} driver {driver!r} is not installed in this environment "
            f"(pip install {_driver_package(driver)}), so the storage cannot be opened",
            "error",
        )
    except Exception as err:  # bad options in the URL
        return f"{shown}: {type(err).__name__}: {err}", "error"
    outcome: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            with engine.connect():
                outcome["error"] = None
        except BaseException as err:  # reported, never raised
            outcome["error"] = err

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 1)
    if "error" not in outcome:
        return f"{shown}: the server did not answer within {CONNECT_TIMEOUT_S:g} s", "error"
    err = outcome["error"]
    engine.dispose()
    if err is None:
        return None
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return f"cannot reach the storage {shown}: {text[0] if text else type(err).__name__}", "error"


def _driver_package(module: str) -> str:
    known = {
        "psycopg": "'psycopg[binary]'",
        "psycopg2": "psycopg2-binary",
        "MySQLdb": "mysqlclient",
    }
    return known.get(module, module)


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _number(value: float) -> str:
    return space_.as_yaml(value)


def _dist_text(dist: Any) -> str:
    if isinstance(dist, Choice):
        text = "choice of " + ", ".join(str(label) for label in space_.labels(dist))
    else:
        kind = "int" if isinstance(dist, IntRange) else "float"
        text = f"{kind} {_number(dist.low)} to {_number(dist.high)}"
        if dist.step is not None and not (isinstance(dist, IntRange) and dist.step == 1):
            text += f" in steps of {_number(dist.step)}"
        if dist.log:
            text += ", log scale"
    if dist.when:
        text += " when " + ", ".join(f"{k} = {space_.as_yaml(v)}" for k, v in dist.when.items())
    return text


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size) * 10 == int((seconds / size) * 10):
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _budget_text(search: Search, grid_size: int | None) -> str:
    b = search.budget
    parts = []
    if b.trials is not None:
        parts.append(f"{b.trials} trials")
    elif grid_size is not None:
        parts.append(f"{grid_size} trials (the grid)")
    if b.timeout is not None:
        parts.append(f"no new trial after {_duration_text(b.timeout)}")
    parts.append(f"{b.parallel} at a time")
    return ", ".join(parts)
