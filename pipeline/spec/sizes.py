"""Split sizes known before prepare: a built-in dataset's per-class counts taken through the
data section's class selection, validation split and subsets, the way prepare draws them
(``pipeline.data.prepare.build_splits``: classes, then the training subset and a validation
fraction of it; or a validation of the first N, then the subsets)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.spec.data import DATASETS, ClassSelection, DataSection, class_key


@dataclass(frozen=True)
class SplitSizes:
    """Samples per prepared split; None where it depends on the data itself (a validation of
    the first N samples followed by per-class subsets) or there is no such split."""

    train: int | None
    val: int | None
    test: int | None


def _mapping(selection: ClassSelection | None, classes: list[str]) -> list[list[int]] | None:
    """Source classes of each kept (or merged) class, as prepare maps them; None for a
    reference prepare will refuse (it says why)."""
    if selection is None:
        return [[i] for i in range(len(classes))]
    keys = [class_key(c) for c in classes]

    def index(ref: str | int) -> int | None:
        if isinstance(ref, int):
            return ref if 0 <= ref < len(classes) else None
        return keys.index(class_key(ref)) if class_key(ref) in keys else None

    if selection.merge is not None:
        groups = [[index(r) for r in refs] for refs in selection.merge.values()]
        if any(i is None for g in groups for i in g):
            return None
        return groups  # type: ignore[return-value]
    picked = [
        index(r) for r in (selection.keep if selection.keep is not None else selection.drop or [])
    ]
    if any(i is None for i in picked):
        return None
    if selection.keep is not None:
        return [[i] for i in picked]  # type: ignore[list-item]
    return [[i] for i in range(len(classes)) if i not in picked]


def split_sizes(data: DataSection) -> SplitSizes | None:
    """The prepared splits' sizes, for a built-in dataset whose counts are in ``DATASETS``;
    None for an image folder (prepare counts its files) or a selection prepare refuses."""
    table = DATASETS.get(data.dataset)
    if table is None or table.train_counts is None or table.test_counts is None:
        return None
    mapping = _mapping(data.classes, table.classes)
    if not mapping:
        return None
    train: list[int] | None = [sum(table.train_counts[i] for i in g) for g in mapping]
    test = [sum(table.test_counts[i] for i in g) for g in mapping]
    train_total: int | None = sum(train)
    val: int | None = None
    v = data.validation
    sub = data.subset
    per = sub.train_per_class if sub is not None else None
    if v is not None and v.fraction is not None:
        # a fraction of the training subset: the subset first, then the hold-out per class
        kept = [n if per is None else min(n, per) for n in train]
        held = [round(n * v.fraction) for n in kept]  # as split_validation draws per class
        train_total, val = sum(kept) - sum(held), sum(held)
    else:
        if v is not None and v.first is not None:
            if v.first >= sum(train):
                return None  # prepare refuses it, naming the sizes
            train_total, val = sum(train) - v.first, v.first
            train = None  # which classes the first N took depends on the data's order
        if per is not None:
            if train is not None:
                train_total = sum(min(n, per) for n in train)
            elif per < max(sum(table.train_counts[i] for i in g) for g in mapping):
                train_total = None  # unless no class is cut, it depends on the first N's classes
    if sub is not None and sub.test_per_class is not None:
        test = [min(n, sub.test_per_class) for n in test]
    return SplitSizes(train_total, val, sum(test))
