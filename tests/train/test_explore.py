"""lr-find, schedule-preview and diagnose on real data, through the command line too."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from pipeline.data.prepare import prepare
from pipeline.spec import load_spec_text
from pipeline.train.explore import diagnose, lr_find, schedule_preview

MLP = """\
name: mlp
data: {{dataset: mnist, subset: {{train_per_class: 100, test_per_class: 10}}}}
init: {{kernel: {init}}}
model:
  defaults:
    dense: {{units: 64, activation: {act}}}
  layers:
    - {{type: flatten}}
{hidden}    - {{type: dense, units: 10, activation: softmax}}
optimizer: {{type: sgd, lr: 0.01}}
train: {{batch_size: 32}}
"""


def mlp(act: str = "relu", init: str = "he_normal", depth: int = 2, extra: str = ""):
    hidden = f"    - {{type: dense{extra}}}\n" * depth
    return load_spec_text(MLP.format(act=act, init=init, hidden=hidden))


def test_lr_find_sweeps_up_stops_on_divergence_and_suggests(workdir):
    spec = mlp()
    found = lr_find(spec, prepare(spec), workdir / "out", start=1e-6, end=1e3, steps=300)
    rows = list(csv.DictReader((workdir / "out" / "lr_find.csv").open()))
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-6)
    assert found["steps"] < 300, "the loss diverges long before lr=1000"
    assert 1e-4 < found["suggested_lr"] < 1.0
    assert (workdir / "out" / "lr_find.png").stat().st_size > 1000


def test_schedule_preview_spans_phases(workdir):
    spec = load_spec_text(
        MLP.format(act="relu", init="he_normal", hidden="")
        + "schedule: {type: exponential, decay_steps: 10, interval: step}\n",
        ["train.phases=[{epochs: 1}, {epochs: 1, lr: 0.001}]"],
    )
    rows = schedule_preview(spec, workdir / "s", steps_per_epoch=5)
    assert [r["epoch"] for r in rows] == [0] * 5 + [1] * 5
    assert rows[4]["lr"] == pytest.approx(0.01 * 0.1**0.4)
    assert rows[5]["lr"] == pytest.approx(0.001)


def test_diagnose_shows_vanishing_gradients_with_sigmoid_and_a_bad_init(workdir):
    def ratio(spec) -> float:
        rows = [r for r in diagnose(spec, prepare(spec)) if r["grad_norm"]]
        return rows[0]["grad_norm"] / rows[-2]["grad_norm"]

    sigmoid = ratio(mlp("sigmoid", "{type: normal, std: 0.05}", depth=6))
    relu = ratio(mlp("relu", "he_normal", depth=6))
    assert sigmoid < 1e-3 and relu > 0.05


def test_diagnose_counts_dead_relus(workdir):
    spec = mlp(extra=", bias_init: {type: constant, value: -100}")
    rows = {r["layer"]: r for r in diagnose(spec, prepare(spec))}
    assert rows["dense_1"]["dead_fraction"] == 1.0
    assert "dead_fraction" not in rows["flatten_1"]  # no ReLU of its own: nothing to be dead


def test_cli_train_then_resume_and_user_errors_without_traceback(workdir):
    spec = workdir / "s.yaml"
    spec.write_text(MLP.format(act="relu", init="he_normal", hidden="    - {type: dense}\n"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=300
        )

    first = run("train", str(spec), "-S", "train.epochs=1")
    assert first.returncode == 0, first.stderr
    assert "best epoch 1" in first.stdout
    again = run("train", str(spec), "-S", "train.epochs=2", "--resume")
    assert again.returncode == 0 and "resuming mlp after epoch 1" in again.stdout
    bad = run("train", str(spec), "-S", "optimizer.lr=1e30", "-S", "train.epochs=1")
    assert bad.returncode == 1 and "NaN/inf" in bad.stderr and "Traceback" not in bad.stderr
