"""Cross-field checks of classes: every class a spec names exists, merged groups do not
overlap, class weights fit the classes, and the focal loss's options go with it.

The names are checked here, before prepare, for built-in datasets (whose classes are known);
an image folder's are checked when its data are read (prepare, train)."""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.spec.check_registry import check
from pipeline.spec.data import ClassRef, class_key
from pipeline.spec.errors import Problem, did_you_mean
from pipeline.spec.spec import Spec


def _unknown(ref: ClassRef, classes: list[str], path: tuple) -> Problem | None:
    """A problem when ``ref`` names no class of ``classes`` (by index or loose name)."""
    if isinstance(ref, int):
        if 0 <= ref < len(classes):
            return None
        return Problem(
            f"class index {ref} is out of range: there are {len(classes)} classes "
            f"(0..{len(classes) - 1})",
            path,
        )
    keys = [class_key(c) for c in classes]
    if class_key(ref) in keys:
        return None
    return Problem(
        f"unknown class {ref!r}; valid: {', '.join(keys)}",
        path,
        hint=did_you_mean(class_key(ref), keys) or None,
    )


@check("class-names")
def _class_names(spec: Spec) -> Iterator[Problem]:
    """Every class named in data.classes (keep, drop, merge) must be a class of the dataset,
    and one in train.class_weights a class after that selection: a misspelt name would fail
    prepare, or weigh nothing."""
    source = spec.data.source_classes()
    if source is None:
        return
    sel = spec.data.classes
    refs: list[tuple[ClassRef, tuple]] = []
    if sel is not None:
        for key in ("keep", "drop"):
            refs += [
                (r, ("data", "classes", key, i)) for i, r in enumerate(getattr(sel, key) or [])
            ]
        for name, group in (sel.merge or {}).items():
            refs += [(r, ("data", "classes", "merge", name, i)) for i, r in enumerate(group)]
    for ref, path in refs:
        if (problem := _unknown(ref, source, path)) is not None:
            yield problem
    weights = spec.train.class_weights
    if isinstance(weights, dict):
        final = sel.names(source) if sel is not None else source
        for ref in weights:
            if (problem := _unknown(ref, final, ("train", "class_weights", ref))) is not None:
                yield problem


@check("merge-groups-disjoint")
def _merge_disjoint(spec: Spec) -> Iterator[Problem]:
    """A source class can go into one merged class only: its images cannot carry two labels."""
    sel, source = spec.data.classes, spec.data.source_classes()
    if sel is None or sel.merge is None:
        return
    seen: dict[str, str] = {}
    for name, group in sel.merge.items():
        for i, ref in enumerate(group):
            if isinstance(ref, int) and source is not None and 0 <= ref < len(source):
                ref = source[ref]
            key = class_key(ref)
            if key in seen:
                yield Problem(
                    f"class {ref!r} is in merged class {seen[key]!r} already",
                    ("data", "classes", "merge", name, i),
                    hint="list each source class in one group",
                )
            seen[key] = name


@check("class-weights-match-classes")
def _weights_length(spec: Spec) -> Iterator[Problem]:
    """A list of class weights needs one weight per class, in class order."""
    weights, n = spec.train.class_weights, spec.num_classes()
    if isinstance(weights, list) and n is not None and len(weights) != n:
        yield Problem(
            f"{len(weights)} class weights for {n} classes",
            ("train", "class_weights"),
            hint=f"give {n} weights in class order, a mapping of class name to weight, or balanced",
        )


@check("focal-options")
def _focal(spec: Spec) -> Iterator[Problem]:
    """focal_gamma (other than its default) applies to the focal loss only, and the focal loss
    takes hard labels (no label smoothing): either would otherwise be silently ignored."""
    t = spec.train
    default = type(t).model_fields["focal_gamma"].default  # a resolved spec writes it out
    if t.focal_gamma != default and t.loss != "focal":
        yield Problem(
            f"focal_gamma applies to loss: focal, not {t.loss}",
            ("train", "focal_gamma"),
            hint="set loss: focal, or remove focal_gamma",
        )
    if t.loss == "focal" and t.label_smoothing:
        yield Problem(
            "the focal loss does not take label_smoothing",
            ("train", "label_smoothing"),
            hint="remove label_smoothing, or use loss: cross_entropy",
        )
