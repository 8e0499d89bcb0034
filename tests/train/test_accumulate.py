"""train.accumulate: batches of 16 accumulated 4 at a time train exactly as batches of 64."""

from __future__ import annotations

import pytest
import torch

from pipeline.spec import load_spec, load_spec_text
from pipeline.train.epoch import optimizer_steps
from pipeline.train.loop import train
from tests.train.test_distributed import close, spec_file, weights

# no batch norm, no dropout, no augmentation: nothing sees a batch alone, so the mean gradient
# over 4 x 16 samples is the gradient over the 64 of them; a per-step cosine schedule shows
# that steps are counted in optimizer steps
MLP = """\
name: {name}
seed: 5
data:
  dataset: mnist
  subset: {{train_per_class: 32, test_per_class: 2}}
model:
  layers:
    - {{type: flatten}}
    - {{type: dense, units: 32, activation: relu}}
    - {{type: dense, units: 10, activation: softmax}}
optimizer: {{type: sgd, lr: 0.1, momentum: 0.9}}
schedule: {{type: cosine, interval: step}}
train: {{epochs: 2, batch_size: {batch}, accumulate: {accumulate}}}
"""


def run(name: str, batch: int, accumulate: int):
    spec = load_spec_text(MLP.format(name=name, batch=batch, accumulate=accumulate))
    return train(spec, log=lambda _: None)


def test_16_times_4_trains_the_same_weights_as_64(workdir):
    big, accumulated = run("big", 64, 1), run("acc", 16, 4)
    small = run("small", 16, 1)
    a, b, c = (r.model.state_dict() for r in (big, accumulated, small))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    # the effect is real: without accumulation, batches of 16 take 4x the steps
    assert max((c[k] - a[k]).abs().max().item() for k in a) > 1e-2
    # the same per-step schedule: the lr each epoch started with
    assert [r["lr"] for r in accumulated.history] == pytest.approx([r["lr"] for r in big.history])
    assert accumulated.history[-1]["loss"] == pytest.approx(big.history[-1]["loss"], rel=1e-4)


def test_a_short_last_window_still_steps():
    assert optimizer_steps(20, 4) == 5
    assert optimizer_steps(21, 4) == 6
    assert optimizer_steps(3, 4) == 1


def test_two_processes_accumulating_give_the_weights_of_one_large_batch(workdir):
    # 800 images: 80 global batches of 10 (5 a rank) in windows of 3, the last of 2 (20
    # images), against 26 batches of 30 and one of 20; the all-reduce waits for each window's
    # last batch (no_sync)
    (workdir / "pyproject.toml").write_text("")
    one = train(load_spec(spec_file(workdir, "one", batch=30)), log=lambda _: None)
    path = spec_file(workdir, "many", batch=10)
    many_spec = load_spec(path, ["train.nproc=2", "train.accumulate=3"])
    many = train(many_spec, log=lambda _: None)
    close(weights(one.run_dir, many_spec), weights(many.run_dir, many_spec))
    assert many.history[0]["loss"] == pytest.approx(one.history[0]["loss"], abs=1e-4)
