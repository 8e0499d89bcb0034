"""The DVC pipeline for real: a git + DVC repository in a temp folder with the project's own
dvc.yaml, .gitignore and .dvcignore, and a tiny spec on a real MNIST subset. The stage commands
run the installed ``pipeline``; the tests share one repository (module scope) and run in order,
each leaving it committed and up to date for the next."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import MIRROR

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: `pipeline` and `dvc`
STAGES = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # every stage

# 200 images per class, one epoch of a small convnet: ~0.3 s of training; the rest of a stage is
# start-up. Measured test accuracy 0.80-0.87 (1 or 2 epochs); the bar below leaves a margin.
TINY = """\
name: tiny
seed: 0
data:
  dataset: mnist
  subset: {{train_per_class: 200, test_per_class: {test_per_class}}}
  validation: {{first: 500}}
  normalize: standardize
augment:
  mode: {mode}
  transforms:
    - {{type: horizontal_flip, p: {flip}}}
model:
  defaults:
    conv2d: {{kernel_size: 3, activation: relu}}
  layers:
    - {{type: conv2d, filters: 8}}
    - {{type: max_pool2d}}
    - {{type: conv2d, filters: 16}}
    - {{type: max_pool2d}}
    - {{type: flatten}}
    - {{type: dense, units: 32, activation: relu}}
    - {{type: dense, units: 10, activation: softmax}}
optimizer: {{type: adam, lr: 2e-3}}
train: {{epochs: 1, batch_size: 32}}
"""
MIN_ACCURACY = 0.65


def _require_mirror() -> None:
    """tests/conftest.py's ``mirror`` check, for a module-scoped fixture (skip locally without
    the data, fail under CI)."""
    if not (MIRROR / "MNIST" / "raw").is_dir():
        why = f"dataset mirror {MIRROR} is missing (set PIPELINE_DATA_MIRROR)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@dataclass
class Repo:
    root: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """A command in the repository, stdout and stderr together in ``.stdout``."""
        proc = subprocess.run(
            args,
            cwd=cwd or self.root,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited with {proc.returncode}:\n{proc.stdout}")
        return proc

    def write_spec(self, **values: object) -> None:
        (self.root / "specs" / "tiny.yaml").write_text(
            TINY.format(**({"test_per_class": 50, "flip": 0.1, "mode": "online"} | values))
        )

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "--allow-empty", "-m", message)

    @property
    def out(self) -> Path:
        return self.root / "runs" / "tiny"


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)@tiny'", output))


def skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '(\w+)@tiny' didn't change, skipping", output))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tiny_project(root: Path, run: Callable[..., object]) -> None:
    """In a fresh git repository: DVC, this project's dvc.yaml and the stages' code deps (the
    commands themselves run the installed package), params.yaml naming the spec ``tiny`` and an
    empty specs/ for it."""
    run(str(BIN / "dvc"), "init", "-q")
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(
        ROOT / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (root / "params.yaml").write_text("specs:\n  - tiny\n")
    (root / "specs").mkdir()


def new_repo(tmp: Path) -> Repo:
    """A committed git + DVC repository under ``tmp`` with the project's dvc.yaml and the tiny
    spec, its commands run plainly (no Prefect) on the dataset mirror, every cache in ``tmp``."""
    _require_mirror()
    root = tmp / "repo"
    root.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site"),
        "PIPELINE_DATA_MIRROR": str(MIRROR),
        "PIPELINE_DATA_CACHE": str(tmp / "data-cache"),
        "PIPELINE_ORCHESTRATION": "off",
        "PREFECT_HOME": str(tmp / "prefect"),
        "PIPELINE_HOME": str(tmp / "pipeline-home"),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    for name in ("DVC_ROOT", "DVC_EXP_BASELINE_REV", "DVC_EXP_NAME", "PIPELINE_RUNS_DIR"):
        env.pop(name, None)
    r = Repo(root, env, subprocess.CompletedProcess([], 0))
    r.run("git", "init", "-q")
    r.run("git", "config", "user.name", "test")
    r.run("git", "config", "user.email", "test@example.com")
    tiny_project(root, r.run)
    r.write_spec()
    r.commit("the project with a tiny spec")
    return r


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    r = new_repo(tmp_path_factory.mktemp("dvc"))
    r.first = r.run("dvc", "repro")
    r.commit("dvc repro")
    yield r


def test_repro_runs_every_stage_and_writes_metrics_and_live_metrics(repo: Repo):
    assert {"resolve", "prepare", "train", "evaluate"} <= STAGES
    assert ran(repo.first.stdout) == STAGES
    metrics = json.loads((repo.out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > MIN_ACCURACY, metrics
    live = json.loads((repo.out / "live" / "metrics.json").read_text())
    assert live["step"] == 0 and 0 < live["val_accuracy"] <= 1, live  # one epoch: step 0
    resolved = (repo.out / "spec.yaml").read_text()
    for section in ("data:", "augment:", "init:", "schedule:", "evaluate:", "seed: 0"):
        assert f"\n{section}" in resolved, section  # defaults written out: DVC needs the keys
    assert (repo.out / "checkpoints" / "best.pt").is_file()
    tracked = repo.run("git", "ls-files", "runs").stdout.split()
    assert "runs/tiny/metrics.json" in tracked and "runs/tiny/spec.yaml" in tracked
    assert not any("checkpoints" in f for f in tracked)  # those are DVC's, not git's
    prepared = json.loads((repo.root / "data" / "prepared" / "tiny" / "meta.json").read_text())
    counts = {split: sum(c.values()) for split, c in prepared["counts"].items()}
    assert counts == {"train": 2000, "val": 500, "test": 500}, counts  # the stage's own output


def test_a_second_repro_runs_nothing(repo: Repo):
    outputs = [
        repo.out / "spec.yaml",
        repo.out / "metrics.json",
        repo.out / "history.csv",
        repo.out / "live" / "metrics.json",
        *sorted((repo.out / "checkpoints").iterdir()),
    ]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    again = repo.run("dvc", "repro")
    assert ran(again.stdout) == set(), again.stdout
    assert skipped(again.stdout) == STAGES
    assert "Data and pipelines are up to date" in repo.run("dvc", "status").stdout
    assert {p: p.stat().st_mtime_ns for p in outputs} == before


def test_an_augmentation_change_retrains_and_leaves_the_prepared_data_as_it_was(repo: Repo):
    # prepare reads `augment` (offline copies are prepared data); an online change finds its
    # folder up to date and leaves it untouched, so the data train depends on is the same
    prepared = repo.root / "data" / "prepared" / "tiny"
    before = {p.name: (p.stat().st_mtime_ns, md5(p)) for p in prepared.iterdir()}
    repo.write_spec(flip=0.2)
    proc = repo.run("dvc", "repro")
    assert ran(proc.stdout) == {"resolve", "prepare", "train", "evaluate"}, proc.stdout
    assert "data/prepared/tiny is up to date" in proc.stdout
    assert {p.name: (p.stat().st_mtime_ns, md5(p)) for p in prepared.iterdir()} == before
    assert "p: 0.2" in (repo.out / "spec.yaml").read_text()
    repo.commit("flip 0.2")


def test_offline_augmentation_is_prepares_output_and_train_only_reads_it(repo: Repo):
    repo.write_spec(flip=0.2, mode="offline")
    proc = repo.run("dvc", "repro")
    assert ran(proc.stdout) == STAGES, proc.stdout
    assert "offline augmentation: 2 augmented copies of each of 2000" in proc.stdout
    meta = json.loads((repo.root / "data" / "prepared" / "tiny" / "meta.json").read_text())
    assert meta["offline"]["originals"] == 2000
    assert sum(meta["counts"]["train"].values()) == 6000  # the originals and two copies each
    assert sorted(p.name for p in (repo.root / "data" / "prepared").iterdir()) == ["tiny"]
    assert "Data and pipelines are up to date" in repo.run("dvc", "status").stdout
    repo.commit("offline augmentation")


def test_a_data_change_reruns_every_stage(repo: Repo):
    repo.write_spec(flip=0.2, test_per_class=60)
    proc = repo.run("dvc", "repro")
    assert ran(proc.stdout) == STAGES, proc.stdout
    assert "evaluated 600 test images" in proc.stdout
    repo.commit("60 test images per class")


def test_a_local_remote_pushes_and_a_clone_pulls_the_same_data_and_checkpoints(repo: Repo):
    remote = repo.root.parent / "remote"
    repo.run("dvc", "remote", "add", "-d", "local", str(remote))
    repo.commit("a local DVC remote")
    pushed = repo.run("dvc", "push")
    assert re.search(r"\b[1-9]\d* files? pushed", pushed.stdout), pushed.stdout
    clone = repo.root.parent / "clone"
    repo.run("git", "clone", "-q", str(repo.root), str(clone))
    prepared = Path("data", "prepared", "tiny")
    assert not (clone / "runs" / "tiny" / "checkpoints").exists()
    assert not (clone / prepared).exists()
    repo.run("dvc", "pull", cwd=clone)
    files = [Path("runs", "tiny", "checkpoints", n) for n in ("best.pt", "last.pt")]
    files += sorted(p.relative_to(repo.root) for p in (repo.root / prepared).iterdir())
    assert prepared / "meta.json" in files and prepared / "train_x.npy" in files
    for name in files:
        assert md5(repo.root / name) == md5(clone / name), name
    # git brought the metrics and the resolved spec, DVC the data and checkpoints: nothing to
    # re-run, and evaluating in the clone uses the pulled data and model (the same metrics)
    assert "Data and pipelines are up to date" in repo.run("dvc", "status", cwd=clone).stdout
    again = repo.run("dvc", "repro", "--single-item", "--force", "evaluate@tiny", cwd=clone)
    assert ran(again.stdout) == {"evaluate"}, again.stdout
    metrics = [
        json.loads((r / "runs" / "tiny" / "metrics.json").read_text()) for r in (repo.root, clone)
    ]
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"]


def test_an_experiment_with_an_override_shows_its_param_and_metrics(repo: Repo):
    repo.run("dvc", "exp", "run", "-S", "specs/tiny.yaml:train.epochs=2")
    table = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    exps = [e for base in table for group in base.get("experiments") or [] for e in group["revs"]]
    assert len(exps) == 1, exps
    data = exps[0]["data"]
    assert data["params"]["runs/tiny/spec.yaml"]["data"]["train"]["epochs"] == 2
    assert data["metrics"]["runs/tiny/metrics.json"]["data"]["test_accuracy"] > MIN_ACCURACY
    assert data["metrics"]["runs/tiny/live/metrics.json"]["data"]["step"] == 1  # two epochs
    csv = repo.run("dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    assert "test_accuracy" in csv and "train.epochs" in csv


def test_a_misspelt_key_forced_in_fails_the_experiment_with_a_did_you_mean(repo: Repo):
    proc = repo.run("dvc", "exp", "run", "-S", "specs/tiny.yaml:+trian.epochs=1", check=False)
    assert proc.returncode != 0
    assert "did you mean 'train'" in proc.stdout, proc.stdout
    assert "failed to reproduce 'resolve@tiny'" in proc.stdout
    assert not ran(proc.stdout) & {"prepare", "train", "evaluate"}


def test_pictures_turned_off_still_reproduce(repo: Repo):
    """dvc.yaml declares the evaluate stage's pictures and tables for every spec, and DVC has no
    optional outputs: with them off, evaluate writes each empty or saying why."""
    repo.write_spec()  # as committed (the failed experiment before leaves its -S in the file)
    spec = repo.root / "specs" / "tiny.yaml"
    spec.write_text(spec.read_text() + "evaluate: {confusion_matrix: false, curves: false}\n")
    proc = repo.run("dvc", "repro")
    assert "evaluate" in ran(proc.stdout) and "train" not in ran(proc.stdout), proc.stdout
    assert (repo.out / "confusion.csv").read_text() == "actual,predicted\n"
    assert (repo.out / "roc.csv").read_text() == "curve,fpr,tpr\n"
    assert (repo.out / "roc_pr.png").is_file()
    assert "test_accuracy" in json.loads((repo.out / "metrics.json").read_text())
    repo.commit("pictures off")


# ---- dvclive in the Trainer, without DVC -----------------------------------------------------


def test_training_writes_dvclive_files_one_step_per_epoch_also_on_resume(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
):
    from pipeline.train.loop import train
    from tests.train.test_loop import quiet, spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DVC_ROOT", raising=False)
    # a git repository without commits: dvclive, left to itself, would `dvc init` it and raise
    subprocess.run(["git", "init", "-q"], check=True)
    result = train(spec(per_class=50, epochs=2), log=quiet)
    live = tmp_path / "runs" / "t" / "live"

    def rows(name: str) -> list[list[str]]:
        return [
            line.split("\t")
            for line in (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        ]

    loss = rows("loss")
    assert loss[0] == ["step", "loss"]
    assert [r[0] for r in loss[1:]] == ["0", "1"]
    assert [float(r[1]) for r in loss[1:]] == pytest.approx([h["loss"] for h in result.history])
    assert [float(r[1]) for r in rows("val_accuracy")[1:]] == pytest.approx(
        [h["val_accuracy"] for h in result.history]
    )
    assert len(rows("lr")) == 3
    assert not (live / "plots" / "metrics" / "time_s.tsv").exists()
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 1 and summary["loss"] == pytest.approx(result.history[-1]["loss"])
    assert not (tmp_path / ".dvc").exists() and not list(tmp_path.rglob("dvc.yaml"))

    resumed = train(spec(per_class=50, epochs=3), resume=True, log=quiet)
    loss = rows("loss")
    assert [r[0] for r in loss[1:]] == ["0", "1", "2"]  # replayed, not appended twice
    assert [float(r[1]) for r in loss[1:]] == pytest.approx([h["loss"] for h in resumed.history])
    assert json.loads((live / "metrics.json").read_text())["step"] == 2
