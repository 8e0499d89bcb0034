"""A run stopped after epoch k and resumed gives what the uninterrupted run gives: the same
weights bit for bit, the same history (but for timing) and the same stopping epoch.

Each test stops the run for real: a shorter run resumed with the full epochs, an interrupt
raised out of the run after the k-th checkpoint, or ``kill -9`` of a training subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.errors import Interrupted
from pipeline.spec import load_spec_text
from pipeline.train import checkpoint as ckpt
from pipeline.train.loop import train

ROOT = Path(__file__).resolve().parents[2]

# small enough for a fraction of a second an epoch; dropout and augmentation make the torch
# RNG and the loader's per-epoch streams matter
MLP = """\
name: {name}
seed: 3
data:
  dataset: mnist
  subset: {{train_per_class: 30, test_per_class: 5}}
  validation: {{fraction: 0.2}}
augment: {{transforms: [{{type: random_erasing, p: 0.5}}]}}
model:
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 32, activation: relu}}
    - {{type: dropout, rate: 0.3}}
    - {{type: dense, units: 10, activation: softmax}}
optimizer: {{type: adam, lr: 3e-3}}
train: {{epochs: {epochs}, batch_size: 32}}
"""

TIMING = ("time_s", "train_images_per_s")


def mlp(name: str, epochs: int, overrides=()):
    return load_spec_text(MLP.format(name=name, epochs=epochs), list(overrides))


def quiet(_: str) -> None:
    pass


def same_run(full, resumed) -> None:
    """Bit-identical weights, the same history but for timing, the same stop."""
    strip = [{k: v for k, v in row.items() if k not in TIMING} for row in full.history]
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in resumed.history] == strip
    assert resumed.stopped == full.stopped
    assert resumed.best_epoch == full.best_epoch
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_early_stopping_stops_at_the_same_epoch_after_a_resume(workdir):
    # min_delta 100: nothing after epoch 1 counts as better, so with patience 1 the
    # uninterrupted run stops after epoch 3
    es = ["train.early_stopping={monitor: val_loss, patience: 1, min_delta: 100}"]
    full = train(mlp("full", 8, es), log=quiet)
    assert len(full.history) == 3 and "early stopping" in full.stopped

    train(mlp("resumed", 2, es), log=quiet)  # stopped after epoch 2
    kept = ckpt.load(workdir / "runs" / "resumed" / "checkpoints" / "last.pt")
    resumed = train(mlp("resumed", 8, es), resume=True, log=quiet)
    assert len(resumed.history) == 3  # the old code ran to epoch 5
    same_run(full, resumed)
    assert kept["epoch"] == 2
    assert kept["early_stopping"]["stale"] == 1  # epoch 2 did not improve: counted already
    assert kept["early_stopping"]["best"] == full.history[0]["val_loss"]


def test_a_plateau_schedule_resumes_where_it_was(workdir):
    # every epoch after the first is a plateau (min_delta 100): the lr halves after each, and
    # the scheduler's counters must survive the interruption
    plateau = [
        "schedule={type: reduce_on_plateau, monitor: val_loss, factor: 0.5, patience: 0, "
        "min_delta: 100}"
    ]
    full = train(mlp("full", 5, plateau), log=quiet)
    lrs = [row["lr"] for row in full.history]
    assert lrs == pytest.approx([3e-3] + [3e-3 * 0.5**i for i in range(4)])

    def stop_after_epoch_2(line: str) -> None:
        if line.startswith("epoch 2 "):  # logged once epoch 2's checkpoint is written
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        train(mlp("resumed", 5, plateau), log=stop_after_epoch_2)
    kept = ckpt.load(workdir / "runs" / "resumed" / "checkpoints" / "last.pt")
    assert kept["epoch"] == 2 and kept["schedule"]["num_bad_epochs"] == 0
    assert kept["schedule"]["_last_lr"] == pytest.approx([3e-3 * 0.5])
    resumed = train(mlp("resumed", 5, plateau), resume=True, log=quiet)
    same_run(full, resumed)


PHASES = [
    "model.layers[1].trainable=false",
    "train.phases=[{name: head, epochs: 3}, {name: all, epochs: 3, unfreeze: ['*'], lr: 1e-3}]",
]


def _train_in_a_subprocess(workdir: Path, spec_file: Path, overrides: list[str]):
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "PIPELINE_ORCHESTRATION": "off",
    }
    args = [sys.executable, "-m", "pipeline", "train", str(spec_file)]
    for o in overrides:
        args += ["-S", o]
    return subprocess.Popen(
        args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_multi_phase_run_killed_mid_phase_resumes_exactly(workdir):
    full = train(mlp("full", 1, PHASES), log=quiet)
    assert [r["phase"] for r in full.history] == ["head"] * 3 + ["all"] * 3

    spec_file = workdir / "resumed.yaml"
    spec_file.write_text(MLP.format(name="resumed", epochs=1))
    proc = _train_in_a_subprocess(workdir, spec_file, PHASES)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch 4 "):  # the first epoch of phase 2 is checkpointed
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    kept = ckpt.load(workdir / "runs" / "resumed" / "checkpoints" / "last.pt")
    assert 4 <= kept["epoch"] < 6, kept["epoch"]  # killed for real, inside phase 2
    assert kept["phase"] == 1

    resumed = train(mlp("resumed", 1, PHASES), resume=True, log=quiet)
    same_run(full, resumed)


def test_the_checkpoint_holds_every_stateful_piece(workdir):
    es = ["train.early_stopping={monitor: val_accuracy, patience: 3}"]
    train(mlp("t", 1, es), log=quiet)
    kept = ckpt.load(workdir / "runs" / "t" / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "schedule", "phase", "epoch", "history"} <= kept.keys()
    assert kept["early_stopping"] == {"best": kept["best"], "stale": 0}  # same monitor here
    assert set(kept["rng"]) >= {"torch", "python", "numpy", "cuda"}
    assert kept["loader_epoch"] == 1
    assert "scaler" in kept


def test_diagnostics_resume_without_a_repeated_epoch(workdir):
    # the statistics' batch draws dropout masks: the RNG state saved must come after it
    full = train(mlp("full", 3, ["train.diagnostics=true"]), log=quiet)
    train(mlp("resumed", 2, ["train.diagnostics=true"]), log=quiet)
    diagnostics = workdir / "runs" / "resumed" / "diagnostics.csv"
    # killed after epoch 3's statistics were written but before its checkpoint
    third = [line.replace("2,", "3,", 1) for line in diagnostics.read_text().splitlines()[-4:]]
    diagnostics.write_text(diagnostics.read_text() + "\n".join(third) + "\n")
    resumed = train(mlp("resumed", 3, ["train.diagnostics=true"]), resume=True, log=quiet)
    same_run(full, resumed)
    assert diagnostics.read_text() == (workdir / "runs" / "full" / "diagnostics.csv").read_text()
