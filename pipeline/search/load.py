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
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError, create_model

from pipeline.search import space as space_
from pipeline.search.describe import budget_text, dist_text, shown_path
from pipeline.search.metric_check import lower_better, metric_names, metric_problem, per_epoch
from pipeline.search.schema import Choice, Distribution, Objective, Search
from pipeline.search.space_check import SpaceChecks, mark_within
from pipeline.search.storage_check import file_problem, folder_problem, url_problem
from pipeline.spec import yamlio
from pipeline.spec.base import StrictModel
from pipeline.spec.errors import Mark, PathPart, Problem, SpecError, did_you_mean, format_path
from pipeline.spec.load import _located, _with_extends, resolve_raw, validate_raw
from pipeline.spec.paths import Roots, check_spec_file
from pipeline.spec.pydantic_errors import convert
from pipeline.spec.spec import Spec

SCHEMA_FILE = "search.schema.json"
"""The search file's JSON Schema, at the project root next to ``spec.schema.json``."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
        lines = [f"search {self.name} ({shown_path(self.file)})"]
        base = f"  base: {shown_path(self.base_file)}"
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
        lines += [f"    {path}: {dist_text(d)}" for path, d in s.space.items()]
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
        lines.append(f"  budget: {budget_text(s, self.grid_size)}")
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


class _Loader(SpaceChecks):
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
        mark = mark_within(self.at(("overrides", i)), written, (p.mark.column - 1) if p.mark else 0)
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

    # -- objectives, sampler, pruner, budget --

    def check_objectives(self, search: Search) -> None:
        if not self.ok("objective"):
            return
        single = not isinstance(search.objective, list)
        spec = self.base_spec
        for i, objective in enumerate(search.objectives):
            at: tuple[PathPart, ...] = ("objective",) if single else ("objective", i)
            metric = objective.metric
            problem = metric_problem(metric, spec)
            if problem is not None:
                message, hint = problem
                self.add(
                    message,
                    (*at, "metric") if "metric" in _node(self.raw, at) else at,
                    hint=hint or did_you_mean(metric, metric_names(spec)),
                    code="unknown-metric",
                )
                continue
            natural = "minimize" if lower_better(metric) else "maximize"
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
            if not per_epoch(metric) and metric_problem(metric, None) is None:
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
            problem = folder_problem(folder)
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
            problem = file_problem(Path(written))
            if problem:
                self.add(f"the journal file {written} cannot be made: {problem}", at)
            return url
        problem = url_problem(url, search.budget.parallel if self.ok("budget") else 1)
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
