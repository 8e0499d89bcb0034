"""train.accumulate, train.ema, train.swa, checkpoint.keep_top: validated and located."""

from __future__ import annotations

from pipeline.spec import load_spec
from pipeline.spec.checks_train import steps_per_epoch, training_need
from tests.spec.conftest import BASE


def train(extra: str) -> str:
    return BASE + f"train: {{epochs: 4, {extra}}}\n"


def one(found):
    assert len(found) == 1, found
    return found[0]


def test_accumulate_zero_is_located(problems):
    p = one(problems(train("accumulate: 0")))
    assert p.path == ("train", "accumulate") and p.where.endswith("spec.yaml:8:32")


def test_an_ema_decay_of_one_is_refused(problems):
    p = one(problems(train("ema: {decay: 1.0}")))
    assert p.path == ("train", "ema", "decay")


def test_a_misspelt_ema_key_gets_a_did_you_mean(problems):
    p = one(problems(train("ema: {decai: 0.99}")))
    assert p.path == ("train", "ema", "decai") and "decay" in (p.hint or "")


def test_swa_needs_its_lr_and_a_start_inside_the_run(problems):
    p = one(problems(train("swa: {start_epoch: 2}")))
    assert p.path == ("train", "swa", "lr")
    p = one(problems(train("swa: {start_epoch: 5, lr: 0.01}")))
    assert p.code == "swa-in-range" and p.path == ("train", "swa", "start_epoch")
    assert "1 to 4" in (p.hint or "")


def test_evaluating_swa_needs_swa(problems):
    text = train("batch_size: 32") + "evaluate: {checkpoint: swa}\n"
    p = one(problems(text))
    assert p.code == "swa-in-range" and p.path == ("evaluate", "checkpoint")


def test_swa_evaluating_the_best_checkpoint_warns(write):
    spec = load_spec(write(train("swa: {start_epoch: 3, lr: 0.01}")))
    assert [(w.code, w.path) for w in spec.warnings] == [
        ("swa-in-range", ("evaluate", "checkpoint"))
    ]
    spec = load_spec(
        write(train("swa: {start_epoch: 3, lr: 0.01}") + "evaluate: {checkpoint: swa}\n")
    )
    assert spec.warnings == []


def test_steps_count_optimizer_steps(write):
    plain = load_spec(write(train("batch_size: 100")))
    accumulated = load_spec(write(train("batch_size: 100, accumulate: 4")))
    batches = steps_per_epoch(plain)
    assert batches is not None and batches > 4
    assert steps_per_epoch(accumulated) == -(-batches // 4)


def test_each_weight_average_counts_a_copy_of_the_weights_in_memory(write):
    plain = training_need(load_spec(write(train("batch_size: 32"))))
    both = "swa: {start_epoch: 3, lr: 0.01}, ema: {decay: 0.99}"
    averaged = training_need(load_spec(write(train(both) + "evaluate: {checkpoint: swa}\n")))
    assert plain is not None and averaged is not None
    assert averaged.stored == 3 * plain.stored
    assert averaged.training == plain.training
