"""Which metrics the trials of a base spec record, and why one a search names is not one of
them (an unknown name, a val_ metric without a validation split, a k not in top_k, a class the
data lacks ...)."""

from __future__ import annotations

import re

from pipeline.spec.errors import did_you_mean
from pipeline.spec.spec import Spec

_HISTORY = re.compile(r"(val_)?(loss|accuracy|top(\d+)_accuracy)")
_TEST = re.compile(r"test_(loss|accuracy|top(\d+)_accuracy)")
_PER_CLASS = re.compile(r"(precision|recall|f1)/(.+)")
_MC = ("mc_test_accuracy", "mc_test_loss", "mc_ece", "mc_mean_spread")
_LOWER_BETTER = ("loss", "ece", "params", "mc_mean_spread")


def base_classes(spec: Spec | None) -> list[str] | None:
    if spec is None:
        return None
    names = spec.data.source_classes()
    sel = spec.data.classes
    if names is None:
        return None
    return sel.names(names) if sel is not None else list(names)


def metric_names(spec: Spec | None) -> list[str]:
    """The metrics a trial of ``spec`` records (without the per-class ones)."""
    history = ["loss", "accuracy"]
    if spec is not None:
        history += [f"top{k}_accuracy" for k in spec.train.top_k]
    names = list(history)
    if spec is None or spec.data.validation is not None:
        names += [f"val_{m}" for m in history]
    test_k = sorted(set(spec.evaluate.top_k) | set(spec.train.top_k)) if spec else []
    names += ["test_loss", "test_accuracy", *(f"test_top{k}_accuracy" for k in test_k)]
    names += ["macro_f1", "ece", "params"]
    if spec is None or spec.evaluate.mc_dropout is not None:
        names += list(_MC)
    if spec is None or spec.evaluate.fold_batch_norm:
        names.append("fold_test_accuracy")
    return names


def metric_problem(metric: str, spec: Spec | None) -> tuple[str, str | None] | None:
    """Why no trial of ``spec`` records ``metric`` (message, hint); None when one does."""
    known = (
        "loss, accuracy, topK_accuracy (each as it is, or with val_ or test_), macro_f1, "
        "ece, params, precision/<class>, recall/<class>, f1/<class>, mc_test_accuracy, "
        "mc_test_loss, mc_ece, mc_mean_spread, fold_test_accuracy"
    )
    history, test, per_class = (
        _HISTORY.fullmatch(metric),
        _TEST.fullmatch(metric),
        _PER_CLASS.fullmatch(metric),
    )
    if not (
        history
        or test
        or per_class
        or metric in ("macro_f1", "ece", "params", "fold_test_accuracy", *_MC)
    ):
        return f"unknown metric {metric!r}; valid: {known}", None
    if spec is None:
        return None
    if history and history.group(1) and spec.data.validation is None:
        return (
            f"{metric} needs a validation split: the base spec has no data.validation, so "
            "trials record no val_ metrics",
            f"add data.validation to the base (or overrides), or use {metric[4:]} or test_"
            f"{metric[4:]}",
        )
    k = (history and history.group(3)) or (test and test.group(2))
    if k and history and int(k) not in spec.train.top_k:
        return (
            f"{metric} is recorded only for k in train.top_k (the base has {spec.train.top_k})",
            f"add train.top_k=[{k}] to overrides",
        )
    if k and test and int(k) not in {*spec.evaluate.top_k, *spec.train.top_k}:
        return (
            f"{metric} is recorded only for k in evaluate.top_k (the base has "
            f"{spec.evaluate.top_k})",
            f"add evaluate.top_k=[{k}] to overrides",
        )
    classes = base_classes(spec)
    if per_class and classes is not None and per_class.group(2) not in classes:
        return (
            f"the base spec has no class {per_class.group(2)!r}; its classes: "
            + ", ".join(classes),
            did_you_mean(per_class.group(2), classes) or None,
        )
    if per_class and not spec.evaluate.per_class:
        return f"{metric} needs evaluate.per_class: true", None
    if metric in _MC and spec.evaluate.mc_dropout is None:
        return f"{metric} needs evaluate.mc_dropout in the base spec", None
    if metric == "fold_test_accuracy" and not spec.evaluate.fold_batch_norm:
        return f"{metric} needs evaluate.fold_batch_norm: true in the base spec", None
    return None


def lower_better(metric: str) -> bool:
    return "loss" in metric or metric in _LOWER_BETTER or metric.endswith("_ece")


def per_epoch(metric: str) -> bool:
    """Whether ``metric`` is in the training history, known epoch by epoch (what a pruner
    compares), not only once a trial's training is done."""
    return _HISTORY.fullmatch(metric) is not None
