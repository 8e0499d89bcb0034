"""Trials recorded as DVC experiments (pipeline.search.experiments) in a real repository: the
baseline reproduced by ``dvc repro``, two real trials trained in-process as a search trains them
(one evaluated), then recorded while the user has an uncommitted edit in the workspace. The
tests share the repository (module scope) and run in order."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.search.experiments import DvcExperimentError, in_dvc_repo, record_trial, recorded
from tests.orchestration.test_dvc import Repo
from tests.search_dvc import experiments, make_repo

BASE = "specs/tiny.yaml"
TRIALS = {  # trial number: its overrides, as a search writes them
    1: ["optimizer.lr=0.001"],
    2: ["optimizer.lr=0.005", "train.batch_size=64"],
}
EVALUATED = {2}
NAME = "tiny_lr-{:04d}"

# One process trains both (and evaluates the second) the way the search engine does: the spec
# with the trial's overrides, pipeline.train.loop.train into runs/<search>/trials/<number>.
TRAIN_TRIALS = """
import json, sys
from pathlib import Path
from pipeline.evaluate import evaluate
from pipeline.spec.load import load_spec
from pipeline.train.loop import train
trials, evaluated = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
for number, overrides in trials.items():
    spec = load_spec("specs/tiny.yaml", overrides)
    out = Path("runs/tiny_lr/trials") / f"{int(number):04d}"
    train(spec, out=out, log=lambda _: None)
    if int(number) in evaluated:
        evaluate(spec, out=out, log=lambda _: None)
"""


@dataclass
class Search:
    repo: Repo
    trials: dict[int, Path]

    def record(self, number: int, name: str | None = None, **kw: object) -> str:
        args = {
            "base_file": self.repo.root / BASE,
            "overrides": TRIALS[number],
            "trial_run": self.trials[number],
            "exp_name": name or NAME.format(number),
            "message": f"tiny_lr trial {number}",
        } | kw
        return record_trial(self.repo.root, **args)  # type: ignore[arg-type]

    def refs(self) -> dict[str, str]:
        out = self.repo.run("git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
        return dict(line.split() for line in out.stdout.splitlines())


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Search]:
    repo = make_repo(tmp_path_factory.mktemp("exp"))
    repo.run("dvc", "repro")
    repo.commit("dvc repro: the baseline")
    repo.run(
        sys.executable,
        "-c",
        TRAIN_TRIALS,
        json.dumps(TRIALS),
        json.dumps(sorted(EVALUATED)),
    )
    folder = repo.root / "runs" / "tiny_lr" / "trials"
    yield Search(repo, {n: folder / f"{n:04d}" for n in TRIALS})


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file of the workspace and git's index and HEAD: content, mode and mtime."""
    files: dict[str, tuple[str, int, int]] = {}
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        if rel == Path(".git"):
            dirs[:] = []
            names = ["index", "HEAD"]
        elif rel == Path(".dvc"):
            dirs[:] = [d for d in dirs if d not in ("tmp", "cache")]
        for name in names:
            path = Path(folder) / name
            st = path.lstat()
            files[str(rel / name)] = (
                hashlib.md5(path.read_bytes()).hexdigest(),
                st.st_mode,
                st.st_mtime_ns,
            )
    return files


def live(trial: Path, name: str = "live/metrics.json") -> dict:
    return json.loads((trial / name).read_text())


def test_the_repository_is_found_from_inside_it_and_nowhere_else(search: Search, tmp_path: Path):
    assert in_dvc_repo(search.repo.root / "specs") == search.repo.root.resolve()
    assert in_dvc_repo(search.trials[1]) == search.repo.root.resolve()
    assert in_dvc_repo(tmp_path) is None
    (tmp_path / ".dvc").mkdir()  # DVC without git: no experiments
    assert in_dvc_repo(tmp_path) is None


def test_two_trials_become_experiments_and_the_workspace_stays_byte_identical(search: Search):
    repo = search.repo
    spec = repo.root / BASE
    # the user is editing meanwhile: the spec (uncommitted) and a file of their own
    spec.write_text(spec.read_text().replace("epochs: 1", "epochs: 3"))
    (repo.root / "notes.txt").write_text("trying three epochs next\n")
    status = repo.run("git", "status", "--porcelain").stdout
    before = snapshot(repo.root)

    took = []
    for number in TRIALS:
        start = time.perf_counter()
        assert search.record(number) == NAME.format(number)
        took.append(time.perf_counter() - start)

    assert snapshot(repo.root) == before
    assert repo.run("git", "status", "--porcelain").stdout == status
    assert max(took) < 30 and took[-1] < 10, (
        took
    )  # a commit of a few files: no training, no DVC run
    assert recorded(repo.root) == {NAME.format(n) for n in TRIALS}

    exps = experiments(repo)
    for number, overrides in TRIALS.items():
        exp = exps[NAME.format(number)]
        assert exp["error"] is None, exp
        params = exp["data"]["params"]["runs/tiny/spec.yaml"]["data"]
        drawn = dict(o.split("=") for o in overrides)
        assert params["optimizer"]["lr"] == float(drawn["optimizer.lr"])
        assert params["train"]["batch_size"] == int(drawn.get("train.batch_size", 32))
        assert params["train"]["epochs"] == 1  # what the trial trained, not the user's edit
        metrics = exp["data"]["metrics"]
        trial = search.trials[number]
        assert metrics["runs/tiny/live/metrics.json"]["data"] == live(trial)
        if number in EVALUATED:
            test = metrics["runs/tiny/metrics.json"]["data"]
            assert test == live(trial, "metrics.json") and test["test_accuracy"] > 0.5
        else:  # never the baseline's test metrics under a trial that was not evaluated
            assert "data" not in metrics["runs/tiny/metrics.json"], metrics
    csv = repo.run("dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    assert "optimizer.lr" in csv and "val_accuracy" in csv and "test_accuracy" in csv

    shown = repo.run("git", "show", f"{exps[NAME.format(2)]['rev']}:{BASE}").stdout
    assert shown.startswith(f"# DVC experiment {NAME.format(2)}: a trial of a pipeline search\n")
    assert "runs/tiny_lr/trials/0002" in shown.splitlines()[1]
    assert "#   -S train.batch_size=64\n" in shown
    written = yaml.safe_load(shown)
    assert written["optimizer"] == {"type": "adam", "lr": 0.005}
    assert written["train"] == {"epochs": 1, "batch_size": 64}

    refs = search.refs()
    assert search.record(1) == NAME.format(1)  # again: the same files, nothing new
    assert search.refs() == refs


def test_apply_puts_the_trials_spec_where_repro_runs_it(search: Search):
    repo = search.repo
    repo.run("git", "checkout", "--", BASE)  # `dvc exp apply` overwrites uncommitted edits
    (repo.root / "notes.txt").unlink()
    repo.run("dvc", "exp", "apply", NAME.format(2))
    spec = yaml.safe_load((repo.root / BASE).read_text())
    assert spec["optimizer"]["lr"] == 0.005 and spec["train"]["batch_size"] == 64
    resolved = yaml.safe_load((repo.out / "spec.yaml").read_text())
    assert resolved["optimizer"]["lr"] == 0.005 and resolved["train"]["batch_size"] == 64
    assert live(repo.out) == live(search.trials[2])
    status = repo.run("dvc", "status").stdout
    assert "resolve@tiny" in status and "modified:           specs" in status, status
    train = status[status.index("train@tiny:") : status.index("evaluate@tiny:")]
    assert "modified:           optimizer" in train and "modified:           train" in train
    assert "prepare@tiny" not in status  # the same data: repro retrains, prepares nothing
    dry = repo.run("dvc", "repro", "--dry").stdout
    assert "Running stage 'train@tiny'" in dry and "Running stage 'prepare@tiny'" not in dry
    repo.run("git", "checkout", "--", ".")
    assert "Data and pipelines are up to date" in repo.run("dvc", "status").stdout


def test_what_cannot_be_an_experiment_is_a_clear_error_and_records_nothing(search: Search):
    repo = search.repo
    refs = search.refs()
    other = repo.root / "specs" / "other.yaml"
    other.write_text((repo.root / BASE).read_text())
    try:
        with pytest.raises(DvcExperimentError) as err:
            search.record(1, base_file=other)
    finally:
        other.unlink()
    assert "specs/other.yaml is not in the DVC pipeline" in str(err.value)
    assert "(the specs dvc.yaml runs at HEAD" in str(err.value) and ": tiny)" in str(err.value)
    assert "add 'other' to params.yaml `specs` and commit" in str(err.value)

    with pytest.raises(DvcExperimentError, match="'tiny lr/1' cannot name a DVC experiment"):
        search.record(1, name="tiny lr/1")
    with pytest.raises(DvcExperimentError, match="is the spec the trial trained") as err:
        search.record(1, overrides=["optimizer.lr=0.1"])  # not what trial 1 trained
    assert "differs in optimizer" in str(err.value)
    with pytest.raises(DvcExperimentError, match="not a finished trial's run folder"):
        search.record(1, trial_run=repo.root / "runs" / "tiny_lr")
    assert search.refs() == refs


def test_trials_finishing_together_are_all_recorded(search: Search):
    names = [f"tiny_lr-p{i}" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda name: search.record(1, name=name), names))
    assert done == names
    head = search.repo.run("git", "rev-parse", "HEAD").stdout.strip()
    for name in names:
        parent = subprocess.run(
            ["git", "rev-parse", f"{search.refs()[_ref(head, name)]}^"],
            cwd=search.repo.root,
            capture_output=True,
            text=True,
            check=True,
        )
        assert parent.stdout.strip() == head
    assert set(names) <= recorded(search.repo.root)
    assert set(names) <= set(experiments(search.repo))


def _ref(head: str, name: str) -> str:
    return f"refs/exps/{head[:2]}/{head[2:]}/{name}"
