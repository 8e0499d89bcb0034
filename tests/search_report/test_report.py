"""A search's report from real Optuna studies (in memory and in SQLite) driven by a synthetic
objective over the real space: trials.csv, best.yaml (a spec that validates where it lies and
holds the best trial's values), pareto.csv, the PNG plots and the Markdown table."""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
import struct
import textwrap
import warnings
from pathlib import Path
from typing import Any

import matplotlib.image
import optuna
import pytest
import yaml
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from pipeline.search import space
from pipeline.search.report import (
    BEST,
    HISTORY,
    IMPORTANCES,
    INTERMEDIATE,
    MARKDOWN,
    PARALLEL,
    PARETO,
    PARETO_FRONT,
    TRIALS,
    _rebase,
    markdown,
    write_report,
)
from pipeline.search.schema import Search
from pipeline.spec.load import load_spec, parse_override
from pipeline.spec.paths import spec_paths

REPO = Path(__file__).resolve().parents[2]

# The fields of pipeline.search.load.LoadedSearch the report reads, built here directly so
# these tests do not depend on the search file's checks.
Loaded = dataclasses.make_dataclass(
    "Loaded",
    ["search", "file", "name", "base_file", "base", "folder", "storage", "grid_size"],
    frozen=True,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the current one) holding a copy of the repo's specs."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 't'\n")
    (tmp_path / "specs").mkdir()
    for name in ("mnist_convnet.yaml", "fashion_task_a.yaml", "fashion_task_b_on_a.yaml"):
        shutil.copy(REPO / "specs" / name, tmp_path / "specs" / name)
    (tmp_path / "searches").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _loaded(project: Path, name: str, data: dict[str, Any], storage: str = "memory") -> Any:
    data = {"base": "../specs/mnist_convnet.yaml", **data}
    search = Search.model_validate(data)
    file = project / "searches" / f"{name}.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False))
    base_file = (file.parent / search.base).resolve()
    folder = Path("runs") / name
    folder.mkdir(parents=True, exist_ok=True)
    if storage == "sqlite":
        storage = f"sqlite:///{(folder / 'study.db').resolve()}"
    return Loaded(
        search=search,
        file=file,
        name=name,
        base_file=base_file,
        base=load_spec(base_file, search.overrides),
        folder=folder,
        storage=storage,
        grid_size=None,
    )


def _study(loaded: Any, seed: int = 0) -> optuna.Study:
    return optuna.create_study(
        storage=None if loaded.storage == "memory" else loaded.storage,
        study_name=loaded.name,
        directions=loaded.search.directions,
        sampler=optuna.samplers.RandomSampler(seed=seed),
        load_if_exists=True,
    )


def _accuracy(values: dict[str, Any]) -> float:
    """A made-up validation accuracy: best near lr 3e-3, better with smaller batches."""
    lr = values.get("optimizer.lr", 1e-3)
    batch = values.get("train.batch_size", 64)
    opt = values.get("optimizer", {})
    bonus = 0.01 if isinstance(opt, dict) and opt.get("type") == "sgd" else 0.0
    return 0.99 - 0.02 * abs(math.log10(lr) + 2.5) - batch / 1e5 + bonus


def _run(
    study: optuna.Study,
    loaded: Any,
    n: int,
    *,
    epochs: int = 0,
    prune: set[int] = frozenset(),
    fail: dict[int, str] | None = None,
) -> None:
    """``n`` trials as the engine tells them: values drawn by the real space, per-epoch
    values reported, user attrs set; trial numbers in ``prune`` stop after one epoch, those in
    ``fail`` fail with that error."""
    for _ in range(n):
        trial = study.ask()
        values = space.suggest(trial, loaded.search)
        trial.set_user_attr("overrides", space.overrides(loaded.search, values))
        acc = _accuracy(values)
        if fail and trial.number in fail:
            trial.set_user_attr("error", fail[trial.number])
            trial.set_user_attr("duration_s", 0.5)
            study.tell(trial, state=TrialState.FAIL)
            continue
        done = 0
        for epoch in range(epochs):
            trial.report(acc - 0.1 / (epoch + 1), epoch)
            done = epoch + 1
            if trial.number in prune:
                break
        trial.set_user_attr("epochs", done)
        trial.set_user_attr("duration_s", 1.25 + trial.number)
        if trial.number in prune:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        if len(loaded.search.objectives) == 1:
            study.tell(trial, acc)
        else:
            params = values.get("model.layers[6].units", 64) * 1000 + values["train.batch_size"]
            study.tell(trial, [acc, float(params)])


def _png(path: Path) -> tuple[int, int]:
    """The width and height of a valid PNG (its signature and IHDR chunk)."""
    data = path.read_bytes()
    assert matplotlib.image.imread(path).size > 0  # it decodes
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0 and len(data) > 1000
    return width, height


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _at(tree: Any, dotted: str) -> Any:
    path, _ = parse_override(f"{dotted}=0")
    for part in path:
        tree = tree[part]
    return tree


def _comparable(spec: Any) -> dict[str, Any]:
    """A spec's resolved form with its name dropped and each path it names made absolute:
    two specs in different folders naming the same files compare equal."""
    tree = spec.resolved()
    del tree["name"]
    for where, written, _ in spec_paths(spec):
        node = tree
        if where[0] == "model":  # named_layers paths are into the layers list
            node = node["model"]["layers"]
            where = where[2:]
        for part in where[:-1]:
            node = node[part]
        node[where[-1]] = str(spec.path_of(written))
    return tree


def _assert_best(loaded: Any, trial: optuna.trial.FrozenTrial) -> Any:
    """best.yaml validates where it lies, is named <search>_best, holds each of the trial's
    values, and is the very spec the trial trained."""
    best = Path(loaded.folder) / BEST
    spec = load_spec(best)
    assert spec.name == f"{loaded.name}_best"
    values = space.from_params(loaded.search, trial.params)
    resolved = spec.resolved()
    for path, value in values.items():
        got = _at(resolved, path)
        if isinstance(value, dict):
            assert {k: got[k] for k in value} == value, path
        else:
            assert got == value, path
    trained = load_spec(loaded.base_file, space.overrides(loaded.search, values))
    assert _comparable(spec) == _comparable(trained)
    return spec


SPACE = {
    "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "train.batch_size": {"type": "choice", "values": [32, 64, 128]},
    "model.layers[6].units": {"type": "int", "low": 32, "high": 128, "step": 32},
}


def test_one_objective_in_sqlite_writes_csv_best_spec_and_plots(project: Path) -> None:
    loaded = _loaded(
        project,
        "lr_search",
        {"overrides": ["train.epochs=2"], "objective": {"metric": "val_accuracy"}, "space": SPACE},
        storage="sqlite",
    )
    study = _study(loaded, seed=2)
    _run(study, loaded, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = write_report(study, loaded)
    assert not [w for w in caught if issubclass(w.category, ExperimentalWarning)]

    folder = project / "runs" / "lr_search"
    assert report[TRIALS] == loaded.folder / TRIALS and (folder / TRIALS).is_file()
    rows = _csv(folder / TRIALS)
    assert len(rows) == 8
    assert list(rows[0]) == [
        "number",
        "state",
        *SPACE,
        "val_accuracy",
        "epochs",
        "duration_s",
        "error",
    ]
    for row, trial in zip(rows, study.trials, strict=True):
        assert row["number"] == str(trial.number) and row["state"] == "COMPLETE"
        assert float(row["optimizer.lr"]) == trial.params["optimizer.lr"]
        assert int(row["train.batch_size"]) == trial.params["train.batch_size"]
        assert float(row["val_accuracy"]) == trial.value
        assert float(row["duration_s"]) == pytest.approx(1.25 + trial.number)
        assert row["error"] == ""

    best = study.best_trial
    assert best.number == max(study.trials, key=lambda t: t.value).number != 0
    spec = _assert_best(loaded, best)
    assert spec.train.epochs == 2  # the search's overrides too
    text = (folder / BEST).read_text()
    head = text.splitlines()[:4]
    assert head[0] == "# yaml-language-server: $schema=../../spec.schema.json"
    assert "searches/lr_search.yaml" in head[1] and f"trial {best.number}" in head[1]
    assert f"val_accuracy = {best.value:.6g} (maximize)" in head[2]
    assert "  - {type: conv2d, filters: 32}" in text  # the base as written, defaults kept
    assert "defaults:" in text and "kernel_size: 3" not in text.split("layers:")[1]

    for name in (HISTORY, PARALLEL, IMPORTANCES):
        assert report[name] == loaded.folder / name
        _png(folder / name)
    assert INTERMEDIATE not in report and "per-epoch" in report.skipped[INTERMEDIATE]
    assert PARETO not in report and PARETO_FRONT not in report
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]

    md = markdown(study, loaded, top=3)
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # header and the top 3
    assert table[1].startswith(f"| {best.number} |")
    assert f"trial {best.number}" in md and "8 complete" in md
    assert (folder / MARKDOWN).read_text().count("\n| ") == 1 + 8  # top 10: all 8

    # the study read back from its SQLite file gives the same report
    again = optuna.load_study(study_name="lr_search", storage=loaded.storage)
    write_report(again, loaded)
    assert _csv(folder / TRIALS) == rows
    assert (folder / BEST).read_text() == text


def test_pruned_trials_and_per_epoch_values(project: Path) -> None:
    loaded = _loaded(project, "pruned", {"space": SPACE, "pruner": {"type": "median"}})
    study = _study(loaded)
    _run(study, loaded, 6, epochs=3, prune={2, 4})
    report = write_report(study, loaded)

    rows = _csv(Path(loaded.folder) / TRIALS)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 2 + [
        "PRUNED",
        "COMPLETE",
        "PRUNED",
        "COMPLETE",
    ]
    assert [r["epochs"] for r in rows] == ["3", "3", "1", "3", "1", "3"]
    _png(report[INTERMEDIATE])
    _assert_best(loaded, study.best_trial)
    assert study.best_trial.number not in (2, 4)
    assert "4 complete, 2 pruned" in markdown(study, loaded)


def test_a_failed_trial_keeps_its_error(project: Path) -> None:
    loaded = _loaded(project, "failing", {"space": SPACE})
    study = _study(loaded)
    error = "RuntimeError: out of memory\nwhile training epoch 1"
    _run(study, loaded, 4, fail={1: error})
    report = write_report(study, loaded)

    rows = _csv(report[TRIALS])
    assert rows[1]["state"] == "FAIL" and rows[1]["error"] == error
    assert rows[1]["val_accuracy"] == "" and rows[1]["epochs"] == ""
    assert all(r["error"] == "" for i, r in enumerate(rows) if i != 1)
    md = markdown(study, loaded)
    assert "- trial 1: RuntimeError: out of memory" in md and "while training" not in md
    assert study.best_trial.number != 1
    _assert_best(loaded, study.best_trial)


def test_a_choice_of_whole_optimizer_sections_ends_as_a_mapping(project: Path) -> None:
    sgd = {"type": "sgd", "lr": 0.05, "momentum": 0.9}
    adam = {"type": "adam", "lr": 0.001}
    loaded = _loaded(
        project,
        "optimizers",
        {
            "space": {
                "optimizer": {"type": "choice", "values": [sgd, adam]},
                "train.batch_size": {"type": "choice", "values": [32, 64]},
            }
        },
    )
    study = _study(loaded, seed=3)
    _run(study, loaded, 6)
    labels = {t.params["optimizer"] for t in study.trials}
    assert labels == {"{type: sgd, lr: 0.05, momentum: 0.9}", "{type: adam, lr: 0.001}"}
    report = write_report(study, loaded)

    rows = _csv(report[TRIALS])
    for row, trial in zip(rows, study.trials, strict=True):
        assert row["optimizer"] == trial.params["optimizer"]  # the value, as one line of YAML
        assert yaml.safe_load(row["optimizer"]) in (sgd, adam)
    best = study.best_trial
    assert best.params["optimizer"].startswith("{type: sgd")  # sgd scores better
    raw = yaml.safe_load(report[BEST].read_text())
    assert raw["optimizer"] == sgd  # a mapping, not its label
    spec = _assert_best(loaded, best)
    assert spec.optimizer.type == "sgd" and spec.optimizer.momentum == 0.9
    assert "{type: sgd, lr: 0.05, momentum: 0.9}" in markdown(study, loaded)


def test_two_objectives_write_the_pareto_front(project: Path) -> None:
    loaded = _loaded(
        project,
        "front",
        {
            "objective": [{"metric": "val_accuracy"}, {"metric": "params"}],
            "space": SPACE,
            "sampler": {"type": "nsga2"},
        },
        storage="sqlite",
    )
    study = _study(loaded, seed=4)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    _run(study, loaded, 12)
    report = write_report(study, loaded)

    rows = _csv(report[TRIALS])
    assert len(rows) == 12 and list(rows[0])[-5:] == [
        "val_accuracy",
        "params",
        "epochs",
        "duration_s",
        "error",
    ]
    front = study.best_trials
    pareto = _csv(report[PARETO])
    assert sorted(int(r["number"]) for r in pareto) == sorted(t.number for t in front)
    assert len(front) >= 2  # the objectives conflict: a front, not one trial
    chosen = max(front, key=lambda t: (t.values[0], -t.number))
    assert chosen.number == max(study.trials, key=lambda t: t.values[0]).number != 0
    assert int(pareto[0]["number"]) == chosen.number
    _assert_best(loaded, chosen)
    head = report[BEST].read_text().splitlines()[1:3]
    assert f"trial {chosen.number}" in head[0] and "Pareto front" in head[0]
    assert "val_accuracy = " in head[1] and "(minimize)" in head[1]
    for name in (PARETO_FRONT, HISTORY, PARALLEL, IMPORTANCES):
        _png(report[name])
    assert INTERMEDIATE in report.skipped
    md = markdown(study, loaded)
    assert "Pareto front: trials " in md and "| trial | front | val_accuracy | params |" in md
    assert md.count("| yes |") == len(front)


def test_one_finished_trial_skips_importances_with_a_reason(project: Path) -> None:
    loaded = _loaded(project, "single", {"space": SPACE})
    study = _study(loaded)
    empty = write_report(study, loaded)  # before any trial: no crash, no best spec
    assert _csv(empty[TRIALS]) == []
    assert "no trial has completed" in empty.skipped[BEST] and BEST not in empty
    assert HISTORY in empty.skipped and "No trial has completed yet." in markdown(study, loaded)

    _run(study, loaded, 1)
    study.ask()  # one running
    stale = Path(loaded.folder) / IMPORTANCES
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"from an earlier study in this folder")
    report = write_report(study, loaded)
    assert [r["state"] for r in _csv(report[TRIALS])] == ["COMPLETE", "RUNNING"]
    assert IMPORTANCES not in report and not stale.exists()
    assert "at least 2 completed trials; 1 so far" in report.skipped[IMPORTANCES]
    md = markdown(study, loaded)
    assert f"- {IMPORTANCES}: parameter importances need at least 2 completed trials" in md
    _png(report[HISTORY])
    _assert_best(loaded, study.best_trial)


def test_same_values_in_every_trial_skip_importances(project: Path) -> None:
    loaded = _loaded(
        project, "constant", {"space": {"train.batch_size": {"type": "choice", "values": [64]}}}
    )
    study = _study(loaded)
    _run(study, loaded, 3)
    report = write_report(study, loaded)
    assert "every completed trial drew the same values" in report.skipped[IMPORTANCES]
    _png(report[PARALLEL])


def test_best_spec_of_a_base_that_extends_keeps_extends_and_rebases_its_paths(
    project: Path,
) -> None:
    (project / "specs" / "child.yaml").write_text(
        textwrap.dedent(
            """\
            name: child
            description: '1e3'
            extends: fashion_task_b_on_a.yaml
            optimizer: {lr: 2e-3}
            """
        )
    )
    loaded = _loaded(
        project,
        "extending",
        {
            "base": "../specs/child.yaml",
            "space": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        },
    )
    study = _study(loaded)
    _run(study, loaded, 3)
    report = write_report(study, loaded)
    raw = yaml.safe_load(report[BEST].read_text())
    assert raw["extends"] == "../../specs/fashion_task_b_on_a.yaml"
    assert raw["description"] == "1e3"  # quoted: YAML 1.2 would read 1e3 as a number
    assert raw["optimizer"] == {"lr": study.best_trial.params["optimizer.lr"]}
    # the inherited layers name a reused spec relative to specs/: written again, rebased
    assert raw["model"]["layers"][0]["spec"] == "../../specs/fashion_task_a.yaml"
    spec = _assert_best(loaded, study.best_trial)
    assert spec.description == "1e3" and spec.optimizer.type == "sgd"


def test_best_spec_merges_extends_in_when_the_search_replaces_a_section_whole(
    project: Path,
) -> None:
    (project / "specs" / "parent.yaml").write_text(
        (project / "specs" / "mnist_convnet.yaml")
        .read_text()
        .replace("optimizer: {type: rmsprop, lr: 1e-3}", "optimizer: {type: rmsprop, rho: 0.8}")
    )
    (project / "specs" / "child.yaml").write_text("name: child\nextends: parent.yaml\n")
    adam = {"type": "adam", "lr": 0.002}
    loaded = _loaded(
        project,
        "replacing",
        {
            "base": "../specs/child.yaml",
            "space": {"optimizer": {"type": "choice", "values": [adam]}},
        },
    )
    study = _study(loaded)
    _run(study, loaded, 2)
    report = write_report(study, loaded)
    text = report[BEST].read_text()
    raw = yaml.safe_load(text)
    assert "extends" not in raw and raw["optimizer"] == adam and "merged in" in text
    assert raw["model"]["defaults"] == {"conv2d": {"kernel_size": 3, "activation": "relu"}}
    _assert_best(loaded, study.best_trial)


def test_rebase_rewrites_every_path_field_and_leaves_the_rest(tmp_path: Path) -> None:
    specs, out = tmp_path / "specs", tmp_path / "runs" / "s"
    tree = {
        "extends": "base.yaml",
        "data": {
            "dataset": "image_folder",
            "path": "../data/train",
            "test_path": "/abs/test",
            "validation": {"path": "../data/val"},
            "mirror": "datasets",
        },
        "model": {
            "defaults": {"reuse": {"checkpoint": "ck.pt"}},
            "blocks": {"b": {"params": {"w": 1}, "layers": [{"type": "reuse", "spec": "$s"}]}},
            "layers": [
                {"type": "reuse", "spec": "a.yaml", "checkpoint": "../ck/a.pt"},
                {"type": "backbone", "arch": "vgg16", "weights": {"path": "w/vgg.pt"}},
                {"type": "backbone", "arch": "vgg16", "weights": "IMAGENET1K_V1"},
                {"type": "dense", "units": 10, "name": "a.yaml"},
            ],
        },
    }
    got = _rebase(tree, specs, out)
    assert got["extends"] == "../../specs/base.yaml"
    assert got["data"]["path"] == "../../data/train" and got["data"]["test_path"] == "/abs/test"
    assert got["data"]["validation"]["path"] == "../../data/val"
    assert got["data"]["mirror"] == "datasets"  # taken from the current folder, as it was
    assert got["model"]["defaults"]["reuse"]["checkpoint"] == "../../specs/ck.pt"
    assert got["model"]["blocks"]["b"]["layers"][0]["spec"] == "$s"  # a block's parameter
    layers = got["model"]["layers"]
    assert layers[0]["spec"] == "../../specs/a.yaml" and layers[0]["checkpoint"] == "../../ck/a.pt"
    assert layers[1]["weights"]["path"] == "../../specs/w/vgg.pt"
    assert layers[2]["weights"] == "IMAGENET1K_V1" and layers[3]["name"] == "a.yaml"
    assert tree["data"]["path"] == "../data/train"  # the input untouched


@pytest.mark.parametrize(
    "text",
    [
        "1e3",
        "0o17",
        "0x1F",
        "1_000",
        ".inf",
        "~",
        "null",
        "yes",
        "on",
        "True",
        "",
        " lead",
        "a: b",
        "- x",
        "#c",
        "multi\nline\n",
        "kept\n\n",
        "no end\nnewline",
        "plain text",
    ],
)
def test_best_spec_text_reads_back_as_the_same_text(text: str) -> None:
    from pipeline.search.report import _dump
    from pipeline.spec import yamlio

    assert yamlio.load_text(_dump({"v": text, "n": [1e-05, 2.0]})) == {"v": text, "n": [1e-05, 2.0]}
