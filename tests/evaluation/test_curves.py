"""ROC and precision-recall curves and areas: known scorers, scikit-learn's own figures, the
DVC plot rows."""

import csv

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.evaluation import curves
from pipeline.evaluation.curves import MACRO, MICRO
from pipeline.run import Run

CLASSES = ["cat", "dog", "frog", "ship"]


def _onehot_scores(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[labels] * 0.9 + 0.1 / k


def test_a_perfect_scorer_has_areas_of_one_and_a_random_one_of_chance():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 4000)
    perfect = curves.metrics(
        curves.compute(_onehot_scores(labels, 4), labels, CLASSES), per_class=True
    )
    assert perfect["roc_auc_macro"] == perfect["roc_auc_micro"] == 1.0
    assert perfect["pr_auc_macro"] == perfect["pr_auc_micro"] == 1.0
    assert perfect["roc_auc/frog"] == 1.0
    noise = rng.dirichlet(np.ones(4), 4000)
    chance = curves.metrics(curves.compute(noise, labels, CLASSES), per_class=False)
    assert chance["roc_auc_macro"] == pytest.approx(0.5, abs=0.03)
    assert chance["roc_auc_micro"] == pytest.approx(0.5, abs=0.03)
    assert chance["pr_auc_micro"] == pytest.approx(0.25, abs=0.03)  # the positives' share
    assert not any("/" in key for key in chance)  # per_class off: only the averages


def test_areas_are_scikit_learn_s_and_the_curves_have_the_right_shape():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 600)
    logits = rng.normal(size=(600, 4)) + 1.5 * np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    found = curves.compute(probs, labels, CLASSES)
    assert found.roc_auc[MACRO] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert 0.75 < found.roc_auc[MACRO] < 1
    for name in [*CLASSES, MICRO, MACRO]:
        roc, pr = found.roc[name], found.pr[name]
        assert roc[0] == 0 and roc[-1] == 1 and (np.diff(roc) >= -1e-12).all()  # origin to (1, 1)
        assert (np.diff(pr) <= 1e-12).all()  # interpolated precision never rises with recall
    # the macro curve is the classes' mean, and its area near the macro AUC
    assert np.allclose(found.roc[MACRO], np.mean([found.roc[c] for c in CLASSES], axis=0))
    assert np.trapezoid(found.roc[MACRO], found.x) == pytest.approx(found.roc_auc[MACRO], abs=0.01)


def test_a_class_missing_from_the_test_split_is_left_out_not_nan():
    labels = np.array([0, 1, 2, 0, 1, 2] * 10)  # no "ship"
    found = curves.compute(_onehot_scores(labels, 4), labels, CLASSES)
    assert found.classes == ["cat", "dog", "frog"]
    areas = curves.metrics(found, per_class=True)
    assert "roc_auc/ship" not in areas and areas["roc_auc_macro"] == 1.0
    assert all(np.isfinite(v) for v in areas.values())


def test_plot_rows_parse_and_hold_per_class_curves_up_to_twenty_classes(tmp_path):
    rng = np.random.default_rng(2)
    run = Run(tmp_path)
    for k, expected in ((4, {MICRO, MACRO, *CLASSES}), (30, {MICRO, MACRO})):
        names = CLASSES if k == 4 else [f"c{i}" for i in range(k)]
        labels = rng.integers(0, k, 900)
        found = curves.compute(rng.dirichlet(np.ones(k), 900), labels, names)
        run.write_csv(run.roc, curves.rows(found, "roc"), columns=["curve", "fpr", "tpr"])
        run.write_csv(run.pr, curves.rows(found, "pr"), columns=["curve", "recall", "precision"])
        roc = list(csv.DictReader(run.roc.open()))
        pr = list(csv.DictReader(run.pr.open()))
        assert {r["curve"] for r in roc} == {r["curve"] for r in pr} == expected
        assert len(roc) == len(expected) * len(curves.GRID)
        values = [float(r["fpr"]) for r in roc] + [float(r["precision"]) for r in pr]
        assert min(values) >= 0 and max(values) <= 1
