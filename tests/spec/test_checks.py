"""Cross-field checks: errors and warnings with reasons, silenced per spec by name."""

import pytest

from pipeline.spec import load_spec
from tests.spec.conftest import BASE

SELU = """\
name: s
data: {dataset: mnist, validation: {fraction: 0.1}}
model:
  layers:
    - {type: flatten}
    - {type: dense, units: 30, activation: selu}
    - {type: dropout, rate: 0.2}
    - {type: dense, units: 10}
"""


def codes(spec_or_problems):
    items = getattr(spec_or_problems, "warnings", spec_or_problems)
    return {(p.code, p.severity) for p in items}


def test_selu_warns_about_init_dropout_and_inputs(write):
    spec = load_spec(write(SELU))
    messages = " ".join(p.message for p in spec.warnings)
    assert {p.code for p in spec.warnings} == {"selu-self-normalizing"}
    assert (
        "lecun_normal" in messages
        and "alpha_dropout" in " ".join(p.hint or "" for p in spec.warnings)
        and "standardized" in messages
    )


def test_warnings_are_silenced_by_name(write):
    spec = load_spec(write(SELU + "ignore_checks: [selu-self-normalizing]\n"))
    assert spec.warnings == []


def test_selu_done_right_has_no_warning(write):
    text = (
        SELU.replace("dropout, rate", "alpha_dropout, rate")
        .replace("selu}", "selu, kernel_init: lecun_normal}")
        .replace("validation:", "normalize: standardize, validation:")
    )
    assert load_spec(write(text)).warnings == []


def test_nesterov_without_momentum_is_an_error(problems):
    found = problems(BASE + "optimizer: {type: sgd, nesterov: true}\n")
    assert codes(found) == {("nesterov-needs-momentum", "error")}


def test_bias_before_batch_norm_warns(write):
    text = BASE.replace("activation: relu}", "}\n    - {type: batch_norm}")
    spec = load_spec(write(text))
    assert codes(spec) == {("bias-before-batch-norm", "warning")}
    assert spec.warnings[0].path == ("model", "layers", 0, "bias")


def test_adam_weight_decay_suggests_adamw(write):
    spec = load_spec(write(BASE + "optimizer: {type: adam, weight_decay: 0.01}\n"))
    assert codes(spec) == {("adam-weight-decay", "warning")} and "adamw" in spec.warnings[0].hint


def test_validation_data_is_never_augmented(problems):
    found = problems(BASE + "augment: {apply_to: [train, validation]}\n")
    assert codes(found) == {("augment-train-only", "error")}


def test_early_stopping_on_val_metric_needs_validation(problems):
    text = BASE.replace(", validation: {fraction: 0.1}", "")
    found = problems(text + "train: {early_stopping: {monitor: val_accuracy}}\n")
    assert codes(found) == {("monitor-needs-validation", "error")}


@pytest.mark.parametrize(("units", "ok"), [(10, True), (9, False)])
def test_output_units_must_match_classes(write, problems, units, ok):
    text = BASE.replace("units: 10", f"units: {units}")
    if ok:
        load_spec(write(text))
    else:
        assert codes(problems(text)) == {("output-matches-classes", "error")}


def test_class_selection_changes_the_expected_units(write):
    text = BASE.replace(
        "dataset: mnist", "dataset: fashion_mnist, classes: {drop: [sandal, shirt]}"
    )
    assert codes(problems_of(write, text.replace("units: 10", "units: 8"))) == set()


def problems_of(write, text):
    return load_spec(write(text)).warnings


def test_freeze_of_an_unknown_layer(problems):
    found = problems(BASE + "train: {freeze: [conv2d_9]}\n")
    (p,) = found
    assert p.code == "layer-selectors" and p.hint == "did you mean 'conv2d_1'?"


def test_mc_dropout_needs_dropout(problems):
    found = problems(BASE + "evaluate: {mc_dropout: {samples: 10}}\n")
    assert codes(found) == {("mc-dropout-needs-dropout", "error")}
