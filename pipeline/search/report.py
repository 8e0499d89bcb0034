"""What a search found, as files in its folder (``runs/<search>/``) and as Markdown.

- ``trials.csv``: every trial, its state, the spec value of each parameter (a mapping as one
  line of YAML), its objective values, epochs, duration and error;
- ``best.yaml``: a spec to train again, the base as its author wrote it (blocks, defaults and
  ``extends`` kept) with the search's overrides and the best trial's values, named
  ``<search>_best``; every relative path it names is rewritten so it validates where it lies;
- ``pareto.csv`` (several objectives): the trials of the Pareto front; best.yaml is then the
  front's trial best on the first objective;
- ``plots/*.png`` (Optuna's matplotlib plots): history, parallel coordinates, importances,
  intermediate values (per-epoch values), Pareto front; a plot the study cannot support yet
  is skipped, with the reason;
- ``report.md``: :func:`markdown`, the top trials as a table (also a Prefect artifact).

Every file is written atomically (:mod:`pipeline.atomic`): a dashboard or a second process
reading the folder while a search runs sees the old file or the new one.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.atomic import replacing, write_text
from pipeline.search import plot_server, plots, space
from pipeline.search.plots import (  # noqa: F401  (the plots' names, as report's)
    HISTORY,
    IMPORTANCES,
    INTERMEDIATE,
    PARALLEL,
    PARETO_FRONT,
    PLOTS,
)
from pipeline.spec import yamlio
from pipeline.spec.errors import SpecError

if TYPE_CHECKING:
    import optuna

    from pipeline.search.load import LoadedSearch

TRIALS = "trials.csv"
PARETO = "pareto.csv"
BEST = "best.yaml"
MARKDOWN = "report.md"

_SCHEMA_COMMENT = "# yaml-language-server: $schema="


class Report(dict[str, Path]):
    """The files written, by their name in the search folder (``"plots/history.png"``);
    ``skipped`` says, for each file not written, why (``{"plots/importances.png": "..."}``)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# the study's trials


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def _multi(loaded: LoadedSearch, study: optuna.Study) -> bool:
    return len(study.directions) > 1 or len(loaded.search.objectives) > 1


def _metrics(loaded: LoadedSearch) -> list[str]:
    return [o.metric for o in loaded.search.objectives]


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front of a study with several objectives (every best trial of one with one),
    best on the first objective first, then by number."""
    trials = study.best_trials
    if not trials:
        return []
    first = plots.signed(study, 0)
    return sorted(trials, key=lambda t: (first(t), t.number))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The trial best.yaml is made of: the best, or the front's best on the first objective;
    None while no trial has completed."""
    if not _complete(study):
        return None
    if len(study.directions) == 1:
        return study.best_trial
    trials = front(study)
    return trials[0] if trials else None


def _ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials, best first (several objectives: the front first, each part by the
    first objective)."""
    first = plots.signed(study, 0)
    on_front = {t.number for t in front(study)} if len(study.directions) > 1 else set()
    return sorted(_complete(study), key=lambda t: (t.number not in on_front, first(t), t.number))


def _columns(loaded: LoadedSearch, trials: Iterable[optuna.trial.FrozenTrial]) -> list[str]:
    """The parameter columns: the space's paths in order, then any other parameter a trial
    drew (a study continued with an edited search file)."""
    paths = list(loaded.search.space)
    extra = sorted({p for t in trials for p in t.params} - set(paths))
    return paths + extra


def _cell(value: Any) -> str:
    """A value for a CSV cell: text as it is, anything else as one line of YAML."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not isinstance(value, bool):
        return repr(value)
    return space.as_yaml(value)


def _duration(trial: optuna.trial.FrozenTrial) -> float | None:
    seconds = trial.user_attrs.get("duration_s")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return float(seconds)
    return trial.duration.total_seconds() if trial.duration is not None else None


def _rows(
    loaded: LoadedSearch, trials: Sequence[optuna.trial.FrozenTrial]
) -> tuple[list[str], list[list[str]]]:
    params = _columns(loaded, trials)
    header = ["number", "state", *params, *_metrics(loaded), "epochs", "duration_s", "error"]
    rows = []
    n_obj = len(loaded.search.objectives)
    for t in trials:
        values = space.from_params(loaded.search, t.params)
        objectives = list(t.values or [])[:n_obj]
        objectives += [None] * (n_obj - len(objectives))
        duration = _duration(t)
        epochs = t.user_attrs.get("epochs")
        error = t.user_attrs.get("error")
        rows.append(
            [
                str(t.number),
                t.state.name,
                *(_cell(values[p]) if p in values else "" for p in params),
                *("" if v is None else repr(float(v)) for v in objectives),
                "" if epochs is None else str(epochs),
                "" if duration is None else f"{duration:.3f}",
                "" if error is None else str(error),
            ]
        )
    return header, rows


def _csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# best.yaml


def _plain(value: Any) -> Any:
    """A loaded (located) tree as plain dicts and lists, as YAML dumps them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _reads_back(text: str) -> bool:
    """Whether ``text`` written plain reads back as that text with the spec's YAML 1.2 rules
    (PyYAML writes by YAML 1.1: ``1e3`` plain, which 1.2 reads as a number)."""
    if not text or text != text.strip() or "\n" in text:
        return False
    try:
        return yamlio.load_text(f"v: {text}", file="<best.yaml>") == {"v": text}
    except SpecError:
        return False


class _Dumper(yaml.SafeDumper):
    """Writes text that YAML 1.2 would read as something else in quotes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None if _reads_back(value) else "'"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(tree: Any) -> str:
    return yaml.dump(
        _plain(tree),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=None,
        width=100,
        allow_unicode=True,
    )


def _rebased(written: Any, source: Path, target: Path) -> Any:
    """A path written relative to the folder ``source``, relative to ``target`` instead;
    absolute paths, ``$placeholders`` of a block and non-text values as they are."""
    if not isinstance(written, str) or not written or "$" in written or "\0" in written:
        return written
    if os.path.isabs(written):
        return written
    return Path(os.path.relpath(os.path.realpath(source / written), target)).as_posix()


def _rebase_model(node: Any, fix: Callable[[Any], Any], *, kind: str | None = None) -> Any:
    """``node`` (within ``model``) with the paths its layers name rebased: a reused spec and
    its checkpoint, a backbone's weights file; ``kind`` names the layer kind of a
    ``defaults`` entry (which has no ``type``)."""
    if isinstance(node, list):
        return [_rebase_model(v, fix) for v in node]
    if not isinstance(node, Mapping):
        return node
    out = {k: v for k, v in node.items()}
    layer = kind or out.get("type")
    if layer == "reuse":
        for key in ("spec", "checkpoint"):
            if key in out:
                out[key] = fix(out[key])
    if layer == "backbone" and isinstance(out.get("weights"), Mapping):
        weights = dict(out["weights"])
        if "path" in weights:
            weights["path"] = fix(weights["path"])
        out["weights"] = weights
    for key, value in out.items():
        if key == "defaults" and isinstance(value, Mapping) and kind is None:
            out[key] = {k: _rebase_model(v, fix, kind=k) for k, v in value.items()}
        elif isinstance(value, Mapping | list) and key != "weights":
            out[key] = _rebase_model(value, fix)
    return out


def _rebase(tree: Any, source: Path, target: Path) -> Any:
    """The spec tree ``tree`` (plain), its paths written relative to ``source``, with each
    rewritten relative to ``target`` (the fields of :func:`pipeline.spec.paths.spec_paths`,
    and ``extends``; ``data.mirror`` is taken from the current folder, so it stays)."""

    def fix(written: Any) -> Any:
        return _rebased(written, source, target)

    if not isinstance(tree, Mapping):
        return tree
    out = dict(tree)
    if "extends" in out:
        out["extends"] = fix(out["extends"])
    data = out.get("data")
    if isinstance(data, Mapping):
        data = dict(data)
        for key in ("path", "test_path", "labels_file", "test_labels_file"):
            if key in data:
                data[key] = fix(data[key])
        if isinstance(data.get("validation"), Mapping) and "path" in data["validation"]:
            data["validation"] = {**data["validation"], "path": fix(data["validation"]["path"])}
        out["data"] = data
    if "model" in out:
        out["model"] = _rebase_model(out["model"], fix)
    return out


class _Flatten(Exception):
    """best.yaml cannot say it as a spec that extends the base's parent."""


def _child(parent: Any, target: Any, own: Any) -> Any:
    """What a spec extending ``parent`` writes so that the merge (mappings deep, anything else
    replaced) is ``target``: the keys ``own`` (the base file) wrote, and each value that
    differs from the parent's. Raises :class:`_Flatten` where the target drops a key the
    parent has (a whole mapping replaced by the search), which a merge cannot undo."""
    if not (isinstance(parent, Mapping) and isinstance(target, Mapping)):
        return target
    if set(parent) - set(target):
        raise _Flatten
    mine = own if isinstance(own, Mapping) else {}
    out = {}
    for key in [*(k for k in mine if k in target), *(k for k in target if k not in mine)]:
        if key not in parent:
            out[key] = target[key]
        elif key in mine or target[key] != parent[key]:
            out[key] = _child(parent[key], target[key], mine.get(key))
    return out


def _merged(parent: Any, over: Any) -> Any:
    if not (isinstance(parent, Mapping) and isinstance(over, Mapping)):
        return over
    out = dict(parent)
    for key, value in over.items():
        out[key] = _merged(parent[key], value) if key in parent else value
    return out


def best_spec(loaded: LoadedSearch, values: Mapping[str, Any], folder: Path) -> tuple[str, str]:
    """The YAML of the base spec with the search's overrides and ``values`` applied, named
    ``<search>_best``, its relative paths rewritten for a file in ``folder``; and a note on how
    ``extends`` was kept (empty when the base has none). Raises SpecError when the overrides
    do not apply (the search file changed since the trials ran)."""
    from pipeline.spec.load import _with_extends, apply_overrides
    from pipeline.spec.paths import Roots

    file = Path(loaded.base_file).resolve()
    source = file.parent
    target_dir = Path(os.path.realpath(folder))
    own = yamlio.load_file(file)
    roots = Roots.for_folder(source)
    parent = None
    if isinstance(own, Mapping) and isinstance(own.get("extends"), str):
        parent_file = (source / own["extends"]).resolve()
        parent = _plain(
            _with_extends(yamlio.load_file(parent_file), parent_file, (file, parent_file), roots)
        )
    tree = _with_extends(own, file, (file,), roots)  # what load_spec merges, then overrides
    tree, problems = apply_overrides(tree, space.overrides(loaded.search, values))
    if problems:
        raise SpecError(problems)
    tree = _plain(tree)
    tree["name"] = f"{loaded.name}_best"
    tree = _rebase(tree, source, target_dir)
    if parent is None:
        return _dump(tree), ""
    extends = _rebased(own["extends"], source, target_dir)
    try:
        child = _child(parent, tree, _plain(own))
        if _merged(parent, child) != tree:
            raise _Flatten
    except _Flatten:
        note = (
            f"# The base's extends ({own['extends']}) is merged in: the search replaces a "
            "section it sets whole.\n"
        )
        return _dump(tree), note
    ordered: dict[str, Any] = {}
    for key in own:  # extends where the base writes it
        if key == "extends":
            ordered["extends"] = extends
        elif key in child:
            ordered[key] = child[key]
    ordered.update({k: v for k, v in child.items() if k not in ordered})
    return _dump(ordered), ""


def _shown(path: Path) -> str:
    """A path relative to the current folder when it is inside it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _schema_comment(file: Path, target_dir: Path) -> str:
    """The base's ``yaml-language-server`` schema line, its relative path rebased."""
    try:
        first = file.read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return ""
    if not first.startswith(_SCHEMA_COMMENT):
        return ""
    schema = first[len(_SCHEMA_COMMENT) :].strip()
    if "://" not in schema:
        schema = str(_rebased(schema, file.parent, target_dir))
    return f"{_SCHEMA_COMMENT}{schema}\n"


def _objective_text(loaded: LoadedSearch, trial: optuna.trial.FrozenTrial) -> str:
    return ", ".join(
        f"{o.metric} = {_number(v)} ({o.resolved_direction()})"
        for o, v in zip(loaded.search.objectives, trial.values or [], strict=False)
    )


def best_yaml(loaded: LoadedSearch, trial: optuna.trial.FrozenTrial, folder: Path) -> str:
    """best.yaml's text for ``trial``: a comment naming the search, the trial and its values,
    then the spec (:func:`best_spec`)."""
    values = space.from_params(loaded.search, trial.params)
    body, note = best_spec(loaded, values, folder)
    base = Path(loaded.base_file)
    of = "the Pareto front's best on the first objective" if len(trial.values or []) > 1 else ""
    lines = [
        _schema_comment(base, Path(os.path.realpath(folder))).rstrip("\n"),
        f"# The best trial of the search {_one_line(_shown(Path(loaded.file)))} "
        f"(study {loaded.name}): trial {trial.number}{', ' + of if of else ''}",
        f"# {_one_line(_objective_text(loaded, trial))}",
        f"# The base {_one_line(_shown(base))} with the search's overrides and the trial's values:",
        *(f"#   {_one_line(o)}" for o in space.overrides(loaded.search, values)),
        note.rstrip("\n"),
    ]
    return "\n".join(line for line in lines if line) + "\n" + body


# ---------------------------------------------------------------------------------------------
# the report


def write_report(study: optuna.Study, loaded: LoadedSearch) -> Report:
    """Write trials.csv, best.yaml, pareto.csv (several objectives), the plots and report.md
    into ``loaded.folder``; the files written by name, and why any other was not. A plot the
    study cannot support yet is skipped (a stale one from before removed), never an error."""
    folder = Path(loaded.folder)
    report = Report()
    multi = _multi(loaded, study)
    drawn, skipped = plots.plan(study, multi)
    drawing = plot_server.begin(plots.snapshot(study, _metrics(loaded)), drawn, folder)
    try:  # the other files, while the plots are drawn
        _write_tables(study, loaded, folder, report)
    finally:
        results = drawing.wait()
    for name in PLOTS:
        if name in skipped:
            report.skipped[name] = skipped[name]
            (folder / name).unlink(missing_ok=True)  # from an earlier report of this folder
        elif name in results:
            if results[name] is None:
                report[name] = folder / name
            else:
                report.skipped[name] = str(results[name])

    write_text(folder / MARKDOWN, markdown(study, loaded, notes=report.skipped))
    report[MARKDOWN] = folder / MARKDOWN
    return report


def _write_tables(study: optuna.Study, loaded: LoadedSearch, folder: Path, report: Report) -> None:
    """trials.csv, pareto.csv (several objectives) and best.yaml, into ``report``."""
    header, rows = _rows(loaded, study.get_trials(deepcopy=False))
    write_text(folder / TRIALS, _csv(header, rows))
    report[TRIALS] = folder / TRIALS

    if _multi(loaded, study):
        on_front = front(study) if _complete(study) else []
        if on_front:
            write_text(folder / PARETO, _csv(*_rows(loaded, on_front)))
            report[PARETO] = folder / PARETO
        else:
            report.skipped[PARETO] = "no trial has completed yet"

    best = best_trial(study)
    if best is None:
        report.skipped[BEST] = "no trial has completed yet"
    else:
        try:
            text = best_yaml(loaded, best, folder)
        except SpecError as err:
            report.skipped[BEST] = (
                f"trial {best.number}'s values no longer apply to the base spec:\n"
                + err.format(source=False)
            )
        else:
            problem = _write_spec(folder / BEST, text)
            if problem is None:
                report[BEST] = folder / BEST
            else:
                report.skipped[BEST] = problem


class _Invalid(Exception):
    """best.yaml, written in its temp, does not validate."""


def _write_spec(path: Path, text: str) -> str | None:
    """Write best.yaml only if it validates where it lies (loaded from its temp beside it);
    else leave the old one and say why."""
    from pipeline.spec.load import load_spec

    try:
        with replacing(path) as tmp:  # .best.yaml.<random>.tmp.yaml: a spec file's name
            tmp.write_text(text, encoding="utf-8")
            try:
                load_spec(tmp)
            except SpecError as err:
                raise _Invalid(err.format(source=False)) from None
    except _Invalid as err:
        return f"the best trial's spec does not validate:\n{err}"
    return None


# ---------------------------------------------------------------------------------------------
# Markdown


def _number(value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _md(text: Any) -> str:
    """A table cell: one line, pipes escaped."""
    shown = _number(text) if not isinstance(text, str) else text
    return _one_line(shown).replace("\\", "\\\\").replace("|", "\\|")


def _md_value(value: Any) -> str:
    return _md(value if isinstance(value, str | int | float) else space.as_yaml(value))


def markdown(
    study: optuna.Study, loaded: LoadedSearch, top: int = 10, *, notes: Mapping[str, str] = ()
) -> str:
    """The search's state as Markdown: trial counts, the best trial (or the Pareto front), a
    table of the ``top`` completed trials, failed trials, and the plots not drawn and why
    (``notes``: more of those, from :func:`write_report`)."""
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    objectives = loaded.search.objectives
    metrics = _metrics(loaded)
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none"
    lines = [
        f"## Search `{_md(loaded.name)}`: {len(trials)} trials ({states})",
        "",
        f"Base: `{_md(_shown(Path(loaded.base_file)))}`; objective"
        f"{'s' if len(objectives) > 1 else ''}: "
        + ", ".join(f"{o.metric} ({o.resolved_direction()})" for o in objectives)
        + f"; folder: `{_md(_shown(Path(loaded.folder)))}`.",
        "",
    ]
    best = best_trial(study)
    if best is None:
        lines += ["No trial has completed yet.", ""]
    else:
        values = space.from_params(loaded.search, best.params)
        settings = ", ".join(f"`{_md(space.override_text(p, v))}`" for p, v in values.items())
        which = "Best on the first objective, on the Pareto front" if len(metrics) > 1 else "Best"
        lines += [
            f"**{which}: trial {best.number}**: {_md(_objective_text(loaded, best))}"
            + (f"; {settings}" if settings else ""),
            "",
        ]
        if len(metrics) > 1:
            numbers = ", ".join(str(t.number) for t in front(study))
            lines += [f"Pareto front: trials {numbers}.", ""]
    ranked = _ranked(study)[: max(top, 0)]
    if ranked:
        params = _columns(loaded, ranked)
        on_front = {t.number for t in front(study)} if len(metrics) > 1 else set()
        header = [
            "trial",
            *(["front"] if on_front else []),
            *metrics,
            *params,
            "epochs",
            "duration",
        ]
        lines += [
            f"Top {len(ranked)} of {len(_complete(study))} completed:",
            "",
            "| " + " | ".join(_md(h) for h in header) + " |",
            "|" + "---|" * len(header),
        ]
        for t in ranked:
            values = space.from_params(loaded.search, t.params)
            duration = _duration(t)
            cells = [
                str(t.number),
                *(["yes" if t.number in on_front else ""] if on_front else []),
                *(_md(v) for v in (t.values or [])),
                *(_md_value(values[p]) if p in values else "" for p in params),
                _md(t.user_attrs.get("epochs", "")),
                "" if duration is None else f"{duration:.1f} s",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    failed = [t for t in trials if t.state.name == "FAIL"]
    if failed:
        lines.append(f"Failed ({len(failed)}):")
        for t in failed[: max(top, 0)]:
            error = str(t.user_attrs.get("error") or "no error recorded").strip()
            first = error.splitlines()[0] if error else ""
            lines.append(f"- trial {t.number}: {_md(first[:200])}")
        lines.append("")
    skipped = {**plots.plan(study, _multi(loaded, study))[1], **dict(notes)}
    if skipped:
        lines.append("Not written:")
        lines += [f"- {name}: {_md(why)}" for name, why in skipped.items()]
        lines.append("")
    return "\n".join(lines)
