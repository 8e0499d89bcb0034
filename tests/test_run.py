"""The run folder: its record, stale outputs of an earlier run, and one owner of its layout."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from pipeline.evaluate import evaluate
from pipeline.export import export_run
from pipeline.run import Run, code_version
from pipeline.spec import load_spec_text
from pipeline.train import checkpoint as ckpt
from pipeline.train.loop import train
from tests.train.test_loop import CONVNET

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


@pytest.fixture
def workdir(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path


def tiny(*overrides: str):
    return load_spec_text(CONVNET.format(name="t", per_class=50, epochs=1), list(overrides))


def test_spec_keeps_the_overrides_it_was_loaded_with():
    text = CONVNET.format(name="t", per_class=50, epochs=1)
    assert load_spec_text(text, ["train.epochs=2", "seed=3"]).overrides == (
        "train.epochs=2",
        "seed=3",
    )
    assert load_spec_text(text).overrides == ()


def test_a_rerun_with_other_overrides_replaces_the_earlier_run_and_keeps_its_record(workdir):
    first = tiny("train.epochs=1")
    train(first, log=lambda _m: None)
    evaluate(first, log=lambda _m: None)
    export_run(first, ["torchscript"])
    run = Run.of(first)
    earlier = run.read_record()
    assert earlier is not None and earlier["overrides"] == ["train.epochs=1"]
    for path in (run.metrics, run.confusion, run.curves, run.export):
        assert path.exists(), path

    # another architecture under the same name: what the folder holds when training starts
    second = tiny("model.layers[0].filters=8", "seed=1")
    seen: dict[str, bool] = {}
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch 1 ") and not seen:
            seen.update({p.name: p.exists() for p in (run.metrics, run.confusion, run.export)})
            seen["history_has_the_new_epoch_only"] = len(run.history.read_text().splitlines()) == 2

    train(second, log=log)
    assert seen == {
        "metrics.json": False,
        "confusion.csv": False,
        "export": False,
        "history_has_the_new_epoch_only": True,
    }
    assert not run.curves.exists()
    (replaced,) = [m for m in lines if "replacing the earlier run" in m]
    assert earlier["id"] in replaced and "-S train.epochs=1" in replaced
    assert "metrics.json" in replaced and "export/" in replaced

    record = run.read_record()
    assert record["id"] != earlier["id"]
    assert record["overrides"] == ["model.layers[0].filters=8", "seed=1"]
    assert record["spec"]["model"]["layers"][0]["filters"] == 8 and record["spec"]["seed"] == 1
    # the package's source is a git work tree here
    assert len(record["code"]["commit"]) == 40 and isinstance(record["code"]["dirty"], bool)
    versions = record["versions"]
    assert versions["torch"] == torch.__version__
    for name in ("python", "torch", "torchvision", "pydantic", "numpy"):
        assert versions[name], name
    assert record["device"]["type"] == "cpu" and record["device"]["name"]

    (line,) = run.earlier_records.read_text().splitlines()
    kept = json.loads(line)
    assert kept["id"] == earlier["id"] and kept["overrides"] == ["train.epochs=1"]
    assert {"metrics.json", "confusion.csv", "export/", "checkpoints/"} <= set(kept["removed"])

    # what is in the folder now belongs to the new run, and evaluate says so
    assert ckpt.load(run.checkpoint("best"))["run_id"] == record["id"]
    assert json.loads(run.summary.read_text())["run_id"] == record["id"]
    assert evaluate(second, log=lambda _m: None)["run_id"] == record["id"]
    assert json.loads(run.metrics.read_text())["run_id"] == record["id"]


def test_resume_keeps_the_folder_and_appends_to_its_record(workdir, monkeypatch):
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(workdir / "elsewhere"))
    spec = tiny()
    train(spec, log=lambda _m: None)
    evaluate(spec, log=lambda _m: None)
    run = Run.of(spec)
    assert run.dir == workdir / "elsewhere" / "t" and run.metrics.is_file()
    started = run.read_record()

    lines: list[str] = []
    longer = tiny("train.epochs=2")
    result = train(longer, resume=True, log=lines.append)
    assert len(result.history) == 2 and result.run_dir == run.dir
    record = run.read_record()
    assert record["id"] == started["id"] and record["started"] == started["started"]
    assert record["overrides"] == [] and record["spec"]["train"]["epochs"] == 1
    (resumed,) = record["resumed"]
    assert resumed["overrides"] == ["train.epochs=2"] and resumed["device"]["type"] == "cpu"
    assert resumed["spec"]["train"]["epochs"] == 2  # what the resumed part ran with
    assert not run.earlier_records.exists()
    # the metrics of the checkpoints before resuming are not left beside the new ones
    assert not run.metrics.exists()
    assert any(
        "removed the evaluation of the earlier checkpoints: metrics.json" in m for m in lines
    )
    assert ckpt.load(run.checkpoint("last"))["run_id"] == started["id"]
    assert not (workdir / "runs").exists()


def test_evaluate_names_the_checkpoints_run_when_the_record_is_of_another(workdir):
    spec = tiny()
    train(spec, log=lambda _m: None)
    run = Run.of(spec)
    trained = run.read_record()["id"]
    run.write_json(run.record, run.read_record() | {"id": "a-later-run"})
    lines: list[str] = []
    assert evaluate(spec, log=lines.append)["run_id"] == trained
    assert any(f"is of run {trained}, not of the run a-later-run" in m for m in lines)


def test_resuming_a_checkpoint_of_another_run_starts_its_own_record(tmp_path):
    run = Run(tmp_path / "t")
    spec = tiny()
    first = run.start(spec, log=lambda _m: None)
    # a checkpoint of another run (restored by dvc checkout, say) is resumed
    resumed = run.start(spec, resume=True, run_id="other-run", log=lambda _m: None)
    assert resumed["id"] == "other-run" and len(resumed["resumed"]) == 1
    (kept,) = [json.loads(line) for line in run.earlier_records.read_text().splitlines()]
    assert kept["id"] == first["id"] and kept["removed"] == []
    # a folder from before records were kept: the resumed run's record starts now
    run.record.unlink()
    again = run.start(spec, resume=True, run_id="other-run", log=lambda _m: None)
    assert again["id"] == "other-run" and run.read_record() == again


def test_code_version_names_the_commit_and_whether_tracked_files_changed(tmp_path):
    assert code_version(tmp_path) is None  # not a git work tree
    repo = tmp_path / "repo"
    repo.mkdir()
    env = os.environ | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    git("init", "-q")
    (repo / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-qm", "one")
    assert code_version(repo) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (repo / "untracked.txt").write_text("not code yet\n")
    assert code_version(repo)["dirty"] is False
    (repo / "a.txt").write_text("two\n")
    assert code_version(repo)["dirty"] is True
    (repo / "pkg").mkdir()
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "two")
    (repo / "a.txt").write_text("three\n")  # outside the code's folder, as dvc.lock is
    assert code_version(repo / "pkg")["dirty"] is False
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    assert code_version(repo / "pkg")["dirty"] is True


SPEC_A = """
name: a
data: {dataset: mnist}
model:
  layers:
    - {type: conv2d, filters: 4, kernel_size: 3, activation: relu}
    - {type: flatten}
    - {type: dense, units: 10, activation: softmax}
"""

SPEC_B = """
name: b
data: {dataset: mnist}
model:
  layers:
    - {type: reuse, spec: a.yaml, upto: flatten_1}
    - {type: dense, units: 10, activation: softmax}
"""


def test_reused_default_checkpoint_is_found_under_pipeline_runs_dir(tmp_path, monkeypatch):
    from pipeline.model import ModelBuildError, build_model
    from pipeline.spec.load import load_spec

    (tmp_path / "a.yaml").write_text(SPEC_A)
    (tmp_path / "b.yaml").write_text(SPEC_B)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(tmp_path / "elsewhere"))
    b = load_spec(tmp_path / "b.yaml")
    with pytest.raises(ModelBuildError, match=r"train a first: .*elsewhere/a/checkpoints/best\.pt"):
        build_model(b)
    a = build_model(load_spec(tmp_path / "a.yaml"))
    with torch.no_grad():
        a.conv2d_1.conv.weight.fill_(0.25)
    best = Run.named("a").checkpoint("best")
    best.parent.mkdir(parents=True)
    torch.save({"model": a.state_dict()}, best)
    assert best == tmp_path / "elsewhere" / "a" / "checkpoints" / "best.pt"
    assert torch.equal(build_model(b).reuse_1.conv2d_1.conv.weight, a.conv2d_1.conv.weight)


# The names only the Run type may spell: files and folders of the run folder, and its root.
LAYOUT = {
    "runs",
    "PIPELINE_RUNS_DIR",
    "checkpoints",
    "best.pt",
    "last.pt",
    "run.json",
    "runs.jsonl",
    "history.csv",
    "train.json",
    "diagnostics.csv",
    "metrics.json",
    "confusion.csv",
    "confusion.png",
    "roc.csv",
    "pr.csv",
    "roc_pr.png",
    "training_curves.png",
    "mc_uncertain.json",
    "mc_uncertain.png",
}


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants of the code, docstrings left out (they may describe the layout)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    ]


def test_only_run_py_spells_the_run_folder_layout():
    spelt = []
    for file in sorted(PACKAGE.rglob("*.py")):
        if file == PACKAGE / "run.py":
            continue
        for node in _code_strings(ast.parse(file.read_text(), str(file))):
            text = node.value
            if text in LAYOUT or "checkpoints/" in text or text.startswith("runs/"):
                spelt.append(f"{file.relative_to(PACKAGE.parent)}:{node.lineno}: {text!r}")
    assert spelt == []
    # and the check sees what it looks for
    tree = ast.parse(
        'def f(spec):\n    """runs/<name>/metrics.json"""\n    return "metrics.json"\n'
    )
    assert [n.value for n in _code_strings(tree)] == ["metrics.json"]
