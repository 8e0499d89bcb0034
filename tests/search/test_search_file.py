"""Search files: real files in a project in tmp_path, searched over a copy of the repo's
specs/mnist_convnet.yaml; each bad input gives one located problem (file:line:col in the search
file, what is wrong, what would do), all of them at once, before any trial."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from pipeline.search.load import SCHEMA_FILE, load_search, search_schema_text
from pipeline.spec.errors import Problem, SpecError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
base: ../specs/mnist_convnet.yaml
overrides: [train.epochs=3]
objective: {metric: val_accuracy}
space:
  optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  train.batch_size: {type: choice, values: [64, 128, 256]}
  model.layers[6].units: {type: int, low: 32, high: 256, step: 32}
  optimizer.type: {type: choice, values: [rmsprop, sgd]}
  optimizer.momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer.type: sgd}}
sampler: {type: tpe, seed: 0}
pruner: {type: median, warmup_epochs: 1}
budget: {trials: 20, timeout: 1h, parallel: 2}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project (pyproject.toml marks its root) with the repo's convnet spec in specs/."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "specs").mkdir()
    shutil.copy(ROOT / "specs" / "mnist_convnet.yaml", tmp_path / "specs")
    (tmp_path / "searches").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_RUNS_DIR", raising=False)
    return tmp_path


def write(project: Path, text: str, name: str = "s.yaml") -> Path:
    path = project / "searches" / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[Problem]:
    with pytest.raises(SpecError) as caught:
        load_search(path)
    return caught.value.problems


def at(found: list[Problem], where: str) -> Problem:
    """The one problem located at ``where`` (file:line:col)."""
    here = [p for p in found if str(p.mark) == where]
    assert len(here) == 1, "\n".join(p.format() for p in found)
    return here[0]


def space(*entries: str, tail: str = "budget: {trials: 4}\n") -> str:
    """A search over the convnet with these lines under ``space:`` (from line 3 on)."""
    lines = "".join(f"  {e}\n" for e in entries)
    return f"base: ../specs/mnist_convnet.yaml\nspace:\n{lines}{tail}"


# ---- good files ---------------------------------------------------------------------------


def test_a_good_search_loads_with_its_base_and_default_storage(project):
    loaded = load_search(write(project, GOOD, "lr_search.yaml"))
    assert loaded.name == "lr_search" and loaded.file == project / "searches" / "lr_search.yaml"
    assert loaded.base_file == project / "specs" / "mnist_convnet.yaml"
    assert loaded.base.train.epochs == 3 and loaded.base.overrides == ("train.epochs=3",)
    assert loaded.folder == Path("runs") / "lr_search"
    assert loaded.storage == f"sqlite:///{project / 'runs' / 'lr_search' / 'study.db'}"
    assert loaded.grid_size is None and loaded.warnings == []
    assert not (project / "runs").exists()  # the check creates nothing
    text = loaded.describe()
    for line in [
        "base: specs/mnist_convnet.yaml with train.epochs=3",
        "objective: val_accuracy (maximize)",
        "optimizer.lr: float 0.0001 to 0.01, log scale",
        "train.batch_size: choice of 64, 128, 256",
        "model.layers[6].units: int 32 to 256 in steps of 32",
        "optimizer.momentum: float 0.5 to 0.99 when optimizer.type = sgd",
        "sampler: tpe, seed 0",
        "budget: 20 trials, no new trial after 1h, 2 at a time",
        f"storage: {loaded.storage}",
    ]:
        assert line in text, text
    assert "grid" not in text


def test_a_grid_search_gives_its_size_and_warns_of_a_short_budget(project):
    text = space(
        "train.batch_size: {type: choice, values: [64, 128, 256]}",
        "model.layers[6].units: {type: int, low: 32, high: 256, step: 32}",
        "optimizer.lr: {type: float, low: 0.001, high: 0.003, step: 0.001}",
        tail="sampler: {type: grid}\nbudget: {trials: 50}\n",
    )
    loaded = load_search(write(project, text))
    assert loaded.grid_size == 3 * 8 * 3
    assert "grid: 72 combinations" in loaded.describe()
    warning = at(loaded.warnings, f"{project}/searches/s.yaml:7:18")
    assert warning.severity == "warning" and "72 combinations: 22 will not be tried" in (
        warning.message
    )
    # without trials the grid's size is the budget
    loaded = load_search(write(project, text.replace("budget: {trials: 50}\n", "")))
    assert "budget: 72 trials (the grid)" in loaded.describe() and loaded.warnings == []


def test_several_objectives_and_a_journal_storage(project):
    text = GOOD.replace(
        "objective: {metric: val_accuracy}", "objective: [{metric: val_loss}, {metric: params}]"
    ).replace("pruner: {type: median, warmup_epochs: 1}\n", "")
    loaded = load_search(write(project, text + "storage: journal:runs/shared.log\nname: two\n"))
    assert loaded.name == "two" and loaded.storage == "journal:runs/shared.log"
    assert loaded.search.directions == ["minimize", "minimize"]
    assert "objectives (Pareto front): val_loss (minimize), params (minimize)" in (
        loaded.describe()
    )


def test_a_choice_of_whole_sections_is_plain_data_and_each_is_checked(project):
    section = "optimizer: {type: choice, values: [{type: adam, lr: 0.001}, {type: sgd, lr: %s}]}"
    loaded = load_search(write(project, space(section % "0.05")))
    values = loaded.search.space["optimizer"].values
    assert values == [{"type": "adam", "lr": 0.001}, {"type": "sgd", "lr": 0.05}]
    assert all(type(v) is dict for v in values)  # no marks: the engine dumps them as YAML
    assert "optimizer: choice of {type: adam, lr: 0.001}, {type: sgd, lr: 0.05}" in (
        loaded.describe()
    )
    path = write(project, space(section % "-1"))
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:3:63" and p.path == ("space", "optimizer", "values", 1)
    assert p.message.startswith("the base spec rejects optimizer={type: sgd, lr: -1}: ")


# ---- the space ----------------------------------------------------------------------------


def test_unknown_path_points_at_the_misspelt_part_with_a_suggestion(project):
    path = write(
        project,
        space(
            "optimizer.lrr: {type: float, low: 1.0e-4, high: 1.0e-2}",
            "optimzer.lr: {type: float, low: 1.0e-4, high: 1.0e-2}",
            "model.layers[6].unitz: {type: int, low: 32, high: 64}",
            "model.layers[9].units: {type: int, low: 32, high: 64}",
            "optimizer.lr.x: {type: choice, values: [1]}",
        ),
    )
    found = problems(path)
    assert len(found) == 5
    lrr = at(found, f"{path}:3:13")
    assert lrr.path == ("space", "optimizer.lrr") and lrr.hint == "did you mean 'lr'?"
    assert "the spec has no 'lrr' in optimizer (rmsprop); valid keys there:" in lrr.message
    assert at(found, f"{path}:4:3").hint == "did you mean 'optimizer'?"
    unitz = at(found, f"{path}:5:19")
    assert "no 'unitz' in model.layers[6] (dense)" in unitz.message
    assert unitz.hint == "did you mean 'units'?"
    assert "model.layers has 8 items (indices 0 to 7" in at(found, f"{path}:6:15").message
    assert "optimizer.lr is a value (0.001), not a section" in at(found, f"{path}:7:16").message
    assert "Traceback" not in SpecError(found).format()


def test_a_field_of_one_kind_only_needs_when(project):
    path = write(
        project,
        space(
            "optimizer.type: {type: choice, values: [adam, sgd]}",
            "optimizer.momentum: {type: float, low: 0.5, high: 0.99}",
        ),
    )
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:4:3"
    assert p.message.startswith("optimizer.momentum is not a field when optimizer.type is adam")
    assert p.hint == "add when: {optimizer.type: sgd}"


def test_low_not_below_high(project):
    path = write(project, space("optimizer.lr: {type: float, low: 0.01, high: 0.001}"))
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:3:36" and p.path == ("space", "optimizer.lr", "low")
    assert p.message == "low (0.01) must be less than high (0.001)"


def test_log_range_with_low_zero_or_a_step(project):
    path = write(
        project,
        space(
            "optimizer.lr: {type: float, low: 0, high: 0.1, log: true}",
            "train.batch_size: {type: int, low: 16, high: 256, step: 16, log: true}",
        ),
    )
    found = problems(path)
    assert len(found) == 2
    assert "a log range needs low > 0 (got 0.0)" in at(found, f"{path}:3:36").message
    step = at(found, f"{path}:4:59")
    assert "drawn in steps of 1 (got step 16)" in step.message and step.hint == (
        "remove step or log"
    )


def test_empty_choice(project):
    path = write(project, space("train.batch_size: {type: choice, values: []}"))
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:3:44" and p.message == "a choice needs at least one value"


def test_a_value_the_spec_rejects_is_located_in_the_search_file(project):
    path = write(
        project,
        space(
            "train.batch_size: {type: int, low: 0, high: 64}",
            "optimizer.type: {type: choice, values: [adam, sgd, adamm]}",
        ),
    )
    found = problems(path)
    assert len(found) == 2
    low = at(found, f"{path}:3:38")
    assert low.path == ("space", "train.batch_size", "low") and low.code == "value-rejected"
    assert low.message == (
        "the base spec rejects train.batch_size=0: train.batch_size: Input should be greater "
        "than or equal to 1 (got 0)"
    )
    choice = at(found, f"{path}:4:54")
    assert choice.message.startswith(
        "the base spec rejects optimizer.type=adamm: optimizer.type: unknown type 'adamm'"
    )
    assert choice.hint == "did you mean 'adam'?"


def test_an_int_range_whose_top_is_off_the_steps_checks_the_value_drawn(project):
    path = write(project, space("model.layers[6].units: {type: int, low: 32, high: 250, step: 32}"))
    loaded = load_search(path)
    (w,) = loaded.warnings
    assert str(w.mark) == f"{path}:3:53" and "the largest value drawn is 224" in w.message


def test_when_must_name_an_earlier_parameter_and_one_of_its_values(project):
    path = write(
        project,
        space(
            "optimizer.type: {type: choice, values: [rmsprop, sgd]}",
            "optimizer.momentum: {type: float, low: 0.5, high: 0.9, when: {optimizer.type: sdg}}",
            "train.epochs: {type: int, low: 1, high: 3, when: {optimizer.typ: sgd}}",
            "optimizer.lr: {type: float, low: 0.001, high: 0.01, when: {train.batch_size: 64}}",
            "train.batch_size: {type: choice, values: [64, 128]}",
        ),
    )
    found = problems(path)
    assert len(found) == 3
    value = at(found, f"{path}:4:81")
    assert value.message == "optimizer.type is never sdg: its choices are rmsprop, sgd"
    assert value.hint == "did you mean 'sgd'?"
    assert at(found, f"{path}:5:53").hint == "did you mean 'optimizer.type'?"
    later = at(found, f"{path}:6:62")
    assert "'train.batch_size' comes after 'optimizer.lr' in space" in later.message


# ---- objective, sampler, pruner, budget ---------------------------------------------------


def test_misspelt_sampler_and_pruner(project):
    text = GOOD.replace("type: tpe", "type: tpee").replace("type: median", "type: medain")
    path = write(project, text)
    found = problems(path)
    assert len(found) == 2
    sampler = at(found, f"{path}:10:17")
    assert sampler.path == ("sampler", "type") and sampler.hint == "did you mean 'tpe'?"
    assert "'tpee' is not valid; valid: grid, random, tpe, gp, cmaes, nsga2" in sampler.message
    pruner = at(found, f"{path}:11:16")
    assert pruner.hint == "did you mean 'median'?"
    assert "valid: none, median, halving, hyperband" in pruner.message


def test_unknown_metric_and_one_the_base_does_not_record(project):
    path = write(project, GOOD.replace("metric: val_accuracy", "metric: val_acc"))
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:3:21" and p.message.startswith("unknown metric 'val_acc'")
    assert p.hint == "did you mean 'val_accuracy'?"
    text = GOOD.replace("[train.epochs=3]", "[train.epochs=3, data.validation=null]")
    (p,) = problems(write(project, text))
    assert str(p.mark) == f"{project}/searches/s.yaml:3:21"
    assert p.message.startswith("val_accuracy needs a validation split")


def test_several_objectives_cannot_be_pruned_nor_drawn_by_cmaes(project):
    text = (
        GOOD.replace(
            "objective: {metric: val_accuracy}", "objective: [{metric: val_loss}, {metric: params}]"
        )
        .replace("type: tpe", "type: cmaes")
        .replace(
            "optimizer.type: {type: choice, values: [rmsprop, sgd]}",
            "seed: {type: int, low: 0, high: 3}",
        )
        .replace(", when: {optimizer.type: sgd}", "")
    )
    path = write(project, text)
    found = [p for p in problems(path) if p.severity == "error"]
    assert len(found) == 2
    assert "the cmaes sampler optimizes one objective" in at(found, f"{path}:10:17").message
    pruner = at(found, f"{path}:11:16")
    assert "cannot act on several objectives" in pruner.message


def test_a_budget_must_end_unless_it_is_a_grid(project):
    path = write(project, space("train.epochs: {type: int, low: 1, high: 3}", tail=""))
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:1:1" and p.path == ("budget",)
    assert "the budget needs trials or timeout" in p.message
    text = space("train.epochs: {type: int, low: 1, high: 3}", tail="budget: {parallel: 2}\n")
    (p,) = problems(write(project, text))
    assert str(p.mark) == f"{project}/searches/s.yaml:4:1"
    grid = space("train.epochs: {type: int, low: 1, high: 3}", tail="sampler: {type: grid}\n")
    assert load_search(write(project, grid)).grid_size == 3


def test_grid_needs_a_step_for_a_float_range_and_no_when(project):
    path = write(
        project,
        space(
            "optimizer.type: {type: choice, values: [rmsprop, sgd]}",
            "optimizer.lr: {type: float, low: 0.001, high: 0.01}",
            "optimizer.momentum: {type: choice, values: [0.5, 0.9], when: {optimizer.type: sgd}}",
            tail="sampler: {type: grid}\n",
        ),
    )
    found = problems(path)
    assert len(found) == 2
    lr = at(found, f"{path}:4:3")
    assert lr.message == "the grid sampler tries every value: a float range needs a step"
    assert lr.hint == "add step, e.g. {step: 0.0023}, or make it a choice"
    assert "cannot leave a parameter out" in at(found, f"{path}:5:58").message


# ---- base, overrides, storage -------------------------------------------------------------


def test_a_base_spec_that_does_not_validate_reports_its_own_errors(project):
    spec = project / "specs" / "mnist_convnet.yaml"
    spec.write_text(spec.read_text().replace("units: 64,", "unitz: 64,"))
    path = write(project, GOOD)
    found = problems(path)
    here = at(found, f"{path}:1:7")
    assert here.code == "base-invalid" and "does not validate: 1 error" in here.message
    line = next(i for i, t in enumerate(spec.read_text().splitlines(), 1) if "unitz" in t)
    own = next(p for p in found if p.mark and p.mark.file == str(spec))
    assert str(own.mark) == f"{spec}:{line}:21" and "unknown key 'unitz'" in own.message
    assert own.hint == "did you mean 'units'?"


def test_base_must_be_a_yaml_file_inside_the_project(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "spec.yaml"
    shutil.copy(ROOT / "specs" / "mnist_convnet.yaml", outside)
    path = write(project, GOOD.replace("../specs/mnist_convnet.yaml", str(outside)))
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:1:7" and "is outside the folders a spec may name" in p.message
    (project / "specs" / "notes.txt").write_text("secret\n")
    (p,) = problems(write(project, GOOD.replace("mnist_convnet.yaml", "notes.txt")))
    assert "is not a spec file" in p.message and "secret" not in p.format()
    (p,) = problems(write(project, GOOD.replace("mnist_convnet.yaml", "nothere.yaml")))
    assert p.code == "file-not-found" and str(p.mark).endswith("s.yaml:1:7")


def test_overrides_that_fail_are_located_at_the_override(project):
    path = write(project, GOOD.replace("[train.epochs=3]", "[train.epochs=0, train.epoch=3]"))
    found = problems(path)
    assert len(found) == 2
    zero = at(found, f"{path}:2:13")
    assert "train.epochs: Input should be greater than or equal to 1" in zero.message
    assert "(the base spec with override 'train.epochs=0')" in zero.message
    unknown = at(found, f"{path}:2:29")
    assert "unknown key 'epoch'" in unknown.message and unknown.hint == "did you mean 'epochs'?"


def test_a_storage_that_cannot_be_made_or_reached(project):
    (project / "afile").write_text("")
    path = write(project, GOOD + f"storage: sqlite:///{project}/afile/x/study.db\n")
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:13:10" and p.path == ("storage",)
    assert f"{project}/afile is a file, so no folder can be made inside it" in p.message
    (p,) = problems(write(project, GOOD + "storage: journal:afile/x/log\n"))
    assert "the journal file afile/x/log cannot be made" in p.message
    (p,) = problems(write(project, GOOD + "storage: 'not a url'\n"))
    assert "'not a url' is not a storage URL" in p.message
    (p,) = problems(write(project, GOOD + "storage: postgresql://u:pw@127.0.0.1:1/study\n"))
    assert str(p.mark) == f"{project}/searches/s.yaml:13:10" and "pw" not in p.message
    if not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        assert "the postgresql driver 'psycopg" in p.message
        assert "is not installed in this environment (pip install " in p.message
    else:
        assert p.message.startswith("cannot reach the storage postgresql://u:***@127.0.0.1:1")


def test_the_default_storage_needs_a_runs_folder_it_can_make(project, monkeypatch):
    (project / "runs").write_text("")
    path = write(project, GOOD)
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:1:1" and p.path == ("storage",)
    assert f"{project}/runs is a file, so no folder can be made inside it" in p.message
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(project / "elsewhere"))
    assert load_search(path).folder == project / "elsewhere" / "s"


# ---- the YAML itself ----------------------------------------------------------------------


def test_yaml_is_read_as_safely_as_a_spec(project):
    path = write(project, GOOD + "description: !!python/object:os.system echo\n")
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:13:14" and "tags are not allowed" in p.message
    path = write(project, GOOD + "budget: {trials: 3}\n")
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:13:1" and "duplicate key 'budget'" in p.message
    (p,) = problems(write(project, "[base, space]\n"))
    assert "a search file is a mapping" in p.message
    (p,) = problems(write(project, "", "empty.yaml"))
    assert "this one is empty" in p.message
    (project / "searches" / "s.json").write_text("{}")
    (p,) = problems(project / "searches" / "s.json")
    assert "is not a search file" in p.message


def test_unknown_keys_of_the_search_file_have_suggestions(project):
    path = write(project, GOOD.replace("budget: {trials", "budgett: {trials"))
    found = problems(path)
    p = at(found, f"{path}:12:1")
    assert "unknown key 'budgett'" in p.message and p.hint == "did you mean 'budget'?"
    path = write(project, GOOD.replace("{metric: val_accuracy}", "{metrc: val_accuracy}"))
    (p,) = problems(path)
    assert str(p.mark) == f"{path}:3:13" and p.path == ("objective", "metrc")
    assert "valid keys here: direction, metric" in p.message


def test_several_errors_are_reported_at_once(project):
    text = (
        "base: ../specs/mnist_convnet.yaml\n"
        "objective: {metric: accuracyy}\n"
        "space:\n"
        "  optimizer.lrr: {type: float, low: 1.0e-2, high: 1.0e-4}\n"
        "  train.batch_size: {type: choice, values: []}\n"
        "  x: {type: floot}\n"
        "sampler: {type: tpee}\n"
    )
    path = write(project, text)
    found = problems(path)
    wanted = {
        f"{path}:2:21": "unknown metric 'accuracyy'",
        f"{path}:4:13": "the spec has no 'lrr'",
        f"{path}:4:37": "low (0.01) must be less than high (0.0001)",
        f"{path}:5:44": "a choice needs at least one value",
        f"{path}:6:13": "unknown type 'floot'",
        f"{path}:7:17": "'tpee' is not valid",
    }
    assert {str(p.mark): p.message for p in found}.keys() == wanted.keys()
    for where, message in wanted.items():
        assert message in at(found, where).message
    report = SpecError(found).format()
    assert report.startswith("6 errors") and "Traceback" not in report


# ---- the schema ---------------------------------------------------------------------------


def test_the_search_schema_is_written_and_up_to_date(tmp_path):
    from pipeline.cli import main

    assert main(["schema", "--search", "-o", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text() == search_schema_text()
    assert (ROOT / SCHEMA_FILE).read_text() == search_schema_text()
    assert '"title": "pipeline search file"' in search_schema_text()
