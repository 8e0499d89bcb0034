"""Class weights for the loss: ``balanced`` computed by prepare from the training split's class
counts (stored in meta.json, so train, lr-find and a later evaluate read the same numbers),
and the spec's ``train.class_weights`` resolved against the prepared classes."""

from __future__ import annotations

from typing import Any

from pipeline.data.raw import DataError
from pipeline.errors import ConfigurationError
from pipeline.spec.data import class_key
from pipeline.spec.errors import did_you_mean

Setting = str | list[float] | dict[str | int, float] | None


def balanced_weights(train_counts: dict[str, int]) -> dict[str, Any]:
    """scikit-learn's ``compute_class_weight('balanced')``: n_samples / (n_classes * count_c)
    per class, in class order; None when a class has no training sample (its weight would be
    infinite)."""
    counts = list(train_counts.values())
    n, k = sum(counts), len(counts)
    weights = [n / (k * c) for c in counts] if all(counts) else None
    return {"balanced": weights, "computed_on": "train", "formula": "n / (n_classes * count)"}


def resolve_class_weights(setting: Setting, meta: dict[str, Any]) -> list[float] | None:
    """The weight of each class of a prepared folder (its ``meta``), in label order (None:
    unweighted). A mapping's classes are matched by name (loosely, as ``data.classes``) or
    index; classes it does not name weigh 1, as in Keras. Errors name the key
    ``train.class_weights``."""
    classes = list(meta["classes"])
    if setting is None:
        return None
    if setting == "balanced":
        stored = meta.get("class_weights")
        if stored is None:
            raise DataError(
                "the prepared data were prepared before class weights were stored: prepare it "
                "again ('pipeline prepare <spec> --force', or 'dvc repro')"
            )
        if stored["balanced"] is None:
            empty = [c for c, n in meta["counts"]["train"].items() if not n]
            raise ConfigurationError(
                f"train.class_weights: balanced needs a training sample of every class; "
                f"{', '.join(empty)} has none"
            )
        return list(stored["balanced"])
    if isinstance(setting, list):
        if len(setting) != len(classes):
            raise ConfigurationError(
                f"train.class_weights: {len(setting)} weights for {len(classes)} classes "
                f"({', '.join(classes)})"
            )
        return [float(w) for w in setting]
    assert isinstance(setting, dict)
    weights = [1.0] * len(classes)
    keys = [class_key(c) for c in classes]
    for ref, w in setting.items():
        if isinstance(ref, int) and 0 <= ref < len(classes):
            weights[ref] = float(w)
        elif not isinstance(ref, int) and class_key(ref) in keys:
            weights[keys.index(class_key(ref))] = float(w)
        else:
            hint = did_you_mean(class_key(ref), keys)
            raise ConfigurationError(
                f"train.class_weights.{ref}: unknown class {ref!r}"
                + (f"; {hint}" if hint else "")
                + f" (valid: {', '.join(keys)})"
            )
    return weights
